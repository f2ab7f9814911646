"""decide(): hand-built event sequences in, states and actions out.

`Run` plays the engine: it records each event, and after every external event appends what
`decide` derives (the first AppendEvent of each call, one at a time, as the engine does).
Workers are plain functions that answer DispatchTask actions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dagnats.core.actions import (
    Action,
    AppendEvent,
    CancelChildRun,
    CancelTimers,
    DispatchTask,
    DropTasks,
    NotifyParent,
    StartChildRun,
    StartTimer,
)
from dagnats.core.decide import (
    STEP_TRANSITIONS,
    IllegalEvent,
    chain,
    child_run_id,
    decide,
    next_events,
    replay,
    too_large,
)
from dagnats.core.definition import WorkflowDef, parse_definition
from dagnats.core.events import (
    ApprovalDecided,
    ApprovalRequested,
    ChildRunFinished,
    Event,
    MapExpanded,
    ParentRef,
    RunCancelRequested,
    RunCompleted,
    RunFailed,
    RunStarted,
    SignalReceived,
    StepCheckpointed,
    StepCompleted,
    StepFailed,
    StepLog,
    StepQueued,
    StepStarted,
    StepWaiting,
    TimerFired,
    encode_event,
    event_type,
)
from dagnats.core.state import RunState, StepPhase, approval_digest, step_phase

T0 = 1000.0


def flow(*steps: dict[str, Any], **top: Any) -> WorkflowDef:
    return parse_definition({"name": "flow", "steps": list(steps), **top})


def task(sid: str, *deps: str, **kw: Any) -> dict[str, Any]:
    return {"id": sid, "task": kw.pop("task", "work"), "depends_on": list(deps), **kw}


Worker = Callable[[DispatchTask, float], Event]


def echo(t: DispatchTask, at: float) -> Event:
    return StepCompleted(at=at, step_id=t.step_id, attempt=t.attempt, output=t.input)


def tagged(t: DispatchTask, at: float) -> Event:
    return StepCompleted(at=at, step_id=t.step_id, attempt=t.attempt, output={"by": t.step_id, "in": t.input})


class Run:
    def __init__(self, wf: WorkflowDef, input: Any = None, *, run_id: str = "r1", **started: Any) -> None:
        self.wf = wf
        self.state: RunState | None = None
        self.events: list[Event] = []
        self.effects: list[Action] = []
        self.answered: set[str] = set()
        self.now = T0
        self.send(
            RunStarted(
                at=T0, run_id=run_id, workflow=wf.name, version=1, definition=wf, input=input, **started
            )
        )

    # --- engine ---
    def decide(self, event: Event) -> list[Action]:
        """One decide() call: record the event and keep its effects."""
        self.state, actions = decide(self.state, event)
        self.events.append(event)
        self.effects += [a for a in actions if not isinstance(a, AppendEvent)]
        return actions

    def send(self, event: Event) -> list[Action]:
        """Record an external event, then the engine's follow-ups; return the effects caused."""
        start = len(self.effects)
        if isinstance(event, (StepCompleted, StepFailed)) and self.state is not None:
            self.answered.add(f"{self.state.run_id}:task:{event.step_id}:{event.attempt}")
        actions = self.decide(event)
        for _ in range(1000):
            appends = [a.event for a in actions if isinstance(a, AppendEvent)]
            if not appends:
                break
            actions = self.decide(appends[0])
        else:
            raise AssertionError("the engine never settled")
        return self.effects[start:]

    # --- views ---
    @property
    def st(self) -> RunState:
        assert self.state is not None
        return self.state

    def status(self, sid: str) -> str:
        return self.st.steps[sid].status

    def types(self) -> list[str]:
        return [event_type(e) for e in self.events]

    def of(self, cls: type, /, **match: Any) -> list[Any]:
        return [
            a
            for a in self.effects
            if isinstance(a, cls) and all(getattr(a, k) == v for k, v in match.items())
        ]

    def task(self, sid: str) -> DispatchTask:
        return self.of(DispatchTask, step_id=sid)[-1]

    def timer(self, kind: str, sid: str = "") -> StartTimer:
        return self.of(StartTimer, kind=kind, step_id=sid)[-1]

    # --- world ---
    def at(self, dt: float = 0.0) -> float:
        self.now += dt
        return self.now

    def attempt(self, sid: str) -> int:
        return self.st.steps[sid].attempts

    def start(self, sid: str) -> list[Action]:
        return self.send(StepStarted(at=self.now, step_id=sid, attempt=self.attempt(sid)))

    def complete(self, sid: str, output: Any = None, attempt: int | None = None) -> list[Action]:
        return self.send(
            StepCompleted(at=self.now, step_id=sid, attempt=attempt or self.attempt(sid), output=output)
        )

    def fail(self, sid: str, error: str = "boom", retryable: bool = True) -> list[Action]:
        return self.send(
            StepFailed(at=self.now, step_id=sid, attempt=self.attempt(sid), error=error, retryable=retryable)
        )

    def fire(self, timer: StartTimer) -> list[Action]:
        self.now = max(self.now, timer.fire_at)
        return self.send(
            TimerFired(at=self.now, kind=timer.kind, step_id=timer.step_id, attempt=timer.attempt)
        )

    def work(self, worker: Worker = echo) -> None:
        """Answer every dispatched task (including ones dispatched while answering)."""
        while todo := [t for t in self.of(DispatchTask) if t.msg_id not in self.answered]:
            self.answered.add(todo[0].msg_id)
            self.send(worker(todo[0], self.now))

    def unchanged_by(self, event: Event) -> None:
        """`event` must change nothing and call for nothing."""
        before = self.st
        new, actions = decide(before, event)
        assert new == before
        assert actions == []


