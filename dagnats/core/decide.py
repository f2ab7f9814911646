"""decide() and replay(): the one place where workflow semantics live.

Rules:
- `decide(state, event)` returns the state after `event` and the actions it calls
  for. It never reads a clock, an id generator or the network: time comes in on events.
- Actions come in two kinds. Effects (dispatch a task, start a timer, start or cancel a child
  run, notify a parent) belong to the event that caused them. `AppendEvent` actions are
  derived from the resulting state alone (`plan.next_events`), so after folding several events the
  shell only needs those of the last one.
- What an event does depends on the phase of the step it names, and `STEP_TRANSITIONS` lists
  the legal (phase, event) pairs in one table; "waiting for a retry" is a phase of its own.
- An event that does not fit the run (a late result of a superseded attempt, a duplicate, a
  result after the run ended, a decision quoting a digest the request no longer has) changes
  nothing: that is how at-least-once delivery, crash redo and a stale console stay harmless. An event that can never be valid (no `run.started`, an unknown step)
  raises `IllegalEvent` and leaves the state as it was.
- `replay(events)` is a fold over the same transitions, so the engine, the
  client and the tests cannot disagree about a run's state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from .actions import Action, AppendEvent
from .definition import WORKER_KINDS, RetryPolicy, StepKind
from .durations import format_duration
from .effects import child_run_id, effects
from .events import (
    AgentContinuing,
    AgentTurnRecorded,
    ApprovalDecided,
    ApprovalRequested,
    ChildRunFinished,
    Event,
    MapExpanded,
    PlanExpanded,
    PlanFinished,
    RunCancelRequested,
    RunCompleted,
    RunContinued,
    RunFailed,
    RunStarted,
    SignalReceived,
    StepCheckpointed,
    StepCompleted,
    StepFailed,
    StepLog,
    StepQueued,
    StepSkipped,
    StepStarted,
    StepWaiting,
    TimerFired,
    ToolResultRecorded,
    encode_event,
    event_type,
)
from .plan import next_event, next_events
from .state import (
    STEP_TERMINAL,
    Approval,
    RunState,
    RunStatus,
    Signal,
    StepPhase,
    StepState,
    StepStatus,
    ToolResult,
    Turn,
    item_id,
    step_phase,
)
from .steps import with_step
from .tally import keep, moved, tally

replace = msgspec.structs.replace


class IllegalEvent(Exception):
    """An event that can never apply to this run; the state is left unchanged."""


def decide(
    state: RunState | None, event: Event, *, first_only: bool = False
) -> tuple[RunState, list[Action]]:
    """Fold one event into the run state and say what must happen next. With `first_only`,
    only the first event to record is worked out (the engine records one at a time)."""
    new = transition(state, event)
    wf = new.definition
    actions: list[Action] = list(effects(wf, state, new, event))
    if first_only:
        upcoming = next_event(new)
        if upcoming is not None:
            actions.append(AppendEvent(event=upcoming))
    else:
        actions += [AppendEvent(event=e) for e in next_events(new)]
    return new, actions


def chain(
    state: RunState, upcoming: list[Event], *, max_events: int, max_bytes: int, max_event_bytes: int
) -> list[tuple[Event, RunState, list[Action]]]:
    """The events an engine would record one after another from `state`, starting with
    `upcoming`, each decided on the state the previous one leaves: a pass to append as one
    batch. Stops before an event larger than `max_event_bytes` (recorded alone, see
    `too_large`), at `max_events` or `max_bytes` (the first event always fits), and before an
    illegal event (recorded alone, and skipped)."""
    out: list[tuple[Event, RunState, list[Action]]] = []
    size = 0
    keep(state.steps)  # the pass starts from `state` again if its append loses a race
    while upcoming and len(out) < max_events:
        event = upcoming[0]
        encoded = len(encode_event(event))
        if encoded > max_event_bytes:
            break
        size += encoded
        if size > max_bytes and out:
            break
        try:
            new, actions = decide(state, event, first_only=True)
        except IllegalEvent:
            break
        out.append((event, new, actions))
        state = new
        upcoming = [a.event for a in actions if isinstance(a, AppendEvent)]
    return out


def too_large(event: Event, size: int, error: str = "") -> Event:
    """What to record instead of an engine event of `size` bytes that does not fit in a
    message (even with its value in the object store): the failure it causes, of its step or
    else of the run. `error` says why, if not the message limit."""
    step_id = getattr(event, "step_id", "")
    what = type(event).__name__
    if step_id:
        return StepFailed(
            at=event.at,
            step_id=step_id,
            attempt=getattr(event, "attempt", 1),
            retryable=False,
            error=error or f"{what} of {size} bytes exceeds the message limit (input or output too large)",
        )
    return RunFailed(at=event.at, error=error or f"run output of {size} bytes exceeds the message limit")


def replay(events: Iterable[Event]) -> RunState | None:
    """The state of a run after `events`, skipping any illegal ones as the engine does."""
    state: RunState | None = None
    for event in events:
        state = fold(state, event)
    return state


def fold(state: RunState | None, event: Event) -> RunState | None:
    """decide() without the actions; illegal events leave the state unchanged."""
    try:
        return transition(state, event)
    except IllegalEvent:
        return state


def transition(state: RunState | None, event: Event) -> RunState:
    """The state after `event`; raises IllegalEvent for an event that can never apply."""
    if state is None:
        if not isinstance(event, RunStarted):
            raise IllegalEvent(f"{type(event).__name__} before run.started")
        if event.source == "w":
            raise IllegalEvent("a worker may not start runs")
        return _start(event)
    if isinstance(event, RunStarted):
        raise IllegalEvent("run.started twice")
    step_id = getattr(event, "step_id", "")
    if step_id and step_id not in state.steps:
        raise IllegalEvent(f"unknown step {step_id!r}")
    if isinstance(event, TimerFired) and event.kind not in TIMER_KINDS:
        raise IllegalEvent(f"unknown timer kind {event.kind!r}")
    if event.source == "w":
        _admit_from_worker(state, event)
    new = _apply(state, event)
    return new if new is state else _settle(new, event.at)


# --- transitions -------------------------------------------------------------------------


def _start(ev: RunStarted) -> RunState:
    steps = {s.id: StepState() for s in ev.definition.steps}
    fork = ev.fork
    if fork is not None:
        for sid, output in fork.kept.items():
            steps[sid] = StepState(status=StepStatus.COMPLETED, output=output, finished_at=ev.at)
        for sid in fork.skipped:
            steps[sid] = StepState(status=StepStatus.SKIPPED, finished_at=ev.at)
        if fork.input is not msgspec.UNSET:
            steps[fork.step_id] = replace(steps[fork.step_id], input_override=fork.input)
        if fork.turns:
            kept_turns = [msgspec.convert(t, Turn) for t in fork.turns]
            steps[fork.step_id] = replace(steps[fork.step_id], turns=kept_turns)
    return RunState(
        run_id=ev.run_id,
        workflow=ev.workflow,
        version=ev.version,
        definition=ev.definition,
        input=ev.input,
        created_at=ev.at,
        updated_at=ev.at,
        parent=ev.parent,
        depth=ev.depth,
        root_run_id=ev.root_run_id or ev.run_id,
        generation=ev.generation,
        continued_from=ev.continued_from,
        chain_start=ev.chain_start or ev.run_id,
        forked_from=fork.run_id if fork and not ev.continued_from else None,
        fork_step=fork.step_id if fork and not ev.continued_from else None,
        steps=steps,
        events=1,
    )


WORKER_EVENTS = (
    StepStarted,
    StepCompleted,
    StepFailed,
    StepLog,
    StepCheckpointed,
    AgentTurnRecorded,
    ToolResultRecorded,
    AgentContinuing,
    ApprovalRequested,
)


def _admit_from_worker(state: RunState, event: Event) -> None:
    """Workers may only report on the steps they execute; anything else is forged or a bug."""
    if not isinstance(event, WORKER_EVENTS):
        raise IllegalEvent(f"{type(event).__name__} may not come from a worker")
    kind = state.step_def(event.step_id).type
    if kind not in WORKER_KINDS:
        raise IllegalEvent(f"a worker may not report on {kind} step {event.step_id!r}")
    if isinstance(event, ApprovalRequested) and (event.kind != "tool_call" or kind != StepKind.AGENT_LOOP):
        raise IllegalEvent("a worker may only ask approval for an agent's tool call")


# --- the transition table ----------------------------------------------------------------
#
# What each event does, by the phase of the step it names (h11-style). An event whose key the
# step's phase does not list does not fit (a late result of a superseded attempt, a duplicate,
# a timer that lost its race) and changes nothing; so does one of another attempt than the
# current (the next one, for a pending step). An ended run takes no event at all. The moves
# below check only what the table cannot: data (turn numbers, a plan's presence, a digest).

Move = Callable[[RunState, StepState, Any], RunState]


def _apply(state: RunState, event: Event) -> RunState:
    """Returns `state` itself when the event changes nothing."""
    if state.terminal:
        return state
    own = _EVENT_MOVES.get(type(event))
    if own is not None:
        return own(state, event)
    return _step_move(state, event, _key(state, event))


def _step_move(state: RunState, event: Any, key: str) -> RunState:
    """Look the event up in the table under its step's phase; apply the move it lists."""
    step = state.steps.get(event.step_id)
    if step is None:
        return state
    phase = step_phase(step)
    move = STEP_TRANSITIONS[phase].get(key)
    if move is None or not _attempt_fits(step, phase, event):
        return state
    return move(state, step, event)


