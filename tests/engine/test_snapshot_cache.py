"""The engine's state cache: loads, compare-and-set saves, saves delayed while listing shows nothing new."""

from __future__ import annotations

import asyncio

import msgspec

from dagnats.core.decide import fold
from dagnats.core.definition import parse_definition
from dagnats.core.events import RunCancelRequested, RunStarted, StepQueued
from dagnats.core.state import RunState
from dagnats.engine.cache import Cached, SnapshotCache, shows_news
from dagnats.ports import ActiveRun, RunSummary, Snapshot

WF = parse_definition({"name": "w", "steps": [{"id": "a", "task": "echo"}]})


def started(run_id: str = "r1") -> RunState:
    state = fold(None, RunStarted(at=1.0, run_id=run_id, workflow="w", version=1, definition=WF))
    assert state is not None
    return state


def queued(state: RunState) -> RunState:
    new = fold(state, StepQueued(at=2.0, step_id="a", attempt=1))
    assert new is not state and new.status == state.status
    return new


class Snapshots:
    """Snapshots in a dict, compare-and-set on a revision per run."""

    def __init__(self) -> None:
        self.stored: dict[str, tuple[Snapshot, int]] = {}
        self.revision = 0
        self.saves: list[tuple[str, int]] = []  # (run, applied) of each successful save
        self.active: dict[str, ActiveRun] = {}  # the index of unfinished runs

    async def load_snapshot(self, run_id: str) -> tuple[Snapshot | None, int]:
        return self.stored.get(run_id, (None, 0))

    async def save_snapshot(self, applied: int, state: RunState, revision: int) -> int | None:
        if self.stored.get(state.run_id, (None, 0))[1] != revision:
            return None
        self.revision += 1
        snap = Snapshot(applied=applied, summary=RunSummary.of(state), state=state)
        self.stored[state.run_id] = (snap, self.revision)
        self.saves.append((state.run_id, applied))
        return self.revision

    async def save_active(self, entry: ActiveRun) -> None:
        self.active[entry.summary.run_id] = entry

    async def drop_active(self, run_id: str) -> None:
        self.active.pop(run_id, None)


def cache_over(store: Snapshots, due: list[str] | None = None, size: int = 4096) -> SnapshotCache:
    return SnapshotCache(store, (due if due is not None else []).append, size)  # type: ignore[arg-type]


async def test_a_run_without_a_snapshot_starts_empty_and_a_new_one_is_saved_at_once():
    store = Snapshots()
    cache = cache_over(store)
    cached = await cache.load("r1")
    assert (cached.state, cached.applied, cached.revision) == (None, 0, 0)
    await cache.save("r1", cached, started(), 1, epoch=3)
    assert store.saves == [("r1", 1)]
    entry = cache.peek("r1")
    assert entry is not None and (entry.applied, entry.saved_applied, entry.epoch) == (1, 1, 3)
    assert await cache.load("r1") is entry  # from memory now


async def test_progress_alone_is_saved_a_moment_later_on_the_runs_job():
    store, due = Snapshots(), []
    cache = cache_over(store, due)
    await cache.save("r1", await cache.load("r1"), started(), 1, epoch=0)
    first = cache.peek("r1")
    assert first is not None
    state = queued(started())
    await cache.save("r1", first, state, 2, epoch=0)
    await cache.save("r1", first, state, 3, epoch=0)  # one delayed save, whatever comes meanwhile
    assert store.saves == [("r1", 1)]
    async with asyncio.timeout(2):
        while not due:
            await asyncio.sleep(0.01)
    assert due == ["r1"]
    await cache.flush("r1")  # what the run's job does when handed the due save
    assert store.saves == [("r1", 1), ("r1", 3)]
    await cache.flush("r1")  # nothing newer: no write
    assert len(store.saves) == 2


async def test_stopping_saves_what_is_only_in_memory():
    store, due = Snapshots(), []
    cache = cache_over(store, due)
    await cache.save("r1", await cache.load("r1"), started(), 1, epoch=0)
    first = cache.peek("r1")
    assert first is not None
    await cache.save("r1", first, queued(started()), 2, epoch=0)
    await cache.flush_all()
    assert store.saves == [("r1", 1), ("r1", 2)]
    await asyncio.sleep(0)
    assert due == []  # its delayed save was cancelled


