"""Effects: what the shell must do because of an event (dispatch, timers, child runs, parents).

Each effect belongs to the event that caused it and carries a deterministic Nats-Msg-Id or run
id, so redoing the effects of an event after a crash is harmless.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable
from typing import Any

import msgspec

from . import template
from .actions import (
    Action,
    CancelChildRun,
    CancelTimers,
    ContinueRun,
    DispatchTask,
    DropTasks,
    NotifyParent,
    StartChildRun,
    StartTimer,
)
from .definition import (
    AGENT_TASK,
    MAX_GENERATIONS,
    PLANNER_TASK,
    WORKER_KINDS,
    ContinueAsNewConfig,
    PlannerConfig,
    StepDef,
    StepKind,
    SubWorkflowConfig,
    WorkflowDef,
    render_config,
    step_config,
)
from .events import (
    AgentContinuing,
    ApprovalDecided,
    ApprovalRequested,
    ChildRunFinished,
    Event,
    ForkOf,
    ParentRef,
    RunContinued,
    RunStarted,
    StepQueued,
    StepStarted,
    StepWaiting,
)
from .state import (
    BUSY,
    STEP_ACTIVE,
    RunState,
    StepPhase,
    StepState,
    StepStatus,
    attempt_superseded,
    fork_keeps,
    step_phase,
)

replace = msgspec.structs.replace


def effects(wf: WorkflowDef, old: RunState | None, new: RunState, event: Event) -> Iterable[Action]:
    if old is not None and new is old:
        return
    yield from _caused_by(wf, new, event)
    for sid in _changed_ids(old, new, event):
        step = new.steps[sid]
        before = old.steps.get(sid) if old is not None else None
        if step is not before:  # most steps are the very same value as before the event
            yield from _step_changed(new, sid, before, step, event)
    if new.terminal and (old is None or not old.terminal):
        if old is not None and any(s.status in BUSY for s in old.steps.values()):
            yield DropTasks(run_id=new.run_id)
        yield from _on_run_end(wf, new, event)


def _changed_ids(old: RunState | None, new: RunState, event: Event) -> Iterable[str]:
    """The steps the event may have changed. A move replaces at most the one step the event
    names, unless it adds steps (a map's or a plan's expansion) or ends the run (every
    unfinished step is cancelled): then every step is compared. Not a scan per event, which
    made a map over n items O(n^2)."""
    if old is None or len(old.steps) != len(new.steps) or new.terminal != old.terminal:
        return new.steps
    sid = getattr(event, "step_id", "")
    return [sid] if sid in new.steps else []


def _caused_by(wf: WorkflowDef, new: RunState, event: Event) -> Iterable[Action]:
    """The effects of the event itself: a dispatch, a timer, a hand-over."""
    run_id = new.run_id
    match event:
        case RunStarted():
            if (limit := wf.timeout_seconds) is not None:
                yield _timer(run_id, "run_timeout", "", 0, event.at + limit)
        case StepQueued(step_id=sid, attempt=attempt):
            yield from _dispatch(new, sid, attempt)
            if new.steps[sid].child_run_id:  # a child run is timed from its start
                yield from _step_timeout(new, sid, attempt, event.at)
        case StepStarted(step_id=sid, attempt=attempt):
            yield from _step_timeout(new, sid, attempt, event.at)
        case StepWaiting(step_id=sid, attempt=attempt, until=until) if until is not None:
            yield _timer(run_id, "wake", sid, attempt, until)
        case ApprovalRequested(kind="step", step_id=sid, attempt=attempt, expires_at=until) if (
            until is not None
        ):
            yield _timer(run_id, "wake", sid, attempt, until)
        case AgentContinuing(step_id=sid) if new.generation < MAX_GENERATIONS:
            yield _hand_over_agent(new, sid)
        case ApprovalDecided(step_id=sid, approval_id=aid) if new.approvals[aid].kind == "tool_call":
            yield from _resume_agent(new, sid, aid)
        case _:
            pass


def _resume_agent(state: RunState, sid: str, approval_id: str) -> Iterable[Action]:
    """Hand an agent its tool call's decision: back to a worker, if it no longer waits."""
    if state.steps[sid].status == StepStatus.RUNNING:
        yield from _dispatch(state, sid, state.steps[sid].attempts, resume=approval_id)