_ANY_ATTEMPT = (StepWaiting, ApprovalRequested, AgentTurnRecorded, ToolResultRecorded)


def _attempt_fits(step: StepState, phase: StepPhase, event: Any) -> bool:
    attempt = getattr(event, "attempt", None)
    if attempt is None or isinstance(event, _ANY_ATTEMPT):
        return True
    return bool(attempt == step.attempts + (1 if phase == StepPhase.PENDING else 0))


def _key(state: RunState, event: Event) -> str:
    """The event's row in the table: its type, told apart where a step's kind changes it."""
    match event:
        case TimerFired(kind=kind):
            return f"timer.{kind}"
        case StepCompleted(step_id=sid) if state.step_def(sid).type == StepKind.PLANNER:
            return "plan.proposed"  # a planner's task answers with its plan
        case RunContinued(step_id=sid) if state.step_def(sid).type != StepKind.CONTINUE_AS_NEW:
            return "run.continued.carry"  # an agent handing its carry over
    return event_type(event)


# --- moves: one per event type (and phase, where it differs) --------------------------------


def _queue(state: RunState, step: StepState, ev: StepQueued) -> RunState:
    queued = replace(
        step,
        status=StepStatus.QUEUED,
        attempts=ev.attempt,
        input=ev.input,
        queued_at=ev.at,
        started_at=None,
        retry_at=None,
        error=None,
    )
    if state.step_def(ev.step_id).type == StepKind.SUB_WORKFLOW:
        # The child's id is derived, so the parent knows it without waiting for a reply.
        child = child_run_id(state.run_id, ev.step_id, ev.attempt)
        queued = replace(queued, status=StepStatus.RUNNING, started_at=ev.at, child_run_id=child)
    return _put(state, ev.step_id, queued)


