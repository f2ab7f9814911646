"""The hot path's own NATS plumbing: publishes acked (errors and timeouts raised as nats-py's),
and pulling from a consumer."""

from __future__ import annotations

import asyncio

import pytest
from nats.errors import TimeoutError as NatsTimeout
from nats.js import api
from nats.js.errors import APIError, NoStreamResponseError

from dagnats.nats.connection import Endpoint, connect
from dagnats.nats.datadir import Credentials
from dagnats.nats.embedded import EmbeddedServer
from dagnats.nats.pull import Puller, PullFailed, ensure_consumer
from dagnats.nats.replies import Replies

from conftest import free_port


@pytest.fixture
async def nc(tmp_path):
    server = EmbeddedServer(tmp_path, free_port(), Credentials(operator="op", worker="w"))
    server.start()
    conn = await connect(Endpoint(url=server.url, user="operator", password="op"))
    yield conn
    await conn.close()
    server.stop()


async def test_publishes_are_acked_and_errors_and_silence_raise_as_nats_py_does(nc):
    js = nc.jetstream()
    await js.add_stream(name="T", subjects=["t.>"])
    replies = Replies(nc)
    acks = await asyncio.gather(*(replies.publish(f"t.{i % 2}", b"x") for i in range(10)))
    assert sorted(a.seq for a in acks) == list(range(1, 11)) and {a.stream for a in acks} == {"T"}
    again = await replies.publish("t.0", b"y", {"Nats-Msg-Id": "one"})
    assert not again.duplicate
    assert (await replies.publish("t.0", b"y", {"Nats-Msg-Id": "one"})).duplicate
    with pytest.raises(APIError) as err:  # the optimistic-concurrency guard the engine relies on
        await replies.publish("t.1", b"z", {"Nats-Expected-Last-Subject-Sequence": "1"})
    assert err.value.err_code == 10071
    with pytest.raises(NoStreamResponseError):
        await replies.publish("nowhere.at.all", b"x")

    async def ignore(_msg: object) -> None:
        pass

    await nc.subscribe("silent", cb=ignore)  # listens, never answers
    with pytest.raises(NatsTimeout):
        await replies.request("silent", b"?", timeout=0.2)
    assert replies._waiting == {}  # nothing left behind by answered, failed or expired requests


async def test_a_puller_takes_what_is_there_waits_for_the_first_and_reports_a_missing_consumer(nc):
    js = nc.jetstream()
    await js.add_stream(name="Q", subjects=["q.>"])
    await ensure_consumer(js, "Q", api.ConsumerConfig(durable_name="c", filter_subject="q.>"))
    await ensure_consumer(js, "Q", api.ConsumerConfig(durable_name="c", filter_subject="q.>"))  # again: kept
    puller = await Puller(nc, "Q", "c").start()
    assert await puller.fetch(10, 0.2) == []  # nothing within the timeout
    assert await puller.fetch(10, 0.2, no_wait=True) == []
    for i in range(5):
        await js.publish(f"q.{i}", str(i).encode())
    got: list[bytes] = []
    while len(got) < 5:
        batch = await puller.fetch(3, 1.0)
        assert 1 <= len(batch) <= 3
        got += [m.data for m in batch]
        for m in batch:
            await m.ack()
    assert got == [b"0", b"1", b"2", b"3", b"4"]  # in order, none twice

    async def later() -> None:
        await asyncio.sleep(0.2)
        await js.publish("q.late", b"late")

    publishing = asyncio.create_task(later())
    waited = await puller.fetch(10, 2.0)  # returns with the first message, not at the timeout
    await publishing
    assert [m.data for m in waited] == [b"late"] and waited[0].metadata.num_delivered == 1
    await puller.stop()
    missing = await Puller(nc, "Q", "nobody").start()
    with pytest.raises(PullFailed):
        await missing.fetch(1, 1.0)
    await missing.stop()