def _step_timeout(state: RunState, sid: str, attempt: int, at: float) -> Iterable[Action]:
    if (limit := state.step_def(sid).timeout_seconds) is not None:
        yield _timer(state.run_id, "step_timeout", sid, attempt, at + limit)


def _step_changed(
    new: RunState, sid: str, before: StepState | None, step: StepState, event: Event
) -> Iterable[Action]:
    """The effects of a step's change: a retry timer to start, a child run to stop."""
    if step.retry_at is not None and (before is None or before.retry_at != step.retry_at):
        yield _timer(new.run_id, "retry", sid, step.attempts, step.retry_at)
    left_child = (
        before is not None
        and before.child_run_id
        and before.status == StepStatus.RUNNING
        and step.status != StepStatus.RUNNING
    )
    if left_child and before is not None and before.child_run_id:
        if not isinstance(event, ChildRunFinished):  # timed out, or the run ended: stop the child
            why = (
                f"parent run {new.status}"
                if new.terminal
                else f"parent step {sid} {step.error or step.status}"
            )
            yield CancelChildRun(child_run_id=before.child_run_id, reason=why)


def _dispatch(state: RunState, sid: str, attempt: int, resume: str = "") -> Iterable[Action]:
    step = state.step_def(sid)
    queued = state.steps[sid]
    if step.type == StepKind.CONTINUE_AS_NEW:
        cfg = step_config(step)
        assert isinstance(cfg, ContinueAsNewConfig)
        if cfg.workflow is None:
            yield _continue_run(state, sid, queued.input, state.workflow, state.version)
        else:
            yield _continue_run(state, sid, queued.input, cfg.workflow, cfg.version)
        return
    if step.type == StepKind.SUB_WORKFLOW:
        cfg = step_config(step)
        assert isinstance(cfg, SubWorkflowConfig)
        yield StartChildRun(
            child_run_id=child_run_id(state.run_id, sid, attempt),
            workflow=cfg.workflow,
            version=cfg.version,
            input=queued.input,
            parent=ParentRef(run_id=state.run_id, step_id=sid, attempt=attempt),
            depth=state.depth + 1,
            root_run_id=state.root_run_id,
        )
        return
    task = _task_of(step)
    assert task is not None
    try:
        config = render_config(step, state.template_context(sid))
    except template.TemplateError:
        config = step.config
    yield DispatchTask(
        run_id=state.run_id,
        step_id=sid,
        attempt=attempt,
        task=task,
        input=queued.input,
        config=config,
        timeout=step.timeout_seconds,
        checkpoint=queued.checkpoint,
        msg_id=f"{state.run_id}:task:{sid}:{attempt}" + (f":resume:{resume}" if resume else ""),
    )


def _continue_run(state: RunState, sid: str, carry: Any, workflow: str, version: int | None) -> ContinueRun:
    return ContinueRun(
        run_id=state.run_id,
        step_id=sid,
        next_run_id=continuation_run_id(state.run_id),
        workflow=workflow,
        version=version,
        input=carry,
        generation=state.generation + 1,
        root_run_id=state.root_run_id,
        chain_start=state.chain_start,
        parent=state.parent,
        depth=state.depth,
    )


def _hand_over_agent(state: RunState, sid: str) -> ContinueRun:
    """The next run takes the same input, keeps what lies upstream, and gives the agent its carry."""
    kept, skipped = fork_keeps(state, sid)
    step = state.steps[sid]
    resume = ForkOf(
        run_id=state.run_id,
        step_id=sid,
        kept=kept,
        skipped=skipped,
        input={"carry": step.carry, "input": _original_input(step.input)},
    )
    return replace(_continue_run(state, sid, state.input, state.workflow, state.version), resume=resume)


def _original_input(step_input: Any) -> Any:
    """An agent's own input, unwrapped from a previous hand-over's {"carry", "input"}."""
    if isinstance(step_input, dict) and set(step_input) == {"carry", "input"}:
        return step_input["input"]
    return step_input


def _task_of(step: StepDef) -> str | None:
    """Which worker task runs a step."""
    if step.type == StepKind.AGENT_LOOP:
        return AGENT_TASK
    if step.type == StepKind.PLANNER:
        cfg = step_config(step)
        assert isinstance(cfg, PlannerConfig)
        return cfg.task or PLANNER_TASK
    return step.task


task_of = _task_of  # for the shell: which task's workers a queued step waits for


