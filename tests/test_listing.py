"""Listing that does not grow with the finished runs: the newest snapshots read back in windows,
and the index of unfinished runs (what the engine keeps in it, how the sweep repairs it, how an
older data dir gets it). Behaviour only; `dagnats bench` measures the cost."""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dagnats.api.client import Client, RunSummary
from dagnats.app import bench_scale
from dagnats.core.state import RUN_TERMINAL
from dagnats.engine.loop import Engine
from dagnats.nats import listing, names
from dagnats.ports import ActiveRun
from dagnats.testing import MemoryStore

GATE = {
    "name": "gate",
    "steps": [
        {"id": "ok", "type": "approval", "config": {"prompt": "go?"}},
        {"id": "after", "task": "echo", "depends_on": ["ok"]},
    ],
}


async def until(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := await check():
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def newest_first(summaries: list[RunSummary]) -> list[str]:
    return [s.run_id for s in sorted(summaries, key=lambda s: (-s.created_at, s.run_id))]


async def everything(client: Client) -> list[RunSummary]:
    """The brute-force answer: every snapshot's summary."""
    return [s.summary for s in await client.store.all_snapshots()]


async def waiting_runs(client: Client, count: int) -> list[str]:
    ids = [await client.start("gate") for _ in range(count)]

    async def all_waiting() -> bool:
        return {p.run_id for p in await client.approvals()} >= set(ids)

    await until(all_waiting, "the runs waiting at their approval")
    return ids


async def one_waiting_one_done(stack: Any) -> tuple[str, str]:
    """Two runs of GATE: one waiting at its approval, one approved and finished."""
    await stack.start()
    await stack.register(GATE)
    client = stack.client
    [waiting] = await waiting_runs(client, 1)
    done = await client.start("gate")
    await until(lambda: _has_approval(client, done), "the second run waiting")
    await client.decide(done, "ok", approved=True)
    await asyncio.wait_for(client.wait(done), 20)
    return waiting, done


async def test_run_list_is_newest_first_with_limits_and_filters_across_windows(stack, monkeypatch):
    monkeypatch.setattr(listing, "FIRST_WINDOW", 4)  # many small windows
    monkeypatch.setattr(bench_scale, "CHUNK", 40)  # seeded runs created at several times
    await stack.start()
    await stack.register(GATE)
    client = stack.client
    old_waiting = await waiting_runs(client, 6)  # older than every finished run
    await bench_scale.seed_finished(client, 300)
    new_waiting = await waiting_runs(client, 3)
    stored = await everything(client)
    assert len(stored) == 309

    for status, workflow, limit in [
        (None, None, 50),
        (None, None, 5),
        (None, None, None),
        ("completed", None, 7),
        ("waiting", None, 8),
        (None, "gate", 4),
        (None, "gate", None),
        ("completed", "gate", 3),
    ]:
        want = [s for s in stored if status in (None, s.status) and workflow in (None, s.workflow)]
        got = await client.listing(status=status, workflow=workflow, limit=limit)
        assert [s.run_id for s in got.summaries] == newest_first(want)[:limit], (status, workflow, limit)
        assert got.older == (limit is not None and len(want) > limit), (status, workflow, limit)
    top = await client.runs(limit=3)
    assert {s.run_id for s in top} == set(new_waiting)
    waiting = await client.runs(status="waiting")
    assert {s.run_id for s in waiting} == set(old_waiting + new_waiting)


async def test_the_index_holds_unfinished_runs_and_their_approvals_only(stack):
    await stack.start()
    await stack.register(GATE)
    client = stack.client
    ids = await waiting_runs(client, 3)
    active = {e.summary.run_id: e for e in await client.store.active_runs() or []}
    assert set(active) == set(ids)
    assert all(
        e.summary.status == "waiting" and [a.step_id for a in e.approvals] == ["ok"] for e in active.values()
    )

    pending = await client.approvals()
    assert [p.run_id for p in pending] == sorted(ids, key=lambda r: active[r].approvals[0].requested_at)
    for p in pending:  # exactly what each run's own state says
        assert await client.approvals_of(p.run_id) == [p]

    await client.decide(ids[0], "ok", approved=True, digest=pending[0].digest)
    # read at once, before the engine saved anything: as fresh as the history
    assert ids[0] not in {p.run_id for p in await client.approvals()}
    await asyncio.wait_for(client.wait(ids[0]), 20)

    async def gone() -> bool:
        entries = await client.store.active_runs() or []
        return ids[0] not in {e.summary.run_id for e in entries}

    await until(gone, "the finished run leaving the index")
    assert {p.run_id for p in await client.approvals()} == set(ids[1:])
    # the entry's message itself is gone: the index stream holds the other runs and the mark
    info = await client.store.js.stream_info(names.ACTIVE_STREAM)
    assert info.state.messages == 3


async def test_the_start_up_sweep_repairs_stale_index_entries(stack):
    waiting, done = await one_waiting_one_done(stack)
    client, store = stack.client, stack.store
    finished, _ = await store.load_snapshot(done)
    assert finished is not None and finished.state is not None
    # As a crash could leave them: a finished run still listed, an unfinished one listed wrong.
    before = (await store.load_snapshot(waiting))[0]
    assert before is not None
    await store.save_active(ActiveRun(finished.applied, _with(finished.summary, status="running")))
    await store.save_active(ActiveRun(before.applied, _with(before.summary, status="running")))
    assert {p.run_id for p in await client.approvals()} == set()  # the stale entry lists no approval

    stop = asyncio.Event()
    engine = asyncio.create_task(Engine(store).run(stop))  # a second engine starting: its sweep
    try:

        async def repaired() -> bool:
            entries = {e.summary.run_id: e for e in await store.active_runs() or []}
            return set(entries) == {waiting} and entries[waiting].summary.status == "waiting"

        await until(repaired, "the sweep repairing the index")
    finally:
        stop.set()
        await asyncio.wait_for(engine, 10)
    assert [p.run_id for p in await client.approvals()] == [waiting]


async def test_an_old_data_dir_without_the_index_keeps_working_and_gets_it(stack):
    waiting, done = await one_waiting_one_done(stack)
    client = stack.client
    await stack.store.js.delete_stream(names.ACTIVE_STREAM)  # as a data dir from before the index

    assert await client.store.active_runs() is None
    assert [p.run_id for p in await client.approvals()] == [waiting]  # read from every snapshot
    assert [s.run_id for s in await client.runs(status="waiting")] == [waiting]

    await stack.store.ensure()  # what `dagnats serve` does at start: the upgrade builds it
    entries = await client.store.active_runs()
    assert entries is not None and [e.summary.run_id for e in entries] == [waiting]
    assert [p.run_id for p in await client.approvals()] == [waiting]
    await stack.store.ensure()  # built once: a second start changes nothing
    assert [e.summary.run_id for e in await client.store.active_runs() or []] == [waiting]


async def _has_approval(client: Client, run_id: str) -> bool:
    return bool(await client.approvals_of(run_id))


def _console_data() -> Any:
    """tests/console/console_data.py, by its path (tests/ is not a package, and the checkout
    is not on sys.path when dagnats is installed from it, as CI does)."""
    path = Path(__file__).parent / "console" / "console_data.py"
    spec = importlib.util.spec_from_file_location("console_data", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _with(summary: RunSummary, **changes: Any) -> RunSummary:
    import msgspec

    return msgspec.structs.replace(summary, **changes)


@pytest.mark.parametrize("limit", [None, 2])
async def test_the_memory_store_lists_and_indexes_as_the_nats_store(limit):
    Sim = _console_data().Sim

    store = MemoryStore()
    sims = [Sim(GATE, f"r{i}", at=1000.0 + i) for i in range(4)]
    for i, sim in enumerate(sims):
        await store.save_snapshot(i + 1, sim.st, 0)
    got = await store.newest_runs(limit, lambda s: s.run_id != "r3")
    assert [s.run_id for s in got.summaries] == ["r2", "r1", "r0"][:limit]
    assert got.older == (limit is not None)
    entry = ActiveRun.of(1, sims[0].st)
    assert entry.summary.status not in RUN_TERMINAL and entry.approvals
    await store.save_active(entry)
    assert await store.active_runs() == [entry]
    await store.drop_active("r0")
    assert await store.active_runs() == []


async def test_run_list_by_status_goes_by_the_history_when_an_index_entry_lags(stack):
    """An index entry older than its run's history (an engine that raced another, or died
    before it removed a finished run's entry) is not taken at its word by `run list --status`."""
    waiting, done = await one_waiting_one_done(stack)
    client, store = stack.client, stack.store
    finished = (await store.load_snapshot(done))[0]
    before = (await store.load_snapshot(waiting))[0]
    assert finished is not None and before is not None
    await store.save_active(ActiveRun(finished.applied - 1, _with(finished.summary, status="running")))
    await store.save_active(ActiveRun(before.applied - 1, _with(before.summary, status="running")))
    assert [s.run_id for s in await client.runs(status="waiting")] == [waiting]
    assert [s.run_id for s in await client.runs(status="running")] == []