# --- inputs and outputs ---------------------------------------------------------------------


def test_diamond_inputs_flow_between_steps() -> None:
    wf = flow(
        task("a"),
        task("b", "a"),
        task(
            "c", "a", input={"v": "${steps.a.output.in.v}", "run": "${run.id}"}, config={"tag": "${input.v}"}
        ),
        task("d", "b", "c"),
    )
    run = Run(wf, {"v": 7})
    assert run.types() == ["run.started", "step.queued"]
    assert run.task("a") == DispatchTask(
        run_id="r1", step_id="a", attempt=1, task="work", input={"v": 7}, msg_id="r1:task:a:1"
    )
    run.complete("a", {"by": "a", "in": {"v": 7}})
    assert run.types()[-2:] == ["step.queued", "step.queued"]  # b and c, one append at a time
    assert run.task("b").input == {"by": "a", "in": {"v": 7}}  # one dependency: its output
    assert run.task("c").input == {"v": 7, "run": "r1"}  # an input template
    assert run.task("c").config == {"tag": 7}  # config templates are rendered for the task
    run.work(tagged)
    d_input = run.task("d").input  # several dependencies: an object keyed by id
    assert d_input == {
        "b": {"by": "b", "in": {"by": "a", "in": {"v": 7}}},
        "c": {"by": "c", "in": {"v": 7, "run": "r1"}},
    }
    assert run.st.status == "completed"
    assert run.st.output == {"by": "d", "in": d_input}  # the single leaf's output
    assert run.types()[-1] == "run.completed"
    assert run.st.progress() == (4, 4)


def test_run_output_with_several_leaves_is_keyed_by_id() -> None:
    run = Run(flow(task("a"), task("b"), task("c", "a")), "x")
    run.work(tagged)
    assert run.st.output == {"b": {"by": "b", "in": "x"}, "c": {"by": "c", "in": {"by": "a", "in": "x"}}}


def test_missing_input_reference_fails_the_step_without_retry() -> None:
    run = Run(flow(task("a", input="${input.nope}", retry={"max_attempts": 5})), {})
    assert run.status("a") == "failed"
    assert run.st.steps["a"].error.startswith("input: ${input.nope}")
    assert run.st.status == "failed" and not run.of(DispatchTask)


# --- when / skip_if -------------------------------------------------------------------------

CONDITIONS = [
    # (field, condition, output of a, status of b once a completes)
    ("when", "${steps.a.output.go}", {"go": True}, "queued"),
    ("when", "${steps.a.output.go}", {"go": False}, "skipped"),
    ("when", "${steps.a.output.go}", {}, "skipped"),  # a missing value reads as false
    ("when", {"ref": "steps.a.output.n", "op": "==", "value": 3}, {"n": 3}, "queued"),
    ("when", {"ref": "steps.a.output.n", "op": "!=", "value": 3}, {"n": 3}, "skipped"),
    ("when", {"ref": "steps.a.output.n", "op": ">=", "value": 3}, {"n": 2}, "skipped"),
    ("when", {"ref": "steps.a.output.n", "op": "<", "value": 3}, {"n": "x"}, "skipped"),  # incomparable
    ("when", {"ref": "steps.a.output.n", "op": "in", "value": [1, 2]}, {"n": 2}, "queued"),
    ("when", {"ref": "steps.a.output.n", "op": "not_in", "value": [1, 2]}, {"n": 2}, "skipped"),
    ("when", {"ref": "steps.a.output.n", "op": "exists"}, {"n": None}, "queued"),
    ("when", {"ref": "steps.a.output.n", "op": "exists"}, {}, "skipped"),
    ("when", {"ref": "steps.a.output.n", "op": "truthy"}, {}, "skipped"),
    ("when", {"ref": "steps.a.output.n", "op": "!="}, {}, "queued"),
    ("when", {"ref": "steps.a.output.n", "op": "not_in", "value": [1]}, {}, "queued"),
    ("when", {"ref": "steps.a.output.n", "op": "=="}, {}, "failed"),  # cannot compare a missing value
    ("when", {"ref": "input.flag"}, None, "queued"),
    ("skip_if", {"ref": "steps.a.output.n", "op": ">", "value": 3}, {"n": 5}, "skipped"),
    ("skip_if", {"ref": "steps.a.output.n", "op": ">", "value": 3}, {"n": 1}, "queued"),
    ("skip_if", "${steps.a.output.skip}", {"skip": True}, "skipped"),
    ("skip_if", "${steps.a.output.skip}", {}, "queued"),
]