def _start_attempt(state: RunState, step: StepState, ev: StepStarted) -> RunState:
    return _put(state, ev.step_id, replace(step, status=StepStatus.RUNNING, started_at=ev.at))


def _wait(state: RunState, step: StepState, ev: StepWaiting) -> RunState:
    waiting = replace(
        step,
        status=StepStatus.WAITING,
        attempts=ev.attempt,
        started_at=ev.at,
        waiting_until=ev.until,
        waiting_signal=ev.signal,
    )
    return _put(state, ev.step_id, waiting)


def _skip(state: RunState, step: StepState, ev: StepSkipped) -> RunState:
    return _put(state, ev.step_id, replace(step, status=StepStatus.SKIPPED, finished_at=ev.at))


def _take_plan(state: RunState, step: StepState, ev: StepCompleted) -> RunState:
    """A planner's task answered; the step completes when its plan has run."""
    if step.plan is not None:
        return state
    return _put(state, ev.step_id, replace(step, status=StepStatus.RUNNING, plan=ev.output))


def _complete(state: RunState, step: StepState, ev: StepCompleted) -> RunState:
    done = replace(
        step,
        status=StepStatus.COMPLETED,
        output=ev.output,
        error=None,
        finished_at=ev.at,
        waiting_until=None,
        started_at=step.started_at if ev.started_at is None else ev.started_at,
    )
    new = _put(state, ev.step_id, done)
    if step.waiting_signal is not None:
        new = _consume_signal(new, step.waiting_signal, ev.step_id)
    return new


