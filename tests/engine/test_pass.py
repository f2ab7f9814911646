"""One run's pass: folding, recording what the core asks for (in batches, after lost races), and its due effects."""

from __future__ import annotations

from types import SimpleNamespace

from dagnats.core.actions import DispatchTask
from dagnats.core.definition import parse_definition
from dagnats.core.events import (
    Event,
    RunStarted,
    SignalReceived,
    StepCompleted,
    StepFailed,
    StepQueued,
    encode_event,
)
from dagnats.engine.delivery import DeliveryTracker
from dagnats.engine.passes import Pass, Recorder
from dagnats.nats import names
from dagnats.ports import BatchUnsupported, Conflict, TooLarge

FAN = parse_definition(
    {
        "name": "fan",
        "steps": [
            {"id": "a", "task": "echo"},
            {"id": "b", "task": "echo"},
            {"id": "c", "task": "echo", "depends_on": ["a", "b"]},
        ],
    }
)


def run_started(input: object = None) -> RunStarted:
    return RunStarted(at=1.0, run_id="r1", workflow="fan", version=1, definition=FAN, input=input)


class Log:
    """An event log in a list: one sequence over all runs, optimistic appends per run."""

    def __init__(self, *, atomic: bool = True, limit: int | None = None) -> None:
        self.atomic_batches = atomic
        self.limit = limit  # encoded size above which an event is TooLarge
        self.events: list[tuple[str, int, Event]] = []
        self.reads = 0
        self.batches = 0

    def last(self, run_id: str) -> int:
        return max((seq for run, seq, _ in self.events if run == run_id), default=0)

    def of(self, run_id: str = "r1") -> list[Event]:
        return [e for run, _, e in self.events if run == run_id]

    def _check(self, run_id: str, event: Event, expected_last: int | None) -> None:
        if self.limit is not None and len(encode_event(event)) > self.limit:
            raise TooLarge(len(encode_event(event)))
        if expected_last is not None and self.last(run_id) != expected_last:
            raise Conflict(run_id)

    async def append(
        self, run_id: str, event: Event, *, expected_last: int | None = None, msg_id: str | None = None
    ) -> int:
        self._check(run_id, event, expected_last)
        self.events.append((run_id, len(self.events) + 1, event))
        return len(self.events)

    async def append_batch(self, run_id: str, events: list[Event], *, expected_last: int) -> list[int]:
        if not self.atomic_batches:
            raise BatchUnsupported("not here")
        self._check(run_id, events[0], expected_last)
        self.batches += 1
        return [await self.append(run_id, e) for e in events]

    async def read_history(self, run_id: str, after: int = 0) -> list[tuple[int, Event]]:
        self.reads += 1
        return [(seq, e) for run, seq, e in self.events if run == run_id and seq > after]


def kinds(events: list[Event]) -> list[str]:
    return [f"{type(e).__name__}:{getattr(e, 'step_id', '')}" for e in events]


async def test_a_new_run_records_its_fan_out_as_one_batch_and_dispatches_each_step_once():
    log = Log()
    await log.append("r1", run_started())
    pass_ = Pass(None, 0, -1)
    await Recorder(log, DeliveryTracker()).advance("r1", pass_, None)
    assert kinds(log.of()) == ["RunStarted:", "StepQueued:a", "StepQueued:b"]
    assert log.batches == 1 and pass_.last == 3 and pass_.folded == 3
    due = pass_.due()
    assert [(a.step_id, a.recheck) for _, a in due if isinstance(a, DispatchTask)] == [
        ("a", False),
        ("b", False),
    ]
    assert pass_.due() == []  # handed out once


async def test_without_atomic_batches_events_are_appended_one_at_a_time():
    log = Log(atomic=False)
    await log.append("r1", run_started())
    recorder = Recorder(log, DeliveryTracker())
    assert not recorder.batching
    await recorder.advance("r1", Pass(None, 0, -1), None)
    assert kinds(log.of()) == ["RunStarted:", "StepQueued:a", "StepQueued:b"] and log.batches == 0