async def test_a_pass_that_folded_nothing_new_keeps_the_entry_and_the_better_epoch():
    store = Snapshots()
    cache = cache_over(store)
    await cache.save("r1", await cache.load("r1"), started(), 5, epoch=1)
    entry = cache.peek("r1")
    assert entry is not None
    await cache.save("r1", entry, started(), 5, epoch=4)
    assert cache.peek("r1") is entry and entry.epoch == 4 and store.saves == [("r1", 5)]


async def test_an_engine_ahead_wins_the_compare_and_set_and_the_entry_is_given_up():
    store = Snapshots()
    cache = cache_over(store)
    stale = await cache.load("r1")
    theirs = started()
    await store.save_snapshot(9, theirs, 0)  # another engine saved meanwhile, further along
    cancelled = fold(theirs, RunCancelRequested(at=3.0, reason="x", by="cli"))
    assert cancelled is not None
    await cache.save("r1", stale, cancelled, 4, epoch=0)
    assert cache.peek("r1") is None  # reload next time
    assert store.stored["r1"][0].applied == 9


async def test_a_lost_compare_and_set_behind_us_is_retried_on_the_new_revision():
    store = Snapshots()
    cache = cache_over(store)
    stale = await cache.load("r1")
    await store.save_snapshot(2, started(), 0)  # someone saved an older state meanwhile
    await cache.save("r1", stale, started(), 6, epoch=0)
    assert store.stored["r1"][0].applied == 6 and cache.peek("r1") is not None


async def test_the_least_recently_used_run_leaves_the_cache_first():
    store = Snapshots()
    cache = cache_over(store, size=2)
    for run in ("a", "b"):
        await cache.save(run, await cache.load(run), started(run), 1, epoch=0)
    await cache.load("a")  # used again: "b" is now the oldest
    await cache.save("c", await cache.load("c"), started("c"), 1, epoch=0)
    assert cache.peek("a") is not None and cache.peek("c") is not None and cache.peek("b") is None
    cache.clear()
    assert cache.peek("a") is None


def test_listing_shows_news_when_a_run_appears_or_changes_status():
    state = started()
    assert shows_news(None, state)
    assert not shows_news(state, queued(state))
    cancelled = fold(state, RunCancelRequested(at=3.0, reason="x", by="cli"))
    assert cancelled is not None and cancelled.status != state.status
    assert shows_news(state, cancelled)


def test_an_entry_is_complete_in_no_epoch_unless_told():
    assert Cached(state=None, applied=0, revision=0).epoch == -1


async def test_an_unfinished_run_is_indexed_with_its_snapshot_and_leaves_the_index_when_it_ends():
    store = Snapshots()
    cache = cache_over(store)
    state = started()
    await cache.save("r1", await cache.load("r1"), state, 1, epoch=0)
    assert store.active["r1"] == ActiveRun.of(1, state)
    cancelled = fold(state, RunCancelRequested(at=3.0, reason="x", by="cli"))
    assert cancelled is not None and cancelled.terminal
    await cache.save("r1", await cache.load("r1"), cancelled, 2, epoch=0)
    assert store.stored["r1"][0].applied == 2 and "r1" not in store.active


async def test_the_sweeps_repair_makes_an_entry_say_what_the_state_says():
    store = Snapshots()
    cache = cache_over(store)
    state = started()
    await cache.save("r1", await cache.load("r1"), state, 1, epoch=0)
    stale = ActiveRun(1, msgspec.structs.replace(RunSummary.of(state), status="waiting"))
    store.active["r1"] = stale
    await cache.repair("r1", stale)
    assert store.active["r1"] == ActiveRun.of(1, state)
    cancelled = fold(state, RunCancelRequested(at=3.0, reason="x", by="cli"))
    assert cancelled is not None
    cache.forget("r1")
    await store.save_snapshot(2, cancelled, store.stored["r1"][1])  # finished; entry left behind
    loaded = await cache.load("r1")  # the sweep's pass: nothing new to fold
    assert loaded.state is not None
    await cache.save("r1", loaded, loaded.state, loaded.applied, epoch=0)
    await cache.repair("r1", store.active["r1"])
    assert "r1" not in store.active