def _fail(state: RunState, step: StepState, ev: StepFailed) -> RunState:
    if ev.started_at is not None:
        step = replace(step, started_at=ev.started_at)
    return _failed(state, step, ev.step_id, ev.attempt, ev.error, ev.retryable, ev.at)


def _failed(
    state: RunState, step: StepState, sid: str, attempt: int, error: str, retryable: bool, at: float
) -> RunState:
    """An attempt failed: wait for the next one while the retry policy allows, else fail."""
    policy = state.step_def(sid).retry or RetryPolicy()
    if retryable and attempt < policy.max_attempts:
        retry_at = at + policy.delay(attempt)
        waiting = replace(step, status=StepStatus.WAITING, attempts=attempt, error=error, retry_at=retry_at)
        return _put(state, sid, waiting)
    return _put(
        state, sid, replace(step, status=StepStatus.FAILED, attempts=attempt, error=error, finished_at=at)
    )


def _time_out(state: RunState, step: StepState, ev: TimerFired) -> RunState:
    limit = state.step_def(ev.step_id).timeout_seconds or 0.0
    error = f"timed out after {format_duration(limit)}"
    return _failed(state, step, ev.step_id, ev.attempt, error, True, ev.at)


def _retry_due(state: RunState, step: StepState, ev: TimerFired) -> RunState:
    return _put(state, ev.step_id, replace(step, status=StepStatus.PENDING, retry_at=None))


def _checkpoint(state: RunState, step: StepState, ev: StepCheckpointed) -> RunState:
    return _put(state, ev.step_id, replace(step, checkpoint=ev.data))


def _hand_over(state: RunState, step: StepState, ev: RunContinued) -> RunState:
    output = {"continued_to": ev.next_run_id}
    done = replace(step, status=StepStatus.COMPLETED, output=output, finished_at=ev.at)
    ended = _end(_put(state, ev.step_id, done), ev.at, RunStatus.CONTINUED)
    return replace(ended, continued_to=ev.next_run_id)


def _hand_over_carry(state: RunState, step: StepState, ev: RunContinued) -> RunState:
    return state if step.carry is None else _hand_over(state, step, ev)


def _keep_carry(state: RunState, step: StepState, ev: AgentContinuing) -> RunState:
    return state if step.carry is not None else _put(state, ev.step_id, replace(step, carry=ev.carry))


def _expand_plan(state: RunState, step: StepState, ev: PlanExpanded) -> RunState:
    if step.plan is None or step.plan_steps:
        return state
    ids = [s.id for s in ev.steps]
    steps = {**state.steps, ev.step_id: replace(step, plan_steps=ids)}
    steps.update({sid: StepState() for sid in ids})
    dynamic = {**state.dynamic, **{s.id: s for s in ev.steps}}
    return replace(state, steps=steps, dynamic=dynamic)


def _finish_plan(state: RunState, step: StepState, ev: PlanFinished) -> RunState:
    if not step.plan_steps:
        return state
    done = replace(step, status=StepStatus.COMPLETED, output=ev.output, finished_at=ev.at)
    return _put(state, ev.step_id, done)


def _record_turn(state: RunState, step: StepState, ev: AgentTurnRecorded) -> RunState:
    if ev.turn != len(step.turns):
        return state  # a duplicate, or a turn of an attempt that lost its race
    turn = Turn(text=ev.text, tool_calls=ev.tool_calls, usage=ev.usage, stop_reason=ev.stop_reason, at=ev.at)
    return _put(state, ev.step_id, replace(step, turns=[*step.turns, turn]))


