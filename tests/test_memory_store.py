"""One contract for both stores: what the NATS store does on a real server, MemoryStore does in memory."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from dagnats import Worker
from dagnats.core.actions import DispatchTask, StartTimer
from dagnats.core.decide import fold
from dagnats.core.definition import parse_definition
from dagnats.core.events import RunStarted, SignalReceived
from dagnats.engine.loop import Engine
from dagnats.engine.timers import TimerService
from dagnats.errors import NotFound
from dagnats.nats.connection import Endpoint, connect
from dagnats.nats.datadir import Credentials
from dagnats.nats.embedded import EmbeddedServer
from dagnats.nats.store import Store, decode_recorded, decode_task, decode_timer
from dagnats.ports import Conflict, TooLarge, WorkflowVersion
from dagnats.testing import MemoryStore

from conftest import free_port

WF = parse_definition({"name": "w", "steps": [{"id": "a", "task": "echo"}]})


class Backend:
    """A store under test, and a way to open another process's view of the same data."""

    def __init__(self, store: Any, with_source: Callable[[str], Any]) -> None:
        self.store = store
        self.with_source = with_source


@contextlib.asynccontextmanager
async def nats_connection(tmp_path: Path) -> AsyncIterator[Any]:
    """An operator's connection to a fresh embedded server."""
    creds = Credentials(operator="operator-secret", worker="worker-secret")
    server = EmbeddedServer(tmp_path, free_port(), creds)
    server.start()
    try:
        nc = await connect(Endpoint(url=server.url, user="operator", password=creds.operator))
        try:
            yield nc
        finally:
            await nc.close()
    finally:
        server.stop()


