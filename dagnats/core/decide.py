"""decide() and replay(): the one place where workflow semantics live.

Rules:
- `decide(state, event)` returns the state after `event` and the actions it calls
  for. It never reads a clock, an id generator or the network: time comes in on events.
- Actions come in two kinds. Effects (dispatch a task, start a timer, start or cancel a child
  run, notify a parent) belong to the event that caused them. `AppendEvent` actions are
  derived from the resulting state alone (`plan.next_events`), so after folding several events the
  shell only needs those of the last one.
- An event that does not fit the run (a late result of a superseded attempt, a duplicate, a
  result after the run ended, a decision quoting a digest the request no longer has) changes
  nothing: that is how at-least-once delivery, crash redo and a stale console stay harmless. An event that can never be valid (no `run.started`, an unknown step)
  raises `IllegalEvent` and leaves the state as it was.
- `replay(events)` is a fold over the same transitions, so the engine, the
  client and the tests cannot disagree about a run's state.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, assert_never

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
)
from .plan import next_event, next_events
from .state import (
    BUSY,
    STEP_ACTIVE,
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


def too_large(event: Event, size: int) -> Event:
    """What to record instead of an engine event of `size` bytes that does not fit in a
    message: the failure it causes, of its step or else of the run."""
    step_id = getattr(event, "step_id", "")
    what = type(event).__name__
    if step_id:
        return StepFailed(
            at=event.at,
            step_id=step_id,
            attempt=getattr(event, "attempt", 1),
            retryable=False,
            error=f"{what} of {size} bytes exceeds the message limit (input or output too large)",
        )
    return RunFailed(at=event.at, error=f"run output of {size} bytes exceeds the message limit")


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


def _apply(state: RunState, event: Event) -> RunState:
    """The pure transition table. Returns `state` itself when the event changes nothing."""
    if state.terminal and not isinstance(event, StepLog):
        return state
    match event:
        case RunStarted():
            raise IllegalEvent("run.started twice")
        case RunCancelRequested(reason=reason):
            return _end(
                state, event.at, RunStatus.CANCELLED, error=f"cancelled: {reason}" if reason else "cancelled"
            )
        case RunCompleted(output=output):
            return _end(state, event.at, RunStatus.COMPLETED, output=output)
        case RunFailed(error=error):
            return _end(state, event.at, RunStatus.FAILED, error=error)
        case RunContinued(step_id=sid, next_run_id=next_id):
            step = state.steps[sid]
            handing_over = (
                step.status == StepStatus.QUEUED and state.step_def(sid).type == StepKind.CONTINUE_AS_NEW
            ) or (step.status == StepStatus.RUNNING and step.carry is not None)
            if not handing_over:
                return state
            done = _put(
                state,
                sid,
                replace(
                    step,
                    status=StepStatus.COMPLETED,
                    output={"continued_to": next_id},
                    finished_at=event.at,
                ),
            )
            return replace(_end(done, event.at, RunStatus.CONTINUED), continued_to=next_id)
        case SignalReceived(name=name, data=data):
            return replace(state, signals=[*state.signals, Signal(name=name, data=data)])
        case StepQueued():
            return _on_queued(state, event)
        case StepStarted(step_id=sid, attempt=attempt):
            step = state.steps[sid]
            if step.status != StepStatus.QUEUED or step.attempts != attempt:
                return state
            return _put(state, sid, replace(step, status=StepStatus.RUNNING, started_at=event.at))
        case StepWaiting(step_id=sid, attempt=attempt, until=until, signal=signal):
            step = state.steps[sid]
            if step.status != StepStatus.PENDING:
                return state
            return _put(
                state,
                sid,
                replace(
                    step,
                    status=StepStatus.WAITING,
                    attempts=attempt,
                    started_at=event.at,
                    waiting_until=until,
                    waiting_signal=signal,
                ),
            )
        case StepCompleted():
            return _on_completed(state, event)
        case StepFailed(step_id=sid, attempt=attempt, error=error, retryable=retryable):
            return _on_failed(state, sid, attempt, error, retryable, event.at, event.started_at)
        case StepSkipped(step_id=sid):
            step = state.steps[sid]
            if step.status != StepStatus.PENDING:
                return state
            return _put(state, sid, replace(step, status=StepStatus.SKIPPED, finished_at=event.at))
        case StepLog():
            return state
        case ApprovalRequested():
            return _on_approval_requested(state, event)
        case AgentTurnRecorded():
            return _on_agent_turn(state, event)
        case PlanExpanded():
            return _on_plan_expanded(state, event)
        case PlanFinished(step_id=sid, output=output):
            step = state.steps[sid]
            if step.status != StepStatus.RUNNING or not step.plan_steps:
                return state
            return _put(
                state, sid, replace(step, status=StepStatus.COMPLETED, output=output, finished_at=event.at)
            )
        case ToolResultRecorded():
            return _on_tool_result(state, event)
        case AgentContinuing(step_id=sid, attempt=attempt, carry=carry):
            step = state.steps[sid]
            if step.status != StepStatus.RUNNING or step.attempts != attempt or step.carry is not None:
                return state
            return _put(state, sid, replace(step, carry=carry))
        case ApprovalDecided():
            return _on_approval_decided(state, event)
        case MapExpanded(step_id=sid, items=items):
            return _on_map_expanded(state, sid, items, event.at)
        case TimerFired():
            return _on_timer(state, event)
        case StepCheckpointed(step_id=sid, attempt=attempt, data=data):
            step = state.steps[sid]
            if step.status not in STEP_ACTIVE or step.attempts != attempt:
                return state
            return _put(state, sid, replace(step, checkpoint=data))
        case ChildRunFinished():
            return _on_child_finished(state, event)
        case _:
            assert_never(event)


def _on_queued(state: RunState, ev: StepQueued) -> RunState:
    step = state.steps[ev.step_id]
    if step.status != StepStatus.PENDING or ev.attempt != step.attempts + 1:
        return state
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


def _on_completed(state: RunState, ev: StepCompleted) -> RunState:
    step = state.steps[ev.step_id]
    if state.step_def(ev.step_id).type == StepKind.PLANNER:
        # A planner's task answers with its plan; the step completes when the plan has run.
        if step.status not in BUSY or step.attempts != ev.attempt or step.plan is not None:
            return state
        return _put(state, ev.step_id, replace(step, status=StepStatus.RUNNING, plan=ev.output))
    if (
        step.status not in STEP_ACTIVE
        or step.attempts != ev.attempt
        or step_phase(step) == StepPhase.RETRY_WAIT
    ):
        return state
    new = _put(
        state,
        ev.step_id,
        replace(
            step,
            status=StepStatus.COMPLETED,
            output=ev.output,
            error=None,
            finished_at=ev.at,
            waiting_until=None,
            started_at=step.started_at if ev.started_at is None else ev.started_at,
        ),
    )
    if step.waiting_signal is not None:
        new = _consume_signal(new, step.waiting_signal, ev.step_id)
    return new


def _on_failed(
    state: RunState,
    sid: str,
    attempt: int,
    error: str,
    retryable: bool,
    at: float,
    started_at: float | None = None,
) -> RunState:
    step = state.steps[sid]
    if started_at is not None:
        step = replace(step, started_at=started_at)
    engine_failure = step.status == StepStatus.PENDING and attempt == step.attempts + 1
    if not engine_failure and (
        step.status not in STEP_ACTIVE or step.attempts != attempt or step_phase(step) == StepPhase.RETRY_WAIT
    ):
        return state
    policy = state.step_def(sid).retry or RetryPolicy()
    if retryable and attempt < policy.max_attempts:
        return _put(
            state,
            sid,
            replace(
                step,
                status=StepStatus.WAITING,
                attempts=attempt,
                error=error,
                retry_at=at + policy.delay(attempt),
            ),
        )
    return _put(
        state, sid, replace(step, status=StepStatus.FAILED, attempts=attempt, error=error, finished_at=at)
    )


def _on_approval_requested(state: RunState, ev: ApprovalRequested) -> RunState:
    if ev.approval_id in state.approvals:
        return state
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
    new = replace(state, approvals={**state.approvals, ev.approval_id: approval})
    step = state.steps[ev.step_id]
    if ev.kind == "step":
        if step.status != StepStatus.PENDING:
            return state
        waiting = replace(
            step,
            status=StepStatus.WAITING,
            attempts=ev.attempt,
            input=ev.details,
            started_at=ev.at,
            waiting_until=ev.expires_at,
        )
        return _put(new, ev.step_id, waiting)
    if step.status == StepStatus.RUNNING:  # an agent parks until its tool call is decided
        return _put(new, ev.step_id, replace(step, status=StepStatus.WAITING))
    return new


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
    step = new.steps[ev.step_id]
    if approval.kind == "plan" and step.status == StepStatus.WAITING and not ev.approved:
        reason = f": {ev.comment}" if ev.comment else ""
        failed = replace(
            step, status=StepStatus.FAILED, error=f"plan denied by {ev.by}{reason}", finished_at=ev.at
        )
        return _put(new, ev.step_id, failed)
    if approval.kind in ("tool_call", "plan") and step.status == StepStatus.WAITING:
        if not any(a.status == "pending" and a.step_id == ev.step_id for a in new.approvals.values()):
            return _put(new, ev.step_id, replace(step, status=StepStatus.RUNNING))  # the step goes on
        return new
    if approval.kind != "step" or step.status != StepStatus.WAITING:
        return new
    if ev.approved:
        output = {"approved": True, "by": ev.by, "comment": ev.comment}
        return _put(
            new,
            ev.step_id,
            replace(step, status=StepStatus.COMPLETED, output=output, finished_at=ev.at, waiting_until=None),
        )
    reason = f": {ev.comment}" if ev.comment else ""
    return _put(
        new,
        ev.step_id,
        replace(
            step,
            status=StepStatus.FAILED,
            error=f"denied by {ev.by}{reason}",
            finished_at=ev.at,
            waiting_until=None,
        ),
    )


def _on_plan_expanded(state: RunState, ev: PlanExpanded) -> RunState:
    step = state.steps[ev.step_id]
    if step.status != StepStatus.RUNNING or step.plan is None or step.plan_steps:
        return state
    ids = [s.id for s in ev.steps]
    steps = {**state.steps, ev.step_id: replace(step, plan_steps=ids)}
    steps.update({sid: StepState() for sid in ids})
    dynamic = {**state.dynamic, **{s.id: s for s in ev.steps}}
    return replace(state, steps=steps, dynamic=dynamic)


def _on_agent_turn(state: RunState, ev: AgentTurnRecorded) -> RunState:
    step = state.steps[ev.step_id]
    if step.status not in STEP_ACTIVE or ev.turn != len(step.turns):
        return state  # a duplicate, or a turn of an attempt that lost its race
    turn = Turn(text=ev.text, tool_calls=ev.tool_calls, usage=ev.usage, stop_reason=ev.stop_reason, at=ev.at)
    return _put(state, ev.step_id, replace(step, turns=[*step.turns, turn]))


def _on_tool_result(state: RunState, ev: ToolResultRecorded) -> RunState:
    step = state.steps[ev.step_id]
    if step.status not in STEP_ACTIVE or not 0 <= ev.turn < len(step.turns):
        return state
    turn = step.turns[ev.turn]
    if ev.call_id in turn.results or all(c.get("id") != ev.call_id for c in turn.tool_calls):
        return state
    result = ToolResult(name=ev.name, result=ev.result, is_error=ev.is_error)
    turns = list(step.turns)
    turns[ev.turn] = replace(turn, results={**turn.results, ev.call_id: result})
    return _put(state, ev.step_id, replace(step, turns=turns))


def _expire_approvals(state: RunState, step_id: str, at: float) -> RunState:
    approvals = {
        aid: replace(a, status="expired", decided_at=at)
        if a.step_id == step_id and a.status == "pending"
        else a
        for aid, a in state.approvals.items()
    }
    return replace(state, approvals=approvals)


def _on_map_expanded(state: RunState, sid: str, items: list[Any], at: float) -> RunState:
    step = state.steps[sid]
    if step.status != StepStatus.PENDING:
        return state
    steps = dict(state.steps)
    steps[sid] = replace(step, status=StepStatus.RUNNING, attempts=1, started_at=at, items=len(items))
    for i, item in enumerate(items):
        steps[item_id(sid, i)] = StepState(input=item)
    return replace(state, steps=steps)


def _on_timer(state: RunState, ev: TimerFired) -> RunState:
    if ev.kind == "run_timeout":
        limit = state.definition.timeout_seconds or 0.0
        return _end(
            state, ev.at, RunStatus.FAILED, error=f"run exceeded its timeout of {format_duration(limit)}"
        )
    step = state.steps.get(ev.step_id)
    if step is None or step.attempts != ev.attempt:
        return state
    if ev.kind == "retry":
        if step_phase(step) != StepPhase.RETRY_WAIT:
            return state
        return _put(state, ev.step_id, replace(step, status=StepStatus.PENDING, retry_at=None))
    if ev.kind == "step_timeout":
        if step.status not in BUSY:
            return state
        limit = state.step_def(ev.step_id).timeout_seconds or 0.0
        return _on_failed(
            state, ev.step_id, ev.attempt, f"timed out after {format_duration(limit)}", True, ev.at
        )
    if ev.kind == "wake":
        if step.status != StepStatus.WAITING or step.waiting_until is None:
            return state
        if state.step_def(ev.step_id).type == StepKind.APPROVAL:
            waited = format_duration((step.waiting_until or ev.at) - (step.started_at or ev.at))
            expired = _expire_approvals(state, ev.step_id, ev.at)
            failed = replace(
                step,
                status=StepStatus.FAILED,
                error=f"no decision within {waited}",
                finished_at=ev.at,
                waiting_until=None,
            )
            return _put(expired, ev.step_id, failed)
        if step.waiting_signal is not None:
            return _put(
                state,
                ev.step_id,
                replace(
                    step,
                    status=StepStatus.FAILED,
                    error=f"no signal {step.waiting_signal!r} before the timeout",
                    finished_at=ev.at,
                    waiting_until=None,
                ),
            )
        return _put(
            state,
            ev.step_id,
            replace(
                step,
                status=StepStatus.COMPLETED,
                output={"slept": ev.at - (step.started_at or ev.at)},
                finished_at=ev.at,
                waiting_until=None,
            ),
        )
    raise IllegalEvent(f"unknown timer kind {ev.kind!r}")


def _on_child_finished(state: RunState, ev: ChildRunFinished) -> RunState:
    step = state.steps[ev.step_id]
    if (
        step.status != StepStatus.RUNNING
        or step.attempts != ev.attempt
        or step.child_run_id != ev.child_run_id
    ):
        return state
    if ev.status == StepStatus.COMPLETED:
        return _put(
            state, ev.step_id, replace(step, status=StepStatus.COMPLETED, output=ev.output, finished_at=ev.at)
        )
    error = f"child run {ev.child_run_id} {ev.status}: {ev.error or ''}".rstrip(": ")
    return _on_failed(state, ev.step_id, ev.attempt, error, ev.status == StepStatus.FAILED, ev.at)


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
    """Bookkeeping after every change: event count, last time, running vs waiting."""
    status = state.status
    if not state.terminal:
        busy = any(s.status in BUSY for s in state.steps.values())
        waiting = any(s.status == StepStatus.WAITING for s in state.steps.values())
        status = RunStatus.WAITING if waiting and not busy else RunStatus.RUNNING
    return replace(state, status=status, updated_at=at, events=state.events + 1)


def _put(state: RunState, sid: str, step: StepState) -> RunState:
    steps = dict(state.steps)
    steps[sid] = step
    return replace(state, steps=steps)


def _consume_signal(state: RunState, name: str, by: str) -> RunState:
    signals = list(state.signals)
    for i, sig in enumerate(signals):
        if sig.name == name and sig.consumed_by is None:
            signals[i] = replace(sig, consumed_by=by)
            break
    return replace(state, signals=signals)