async def test_a_store_that_refuses_a_batch_turns_batching_off():
    log = Log()
    await log.append("r1", run_started())
    recorder = Recorder(log, DeliveryTracker())
    log.atomic_batches = False  # the stream cannot do them after all
    await recorder.advance("r1", Pass(None, 0, -1), None)
    assert not recorder.batching
    assert kinds(log.of()) == ["RunStarted:", "StepQueued:a", "StepQueued:b"]


async def test_a_lost_race_reads_the_tail_and_records_only_what_is_still_missing():
    log = Log()
    await log.append("r1", run_started())
    pass_ = Pass(None, 0, -1)
    pass_.apply(run_started(), 1)  # what this pass folded before another engine appended
    await log.append("r1", StepQueued(at=1.0, step_id="a", attempt=1))
    await Recorder(log, DeliveryTracker()).advance("r1", pass_, [])
    assert kinds(log.of()) == ["RunStarted:", "StepQueued:a", "StepQueued:b"]
    dispatched = [(a.step_id, a.recheck) for _, a in pass_.due() if isinstance(a, DispatchTask)]
    assert dispatched == [("a", True), ("b", False)]  # the other engine's event: its worker checks


async def test_delivered_events_are_folded_without_reading_the_history():
    log = Log()
    seq = await log.append("r1", run_started())
    delivered = SimpleNamespace(
        subject=names.history_subject("r1", names.SOURCE_ENGINE), data=encode_event(run_started()), seq=seq
    )
    pass_ = Pass(None, 0, -1)
    await Recorder(log, DeliveryTracker()).advance("r1", pass_, [delivered])
    assert log.reads == 0 and kinds(log.of())[1:] == ["StepQueued:a", "StepQueued:b"]
    assert pass_.state is not None and pass_.state.run_id == "r1"


async def test_an_event_too_large_to_record_is_replaced_by_the_failure_it_causes():
    log = Log(atomic=False, limit=2000)
    await log.append("r1", run_started())
    pass_ = Pass(None, 0, -1)
    pass_.apply(run_started(), 1)
    big = StepQueued(at=1.0, step_id="a", attempt=1, input="x" * 5000)
    pass_.next = [big]
    await Recorder(log, DeliveryTracker()).advance("r1", pass_, [])
    failed = [e for e in log.of() if isinstance(e, StepFailed)]
    assert failed and failed[0].step_id == "a" and not failed[0].retryable
    assert "exceeds the message limit" in failed[0].error


def test_an_illegal_event_is_skipped_but_counted_as_read():
    pass_ = Pass(None, 0, -1)
    pass_.apply(run_started(), 1)
    state = pass_.state
    pass_.apply(StepCompleted(at=2.0, step_id="nope", attempt=1), 2)
    assert pass_.state is state and pass_.last == 2 and pass_.folded == 1


def test_effects_the_final_state_no_longer_calls_for_are_not_due():
    pass_ = Pass(None, 0, -1)
    pass_.apply(run_started(), 1, ours=True)
    pass_.apply(StepQueued(at=1.0, step_id="a", attempt=1), 2, ours=True)
    pass_.apply(StepCompleted(at=2.0, step_id="a", attempt=1, output=1), 3)
    assert [a for _, a in pass_.due() if isinstance(a, DispatchTask)] == []


async def test_a_tail_read_while_deliveries_are_live_leaves_the_pass_complete_in_this_epoch():
    log = Log()
    await log.append("r1", run_started())
    tracker = DeliveryTracker()
    recorder = Recorder(log, tracker)
    pass_ = Pass(None, 0, -1)
    await recorder.fold_tail("r1", pass_)
    assert pass_.epoch == -1  # nothing received yet: later events may not come here
    tracker.track([SimpleNamespace(delivery=1, attempts=1)])
    pass_ = Pass(None, 0, -1)
    await recorder.fold_tail("r1", pass_)
    assert pass_.epoch == tracker.epoch == 0


# --- tasks sent together with their step.queued ---------------------------------------------

CHAIN = parse_definition(
    {
        "name": "chain",
        "steps": [{"id": "a", "task": "echo"}, {"id": "b", "task": "echo", "depends_on": ["a"]}],
    }
)


def chain_started() -> RunStarted:
    return RunStarted(at=1.0, run_id="r1", workflow="chain", version=1, definition=CHAIN, input=None)