@pytest.fixture(params=["nats", "memory"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "memory":
        memory = MemoryStore()
        yield Backend(memory, memory.with_source)
        return
    async with nats_connection(tmp_path) as nc:
        store = Store(nc)
        await store.ensure()
        yield Backend(store, lambda source: Store(nc, source=source))


def started(run_id: str) -> RunStarted:
    return RunStarted(at=1.0, run_id=run_id, workflow="w", version=1, definition=WF)


def task(run_id: str, n: int = 1, name: str = "echo") -> DispatchTask:
    return DispatchTask(
        run_id=run_id, step_id=f"s{n}", attempt=1, task=name, msg_id=f"{run_id}:s{n}:1", input=n
    )


# --- the event log ---------------------------------------------------------------------------


async def test_one_sequence_over_all_runs_and_each_run_read_back_in_order(backend):
    store = backend.store
    a1 = await store.append("r1", started("r1"), expected_last=0)
    b1 = await store.append("r2", started("r2"), expected_last=0)
    a2 = await store.append("r1", SignalReceived(at=2.0, name="go"), expected_last=a1)
    assert a1 < b1 < a2
    history = await store.read_history("r1")
    assert [seq for seq, _ in history] == [a1, a2]
    assert [type(e).__name__ for _, e in history] == ["RunStarted", "SignalReceived"]
    assert [seq for seq, _ in await store.read_history("r1", after=a1)] == [a2]
    assert await store.read_history("nobody") == []


async def test_appends_are_checked_against_the_runs_last_stream_sequence(backend):
    store = backend.store
    first = await store.append("r1", started("r1"), expected_last=0)
    with pytest.raises(Conflict):
        await store.append("r1", started("r1"), expected_last=0)  # the run exists
    other = await store.append("r2", started("r2"), expected_last=0)  # moves the stream, not r1
    second = await store.append("r1", SignalReceived(at=2.0, name="a"), expected_last=first)
    assert second > other
    with pytest.raises(Conflict):
        await store.append("r1", SignalReceived(at=3.0, name="stale"), expected_last=first)
    await store.append("r1", SignalReceived(at=4.0, name="free"))  # unchecked: always lands
    assert [e.name for _, e in (await store.read_history("r1"))[1:]] == ["a", "free"]


async def test_a_message_id_seen_before_is_absorbed_and_answered_with_its_first_sequence(backend):
    store = backend.store
    first = await store.append("r1", started("r1"), expected_last=0, msg_id="start-r1")
    again = await store.append("r1", started("r1"), msg_id="start-r1")
    assert again == first
    with pytest.raises(Conflict):  # the expectation is checked before the id
        await store.append("r1", started("r1"), expected_last=0, msg_id="start-r1")
    assert len(await store.read_history("r1")) == 1


async def test_each_event_carries_the_source_of_the_store_that_wrote_it(backend):
    await backend.store.append("r1", started("r1"))
    await backend.with_source("w").append("r1", SignalReceived(at=2.0, name="by-worker"))
    await backend.with_source("o").append("r1", SignalReceived(at=3.0, name="by-operator"))
    assert [e.source for _, e in await backend.store.read_history("r1")] == ["e", "w", "o"]


async def test_a_batch_lands_whole_contiguous_or_not_at_all(backend):
    store = backend.store
    assert store.atomic_batches
    first = await store.append("r1", started("r1"), expected_last=0)
    await store.append("r2", started("r2"))
    seqs = await store.append_batch(
        "r1", [SignalReceived(at=2.0 + i, name=f"s{i}") for i in range(3)], expected_last=first
    )
    assert seqs == list(range(seqs[0], seqs[0] + 3))
    with pytest.raises(Conflict):
        await store.append_batch("r1", [SignalReceived(at=9.0, name="late")] * 2, expected_last=first)
    assert [seq for seq, _ in await store.read_history("r1")] == [first, *seqs]


async def test_an_event_too_large_for_one_message_is_refused(backend):
    huge = SignalReceived(at=1.0, name="big", data="x" * 1_000_000)
    with pytest.raises(TooLarge):
        await backend.store.append("r1", huge)
    with pytest.raises(TooLarge):
        await backend.store.append_batch("r1", [huge], expected_last=0)
    assert await backend.store.read_history("r1") == []


# --- snapshots -------------------------------------------------------------------------------


async def test_snapshots_are_compared_and_set_by_revision(backend):
    store = backend.store
    seq = await store.append("r1", started("r1"), expected_last=0)
    state = fold(None, started("r1"))
    assert await store.load_snapshot("r1") == (None, 0)
    first = await store.save_snapshot(seq, state, 0)
    assert first
    assert await store.save_snapshot(seq, state, 0) is None  # someone saved first
    second = await store.save_snapshot(seq, state, first)
    assert second and second > first
    snap, revision = await store.load_snapshot("r1")
    assert revision == second and snap.applied == seq and snap.state == state
    assert [s.summary.run_id for s in await store.all_snapshots()] == ["r1"]


async def test_current_is_the_snapshot_plus_the_newer_history(backend):
    store = backend.store
    seq = await store.append("r1", started("r1"), expected_last=0)
    await store.save_snapshot(seq, fold(None, started("r1")), 0)
    later = await store.append("r1", SignalReceived(at=2.0, name="go"))
    state, last = await store.current("r1")
    assert last == later and state is not None and state.run_id == "r1"
    assert await store.current_state("r1") == state
    assert await store.current("nobody") == (None, 0)


# --- the registry ----------------------------------------------------------------------------


async def test_a_definition_gets_a_new_version_only_when_it_changed(backend):
    store = backend.store
    changed = parse_definition({"name": "w", "steps": [{"id": "b", "task": "echo"}]})
    assert await store.register_workflow(WF, 1.0) == (1, True)
    assert await store.register_workflow(WF, 2.0) == (1, False)
    assert await store.register_workflow(changed, 3.0) == (2, True)
    assert await store.register_workflow(WF, 4.0) == (3, True)  # back to the first: a new version
    assert (await store.get_workflow("w")).version == 3
    assert (await store.get_workflow("w", 2)).definition == changed
    assert (await store.latest_workflow("w")).registered_at == 4.0
    assert await store.workflow_versions("w") == [1, 2, 3]
    assert sorted(v.version for v in await store.all_workflows()) == [1, 2, 3]


async def test_unknown_workflows_and_versions_are_not_found(backend):
    store = backend.store
    await store.register_workflow(WF, 1.0)
    assert await store.latest_workflow("other") is None
    assert await store.workflow_versions("other") == []
    for name, version in (("other", None), ("w", 2), ("no.such", None)):
        with pytest.raises(NotFound):
            await store.get_workflow(name, version)


# --- tasks and timers ------------------------------------------------------------------------


async def fetch_all(feed: Any, timeout: float = 1.0) -> list[Any]:
    """Every delivery available now (waiting at most `timeout` for the first)."""
    out = await feed.fetch(100, timeout)
    while out and (more := await feed.fetch(100, 0.2)):
        out += more
    return out


async def test_tasks_are_queued_per_name_once_per_message_id(backend):
    store = backend.store
    for action in (task("r1", 1), task("r1", 1), task("r2", 1), task("r1", 2, name="other")):
        await store.dispatch(action)
    feed, ack_wait = await store.task_feed("echo", 5.0)
    assert ack_wait == 5.0
    got = await fetch_all(feed)
    assert [(decode_task(d.data).run_id, d.attempts) for d in got] == [("r1", 1), ("r2", 1)]
    for d in got:
        await d.ack()
    assert await feed.fetch(10, 0.3) == []
    _, kept = await store.task_feed("echo", 9.0)
    assert kept == 5.0  # an existing queue keeps its ack wait
    await feed.stop()


async def test_dropping_a_runs_tasks_leaves_the_others(backend):
    store = backend.store
    for action in (task("r1", 1), task("r2", 1), task("r1", 2)):
        await store.dispatch(action)
    await store.drop_tasks("r1")
    feed, _ = await store.task_feed("echo", 5.0)
    assert [decode_task(d.data).run_id for d in await fetch_all(feed)] == ["r2"]
    await feed.stop()


async def test_an_unacknowledged_task_comes_back_after_a_nak_or_its_ack_wait(backend):
    store = backend.store
    await store.dispatch(task("r1"))
    feed, _ = await store.task_feed("echo", 1.0)
    (first,) = await feed.fetch(1, 1.0)
    await first.nak()
    (again,) = await feed.fetch(1, 2.0)
    assert again.seq == first.seq and again.attempts == 2
    start = time.monotonic()
    (late,) = await feed.fetch(1, 3.0)  # not acked: back after the ack wait
    assert late.attempts == 3 and time.monotonic() - start > 0.5
    await late.ack()
    assert await feed.fetch(1, 1.5) == []
    await feed.stop()


async def test_work_in_progress_keeps_a_task_from_coming_back(backend):
    store = backend.store
    await store.dispatch(task("r1"))
    feed, _ = await store.task_feed("echo", 1.0)
    (held,) = await feed.fetch(1, 1.0)
    for _ in range(3):  # 1.8 s in all: past the ack wait, but told each time it is still worked on
        await asyncio.sleep(0.6)
        await held.in_progress()
    assert await feed.fetch(1, 0.3) == []
    await held.ack()
    await feed.stop()


async def test_timers_are_queued_once_and_cancelled_per_run(backend):
    store = backend.store
    for run_id in ("r1", "r1", "r2"):
        await store.start_timer(StartTimer(run_id=run_id, kind="sleep", fire_at=1.0, msg_id=f"{run_id}:t"))
    await store.start_timer(StartTimer(run_id="r3", kind="sleep", fire_at=1.0, msg_id="r3:t"))
    await store.cancel_timers("r3")
    feed = await store.timer_feed()
    got = await fetch_all(feed)
    assert [decode_timer(d.data).run_id for d in got] == ["r1", "r2"]
    await got[0].nak(delay=0.5)
    await got[1].ack()
    assert await feed.fetch(10, 0.1, no_wait=True) == []
    (back,) = await feed.fetch(10, 2.0)
    assert decode_timer(back.data).run_id == "r1" and back.attempts == 2
    await back.ack()
    await feed.stop()


# --- the engine's feed -----------------------------------------------------------------------


async def test_the_engine_feed_hands_out_every_event_in_stream_order(backend):
    store = backend.store
    seqs = [
        await store.append("r1", started("r1")),
        await store.append("r2", started("r2")),
        await store.append("r1", SignalReceived(at=2.0, name="go")),
    ]
    feed = await store.engine_feed()
    got = await fetch_all(feed)
    assert [d.seq for d in got] == seqs
    assert [d.delivery for d in got] == [got[0].delivery + i for i in range(3)]
    assert [d.attempts for d in got] == [1, 1, 1]
    assert [d.pending for d in got] == [2, 1, 0]
    assert [decode_recorded(d.subject, d.data).source for d in got] == ["e", "e", "e"]
    assert all(abs(d.queued_at - time.time()) < 30 for d in got)
    await got[0].nak()
    for d in got[1:]:
        await d.ack()
    (again,) = await feed.fetch(10, 2.0)
    assert again.seq == seqs[0] and again.attempts == 2 and again.delivery == got[-1].delivery + 1
    await again.ack()
    later = await store.append("r2", SignalReceived(at=3.0, name="more"))
    waiter = asyncio.create_task(feed.fetch(10, 2.0))
    assert [d.seq for d in await waiter] == [later]
    await feed.stop()


# --- the whole stack on MemoryStore ----------------------------------------------------------


async def test_the_engine_timers_and_a_worker_run_a_workflow_on_memory_alone():
    store = MemoryStore()
    worker = Worker(name="memory-worker")

    @worker.task("double")
    async def double(ctx):
        return ctx.input * 2

    wf = parse_definition(
        {
            "name": "m",
            "steps": [
                {"id": "a", "task": "double", "input": 21},
                {"id": "nap", "type": "sleep", "config": {"duration": "0.2s"}, "depends_on": ["a"]},
            ],
        }
    )
    version, _ = await store.register_workflow(wf, time.time())
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(Engine(store).run(stop)),
        asyncio.create_task(TimerService(store).run(stop)),
        asyncio.create_task(worker.run(store.with_source("w"), stop)),
    ]
    try:
        start = RunStarted(at=time.time(), run_id="m1", workflow="m", version=version, definition=wf)
        await store.with_source("o").append("m1", start, expected_last=0)
        deadline = time.monotonic() + 10
        while (state := await store.current_state("m1")) is None or not state.terminal:
            assert time.monotonic() < deadline, "the run did not end"
            await asyncio.sleep(0.02)
        assert state.status == "completed" and state.steps["a"].output == 42
        assert {b.kind for b in await store.heartbeats()} == {"worker"}
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)


