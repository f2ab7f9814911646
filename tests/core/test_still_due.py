"""still_due(): after a crash, only the effects the run's current state calls for are done again.

An engine that recovers folds the history after its snapshot and meets the effects of every
event in that tail. Each test records a run with `Run` (test_decide.py), then plays recovery
from every snapshot point to every crash point and checks what would be performed.
"""

from __future__ import annotations

from typing import Any

from test_decide import T0, Run, flow, task

from dagnats.core.actions import Action, AppendEvent, DispatchTask, StartTimer
from dagnats.core.decide import decide, replay
from dagnats.core.effects import still_due
from dagnats.core.events import ApprovalDecided, ApprovalRequested, Event, TimerFired
from dagnats.core.state import RunState


def _recover(events: list[Event], snapshot: int, crash: int) -> tuple[RunState, list[Action]]:
    """What an engine holding a snapshot of events[:snapshot] would perform after a crash
    that left events[:crash] in the history."""
    state = replay(events[:snapshot])
    effects: list[Action] = []
    for event in events[snapshot:crash]:
        state, actions = decide(state, event)
        effects += [a for a in actions if not isinstance(a, AppendEvent)]
    assert state is not None
    return state, [a for a in effects if still_due(state, a)]


def _every_crash(events: list[Event]) -> Any:
    for crash in range(1, len(events) + 1):
        for snapshot in range(crash):
            yield snapshot, crash, *_recover(events, snapshot, crash)


def test_recovery_dispatches_exactly_the_steps_still_waiting_for_a_worker() -> None:
    run = Run(flow(task("a"), task("b", "a"), task("c", "a"), task("d", "b", "c"), task("e", "d")))
    run.work()
    assert run.st.status == "completed"
    for snapshot, crash, state, due in _every_crash(run.events):
        dispatched = {(a.step_id, a.attempt) for a in due if isinstance(a, DispatchTask)}
        queued_in_tail = {
            (e.step_id, e.attempt) for e in run.events[snapshot:crash] if type(e).__name__ == "StepQueued"
        }
        waiting = {(sid, s.attempts) for sid, s in state.steps.items() if s.status in ("queued", "running")}
        where = f"snapshot after {snapshot} events, crash after {crash}"
        assert dispatched == waiting & queued_in_tail, where  # nothing done twice, nothing lost


def test_a_finished_chain_sends_nothing_again() -> None:
    run = Run(flow(*[task(f"s{i}", *([f"s{i - 1}"] if i else [])) for i in range(8)]))
    run.work()
    types = run.types()
    crash = len(types) - types[::-1].index("step.queued")  # right after s7 was queued
    state, due = _recover(run.events, 1, crash)
    assert [(a.step_id, a.attempt) for a in due if isinstance(a, DispatchTask)] == [("s7", 1)]
    assert state.steps["s6"].status == "completed"


def test_a_retry_timer_is_due_only_while_its_attempt_waits() -> None:
    run = Run(flow(task("a", retry={"max_attempts": 3, "backoff": "fixed", "initial": "1s"})))
    run.fail("a")
    retry = run.timer("retry", "a")
    waiting = len(run.events)
    run.fire(retry)
    run.complete("a", "ok")
    _, due = _recover(run.events, 1, waiting)
    assert retry in due and not any(isinstance(a, DispatchTask) for a in due)
    _, due = _recover(run.events, 1, waiting + 2)  # fired, attempt 2 queued
    assert retry not in due
    assert [(a.step_id, a.attempt) for a in due if isinstance(a, DispatchTask)] == [("a", 2)]
    _, due = _recover(run.events, 1, len(run.events))
    assert not any(isinstance(a, (DispatchTask, StartTimer)) for a in due)


def _agent_asks(run: Run, call: str) -> None:
    details = {"name": "run_command", "arguments": {"command": call}, "call_id": call}
    run.send(
        ApprovalRequested(
            at=run.at(1), approval_id=f"fix.{call}", step_id="fix", kind="tool_call", details=details
        )
    )


def _decide(run: Run, call: str) -> None:
    run.send(ApprovalDecided(at=run.at(1), approval_id=f"fix.{call}", step_id="fix", approved=True))


def test_only_the_latest_activation_of_a_parked_agent_is_sent_again() -> None:
    agent = {
        "id": "fix",
        "type": "agent_loop",
        "config": {"provider": "scripted", "script": [{"text": "x"}], "tools": ["run_command"]},
    }
    run = Run(flow(agent))
    run.start("fix")
    _agent_asks(run, "c1")
    _decide(run, "c1")  # resume:fix.c1 activation; it parks again on c2
    _agent_asks(run, "c2")
    _decide(run, "c2")
    sent = [a.msg_id for a in run.of(DispatchTask)]
    assert sent == ["r1:task:fix:1", "r1:task:fix:1:resume:fix.c1", "r1:task:fix:1:resume:fix.c2"]
    _, due = _recover(run.events, 1, len(run.events))
    assert [a.msg_id for a in due if isinstance(a, DispatchTask)] == ["r1:task:fix:1:resume:fix.c2"]
    _, due = _recover(run.events, 1, len(run.events) - 1)  # parked on c2: nothing to send
    assert not any(isinstance(a, DispatchTask) for a in due)


def test_a_run_that_ended_keeps_its_purges_and_nothing_else() -> None:
    run = Run(flow(task("a"), task("b"), timeout="1h"))
    run.complete("a", "ok")
    run.fire(run.timer("run_timeout"))
    assert run.st.status == "failed"
    _, due = _recover(run.events, 1, len(run.events))
    kinds = sorted(type(a).__name__ for a in due)
    assert kinds == ["CancelTimers", "DropTasks"]


def test_a_sleep_wakes_once_however_often_it_is_recovered() -> None:
    run = Run(flow({"id": "nap", "type": "sleep", "config": {"duration": "5s"}}, task("after", "nap")))
    wake = run.timer("wake", "nap")
    _, due = _recover(run.events, 1, len(run.events))
    assert wake in due
    run.send(TimerFired(at=T0 + 5, kind="wake", step_id="nap", attempt=1))
    _, due = _recover(run.events, 1, len(run.events))
    assert wake not in due