@pytest.mark.parametrize(("field", "condition", "a_output", "expected"), CONDITIONS)
def test_conditions(field: str, condition: Any, a_output: Any, expected: str) -> None:
    run = Run(flow(task("a"), task("b", "a", **{field: condition}), task("c", "b")), {"flag": 1})
    run.complete("a", a_output)
    assert run.status("b") == expected
    if expected == "skipped":
        assert run.status("c") == "queued"  # downstream of a skipped step still runs
        assert run.task("c").input is None
        run.work()
        assert run.st.status == "completed"
    elif expected == "failed":
        assert run.st.steps["b"].error.startswith("condition:")
        assert run.st.status == "failed"


def test_in_condition_against_a_string_with_a_non_string_value() -> None:
    """Regression: `5 in "abc"` used to raise TypeError out of decide()/next_events(); an
    incomparable membership test must read as false, like the other incomparable operands."""
    run = Run(flow(task("a"), task("b", "a", when={"ref": "steps.a.output.n", "op": "in", "value": "abc"})))
    run.complete("a", {"n": 5})
    assert run.status("b") == "skipped"


# --- retries --------------------------------------------------------------------------------


def test_retry_until_attempts_are_exhausted() -> None:
    run = Run(flow(task("a", retry={"max_attempts": 3, "initial": "10s"})))
    run.start("a")
    effects = run.fail("a", "flaky")
    a = run.st.steps["a"]
    assert (a.status, a.attempts, a.error, a.retry_at) == ("waiting", 1, "flaky", T0 + 10)
    assert run.st.status == "waiting"
    assert effects == [
        StartTimer(
            run_id="r1", kind="retry", fire_at=T0 + 10, msg_id="r1:timer:retry:a:1", step_id="a", attempt=1
        )
    ]
    # The timer firing makes the engine append attempt 2.
    state, actions = decide(run.st, TimerFired(at=T0 + 10, kind="retry", step_id="a", attempt=1))
    assert state.steps["a"].status == "pending"
    assert actions == [AppendEvent(event=StepQueued(at=T0 + 10, step_id="a", attempt=2))]
    run.fire(run.timer("retry", "a"))
    assert (run.status("a"), run.attempt("a")) == ("queued", 2)
    assert run.task("a").msg_id == "r1:task:a:2"
    run.fail("a")
    run.fire(run.timer("retry", "a"))
    assert run.attempt("a") == 3
    assert run.fail("a", "still flaky") == [CancelTimers(run_id="r1")]  # no retry; the run's timers go
    assert run.status("a") == "failed"
    assert (run.st.status, run.st.error) == ("failed", "step a failed: still flaky")
    assert run.types()[-1] == "run.failed"


def test_non_retryable_failure_fails_at_once() -> None:
    run = Run(flow(task("a", retry={"max_attempts": 3}), task("b", "a")))
    assert run.fail("a", "bad input", retryable=False) == [CancelTimers(run_id="r1")]
    assert (run.status("a"), run.status("b"), run.st.status) == ("failed", "cancelled", "failed")
    assert run.st.error == "step a failed: bad input"


@pytest.mark.parametrize(
    ("retry", "delays"),
    [
        ({"max_attempts": 4}, [1, 1, 1]),
        ({"max_attempts": 5, "backoff": "exponential", "initial": "1s", "max": "5s"}, [1, 2, 4, 5]),
        ({"max_attempts": 4, "backoff": "exponential", "initial": "100ms", "multiplier": 10}, [0.1, 1, 10]),
        # BUG (definition.py, RetryPolicy.delay): math.log(0) raises ValueError on the 2nd failure
        ({"max_attempts": 3, "backoff": "exponential", "initial": "1s", "max": 0}, [0, 0]),
    ],
    ids=["fixed-default", "exponential-capped", "exponential-x10", "exponential-zero-cap"],
)
def test_backoff_delays(retry: dict[str, Any], delays: list[float]) -> None:
    run = Run(flow(task("a", retry=retry)))
    seen = []
    for _ in delays:
        run.at(1.0)
        failed_at = run.now
        run.fail("a")
        seen.append(run.timer("retry", "a").fire_at - failed_at)
        run.fire(run.timer("retry", "a"))
    assert seen == pytest.approx(delays)
    run.fail("a")
    assert run.st.status == "failed"


def test_checkpoint_is_handed_to_the_next_attempt() -> None:
    run = Run(flow(task("a", retry={"max_attempts": 2})))
    run.send(StepCheckpointed(at=T0, step_id="a", attempt=1, data={"page": 3}))
    run.fail("a")
    run.fire(run.timer("retry", "a"))
    assert run.task("a").checkpoint == {"page": 3}


# --- timeouts -------------------------------------------------------------------------------