def _record_tool_result(state: RunState, step: StepState, ev: ToolResultRecorded) -> RunState:
    if not 0 <= ev.turn < len(step.turns):
        return state
    turn = step.turns[ev.turn]
    if ev.call_id in turn.results or all(c.get("id") != ev.call_id for c in turn.tool_calls):
        return state
    result = ToolResult(name=ev.name, result=ev.result, is_error=ev.is_error)
    turns = list(step.turns)
    turns[ev.turn] = replace(turn, results={**turn.results, ev.call_id: result})
    return _put(state, ev.step_id, replace(step, turns=turns))


def _expand_map(state: RunState, step: StepState, ev: MapExpanded) -> RunState:
    steps = dict(state.steps)
    started = replace(step, status=StepStatus.RUNNING, attempts=1, started_at=ev.at, items=len(ev.items))
    steps[ev.step_id] = started
    for i, item in enumerate(ev.items):
        steps[item_id(ev.step_id, i)] = StepState(input=item)
    return replace(state, steps=steps)


def _child_finished(state: RunState, step: StepState, ev: ChildRunFinished) -> RunState:
    if step.child_run_id != ev.child_run_id:
        return state
    if ev.status == RunStatus.COMPLETED:
        done = replace(step, status=StepStatus.COMPLETED, output=ev.output, finished_at=ev.at)
        return _put(state, ev.step_id, done)
    error = f"child run {ev.child_run_id} {ev.status}: {ev.error or ''}".rstrip(": ")
    return _failed(state, step, ev.step_id, ev.attempt, error, ev.status == RunStatus.FAILED, ev.at)


def _wake(state: RunState, step: StepState, ev: TimerFired) -> RunState:
    """A sleep ends, or a wait for a signal or a decision times out."""
    if step.waiting_until is None:
        return state
    if state.step_def(ev.step_id).type == StepKind.APPROVAL:
        waited = format_duration((step.waiting_until or ev.at) - (step.started_at or ev.at))
        expired = _expire_approvals(state, ev.step_id, ev.at)
        return _put(expired, ev.step_id, _finish(step, ev.at, error=f"no decision within {waited}"))
    if step.waiting_signal is not None:
        error = f"no signal {step.waiting_signal!r} before the timeout"
        return _put(state, ev.step_id, _finish(step, ev.at, error=error))
    slept = {"slept": ev.at - (step.started_at or ev.at)}
    return _put(state, ev.step_id, _finish(step, ev.at, output=slept))


def _finish(step: StepState, at: float, *, output: Any = None, error: str | None = None) -> StepState:
    """A waiting step's end: completed with `output`, or failed with `error`."""
    status = StepStatus.COMPLETED if error is None else StepStatus.FAILED
    if error is None:
        return replace(step, status=status, output=output, finished_at=at, waiting_until=None)
    return replace(step, status=status, error=error, finished_at=at, waiting_until=None)


# --- approvals: recorded whatever the step does; what the step does is in the table ---------


def _on_approval_requested(state: RunState, ev: ApprovalRequested) -> RunState:
    if ev.approval_id in state.approvals:
        return state
    if ev.kind == "step":
        return _step_move(state, ev, "approval.requested.step")
    return _step_move(_record_request(state, ev), ev, "approval.requested")


def _record_request(state: RunState, ev: ApprovalRequested) -> RunState:
    approval = Approval(
        approval_id=ev.approval_id,
        step_id=ev.step_id,
        kind=ev.kind,
        attempt=ev.attempt,
        prompt=ev.prompt,
        details=ev.details,
        requested_at=ev.at,
        expires_at=ev.expires_at,
    )
    return replace(state, approvals={**state.approvals, ev.approval_id: approval})


def _ask_operator(state: RunState, step: StepState, ev: ApprovalRequested) -> RunState:
    waiting = replace(
        step,
        status=StepStatus.WAITING,
        attempts=ev.attempt,
        input=ev.details,
        started_at=ev.at,
        waiting_until=ev.expires_at,
    )
    return _put(_record_request(state, ev), ev.step_id, waiting)


def _park(state: RunState, step: StepState, ev: ApprovalRequested) -> RunState:
    """An agent parks until its tool call (or a planner until its plan) is decided."""
    return _put(state, ev.step_id, replace(step, status=StepStatus.WAITING))


