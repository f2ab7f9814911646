"""Property test: random DAGs, a random world, and decide() must agree with replay().

For each seed we generate a valid definition (1-8 steps, dependencies on earlier steps only,
random retry policies, timeouts, `when` conditions, sleep, wait_for_event and map steps), then
simulate the engine and its workers with random outcomes: completions, retryable and
non-retryable failures, hung tasks (timeouts), duplicate deliveries, out-of-order delivery,
stale timers, engine redo after a crash, signals and the occasional cancel. Every event handed
to decide() is recorded. Properties:

- the run always ends (completed / failed / cancelled) within a bounded number of events;
- replay() of every prefix of the recorded events (also after a JSON round trip) equals the
  state decide() produced at that point;
- terminal runs and terminal steps never change, attempts never exceed the retry policy, and an
  engine redo of an event it already appended changes nothing.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from dagnats.core.actions import AppendEvent, DispatchTask, StartChildRun, StartTimer
from dagnats.core.decide import decide, fold, next_events, replay
from dagnats.core.definition import RetryPolicy, WorkflowDef, parse_definition
from dagnats.core.events import (
    ChildRunFinished,
    Event,
    RunCancelRequested,
    RunStarted,
    SignalReceived,
    StepCheckpointed,
    StepCompleted,
    StepFailed,
    StepLog,
    StepStarted,
    TimerFired,
    decode_event,
    encode_event,
)
from dagnats.core.plan import next_event
from dagnats.core.state import STEP_SATISFIED, STEP_TERMINAL, RunState, parent_of

SEEDS = range(200)
MAX_EVENTS = 2000


# --- random definitions ---------------------------------------------------------------------


def random_definition(rng: random.Random) -> tuple[WorkflowDef, dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    list_steps: list[str] = []  # echo steps whose output is a list
    for i in range(rng.randint(1, 8)):
        earlier = [s["id"] for s in steps]
        deps = rng.sample(earlier, rng.randint(0, min(3, len(earlier))))
        step = _random_step(rng, f"s{i}", deps, list_steps)
        if step.get("type") in (None, "map", "sub_workflow"):
            _add_retry_and_timeout(rng, step)
        if rng.random() < 0.2:
            _add_condition(rng, step)
        steps.append(step)
    doc: dict[str, Any] = {"name": f"prop-{rng.randint(0, 999)}", "steps": steps}
    if rng.random() < 0.1:
        doc["timeout"] = rng.choice(["1m", "1h"])
    run_input = {
        "flag": rng.random() < 0.5,
        "n": rng.randint(0, 5),
        "items": [rng.randint(0, 9) for _ in range(rng.randint(0, 4))] if rng.random() < 0.9 else "oops",
    }
    return parse_definition(doc), run_input


def _random_step(rng: random.Random, sid: str, deps: list[str], list_steps: list[str]) -> dict[str, Any]:
    roll = rng.random()
    if roll < 0.2:
        return _random_map(rng, sid, deps, list_steps)
    if roll < 0.4:
        items = [rng.randint(0, 9) for _ in range(rng.randint(0, 4))]
        list_steps.append(sid)
        return {"id": sid, "task": "echo", "depends_on": deps, "input": items}
    if roll < 0.47:
        return {
            "id": sid,
            "type": "sleep",
            "depends_on": deps,
            "config": {"duration": rng.choice(["1s", "1m"])},
        }
    if roll < 0.6:
        return {"id": sid, "type": "sub_workflow", "depends_on": deps, "config": {"workflow": "child"}}
    if roll < 0.67:
        config: dict[str, Any] = {"name": "go"}
        if rng.random() < 0.5:
            config["timeout"] = "10m"
        return {"id": sid, "type": "wait_for_event", "depends_on": deps, "config": config}
    return {"id": sid, "task": "work", "depends_on": deps}


def _random_map(rng: random.Random, sid: str, deps: list[str], list_steps: list[str]) -> dict[str, Any]:
    step: dict[str, Any] = {
        "id": sid,
        "type": "map",
        "config": {
            "task": "echo",
            "concurrency": rng.choice([0, 1, 2]),
            "max_items": rng.choice([3, 10]),
        },
    }
    if list_steps and rng.random() < 0.7:
        step["depends_on"] = [rng.choice(list_steps)]
    else:
        step["depends_on"] = deps
        step["input"] = "${input.items}"
    return step


def _add_retry_and_timeout(rng: random.Random, step: dict[str, Any]) -> None:
    if rng.random() < 0.7:
        step["retry"] = {
            "max_attempts": rng.randint(1, 5),
            "backoff": rng.choice(["fixed", "exponential"]),
            "initial": rng.choice([0, 1, "500ms", "2s"]),
        }
        if rng.random() < 0.5:
            step["retry"]["max"] = "3s"
    if rng.random() < 0.2:
        step["timeout"] = "30s"


def _add_condition(rng: random.Random, step: dict[str, Any]) -> None:
    conditions: list[Any] = [
        "${input.flag}",
        {"ref": "input.n", "op": ">", "value": rng.randint(0, 5)},
    ]
    if step["depends_on"]:
        conditions.append({"ref": f"steps.{step['depends_on'][0]}.output", "op": "exists"})
    step[rng.choice(["when", "skip_if"])] = rng.choice(conditions)


# --- a random world -------------------------------------------------------------------------


def policy(state: RunState, sid: str) -> RetryPolicy:
    owner = parent_of(sid) or sid
    return state.definition.step(owner).retry or RetryPolicy()


class World:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.wf, run_input = random_definition(self.rng)
        self.now = 1000.0
        self.state: RunState | None = None
        self.recorded: list[Event] = []
        self.states: list[RunState] = []
        self.tasks: list[DispatchTask | StartChildRun] = []  # not yet picked up by a worker / child
        self.inbox: list[Event] = []  # worker events in flight, delivered in any order
        self.timers: list[StartTimer] = []  # started, not yet fired
        self.fired: list[StartTimer] = []  # fired once; may be delivered again
        self.appended: list[Event] = []  # events the engine derived
        self.early_signals = 2
        self.cancel_sent = False
        self.apply(
            RunStarted(
                at=self.now,
                run_id=f"run{seed}",
                workflow=self.wf.name,
                version=1,
                definition=self.wf,
                input=run_input,
            )
        )

    @property
    def st(self) -> RunState:
        assert self.state is not None
        return self.state

    def apply(self, event: Event) -> RunState:
        old = self.state
        new, actions = decide(old, event)
        check_transition(old, new)
        self.state = new
        self.recorded.append(event)
        self.states.append(new)
        for action in actions:
            if isinstance(action, (DispatchTask, StartChildRun)):
                self.tasks.append(action)
            elif isinstance(action, StartTimer):
                self.timers.append(action)
        return new

    def choices(self) -> list[tuple[str, float]]:
        options: list[tuple[str, float]] = []
        if next_events(self.st):
            options.append(("engine", 4.0))
        if self.tasks:
            options.append(("worker", 2.0))
        if self.inbox:
            options.append(("deliver", 3.0))
        if self.timers:
            options.append(("timer", 1.0))
        if self.fired:
            options.append(("stale_timer", 0.1))
        if self.appended:
            options.append(("engine_redo", 0.1))
        waiting_for_signal = any(s.status == "waiting" and s.waiting_signal for s in self.st.steps.values())
        if waiting_for_signal or self.early_signals:
            options.append(("signal", 1.0 if waiting_for_signal else 0.05))
        if not self.cancel_sent:
            options.append(("cancel", 0.04))
        return options

    def step(self) -> bool:
        """Do one random thing; False once nothing can happen any more."""
        options = self.choices()
        if not options:
            return False
        kind = self.rng.choices([k for k, _ in options], weights=[w for _, w in options])[0]
        self.now += self.rng.choice([0.0, 0.1, 1.0, 5.0])
        getattr(self, f"_do_{kind}")()
        return True

    def _do_engine(self) -> None:
        event = next_events(self.st)[0]
        assert next_event(self.st) == event  # the engine's shortcut asks for this one
        _, first_only = decide(self.st, event, first_only=True)
        _, every = decide(self.st, event)
        append = [a for a in every if isinstance(a, AppendEvent)]
        assert first_only == [a for a in every if not isinstance(a, AppendEvent)] + append[:1]
        self.appended.append(event)
        self.apply(event)

    def _do_engine_redo(self) -> None:  # the engine crashed after appending and appends again
        before = self.st
        after = self.apply(self.rng.choice(self.appended))
        assert after == before, "re-appending an event the engine already appended changed the run"

    def _do_worker(self) -> None:
        job = self.tasks.pop(self.rng.randrange(len(self.tasks)))
        if isinstance(job, DispatchTask):
            self.work(job)
        else:
            self.child(job)

    def _do_deliver(self) -> None:
        self.apply(self.inbox.pop(self.rng.randrange(len(self.inbox))))

    def _do_timer(self) -> None:
        # Mostly the earliest timer first; sometimes out of order (clock skew, redelivery).
        rng = self.rng
        self.timers.sort(key=lambda t: t.fire_at)
        timer = self.timers.pop(0 if rng.random() < 0.8 else rng.randrange(len(self.timers)))
        self.now = max(self.now, timer.fire_at)
        self.fired.append(timer)
        self.apply(TimerFired(at=self.now, kind=timer.kind, step_id=timer.step_id, attempt=timer.attempt))

    def _do_stale_timer(self) -> None:
        timer = self.rng.choice(self.fired)
        self.apply(TimerFired(at=self.now, kind=timer.kind, step_id=timer.step_id, attempt=timer.attempt))

    def _do_signal(self) -> None:
        if not any(s.status == "waiting" and s.waiting_signal for s in self.st.steps.values()):
            self.early_signals -= 1
        self.apply(SignalReceived(at=self.now, name="go", data={"n": len(self.recorded)}))

    def _do_cancel(self) -> None:
        self.cancel_sent = True
        self.apply(RunCancelRequested(at=self.now, reason="random"))

    def work(self, task: DispatchTask) -> None:
        """A worker picks up a task: starts it, then completes, fails or hangs (timeouts only)."""
        rng, at = self.rng, self.now
        started = StepStarted(at=at, step_id=task.step_id, attempt=task.attempt, worker="w")
        roll = rng.random()
        if roll < 0.08 and task.timeout is not None:
            self.inbox.append(started)  # hangs: only the step timeout can end this attempt
            return
        if rng.random() < 0.8:
            self.inbox.append(started)
        if rng.random() < 0.2:
            self.inbox.append(StepLog(at=at, step_id=task.step_id, attempt=task.attempt, message="working"))
        if rng.random() < 0.2:
            self.inbox.append(StepCheckpointed(at=at, step_id=task.step_id, attempt=task.attempt, data=roll))
        output = task.input if task.task == "echo" else {"step": task.step_id, "attempt": task.attempt}
        if roll < 0.8:
            outcome: Event = StepCompleted(at=at, step_id=task.step_id, attempt=task.attempt, output=output)
        else:
            outcome = StepFailed(
                at=at,
                step_id=task.step_id,
                attempt=task.attempt,
                error=f"error {roll:.2f}",
                retryable=roll < 0.97,
            )
        self.inbox.append(outcome)
        if rng.random() < 0.2:
            self.inbox.append(outcome)  # at-least-once delivery

    def child(self, start: StartChildRun) -> None:
        """A child run ends: completed, failed or cancelled; its notice may arrive twice."""
        status = self.rng.choices(["completed", "failed", "cancelled"], weights=[8, 2, 1])[0]
        notice = ChildRunFinished(
            at=self.now,
            step_id=start.parent.step_id,
            attempt=start.parent.attempt,
            child_run_id=start.child_run_id,
            status=status,
            output={"child": start.input},
            error=None if status == "completed" else "child said no",
        )
        self.inbox += [notice] * self.rng.choice([1, 1, 2])


def check_transition(old: RunState | None, new: RunState) -> None:
    if old is None:
        return
    if old.terminal:
        assert new == old, "a finished run changed"
    for sid, step in old.steps.items():
        if step.status in STEP_TERMINAL:
            assert new.steps[sid] == step, f"finished step {sid} changed"
    for sid, step in new.steps.items():
        before = old.steps.get(sid)
        assert before is None or step.attempts >= before.attempts
        assert step.attempts <= policy(new, sid).max_attempts, f"{sid} ran too many attempts"


# --- the property ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_decide_agrees_with_replay(seed: int) -> None:
    world = World(seed)
    while not world.st.terminal:
        assert len(world.recorded) < MAX_EVENTS, f"run did not finish within {MAX_EVENTS} events"
        assert world.step(), f"run stuck in {world.st.status}: {world.st.steps}"
    ended_at = len(world.recorded)
    # Everything still in flight arrives after the end and must change nothing.
    final = world.st
    for event in world.inbox + [
        TimerFired(at=t.fire_at, kind=t.kind, step_id=t.step_id, attempt=t.attempt) for t in world.timers
    ]:
        assert world.apply(event) == final

    state = world.st
    assert state.status in ("completed", "failed", "cancelled")
    if state.status == "cancelled":
        assert world.cancel_sent
    if state.status == "completed":
        assert all(state.steps[s.id].status in STEP_SATISFIED for s in world.wf.steps)
    if state.status == "failed":
        assert state.error
    assert state.events <= ended_at

    # replay of the whole history, and of every prefix, equals what decide() produced
    assert replay(world.recorded) == state
    assert replay(world.recorded) == state
    decoded = [decode_event(encode_event(e)) for e in world.recorded]
    assert decoded == world.recorded
    folded: RunState | None = None
    for event, expected in zip(decoded, world.states, strict=True):
        folded = fold(folded, event)
        assert folded == expected
    rng = random.Random(seed)
    for k in rng.sample(range(1, len(world.recorded) + 1), min(5, len(world.recorded))):
        assert replay(world.recorded[:k]) == world.states[k - 1]


def test_the_generator_covers_the_interesting_cases() -> None:
    """Guard against the property test silently testing less than it claims."""
    seen: dict[str, int] = {}
    for seed in SEEDS:
        world = World(seed)
        while not world.st.terminal and world.step():
            pass
        seen[world.st.status] = seen.get(world.st.status, 0) + 1
        types = {type(e).__name__ for e in world.recorded}
        for name in (
            "MapExpanded",
            "StepSkipped",
            "StepWaiting",
            "SignalReceived",
            "TimerFired",
            "ChildRunFinished",
            "StepCheckpointed",
        ):
            if name in types:
                seen[name] = seen.get(name, 0) + 1
        if any(isinstance(e, TimerFired) and e.kind == "step_timeout" for e in world.recorded):
            seen["step_timeout"] = seen.get("step_timeout", 0) + 1
        if any(isinstance(e, TimerFired) and e.kind == "retry" for e in world.recorded):
            seen["retry"] = seen.get("retry", 0) + 1
    for key in (
        "completed",
        "failed",
        "cancelled",
        "MapExpanded",
        "StepSkipped",
        "StepWaiting",
        "SignalReceived",
        "ChildRunFinished",
        "StepCheckpointed",
        "step_timeout",
        "retry",
    ):
        assert seen.get(key, 0) >= 3, (key, seen)