def test_step_timeout_is_a_retryable_failure() -> None:
    run = Run(flow(task("a", timeout="30s", retry={"max_attempts": 2, "initial": "5s"})))
    assert run.task("a").timeout == 30.0
    assert run.start("a") == [
        StartTimer(
            run_id="r1",
            kind="step_timeout",
            fire_at=T0 + 30,
            msg_id="r1:timer:step_timeout:a:1",
            step_id="a",
            attempt=1,
        )
    ]
    old_timeout = run.timer("step_timeout", "a")
    run.fire(old_timeout)
    a = run.st.steps["a"]
    assert (a.status, a.error, a.retry_at) == ("waiting", "timed out after 30s", T0 + 35)
    run.fire(run.timer("retry", "a"))
    run.start("a")
    assert run.attempt("a") == 2
    run.unchanged_by(TimerFired(at=run.now, kind="step_timeout", step_id="a", attempt=1))  # stale timer
    run.unchanged_by(StepCompleted(at=run.now, step_id="a", attempt=1, output="late"))  # superseded attempt
    run.fire(run.timer("step_timeout", "a"))
    assert run.status("a") == "failed"
    assert run.st.error == "step a failed: timed out after 30s"


def test_step_timeout_after_completion_changes_nothing() -> None:
    run = Run(flow(task("a", timeout="30s"), task("b", "a")))
    run.start("a")
    run.complete("a", 1)
    run.unchanged_by(TimerFired(at=T0 + 30, kind="step_timeout", step_id="a", attempt=1))


def test_run_timeout_fails_the_run() -> None:
    run = Run(flow(task("a"), timeout="1h"))
    assert run.timer("run_timeout") == StartTimer(
        run_id="r1", kind="run_timeout", fire_at=T0 + 3600, msg_id="r1:timer:run_timeout::0"
    )
    run.fire(run.timer("run_timeout"))
    assert (run.st.status, run.st.error) == ("failed", "run exceeded its timeout of 1h")
    assert run.status("a") == "cancelled"
    assert run.st.finished_at == T0 + 3600


# --- cancel, duplicates, illegal events ----------------------------------------------------


def test_cancel_stops_the_run_and_ignores_later_results() -> None:
    run = Run(flow(task("a"), task("b", "a"), {"id": "nap", "type": "sleep", "config": {"duration": "1h"}}))
    run.start("a")
    run.send(RunCancelRequested(at=T0 + 1, reason="user asked", by="alice"))
    assert (run.st.status, run.st.error, run.st.finished_at) == ("cancelled", "cancelled: user asked", T0 + 1)
    assert {sid: s.status for sid, s in run.st.steps.items()} == {
        "a": "cancelled",
        "b": "cancelled",
        "nap": "cancelled",
    }
    run.unchanged_by(StepCompleted(at=T0 + 2, step_id="a", attempt=1, output=1))
    run.unchanged_by(TimerFired(at=T0 + 3600, kind="wake", step_id="nap", attempt=1))
    run.unchanged_by(RunCancelRequested(at=T0 + 3))
    assert next_events(run.st) == []


def test_duplicate_and_stale_events_change_nothing() -> None:
    run = Run(flow(task("a", retry={"max_attempts": 3}), task("b", "a")))
    run.start("a")
    run.fail("a")
    run.unchanged_by(StepFailed(at=T0, step_id="a", attempt=1, error="boom"))  # duplicate failure
    run.unchanged_by(StepCompleted(at=T0, step_id="a", attempt=1))  # late result of a failed attempt
    retry = run.timer("retry", "a")
    run.fire(retry)
    run.unchanged_by(TimerFired(at=run.now, kind="retry", step_id="a", attempt=1))  # timer delivered twice
    run.unchanged_by(StepQueued(at=run.now, step_id="a", attempt=2))  # engine redo after a crash
    run.unchanged_by(StepStarted(at=run.now, step_id="a", attempt=1))  # stale start
    run.unchanged_by(StepCompleted(at=run.now, step_id="a", attempt=3))  # an attempt that never ran
    run.complete("a", "ok")
    run.unchanged_by(StepCompleted(at=run.now, step_id="a", attempt=2, output="again"))
    run.unchanged_by(StepStarted(at=run.now, step_id="a", attempt=2))
    assert run.st.steps["a"].output == "ok"
    run.unchanged_by(StepLog(at=run.now, step_id="b", attempt=1, message="hello"))
    run.complete("b")
    run.unchanged_by(StepCompleted(at=run.now, step_id="b", attempt=1))  # after the run ended
    assert replay(run.events) == run.st


@pytest.mark.parametrize(
    ("before", "event", "message"),
    [
        (False, StepCompleted(at=T0, step_id="a", attempt=1), "StepCompleted before run.started"),
        (True, StepCompleted(at=T0, step_id="zzz", attempt=1), "unknown step 'zzz'"),
        (True, MapExpanded(at=T0, step_id="a[0]", items=[]), "unknown step 'a[0]'"),
        (True, TimerFired(at=T0, kind="nap", step_id="a", attempt=1), "unknown timer kind 'nap'"),
        (
            True,
            RunStarted(at=T0, run_id="r1", workflow="flow", version=1, definition=flow(task("a"))),
            "run.started twice",
        ),
    ],
)
def test_illegal_events_raise_and_replay_skips_them(before: bool, event: Event, message: str) -> None:
    wf = flow(task("a"))
    state = Run(wf).st if before else None
    with pytest.raises(IllegalEvent, match=message.replace("[", r"\[")):
        decide(state, event)
    assert (
        replay(
            (
                [
                    RunStarted(at=T0, run_id="r1", workflow="flow", version=1, definition=wf),
                    StepQueued(at=T0, step_id="a", attempt=1),
                ]
                if before
                else []
            )
            + [event],
        )
        == state
    )