def _on_approval_decided(state: RunState, ev: ApprovalDecided) -> RunState:
    approval = state.approvals.get(ev.approval_id)
    if approval is None or approval.status != "pending" or approval.step_id != ev.step_id:
        return state
    if ev.digest and ev.digest != approval.digest:  # decided on what the operator saw, not this
        return state
    decided = replace(
        approval,
        status="approved" if ev.approved else "denied",
        by=ev.by,
        comment=ev.comment,
        decided_at=ev.at,
    )
    new = replace(state, approvals={**state.approvals, ev.approval_id: decided})
    return _step_move(new, ev, f"approval.decided.{approval.kind}")


def _resume(state: RunState, step: StepState, ev: ApprovalDecided) -> RunState:
    """The step goes on once nothing of it waits for an operator any more."""
    if any(a.status == "pending" and a.step_id == ev.step_id for a in state.approvals.values()):
        return state
    return _put(state, ev.step_id, replace(step, status=StepStatus.RUNNING))


def _plan_decided(state: RunState, step: StepState, ev: ApprovalDecided) -> RunState:
    if ev.approved:
        return _resume(state, step, ev)
    reason = f": {ev.comment}" if ev.comment else ""
    error = f"plan denied by {ev.by}{reason}"
    return _put(state, ev.step_id, replace(step, status=StepStatus.FAILED, error=error, finished_at=ev.at))


def _operator_decided(state: RunState, step: StepState, ev: ApprovalDecided) -> RunState:
    if ev.approved:
        output = {"approved": True, "by": ev.by, "comment": ev.comment}
        return _put(state, ev.step_id, _finish(step, ev.at, output=output))
    reason = f": {ev.comment}" if ev.comment else ""
    return _put(state, ev.step_id, _finish(step, ev.at, error=f"denied by {ev.by}{reason}"))


# --- run-level events ---------------------------------------------------------------------


def _cancel(state: RunState, ev: RunCancelRequested) -> RunState:
    error = f"cancelled: {ev.reason}" if ev.reason else "cancelled"
    return _end(state, ev.at, RunStatus.CANCELLED, error=error)


def _on_timer(state: RunState, ev: TimerFired) -> RunState:
    if ev.kind != "run_timeout":
        return _step_move(state, ev, f"timer.{ev.kind}")
    limit = state.definition.timeout_seconds or 0.0
    return _end(state, ev.at, RunStatus.FAILED, error=f"run exceeded its timeout of {format_duration(limit)}")


_EVENT_MOVES: dict[type, Callable[[RunState, Any], RunState]] = {
    RunCancelRequested: _cancel,
    RunCompleted: lambda state, ev: _end(state, ev.at, RunStatus.COMPLETED, output=ev.output),
    RunFailed: lambda state, ev: _end(state, ev.at, RunStatus.FAILED, error=ev.error),
    SignalReceived: lambda state, ev: replace(
        state, signals=[*state.signals, Signal(name=ev.name, data=ev.data)]
    ),
    TimerFired: _on_timer,
    ApprovalRequested: _on_approval_requested,
    ApprovalDecided: _on_approval_decided,
    StepLog: lambda state, ev: state,
}

# What an agent or a task reports while its attempt is on, even after it failed (its
# transcript and checkpoint stay for the next attempt).
_REPORTS: dict[str, Move] = {
    "step.checkpointed": _checkpoint,
    "agent.turn": _record_turn,
    "agent.tool_result": _record_tool_result,
}
_RESULTS: dict[str, Move] = {"step.completed": _complete, "step.failed": _fail}
_BUSY: dict[str, Move] = {
    **_REPORTS,
    **_RESULTS,
    "plan.proposed": _take_plan,
    "timer.step_timeout": _time_out,
}


