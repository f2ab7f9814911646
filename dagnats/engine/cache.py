"""The engine's cache of run states, and how it saves them as snapshots (compare-and-set, some a moment later)."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from dagnats.core.state import RUN_TERMINAL, RunState
from dagnats.core.steps import encodable
from dagnats.ports import ActiveRun, Snapshot, Snapshots

log = logging.getLogger("dagnats.engine.cache")
CACHE_SIZE = 4096
SAVE_DELAY = 0.5  # seconds a run's newer state may wait in memory while listing shows nothing new


@dataclass
class Cached:
    state: RunState | None
    applied: int  # last history sequence folded into state
    revision: int  # KV revision of the stored snapshot
    saved: RunState | None = None  # the state that snapshot holds
    saved_applied: int = 0
    epoch: int = -1  # the delivery epoch in which `state` is known to miss no event (see DeliveryTracker)


class SnapshotCache:
    """The last CACHE_SIZE runs' states (least recently used first out), each with the snapshot
    it was loaded from or saved as. A newer state is saved at once when listing would show news,
    else SAVE_DELAY later through `on_due(run_id)`, which must call `flush` on the run's job."""

    def __init__(self, store: Snapshots, on_due: Callable[[str], None], size: int = CACHE_SIZE) -> None:
        self.store = store
        self._on_due = on_due
        self._size = size
        self._entries: OrderedDict[str, Cached] = OrderedDict()
        self._due: dict[str, asyncio.TimerHandle] = {}  # runs whose snapshot is saved soon

    def peek(self, run_id: str) -> Cached | None:
        """The run's entry, if cached (its place in the LRU order unchanged)."""
        return self._entries.get(run_id)

    def forget(self, run_id: str) -> None:
        self._entries.pop(run_id, None)

    def clear(self) -> None:
        """Forget every state (as a restarted engine would); saves already due find nothing."""
        self._entries.clear()

    async def load(self, run_id: str) -> Cached:
        """The run's entry: cached, else from its snapshot (an empty one if it has none usable)."""
        cached = self._entries.get(run_id)
        if cached is not None:
            self._entries.move_to_end(run_id)
            return cached
        snap, revision = await self.store.load_snapshot(run_id)
        if snap is None or snap.state is None:  # no snapshot, or one too big to hold the state
            return Cached(state=None, applied=0, revision=revision)
        return Cached(snap.state, snap.applied, revision, saved=snap.state, saved_applied=snap.applied)

    async def save(self, run_id: str, cached: Cached, state: RunState, last: int, epoch: int) -> None:
        """Remember the run's state after a pass that started from `cached`; save it now or soon."""
        if last <= cached.applied and cached.state is not None:
            cached.epoch = max(cached.epoch, epoch)
            self._remember(run_id, cached)
            return
        entry = Cached(state, last, cached.revision, cached.saved, cached.saved_applied, epoch)
        self._remember(run_id, entry)
        if shows_news(cached.saved, state):
            await self._write(run_id, entry)
        elif run_id not in self._due:
            # The snapshot is only a cache: what listing shows did not change, so the state
            # waits in memory and is saved once, a moment later, whatever happens meanwhile.
            loop = asyncio.get_running_loop()
            self._due[run_id] = loop.call_later(SAVE_DELAY, self._flush_soon, run_id)

    async def flush(self, run_id: str) -> None:
        """Save the run's state if it is newer than its snapshot (failures are only logged)."""
        try:
            entry = self._entries.get(run_id)
            if entry is not None and entry.state is not None and entry.applied > entry.saved_applied:
                await self._write(run_id, entry)
        except Exception as exc:  # the history still has everything; the next pass saves
            log.warning("run %s: saving the snapshot failed: %r", run_id, exc)

    async def flush_all(self) -> None:
        """Save now every state whose save was due later (what is only in memory)."""
        for run_id, handle in list(self._due.items()):
            handle.cancel()
            self._due.pop(run_id, None)
            await self.flush(run_id)

    def _flush_soon(self, run_id: str) -> None:
        self._due.pop(run_id, None)
        self._on_due(run_id)

    async def _write(self, run_id: str, entry: Cached) -> None:
        """Save the entry's state with compare-and-set, and its entry in the index of unfinished
        runs: an unfinished run's together with the snapshot (both before any of its messages
        is acked, so the start-up sweep finds every run with unfinished business), a finished
        run's removed once its final snapshot is saved. Give up the entry if another engine is
        ahead, and index what that engine saved."""
        state = entry.state
        assert state is not None
        was_finished = entry.saved is not None and entry.saved.terminal
        if state.terminal:
            theirs = await self._save(run_id, entry)
        else:
            theirs, _ = await asyncio.gather(
                self._save(run_id, entry), self.store.save_active(ActiveRun.of(entry.applied, state))
            )
        if theirs is not None and not state.terminal:  # our index entry may have landed after theirs
            await self._index(theirs)
        elif state.terminal and not was_finished and run_id in self._entries:
            await self.store.drop_active(run_id)

    async def _save(self, run_id: str, entry: Cached) -> Snapshot | None:
        """The compare-and-set itself; the newer snapshot found instead, if another engine is ahead."""
        assert entry.state is not None
        revision = entry.revision
        for _ in range(5):
            new_rev = await self.store.save_snapshot(entry.applied, encodable(entry.state), revision)
            if new_rev is not None:
                entry.revision, entry.saved, entry.saved_applied = new_rev, entry.state, entry.applied
                return None
            theirs, revision = await self.store.load_snapshot(run_id)
            if theirs is not None and theirs.applied >= entry.applied:
                self._entries.pop(run_id, None)  # another engine is ahead; reload next time
                return theirs
        self._entries.pop(run_id, None)
        return None

    async def _index(self, snap: Snapshot) -> None:
        """Index a run as the snapshot another engine saved says (ours may have landed after)."""
        if snap.summary.status in RUN_TERMINAL:
            await self.store.drop_active(snap.summary.run_id)
        elif snap.state is not None:
            await self.store.save_active(ActiveRun.of(snap.applied, snap.state))

    async def reindex(self, run_id: str, entry: Cached) -> None:
        """Write the run's index entry as its loaded state says, for a pass with nothing to fold
        (messages handed out again that the snapshot covers): the engine that saved that
        snapshot may have died before its index entry was written or dropped."""
        if entry.state is None:
            return
        if entry.state.terminal:
            await self.store.drop_active(run_id)
        else:
            await self.store.save_active(ActiveRun.of(entry.applied, entry.state))

    async def repair(self, run_id: str, listed: ActiveRun) -> None:
        """After the start-up sweep's pass over a run the index lists: make its entry say what
        the run's state says (a crash or a race may have left it stale), or remove it if the
        run has finished. A run whose pass failed keeps its entry for the next start."""
        entry = self._entries.get(run_id)
        if entry is None or entry.state is None:
            return
        if entry.state.terminal:
            await self.store.drop_active(run_id)
            return
        now = ActiveRun.of(entry.applied, entry.state)
        if not now.same_listing(listed):
            await self.store.save_active(now)

    def _remember(self, run_id: str, cached: Cached) -> None:
        self._entries[run_id] = cached
        self._entries.move_to_end(run_id)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)


def shows_news(saved: RunState | None, state: RunState) -> bool:
    """Whether listing the run would show something new: it appears, changes status, or starts,
    stops or changes what it waits for an operator to decide. Progress alone (steps done) is
    saved within SAVE_DELAY."""
    return saved is None or state.status != saved.status or _asks(state) != _asks(saved)


def _asks(state: RunState) -> list[tuple[str, str]]:
    """What the run asks of an operator: its pending approvals, as the index lists them."""
    return [(a.approval_id, a.digest) for a in state.pending_approvals()]