class Sender:
    """Where a recorder sends tasks; `then` runs as each is sent (a worker, another writer)."""

    def __init__(self, then=None) -> None:
        self.sent: list[DispatchTask] = []
        self.then = then

    async def __call__(self, task: DispatchTask) -> None:
        self.sent.append(task)
        if self.then is not None:
            await self.then(task)


async def test_a_task_goes_out_with_its_step_queued_and_is_not_sent_again_by_the_effects():
    log = Log()
    await log.append("r1", chain_started())
    sender = Sender()
    pass_ = Pass(None, 0, -1)
    await Recorder(log, DeliveryTracker(), sender).advance("r1", pass_, None)
    assert kinds(log.of()) == ["RunStarted:", "StepQueued:a"]
    assert [t.step_id for t in sender.sent] == ["a"]
    assert [a for _, a in pass_.due() if isinstance(a, DispatchTask)] == []


class RivalLog(Log):
    """A log where another writer's event lands just before the first step.queued."""

    def __init__(self) -> None:
        super().__init__()
        self.rival = True

    async def append(self, run_id, event, *, expected_last=None, msg_id=None):  # type: ignore[no-untyped-def]
        if self.rival and isinstance(event, StepQueued):
            self.rival = False
            await super().append(run_id, SignalReceived(at=2.0, name="poke"))
        return await super().append(run_id, event, expected_last=expected_last, msg_id=msg_id)


async def test_a_task_whose_step_queued_lost_its_race_and_ran_at_once_counts_as_queued():
    """The worst order: another event lands first (the append conflicts), and the task's
    worker reports before the engine reads the tail again. The step is done, in effect queued
    once, and never sent again."""
    log = RivalLog()
    await log.append("r1", chain_started())

    async def work(task: DispatchTask) -> None:
        result = StepCompleted(
            at=3.0, step_id=task.step_id, attempt=task.attempt, output={"ok": task.step_id}
        )
        await log.append("r1", result)

    sender = Sender(work)
    pass_ = Pass(None, 0, -1)
    await Recorder(log, DeliveryTracker(), sender).advance("r1", pass_, None)
    assert pass_.state is not None
    assert kinds(log.of()) == [
        "RunStarted:",
        "SignalReceived:",
        "StepCompleted:a",  # the race lost: the result came before any step.queued of a
        "StepQueued:b",
        "StepCompleted:b",  # b's own result, which the next pass folds
    ]
    assert pass_.state.steps["a"].status == "completed" and pass_.state.steps["a"].attempts == 1
    assert [t.step_id for t in sender.sent] == ["a", "b"]


async def test_a_task_sent_again_after_its_step_queued_lost_a_race_is_checked_by_its_worker():
    """The race lost, but the worker has not reported yet: the step is queued again, and its
    second copy (absorbed by de-duplication unless the server forgot the first) is marked for
    its worker to check against the run's state."""
    log = RivalLog()
    await log.append("r1", chain_started())
    sender = Sender()
    pass_ = Pass(None, 0, -1)
    await Recorder(log, DeliveryTracker(), sender).advance("r1", pass_, None)
    assert kinds(log.of()) == ["RunStarted:", "SignalReceived:", "StepQueued:a"]
    again = [a for _, a in pass_.due() if isinstance(a, DispatchTask)]
    assert [(t.step_id, t.recheck) for t in sender.sent] == [("a", False)]
    assert [(t.step_id, t.recheck) for t in again] == [("a", True)]


async def test_a_pass_from_the_stored_state_sends_its_tasks_to_be_checked():
    """After a restart (or for a run this engine did not have in memory) an earlier pass may
    have sent a task before its step.queued was recorded: the worker checks every copy."""
    log = Log()
    await log.append("r1", chain_started())
    sender = Sender()
    pass_ = Pass(None, 0, -1, recheck=True)
    await Recorder(log, DeliveryTracker(), sender).advance("r1", pass_, None)
    assert [(t.step_id, t.recheck) for t in sender.sent] == [("a", True)]
    assert [a for _, a in pass_.due() if isinstance(a, DispatchTask)] == []
