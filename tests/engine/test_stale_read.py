"""A history read answered by a replica behind the leader (a cluster: direct gets are served by
every replica) must not make a pass acknowledge a delivery it never folded."""

from __future__ import annotations

import pytest

from dagnats.core.definition import parse_definition
from dagnats.core.events import Event, RunStarted, StepCompleted, StepQueued
from dagnats.engine.delivery import DeliveryTracker
from dagnats.engine.passes import Pass, Recorder, StaleRead

CHAIN = parse_definition(
    {
        "name": "chain",
        "steps": [{"id": "a", "task": "echo"}, {"id": "b", "task": "echo", "depends_on": ["a"]}],
    }
)


class LaggingLog:
    """One run's history; the first `stale_reads` reads miss its newest event (a follower that
    has not applied it yet)."""

    atomic_batches = False

    def __init__(self, events: list[Event], stale_reads: int) -> None:
        self.events = list(events)
        self.stale_reads = stale_reads
        self.reads = 0

    async def read_history(self, run_id: str, after: int = 0) -> list[tuple[int, Event]]:
        self.reads += 1
        visible = self.events[:-1] if self.reads <= self.stale_reads else self.events
        return [(seq, e) for seq, e in enumerate(visible, 1) if seq > after]

    async def append(
        self, run_id: str, event: Event, *, expected_last: int | None = None, **_: object
    ) -> int:
        self.events.append(event)
        return len(self.events)


def history() -> list[Event]:
    return [
        RunStarted(at=1.0, run_id="r1", workflow="chain", version=1, definition=CHAIN, input=None),
        StepQueued(at=1.0, step_id="a", attempt=1, input=None),
        StepCompleted(at=2.0, step_id="a", attempt=1, output={"x": 1}),  # #3, the delivery
    ]


async def test_a_tail_read_behind_the_delivery_is_read_again_until_it_holds_it():
    log = LaggingLog(history(), stale_reads=2)
    pass_ = Pass(None, 0, -1)
    await Recorder(log, DeliveryTracker()).advance("r1", pass_, None, seen=3)
    assert pass_.last >= 3 and log.reads == 3
    queued = [e for e in log.events[3:] if isinstance(e, StepQueued)]
    assert [e.step_id for e in queued] == ["b"]  # the run went on


async def test_a_tail_that_never_reaches_the_delivery_fails_the_pass():
    log = LaggingLog(history(), stale_reads=100)
    with pytest.raises(StaleRead):
        await Recorder(log, DeliveryTracker()).advance("r1", Pass(None, 0, -1), None, seen=3)
    assert len(log.events) == 3  # nothing recorded from a state without the delivered event
