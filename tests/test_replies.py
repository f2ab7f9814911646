"""The hot path's own requests and JetStream publishes: acks, errors and timeouts as nats-py's."""

from __future__ import annotations

import asyncio

import pytest
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import APIError, NoStreamResponseError

from dagnats.connection import Endpoint, connect
from dagnats.datadir import Credentials
from dagnats.replies import Replies
from dagnats.server import EmbeddedServer

from conftest import free_port


async def test_publishes_are_acked_and_errors_and_silence_raise_as_nats_py_does(tmp_path):
    server = EmbeddedServer(tmp_path, free_port(), Credentials(operator="op", worker="w"))
    server.start()
    nc = await connect(Endpoint(url=server.url, user="operator", password="op"))
    try:
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
    finally:
        await nc.close()
        server.stop()