# --- sleep and wait_for_event --------------------------------------------------------------


def test_sleep_waits_for_its_wake_timer() -> None:
    run = Run(flow({"id": "nap", "type": "sleep", "config": {"duration": "1h"}}))
    assert run.events[1] == StepWaiting(at=T0, step_id="nap", attempt=1, until=T0 + 3600)
    assert run.effects == [
        StartTimer(
            run_id="r1",
            kind="wake",
            fire_at=T0 + 3600,
            msg_id="r1:timer:wake:nap:1",
            step_id="nap",
            attempt=1,
        )
    ]
    assert (run.st.status, run.status("nap")) == ("waiting", "waiting")
    run.fire(run.timer("wake", "nap"))
    assert run.st.steps["nap"].output == {"slept": 3600.0}
    assert run.st.status == "completed"


WAIT = {"id": "w", "type": "wait_for_event", "depends_on": ["a"], "config": {"name": "go", "timeout": "10m"}}


@pytest.mark.parametrize("signal_first", [True, False])
def test_wait_for_event_completes_with_the_signal(signal_first: bool) -> None:
    run = Run(flow(task("a"), WAIT, task("b", "w")))
    signal = SignalReceived(at=T0 + 1, name="go", data={"ok": 1}, by="bob")
    if signal_first:
        run.send(signal)
        assert run.status("w") == "pending"
    run.complete("a")
    if not signal_first:
        assert (run.status("w"), run.st.status) == ("waiting", "waiting")
        run.send(signal)
    assert run.st.steps["w"].output == {"ok": 1}
    assert run.st.signals[0].consumed_by == "w"
    assert run.task("b").input == {"ok": 1}
    run.fire(run.timer("wake", "w"))  # the timeout timer fires later: nothing happens
    assert run.status("w") == "completed"


def test_wait_for_event_times_out() -> None:
    run = Run(flow(task("a"), WAIT))
    run.complete("a")
    run.send(SignalReceived(at=T0, name="other"))
    assert run.timer("wake", "w").fire_at == T0 + 600
    run.fire(run.timer("wake", "w"))
    assert run.st.steps["w"].error == "no signal 'go' before the timeout"
    assert (run.status("w"), run.st.status) == ("failed", "failed")


def test_a_signal_is_consumed_once() -> None:
    two = {"id": "w2", "type": "wait_for_event", "depends_on": ["w"], "config": {"name": "go"}}
    run = Run(flow(task("a"), WAIT, two))
    run.send(SignalReceived(at=T0, name="go", data=1))
    run.complete("a")
    assert (run.status("w"), run.status("w2")) == ("completed", "waiting")
    run.send(SignalReceived(at=T0, name="go", data=2))
    assert run.st.steps["w2"].output == 2 and run.st.status == "completed"


# --- sub-workflows and parents -------------------------------------------------------------

CHILD = {
    "id": "child",
    "type": "sub_workflow",
    "config": {"workflow": "other", "version": 3},
    "retry": {"max_attempts": 2},
}


def test_sub_workflow_starts_a_child_with_a_deterministic_id() -> None:
    run = Run(flow(CHILD), {"x": 1}, root_run_id="root")
    cid = child_run_id("r1", "child", 1)
    assert cid == child_run_id("r1", "child", 1) != child_run_id("r1", "child", 2)
    assert run.effects == [
        StartChildRun(
            child_run_id=cid,
            workflow="other",
            version=3,
            input={"x": 1},
            parent=ParentRef(run_id="r1", step_id="child", attempt=1),
            depth=1,
            root_run_id="root",
        )
    ]
    assert (run.status("child"), run.st.steps["child"].child_run_id) == ("running", cid)
    run.unchanged_by(
        ChildRunFinished(at=T0, step_id="child", attempt=1, child_run_id="rother", status="completed")
    )
    run.send(
        ChildRunFinished(
            at=T0 + 1, step_id="child", attempt=1, child_run_id=cid, status="completed", output=[1, 2]
        )
    )
    assert run.st.steps["child"].output == [1, 2]
    assert (run.st.status, run.st.output) == ("completed", [1, 2])


def test_failed_child_is_retried_with_a_new_child_and_cancelled_child_is_not() -> None:
    run = Run(flow(CHILD))
    first = child_run_id("r1", "child", 1)
    run.send(
        ChildRunFinished(at=T0, step_id="child", attempt=1, child_run_id=first, status="failed", error="x")
    )
    assert run.st.steps["child"].error == f"child run {first} failed: x"
    run.fire(run.timer("retry", "child"))
    second = child_run_id("r1", "child", 2)
    assert run.of(StartChildRun)[-1].child_run_id == second
    run.send(ChildRunFinished(at=T0 + 2, step_id="child", attempt=2, child_run_id=second, status="cancelled"))
    assert (run.status("child"), run.st.status) == ("failed", "failed")


def test_depth_limit_fails_a_sub_workflow_step() -> None:
    run = Run(flow(CHILD), depth=5)
    assert run.st.steps["child"].error == "sub_workflow nesting is bounded at depth 5"
    assert not run.of(StartChildRun)


