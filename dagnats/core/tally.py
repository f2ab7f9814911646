"""Counts over a run's steps table, kept beside it so that a fold never scans it.

`tally(state)` says how many steps are busy or waiting and, for each map step, how many of
its items are completed or hold a slot, which ones failed and which are pending (smallest
index first). It is a pure function of `state.steps`: computed once by a scan when asked for
a table it has not seen, then carried along, O(1) per event, when `decide` replaces one step
(`moved`). A tally is held for the table it describes (by identity, with a reference to it,
so the id cannot be reused while held); the table it leaves behind loses it and is counted
again if asked (a fold that branches, e.g. a pass that lost an append race, pays one scan).

A tally is a cache, never part of a RunState: states compare, encode and decode as before,
and a state decoded from a snapshot is counted on first use.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterator, Mapping

from .state import BUSY, SLOT_PHASES, StepState, StepStatus, parent_of, step_phase

_HELD = 256  # tallies kept, most recently used last (one per run being folded is enough)


class MapTally:
    """One map step's items, counted."""

    __slots__ = ("count", "completed", "active", "failed", "pending", "_heap")

    def __init__(self, count: int) -> None:
        self.count = count
        self.completed = 0
        self.active = 0  # items holding a concurrency slot (queued, running, waiting)
        self.failed: set[int] = set()
        self.pending: set[int] = set()
        self._heap: list[int] = []  # pending indices, and some no longer pending (skipped)

    def add(self, index: int, step: StepState, sign: int) -> None:
        status = step.status
        if status == StepStatus.COMPLETED:
            self.completed += sign
        elif status == StepStatus.FAILED:
            (self.failed.add if sign > 0 else self.failed.discard)(index)
        elif status == StepStatus.PENDING:
            if sign > 0:
                self.pending.add(index)
                heapq.heappush(self._heap, index)
            else:
                self.pending.discard(index)
        if step_phase(step) in SLOT_PHASES:
            self.active += sign

    def copy(self) -> MapTally:
        twin = MapTally(self.count)
        twin.completed, twin.active = self.completed, self.active
        twin.failed, twin.pending, twin._heap = set(self.failed), set(self.pending), list(self._heap)
        return twin

    def pending_in_order(self) -> Iterator[int]:
        """The pending items, smallest index first, found as they are asked for (not sorted
        whole: the engine asks for the first one after every event). Read it before folding
        the next event: the tally is then carried over to the next table, in place."""
        heap, pending = self._heap, self.pending
        while heap and heap[0] not in pending:  # no longer pending: drop from the top
            heapq.heappop(heap)
        frontier = [(heap[0], 0)] if heap else []
        seen: set[int] = set()
        while frontier:
            index, at = heapq.heappop(frontier)
            for child in (2 * at + 1, 2 * at + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (heap[child], child))
            if index in pending and index not in seen:  # a retried item may be in the heap twice
                seen.add(index)
                yield index


class Tally:
    """The counts of one steps table (`steps`, held)."""

    __slots__ = ("steps", "busy", "waiting", "maps")

    def __init__(self, steps: Mapping[str, StepState]) -> None:
        self.steps = steps
        self.busy = 0
        self.waiting = 0
        self.maps: dict[str, MapTally] = {}
        for sid, step in steps.items():
            if step.items is not None:
                self.maps[sid] = MapTally(step.items)
        for sid, step in steps.items():
            self.add(sid, step, 1)

    def copy(self) -> Tally:
        twin = Tally({})
        twin.steps, twin.busy, twin.waiting = self.steps, self.busy, self.waiting
        twin.maps = {sid: m.copy() for sid, m in self.maps.items()}
        return twin

    def add(self, sid: str, step: StepState, sign: int) -> None:
        status = step.status
        if status in BUSY:
            self.busy += sign
        elif status == StepStatus.WAITING:
            self.waiting += sign
        owner = parent_of(sid)
        if owner is not None and owner in self.maps:
            self.maps[owner].add(int(sid[len(owner) + 1 : -1]), step, sign)


_tallies: OrderedDict[int, Tally] = OrderedDict()
_kept: OrderedDict[int, Tally] = OrderedDict()  # copies `keep` made, a few only (each holds a table)
_KEPT = 4


def tally(steps: Mapping[str, StepState]) -> Tally:
    """The counts of `steps` (a RunState's steps table)."""
    held = _tallies.get(id(steps))
    if held is not None and held.steps is steps:
        _tallies.move_to_end(id(steps))
        return held
    kept = _kept.pop(id(steps), None)
    if kept is not None and kept.steps is steps:
        _hold(kept)
        return kept
    counted = Tally(steps)
    _hold(counted)
    return counted


def keep(steps: Mapping[str, StepState]) -> None:
    """Keep a copy of the tally of `steps` for a fold that may start from it again: a pass
    decides a chain of events ahead of appending them, and starts again from the same state
    when another writer appended first. A copy costs a few set copies (done in C), a count
    a Python loop over every step."""
    twin = tally(steps).copy()
    _kept[id(steps)] = twin
    while len(_kept) > _KEPT:
        _kept.popitem(last=False)


def moved(old: Mapping[str, StepState], new: Mapping[str, StepState], sid: str) -> None:
    """`new` is `old` with step `sid` replaced (or added): carry old's tally over to new, if
    old has one; else new is counted when first asked for."""
    held = _tallies.pop(id(old), None)
    if held is None or held.steps is not old:
        held = _kept.pop(id(old), None)
    if held is None or held.steps is not old:
        return
    before = old.get(sid)
    if before is not None:
        held.add(sid, before, -1)
    held.add(sid, new[sid], 1)
    held.steps = new
    _hold(held)


def _hold(t: Tally) -> None:
    _tallies[id(t.steps)] = t
    while len(_tallies) > _HELD:
        _tallies.popitem(last=False)
