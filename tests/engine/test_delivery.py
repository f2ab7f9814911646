"""Delivery epochs, and when the engine may fold the messages it was handed instead of reading the run's tail."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dagnats.engine.delivery import DeliveryTracker, by_run, delivered_tail, starts_run
from dagnats.nats import names


def msg(seq: int) -> SimpleNamespace:
    return SimpleNamespace(seq=seq)


@pytest.mark.parametrize(
    ("applied", "seqs", "usable"),
    [
        (10, [11], True),  # the very next message of the whole stream
        (10, [12, 11, 13], True),  # contiguous, in any order
        (10, [12], False),  # stream message 11 may belong to this run
        (10, [11, 13], False),  # a gap inside
        (0, [1], False),  # nothing folded yet: read the history
        (10, [], False),
    ],
)
def test_delivered_messages_are_used_only_without_gaps(applied, seqs, usable):
    result = delivered_tail([msg(s) for s in seqs], applied)
    if usable:
        assert [m.seq for m in result] == sorted(seqs)
    else:
        assert result is None


def test_a_complete_state_takes_every_delivered_message_newer_than_it():
    result = delivered_tail([msg(14), msg(12), msg(9)], 10, complete=True)
    assert result is not None and [m.seq for m in result] == [12, 14]


def test_a_run_started_is_recognised_from_its_first_bytes():
    """The engine spots a new run's first event without decoding it (see delivery.starts_run)."""
    from dagnats.core.definition import parse_definition
    from dagnats.core.events import RunStarted, StepQueued, encode_event

    wf = parse_definition({"name": "w", "steps": [{"id": "a", "task": "echo"}]})
    started = RunStarted(at=1.0, run_id="r1", workflow="w", version=1, definition=wf)

    def delivered(event, seq):
        return SimpleNamespace(data=encode_event(event), seq=seq)

    queued = StepQueued(at=1.0, step_id="a", attempt=1)
    assert starts_run([delivered(queued, 8), delivered(started, 7)])
    assert not starts_run([delivered(queued, 7)]) and not starts_run([])


def test_messages_are_grouped_by_run_in_delivery_order():
    msgs = [
        SimpleNamespace(subject=names.history_subject(run, "e"), seq=seq)
        for run, seq in [("r1", 1), ("r2", 2), ("r1", 3)]
    ]
    grouped = by_run(msgs)
    assert {run: [m.seq for m in ms] for run, ms in grouped.items()} == {"r1": [1, 3], "r2": [2]}


def fetched(delivery: int, attempts: int = 1) -> SimpleNamespace:
    return SimpleNamespace(delivery=delivery, attempts=attempts)


def test_consecutive_first_deliveries_stay_in_one_epoch():
    tracker = DeliveryTracker()
    assert tracker.track([fetched(1), fetched(2)]) == 0
    assert tracker.track([fetched(3)]) == 0
    assert tracker.epoch == 0 and tracker.live and tracker.reading() == 0


def test_a_gap_in_consumer_sequences_starts_an_epoch_at_the_gap():
    """Another engine took deliveries 3 and 4 (or they were lost): from 5 on is a new epoch."""
    tracker = DeliveryTracker()
    tracker.track([fetched(1), fetched(2)])
    assert tracker.track([fetched(5), fetched(6)]) == 0
    assert tracker.epoch == 1
    assert tracker.track([fetched(7), fetched(9), fetched(10)]) == 1
    assert tracker.epoch == 2 and tracker.live


def test_a_redelivery_starts_an_epoch_after_it():
    """A redelivered message may have missed its place in stream order: it and all before it
    belong to no epoch a run can be complete in, and reads wait for the next first delivery."""
    tracker = DeliveryTracker()
    tracker.track([fetched(1)])
    assert tracker.track([fetched(2), fetched(3, attempts=2)]) == 2
    assert tracker.epoch == 1 and not tracker.live and tracker.reading() == -1
    assert tracker.track([fetched(4)]) == 0
    assert tracker.epoch == 1 and tracker.reading() == 1


def test_broken_delivery_trusts_nothing_cached():
    tracker = DeliveryTracker()
    tracker.track([fetched(1)])
    tracker.broken()
    assert tracker.epoch == 1 and tracker.reading() == -1
    assert tracker.track([fetched(7)]) == 0  # no sequence expected: no gap
    assert tracker.epoch == 1 and tracker.reading() == 1