@pytest.mark.parametrize(("finish", "status"), [("complete", "completed"), ("fail", "failed")])
def test_a_child_run_notifies_its_parent_when_it_ends(finish: str, status: str) -> None:
    parent = ParentRef(run_id="p1", step_id="child", attempt=1)
    run = Run(flow(task("a")), run_id="c1", parent=parent, depth=1, root_run_id="p1")
    assert run.st.root_run_id == "p1"
    effects = run.complete("a", 42) if finish == "complete" else run.fail("a", "nope", retryable=False)
    output, error = (42, None) if finish == "complete" else (None, "step a failed: nope")
    assert effects == [  # no timer was ever started for it, so there are none to cancel
        NotifyParent(parent=parent, child_run_id="c1", status=status, output=output, error=error),
    ]


def test_cancelling_a_parent_cancels_its_running_child() -> None:
    run = Run(flow(task("a"), CHILD))
    effects = run.send(RunCancelRequested(at=T0 + 5))
    assert effects == [
        CancelChildRun(child_run_id=child_run_id("r1", "child", 1), reason="parent run cancelled"),
        DropTasks(run_id="r1"),  # step a's task is still queued
        CancelTimers(run_id="r1"),
    ]
    assert run.st.error == "cancelled"


def test_a_run_that_ends_takes_back_its_queued_tasks_and_cancels_only_timers_it_may_have() -> None:
    run = Run(flow(task("a"), task("b")))  # both queued at once, no timeouts, no retries
    assert run.send(RunCancelRequested(at=T0 + 1)) == [DropTasks(run_id="r1")]
    run = Run(flow(task("a"), task("b", timeout="5s")))
    assert run.send(RunCancelRequested(at=T0 + 1)) == [DropTasks(run_id="r1"), CancelTimers(run_id="r1")]
    run = Run(flow(task("a"), task("b", "a")))
    run.complete("a", 1)
    assert run.complete("b", 2) == []  # completed: nothing queued, no timers
    run = Run(flow(task("a"), task("b", "a"), timeout="1h"))
    run.complete("a", 1)
    assert run.complete("b", 2) == [CancelTimers(run_id="r1")]  # the run's own timeout timer


# --- map ------------------------------------------------------------------------------------


def mapflow(**cfg: Any) -> WorkflowDef:
    extra = {k: cfg.pop(k) for k in ("retry", "input") if k in cfg}
    return flow(
        task("list"),
        {"id": "m", "type": "map", "depends_on": ["list"], "config": {"task": "sq", **cfg}, **extra},
    )


def square(t: DispatchTask, at: float) -> Event:
    return StepCompleted(at=at, step_id=t.step_id, attempt=t.attempt, output=t.input * t.input)


def test_map_runs_items_with_bounded_concurrency_and_keeps_order() -> None:
    run = Run(mapflow(concurrency=2, config={"k": "${run.id}"}))
    run.complete("list", [1, 2, 3, 4])
    assert run.events[-3] == MapExpanded(at=T0, step_id="m", items=[1, 2, 3, 4])
    assert [run.status(f"m[{i}]") for i in range(4)] == ["queued", "queued", "pending", "pending"]
    assert run.st.steps["m"].items == 4 and run.st.progress() == (1, 2)
    item = run.task("m[1]")
    assert (item.task, item.input, item.config, item.msg_id) == ("sq", 2, {"k": "r1"}, "r1:task:m[1]:1")
    run.send(square(item, run.now))  # the second item finishes first
    assert run.status("m[2]") == "queued" and run.status("m[3]") == "pending"
    for i in (3, 2, 0):
        if run.status(f"m[{i}]") == "queued":
            run.send(square(run.task(f"m[{i}]"), run.now))
    run.work(square)
    assert run.st.steps["m"].output == [1, 4, 9, 16]
    assert (run.st.status, run.st.output) == ("completed", [1, 4, 9, 16])


def test_map_items_use_the_map_steps_retry_policy() -> None:
    run = Run(mapflow(retry={"max_attempts": 2}))
    run.complete("list", [5])
    run.send(StepFailed(at=T0, step_id="m[0]", attempt=1, error="flaky"))
    run.fire(run.timer("retry", "m[0]"))
    assert run.attempt("m[0]") == 2
    run.work(square)
    assert run.st.output == [25]


def test_a_failed_item_fails_the_map_and_the_run() -> None:
    run = Run(mapflow())
    run.complete("list", ["a", "b", "c"])
    run.send(StepFailed(at=T0, step_id="m[1]", attempt=1, error="boom"))
    assert run.st.steps["m"].error == "item m[1] failed: boom"
    assert (run.st.status, run.st.error) == ("failed", "step m failed: item m[1] failed: boom")
    assert run.status("m[0]") == run.status("m[2]") == "cancelled"


@pytest.mark.parametrize(
    ("items", "outcome"),
    [
        ([], ("completed", [])),
        ({"a": 1}, ("failed", "map input must be an array, got dict")),
        ("abc", ("failed", "map input must be an array, got str")),
        ([1, 2, 3], ("failed", "map over 3 items exceeds max_items 2")),
    ],
)
def test_map_input_checks(items: Any, outcome: tuple[str, Any]) -> None:
    run = Run(mapflow(max_items=2))
    run.complete("list", items)
    m = run.st.steps["m"]
    assert (m.status, m.output if m.status == "completed" else m.error) == outcome
    assert run.st.status == outcome[0]