def _sent_before_queued(move: Move) -> Move:
    """A worker's report on the attempt after the step's last one, before its `step.queued`.

    The engine sends a task at the same time as it appends the task's `step.queued`
    (engine/passes.py: one write less on every step's critical path). When that append loses a
    race (another event of the run landed first), the task is out, and its worker may report
    before the engine records the `step.queued` again. The report proves the attempt was
    dispatched, so it counts as queued (its input, carried only by `step.queued`, is then not
    in the state), and the engine, seeing the step under way, does not queue it again."""

    def early(state: RunState, step: StepState, ev: Any) -> RunState:
        if state.step_def(ev.step_id).type not in WORKER_KINDS:
            return state
        queued = replace(step, status=StepStatus.QUEUED, attempts=ev.attempt, queued_at=ev.at, error=None)
        return move(state, queued, ev)

    return early


STEP_TRANSITIONS: dict[StepPhase, dict[str, Move]] = {
    StepPhase.PENDING: {
        "step.queued": _queue,
        # the engine could not start it (a bad template, a bound), or a worker's attempt failed
        # before its step.queued was recorded (see _sent_before_queued)
        "step.failed": _fail,
        "step.started": _sent_before_queued(_start_attempt),
        "step.completed": _sent_before_queued(_complete),
        "plan.proposed": _sent_before_queued(_take_plan),
        "step.waiting": _wait,
        "step.skipped": _skip,
        "map.expanded": _expand_map,
        "approval.requested.step": _ask_operator,
    },
    StepPhase.QUEUED: {**_BUSY, "step.started": _start_attempt, "run.continued": _hand_over},
    StepPhase.RUNNING: {
        **_BUSY,
        "run.continued.carry": _hand_over_carry,
        "agent.continuing": _keep_carry,
        "plan.expanded": _expand_plan,
        "plan.finished": _finish_plan,
        "child.finished": _child_finished,
        "approval.requested": _park,
    },
    StepPhase.WAITING: {
        **_REPORTS,
        **_RESULTS,
        "timer.wake": _wake,
        "approval.decided.step": _operator_decided,
        "approval.decided.tool_call": _resume,
        "approval.decided.plan": _plan_decided,
    },
    StepPhase.RETRY_WAIT: {**_REPORTS, "timer.retry": _retry_due},
    StepPhase.COMPLETED: {},
    StepPhase.FAILED: {},
    StepPhase.SKIPPED: {},
    StepPhase.CANCELLED: {},
}
TIMER_KINDS = frozenset({"retry", "step_timeout", "run_timeout", "wake"})


def _expire_approvals(state: RunState, step_id: str, at: float) -> RunState:
    approvals = {
        aid: replace(a, status="expired", decided_at=at)
        if a.step_id == step_id and a.status == "pending"
        else a
        for aid, a in state.approvals.items()
    }
    return replace(state, approvals=approvals)


def _end(
    state: RunState, at: float, status: RunStatus, output: Any = None, error: str | None = None
) -> RunState:
    if any(a.status == "pending" for a in state.approvals.values()):
        approvals = {
            aid: replace(a, status="cancelled", decided_at=at) if a.status == "pending" else a
            for aid, a in state.approvals.items()
        }
        state = replace(state, approvals=approvals)
    steps = {
        sid: (
            replace(s, status=StepStatus.CANCELLED, finished_at=at, retry_at=None, waiting_until=None)
            if s.status not in STEP_TERMINAL
            else s
        )
        for sid, s in state.steps.items()
    }
    return replace(state, status=status, output=output, error=error, finished_at=at, steps=steps)


def _settle(state: RunState, at: float) -> RunState:
    """Bookkeeping after every change: event count, last time, running vs waiting (from the
    steps' tally, not a scan: see core/tally.py)."""
    status = state.status
    if not state.terminal:
        counts = tally(state.steps)
        status = RunStatus.WAITING if counts.waiting and not counts.busy else RunStatus.RUNNING
    return replace(state, status=status, updated_at=at, events=state.events + 1)


def _put(state: RunState, sid: str, step: StepState) -> RunState:
    steps = with_step(state.steps, sid, step)  # shared with `state`'s, for a big run
    moved(state.steps, steps, sid)  # the tally follows the one step that changed
    return replace(state, steps=steps)


def _consume_signal(state: RunState, name: str, by: str) -> RunState:
    signals = list(state.signals)
    for i, sig in enumerate(signals):
        if sig.name == name and sig.consumed_by is None:
            signals[i] = replace(sig, consumed_by=by)
            break
    return replace(state, signals=signals)