def _on_run_end(wf: WorkflowDef, state: RunState, event: Event) -> Iterable[Action]:
    if _may_have_timers(wf, state):
        yield CancelTimers(run_id=state.run_id)
    if isinstance(event, RunContinued):
        return  # a parent hears from the last run of the chain, not from this one
    if state.parent is not None:
        yield NotifyParent(
            parent=state.parent,
            child_run_id=state.chain_start,  # the id the parent started, whichever generation ends
            status=state.status,
            output=state.output,
            error=state.error,
        )


def _may_have_timers(wf: WorkflowDef, state: RunState) -> bool:
    """Whether any timer may have been started for this run (a run timeout, a step's timeout,
    a retry, a sleep or wait, an expiring approval); a run without any has none to cancel."""
    if wf.timeout_seconds is not None:
        return True
    for sid, step in state.steps.items():
        if step.status == StepStatus.PENDING and step.attempts == 0:
            continue
        d = state.step_def(sid)
        if d.type not in WORKER_KINDS or d.timeout is not None or (d.retry and d.retry.max_attempts > 1):
            return True
    return False


def _timer(run_id: str, kind: str, sid: str, attempt: int, fire_at: float) -> StartTimer:
    return StartTimer(
        run_id=run_id,
        kind=kind,
        step_id=sid,
        attempt=attempt,
        fire_at=fire_at,
        msg_id=f"{run_id}:timer:{kind}:{sid}:{attempt}",
    )


def continuation_run_id(run_id: str) -> str:
    """Deterministic id of the run a continue_as_new step hands over to."""
    return f"r{hashlib.sha256(f'{run_id}/continue'.encode()).hexdigest()[:15]}"


def child_run_id(run_id: str, step_id: str, attempt: int) -> str:
    """Deterministic id of the child run a sub_workflow step's attempt starts."""
    digest = hashlib.sha256(f"{run_id}/{step_id}/{attempt}".encode()).hexdigest()
    return f"r{digest[:15]}"


def still_due(state: RunState, action: Action) -> bool:
    """Whether `state` still calls for an effect that an earlier event caused.

    An engine that folds a run's tail after a crash meets the effects of every event in it;
    doing the ones the run has since moved past would run finished work again (a task message
    that was acknowledged and removed is forgotten by the server's de-duplication when it
    restarts). So what recovery performs follows from the state the tail leads to: a task only
    while its attempt waits for a worker, a timer only while what it times is still on.
    Purges, cancellations and notices are idempotent appends or deletions, always done.
    """
    match action:
        case DispatchTask(step_id=sid, attempt=attempt, msg_id=msg_id):
            _, _, resume = msg_id.partition(":resume:")
            return _current_attempt(state, sid, attempt, BUSY) and (
                _activation(state, sid, attempt) == resume
            )
        case StartTimer(kind="run_timeout"):
            return not state.terminal
        case StartTimer(kind="retry", step_id=sid, attempt=attempt):
            step = state.steps.get(sid)
            return (
                not state.terminal
                and step is not None
                and step.attempts == attempt
                and step_phase(step) == StepPhase.RETRY_WAIT
            )
        case StartTimer(kind="wake", step_id=sid, attempt=attempt):
            return _current_attempt(state, sid, attempt, (StepStatus.WAITING,))
        case (
            StartTimer(step_id=sid, attempt=attempt)
            | StartChildRun(parent=ParentRef(step_id=sid, attempt=attempt))
        ):
            return _current_attempt(state, sid, attempt, STEP_ACTIVE)
        case ContinueRun():
            return not state.terminal
        case _:
            return True


def _current_attempt(state: RunState, sid: str, attempt: int, statuses: Collection[str]) -> bool:
    """Whether `attempt` of `sid` is still on (not superseded) and in one of `statuses`."""
    step = state.steps.get(sid)
    return (
        step is not None
        and step.attempts == attempt
        and step.status in statuses
        and not attempt_superseded(state, sid, attempt)
    )


def _activation(state: RunState, sid: str, attempt: int) -> str:
    """Which dispatch of a step attempt is the current one: "" for the first, else the id of
    the tool-call approval whose decision last handed the parked agent back to a worker."""
    latest, at = "", -1.0
    for a in state.approvals.values():
        if a.step_id == sid and a.attempt == attempt and a.kind == "tool_call" and a.decided_at is not None:
            if a.decided_at >= at:
                latest, at = a.approval_id, a.decided_at
    return latest