def test_map_over_an_input_template() -> None:
    run = Run(
        flow({"id": "m", "type": "map", "input": "${input.xs}", "config": {"task": "sq"}}), {"xs": [2, 3]}
    )
    run.work(square)
    assert run.st.output == [4, 9]


# --- approvals: a decision applies to what the operator was shown ---------------------------


def gated() -> Run:
    return Run(
        flow({"id": "gate", "type": "approval", "config": {"prompt": "Ship ${input.v}?"}}), {"v": "v1"}
    )


def decision(approval_id: str, step_id: str, digest: str = "", approved: bool = True) -> ApprovalDecided:
    return ApprovalDecided(
        at=T0 + 1, approval_id=approval_id, step_id=step_id, approved=approved, by="ops", digest=digest
    )


def test_an_approval_quotes_a_digest_of_what_it_asks() -> None:
    run = gated()
    gate = run.st.approvals["gate.1"]
    assert (gate.status, gate.prompt) == ("pending", "Ship v1?")
    assert gate.digest == approval_digest("step", "Ship v1?", {"v": "v1"})
    assert len(gate.digest) == 64 and int(gate.digest, 16) >= 0
    assert gate.digest != approval_digest("step", "Ship v2?", None)


def test_the_digest_of_a_tool_call_is_its_name_and_arguments_in_any_key_order() -> None:
    call = {"name": "run_command", "arguments": {"command": "ls", "cwd": "/"}, "call_id": "c1"}
    same = {"call_id": "c2", "arguments": {"cwd": "/", "command": "ls"}, "name": "run_command"}
    other = {"name": "run_command", "arguments": {"command": "rm -rf /", "cwd": "/"}, "call_id": "c1"}
    d = approval_digest("tool_call", "Allow run_command?", call)
    assert d == approval_digest("tool_call", "Allow run_command?", same)
    assert d != approval_digest("tool_call", "Allow run_command?", other)
    assert d != approval_digest("plan", "Allow run_command?", call)
    plan = {"steps": [{"id": "a", "task": "shell", "config": {"command": "make"}}]}
    assert approval_digest("plan", "Run the plan of p?", plan) != approval_digest(
        "plan", "Run the plan of p?", {"steps": []}
    )


def test_a_decision_quoting_another_digest_changes_nothing() -> None:
    run = gated()
    stale = approval_digest("step", "Ship v0?", None)
    run.unchanged_by(decision("gate.1", "gate", digest=stale))
    run.unchanged_by(decision("gate.1", "gate", digest=stale, approved=False))
    assert (run.status("gate"), run.st.approvals["gate.1"].status) == ("waiting", "pending")


@pytest.mark.parametrize("quoted", [True, False])
def test_a_decision_with_the_current_digest_or_none_applies(quoted: bool) -> None:
    run = gated()
    digest = run.st.approvals["gate.1"].digest if quoted else ""
    run.send(decision("gate.1", "gate", digest=digest))
    assert run.st.approvals["gate.1"].status == "approved"
    assert (run.status("gate"), run.st.status) == ("completed", "completed")


def test_a_decision_meant_for_a_tool_call_never_lands_on_the_next_approval() -> None:
    """The inbox showed a tool call; it was answered elsewhere and the same run asked another
    question: a decision quoting the tool call's digest does not decide the new one."""
    run = Run(
        flow(
            {
                "id": "fix",
                "type": "agent_loop",
                "config": {
                    "provider": "scripted",
                    "script": [{"text": "deploying"}],
                    "tools": ["run_command"],
                    "approve_tools": "all",
                },
            },
            {"id": "gate", "type": "approval", "depends_on": ["fix"], "config": {"prompt": "Ship?"}},
        )
    )
    run.start("fix")
    details = {"name": "run_command", "arguments": {"command": "make deploy"}, "call_id": "c1"}
    asked = ApprovalRequested(
        at=T0,
        approval_id="fix.c1",
        step_id="fix",
        kind="tool_call",
        prompt="Allow run_command?",
        details=details,
    )
    run.send(asked)
    shown = run.st.approvals["fix.c1"].digest
    run.send(decision("fix.c1", "fix"))  # answered elsewhere
    run.complete("fix", "done")
    assert run.st.approvals["gate.1"].status == "pending"
    run.unchanged_by(decision("gate.1", "gate", digest=shown))
    assert run.status("gate") == "waiting"


# --- chain and too_large: the engine's pass, decided in the core ------------------------------


def _fan_out(n: int) -> tuple[RunState, list[Event]]:
    wf = parse_definition({"name": "fan", "steps": [{"id": f"s{i}", "task": "t"} for i in range(n)]})
    state, actions = decide(None, RunStarted(at=T0, run_id="r1", workflow="fan", version=1, definition=wf))
    return state, [a.event for a in actions if isinstance(a, AppendEvent)][:1]


