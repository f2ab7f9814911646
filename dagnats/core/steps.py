"""A big run's steps table, shared between the states a fold makes instead of copied.

RunState is immutable, so an event that changes one step used to copy the whole table: a
C-speed copy, but of every step, after every event; a map over 10,000 items made each of
its 20,000 events copy 10,000 entries. `Steps` is a read-only mapping made of a shared `base`
dict and a small dict of the steps changed since (`over`); replacing a step copies `over`
only, and when `over` has grown to about the square root of the table it is merged into a
new base (so a change costs O(sqrt n) entries copied, in C, amortized). Small tables (under
SHARED_FROM steps) stay plain dicts, as before.

It reads as the dict it stands for: the same keys in the same order (a replaced step keeps
its place, a new one comes last), equal to that dict. It is not encoded as such by msgspec:
`encodable` gives a state to encode (the engine's snapshot saving uses it).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from math import isqrt
from typing import Any

import msgspec

from .state import RunState, StepState

SHARED_FROM = 512  # steps in a table from which it is shared rather than copied
_MIN_OVER = 64


class Steps(Mapping[str, StepState]):
    __slots__ = ("_base", "_over", "_len")

    def __init__(self, base: dict[str, StepState], over: dict[str, StepState], length: int) -> None:
        self._base = base  # never changed once here: other states hold it too
        self._over = over
        self._len = length

    def __getitem__(self, sid: str) -> StepState:
        found = self._over.get(sid)
        return self._base[sid] if found is None else found

    def get(self, sid: str, default: Any = None) -> Any:
        found = self._over.get(sid)
        return self._base.get(sid, default) if found is None else found

    def __contains__(self, sid: object) -> bool:
        return sid in self._over or sid in self._base

    def __iter__(self) -> Iterator[str]:
        yield from self._base
        base = self._base
        yield from (sid for sid in self._over if sid not in base)

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return f"Steps({plain(self)!r})"

    def replaced(self, sid: str, step: StepState) -> Steps:
        """This table with `sid` set to `step`."""
        over = dict(self._over)
        over[sid] = step
        length = self._len if sid in self else self._len + 1
        if len(over) > max(_MIN_OVER, isqrt(length)):
            return Steps({**self._base, **over}, {}, length)
        return Steps(self._base, over, length)


def with_step(steps: Mapping[str, StepState], sid: str, step: StepState) -> Mapping[str, StepState]:
    """`steps` with `sid` set to `step`, the input left as it was."""
    if isinstance(steps, Steps):
        return steps.replaced(sid, step)
    if len(steps) < SHARED_FROM:
        copied = dict(steps)
        copied[sid] = step
        return copied
    base = steps if isinstance(steps, dict) else dict(steps)
    return Steps(base, {}, len(base)).replaced(sid, step)


def plain(steps: Mapping[str, StepState]) -> dict[str, StepState]:
    """The table as a dict (itself, if it is one)."""
    if isinstance(steps, Steps):
        return {**steps._base, **steps._over}
    return steps if isinstance(steps, dict) else dict(steps)


def encodable(state: RunState) -> RunState:
    """`state` with its steps as a dict, for msgspec to encode (a snapshot)."""
    if isinstance(state.steps, Steps):
        return msgspec.structs.replace(state, steps=plain(state.steps))
    return state