# --- heartbeats ------------------------------------------------------------------------------


async def test_a_beating_process_is_listed_until_it_stops(backend):
    store = backend.store
    beat = store.beat("worker", "w@host:1", ["b", "a"], lambda: 3).start()
    deadline = time.monotonic() + 10
    while not (beats := await store.heartbeats()):
        assert time.monotonic() < deadline, "the heartbeat never showed"
        await asyncio.sleep(0.05)
    (seen,) = beats
    assert (seen.kind, seen.name, seen.tasks, seen.in_flight) == ("worker", "w@host:1", ["a", "b"], 3)
    await beat.stop()
    assert await store.heartbeats() == []


# --- NATS only: data from older versions (dagnats/nats/upgrade.py) ---------------------------


async def test_workflows_registered_before_the_latest_pointer_are_found_after_ensure(tmp_path):
    async with nats_connection(tmp_path) as nc:
        store = Store(nc)
        await store.ensure()
        for version in (1, 2):  # as an older version stored them: no `w.latest`
            record = WorkflowVersion(name="w", version=version, registered_at=1.0, definition=WF)
            await store._workflows.put(f"w.{version}", msgspec.json.encode(record))
        assert await store.latest_workflow("w") is None
        await Store(nc).ensure()
        assert (await Store(nc).get_workflow("w")).version == 2
        assert await store.register_workflow(WF, 2.0) == (2, False)