def test_chain_decides_events_one_after_another_up_to_its_bounds():
    state, upcoming = _fan_out(5)
    out = chain(state, upcoming, max_events=100, max_bytes=1 << 20, max_event_bytes=1 << 20)
    assert [e.step_id for e, _, _ in out] == ["s0", "s1", "s2", "s3", "s4"]
    assert all(isinstance(e, StepQueued) for e, _, _ in out)
    assert out[-1][1] == replay(
        [
            RunStarted(at=T0, run_id="r1", workflow="fan", version=1, definition=state.definition),
            *(e for e, _, _ in out),
        ]
    )
    assert len(chain(state, upcoming, max_events=3, max_bytes=1 << 20, max_event_bytes=1 << 20)) == 3
    one = len(encode_event(upcoming[0]))
    assert len(chain(state, upcoming, max_events=100, max_bytes=one, max_event_bytes=1 << 20)) == 1
    assert chain(state, upcoming, max_events=100, max_bytes=1 << 20, max_event_bytes=one - 1) == []
    assert chain(state, [], max_events=100, max_bytes=1 << 20, max_event_bytes=1 << 20) == []


def test_chain_stops_before_an_illegal_event():
    state, _ = _fan_out(2)
    illegal = StepQueued(at=T0, step_id="nope", attempt=1)
    assert chain(state, [illegal], max_events=10, max_bytes=1 << 20, max_event_bytes=1 << 20) == []


def test_too_large_fails_the_step_or_the_run():
    big = StepQueued(at=T0, step_id="a", attempt=2, input="x")
    failed = too_large(big, 2_000_000)
    assert isinstance(failed, StepFailed) and (failed.step_id, failed.attempt, failed.retryable) == (
        "a",
        2,
        False,
    )
    assert failed.error == "StepQueued of 2000000 bytes exceeds the message limit (input or output too large)"
    run = too_large(RunCompleted(at=T0, output="x"), 9)
    assert isinstance(run, RunFailed) and run.error == "run output of 9 bytes exceeds the message limit"


def test_a_decision_while_the_step_waits_for_its_retry_is_recorded_but_does_not_resume_it():
    wf = flow(
        {
            "id": "a",
            "type": "agent_loop",
            "config": {"provider": "scripted", "script": [{"text": "hi"}]},
            "retry": {"max_attempts": 2, "initial": "10s"},
        }
    )
    state, _ = decide(None, RunStarted(at=T0, run_id="r1", workflow="flow", version=1, definition=wf))
    for event in [
        StepQueued(at=T0, step_id="a", attempt=1),
        StepStarted(at=T0, step_id="a", attempt=1),
        ApprovalRequested(at=T0, approval_id="a.t1", step_id="a", kind="tool_call", attempt=1),
        StepFailed(at=T0 + 1, step_id="a", attempt=1, error="boom"),
    ]:
        state, _ = decide(state, event)
    assert step_phase(state.steps["a"]) == StepPhase.RETRY_WAIT
    assert STEP_TRANSITIONS[StepPhase.RETRY_WAIT].get("approval.decided.tool_call") is None
    state, actions = decide(state, ApprovalDecided(at=T0 + 2, approval_id="a.t1", step_id="a", approved=True))
    assert state.approvals["a.t1"].status == "approved"
    assert (state.steps["a"].status, state.steps["a"].retry_at) == ("waiting", T0 + 11)
    assert not [a for a in actions if isinstance(a, DispatchTask)]
    state, _ = decide(state, TimerFired(at=T0 + 11, kind="retry", step_id="a", attempt=1))
    assert state.steps["a"].status == "pending"


def _pending_run() -> RunState:
    wf = flow({"id": "a", "task": "t"}, {"id": "ok", "type": "approval", "config": {"prompt": "go?"}})
    state, _ = decide(None, RunStarted(at=T0, run_id="r1", workflow="flow", version=1, definition=wf))
    return state


def test_a_workers_report_before_the_step_queued_it_answers_counts_as_the_queueing():
    """The engine sends a task while it appends its step.queued; when the append loses a race,
    the worker's report may come first. It proves the attempt was dispatched (engine/passes.py)."""
    state = _pending_run()
    done, actions = decide(state, StepCompleted(at=T0 + 1, step_id="a", attempt=1, output=7))
    assert (done.steps["a"].status, done.steps["a"].attempts, done.steps["a"].output) == ("completed", 1, 7)
    assert not [a for a in actions if isinstance(a, DispatchTask)]  # nothing sent again
    running, actions = decide(state, StepStarted(at=T0 + 1, step_id="a", attempt=1, worker="w"))
    assert (running.steps["a"].status, running.steps["a"].attempts) == ("running", 1)
    failed, _ = decide(state, StepFailed(at=T0 + 1, step_id="a", attempt=1, error="boom", retryable=False))
    assert failed.steps["a"].status == "failed"


def test_a_report_for_an_attempt_never_sent_or_a_step_no_worker_runs_changes_nothing():
    state = _pending_run()
    later, _ = decide(state, StepCompleted(at=T0 + 1, step_id="a", attempt=2, output=7))
    assert later.steps["a"].status == "pending"
    approval, _ = decide(state, StepCompleted(at=T0 + 1, step_id="ok", attempt=1, output=7))
    assert approval.steps["ok"].status == "pending"
