"""next_events(): what the engine must record next, derived from a run's state alone.

Level-triggered on purpose: the answer depends only on the state, never on which event led
there, so an engine that folded several events (or crashed and came back) asks once and gets
the same answer. The engine records the first event, folds it, and asks again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any, NamedTuple

import msgspec

from . import template
from .definition import (
    MAX_GENERATIONS,
    ApprovalConfig,
    Compare,
    Condition,
    ContinueAsNewConfig,
    MapConfig,
    PlannerConfig,
    SleepConfig,
    StepDef,
    StepKind,
    WaitConfig,
    check_plan,
    render_config,
    step_config,
)
from .durations import parse_duration
from .events import (
    ApprovalRequested,
    Event,
    MapExpanded,
    PlanExpanded,
    PlanFinished,
    RunCompleted,
    RunFailed,
    StepCompleted,
    StepFailed,
    StepQueued,
    StepSkipped,
    StepWaiting,
)
from .state import (
    STEP_SATISFIED,
    RunState,
    Signal,
    StepStatus,
    item_id,
    item_ids,
    planner_of,
)
from .tally import tally

MAX_DEPTH = 5  # root run is depth 0; sub_workflow nesting stops at this depth


def next_events(state: RunState) -> list[Event]:
    """Events the engine must record next, derived from the state alone (level-triggered)."""
    return list(_upcoming(state))


def next_event(state: RunState) -> Event | None:
    """The first of `next_events`, without working out the others: the engine records one
    event at a time and asks again, and building all hundred start events of a fan-out after
    each of its hundred `step.queued` made the fan-out quadratic."""
    return next(_upcoming(state), None)


def _upcoming(state: RunState) -> Iterator[Event]:
    if state.terminal:
        return
    now = state.updated_at
    static = state.static_ids()
    failed = StepStatus.FAILED  # bound once: an enum member's lookup costs more than the compare
    for sid in static:
        if state.steps[sid].status == failed:
            yield RunFailed(at=now, error=f"step {sid} failed: {state.steps[sid].error}")
            return
    some = False
    for event in _steps_upcoming(state, static, now):
        some = True
        yield event
    if not some and all(state.steps[sid].status in STEP_SATISFIED for sid in static):
        yield RunCompleted(at=now, output=_run_output(state))


def _steps_upcoming(state: RunState, static: list[str], now: float) -> Iterator[Event]:
    """What the static steps call for, step by step, built as they are asked for."""
    contexts: dict[str | None, dict[str, Any]] = {}
    pending, running, waiting = StepStatus.PENDING, StepStatus.RUNNING, StepStatus.WAITING  # bound once
    for sid in static:
        step = state.steps[sid]
        if step.status == pending and _deps_satisfied(state, sid):
            yield _start_step(state, sid, now, contexts)
        elif step.status == running and step.items is not None:
            yield from _advance_map(state, sid, now)
        elif step.status == running and step.plan is not None:
            yield from _advance_plan(state, sid, now)
        elif step.status == running and step.carry is not None and state.generation >= MAX_GENERATIONS:
            bound = f"continue_as_new reached max_generations ({MAX_GENERATIONS})"
            yield StepFailed(at=now, step_id=sid, attempt=step.attempts, error=bound, retryable=False)
        elif step.status == waiting and step.waiting_signal is not None:
            sig = _buffered_signal(state, step.waiting_signal)
            if sig is not None:
                yield StepCompleted(at=now, step_id=sid, attempt=step.attempts, output=sig.data)


def _start_step(
    state: RunState, sid: str, now: float, contexts: dict[str | None, dict[str, Any]] | None = None
) -> Event:
    """The event that starts `sid`. `contexts` shares template contexts between the steps one
    plan starts: every static step (or every step of one planner) sees the same one, and
    building it for each of a hundred parallel steps made a fan-out quadratic."""
    step = state.step_def(sid)
    attempt = state.steps[sid].attempts + 1
    if contexts is None:
        contexts = {}
    scope = planner_of(sid)
    if scope not in contexts:
        contexts[scope] = state.template_context(sid)
    ctx = contexts[scope]
    if attempt == 1 and (skipped := _skipped(step, sid, ctx, now)) is not None:
        return skipped
    try:
        step_input = _step_input(state, step, ctx)
        render_config(step, ctx)
    except template.TemplateError as exc:
        return StepFailed(at=now, step_id=sid, attempt=attempt, error=f"input: {exc}", retryable=False)
    start = _STARTS.get(step.type)
    if start is None:
        raise AssertionError(f"step {sid!r} has unsupported type '{step.type}'")  # validation prevents it
    return start(state, step, _Start(sid, attempt, step_input, ctx, now))


def _skipped(step: StepDef, sid: str, ctx: dict[str, Any], now: float) -> Event | None:
    """What a step's conditions say before its first attempt: skip it, fail it, or nothing."""
    try:
        if step.when is not None and not _condition(step.when, ctx):
            return StepSkipped(at=now, step_id=sid, reason="when condition is false")
        if step.skip_if is not None and _condition(step.skip_if, ctx):
            return StepSkipped(at=now, step_id=sid, reason="skip_if condition is true")
    except template.TemplateError as exc:
        return StepFailed(at=now, step_id=sid, attempt=1, error=f"condition: {exc}", retryable=False)
    return None


class _Start(NamedTuple):
    """What starting one attempt of a step knows."""

    sid: str
    attempt: int
    input: Any
    ctx: dict[str, Any]
    now: float


def _queue(state: RunState, step: StepDef, s: _Start) -> Event:
    return StepQueued(at=s.now, step_id=s.sid, attempt=s.attempt, input=s.input)


def _start_child(state: RunState, step: StepDef, s: _Start) -> Event:
    if state.depth + 1 > MAX_DEPTH:
        return StepFailed(
            at=s.now,
            step_id=s.sid,
            attempt=s.attempt,
            retryable=False,
            error=f"sub_workflow nesting is bounded at depth {MAX_DEPTH}",
        )
    return _queue(state, step, s)


def _sleep(state: RunState, step: StepDef, s: _Start) -> Event:
    cfg = step_config(step)
    assert isinstance(cfg, SleepConfig)
    until = s.now + parse_duration(cfg.duration)
    return StepWaiting(at=s.now, step_id=s.sid, attempt=s.attempt, until=until)


def _wait(state: RunState, step: StepDef, s: _Start) -> Event:
    cfg = step_config(step)
    assert isinstance(cfg, WaitConfig)
    until = None if cfg.timeout is None else s.now + parse_duration(cfg.timeout)
    return StepWaiting(at=s.now, step_id=s.sid, attempt=s.attempt, until=until, signal=cfg.name)


def _ask(state: RunState, step: StepDef, s: _Start) -> Event:
    cfg = step_config(step)
    assert isinstance(cfg, ApprovalConfig)
    try:
        prompt = template.render(cfg.prompt, s.ctx)
    except template.TemplateError as exc:
        return StepFailed(at=s.now, step_id=s.sid, attempt=s.attempt, error=f"prompt: {exc}", retryable=False)
    until = None if cfg.timeout is None else s.now + parse_duration(cfg.timeout)
    return ApprovalRequested(
        at=s.now,
        approval_id=f"{s.sid}.{s.attempt}",
        step_id=s.sid,
        kind="step",
        attempt=s.attempt,
        prompt=str(prompt),
        details=s.input,
        expires_at=until,
    )


# The event that starts an attempt, by step type.
_STARTS: dict[str, Callable[[RunState, StepDef, _Start], Event]] = {
    StepKind.TASK: _queue,
    StepKind.AGENT_LOOP: _queue,
    StepKind.PLANNER: _queue,
    StepKind.SUB_WORKFLOW: _start_child,
    StepKind.SLEEP: _sleep,
    StepKind.WAIT_FOR_EVENT: _wait,
    StepKind.MAP: lambda state, step, s: _expand_map(step, s.sid, s.attempt, s.input, s.now),
    StepKind.CONTINUE_AS_NEW: lambda state, step, s: _continue(
        state, step, s.sid, s.attempt, s.input, s.ctx, s.now
    ),
    StepKind.APPROVAL: _ask,
}


def _continue(
    state: RunState, step: StepDef, sid: str, attempt: int, step_input: Any, ctx: dict[str, Any], now: float
) -> Event:
    """Queue the hand-over; the shell starts the next run, then records run.continued."""
    cfg = step_config(step)
    assert isinstance(cfg, ContinueAsNewConfig)
    if state.generation >= cfg.max_generations:
        return StepFailed(
            at=now,
            step_id=sid,
            attempt=attempt,
            retryable=False,
            error=f"continue_as_new reached max_generations ({cfg.max_generations})",
        )
    try:
        next_input = step_input if cfg.input is msgspec.UNSET else template.render(cfg.input, ctx)
    except template.TemplateError as exc:
        return StepFailed(at=now, step_id=sid, attempt=attempt, error=f"input: {exc}", retryable=False)
    return StepQueued(at=now, step_id=sid, attempt=attempt, input=next_input)


def _advance_plan(state: RunState, sid: str, now: float) -> Iterable[Event]:
    """Check, review, expand and run a planner's plan; finish the planner when the plan is done."""
    step = state.steps[sid]
    planner = state.step_def(sid)
    if not step.plan_steps:
        checked = check_plan(step.plan, planner)
        if isinstance(checked, str):
            return [StepFailed(at=now, step_id=sid, attempt=step.attempts, error=checked, retryable=False)]
        cfg = step_config(planner)
        assert isinstance(cfg, PlannerConfig)
        approval_id = f"{sid}.plan.{step.attempts}"
        if cfg.review and approval_id not in state.approvals:
            return [
                ApprovalRequested(
                    at=now,
                    approval_id=approval_id,
                    step_id=sid,
                    kind="plan",
                    attempt=step.attempts,
                    prompt=f"Run the plan of {sid}?",
                    details=step.plan,
                )
            ]
        if cfg.review and state.approvals[approval_id].status != "approved":
            return []
        return [PlanExpanded(at=now, step_id=sid, steps=checked)]
    planned = [state.steps[p] for p in step.plan_steps]
    for pid, p in zip(step.plan_steps, planned):
        if p.status == StepStatus.FAILED:
            return [
                StepFailed(
                    at=now,
                    step_id=sid,
                    attempt=step.attempts,
                    retryable=False,
                    error=f"step {pid} failed: {p.error}",
                )
            ]
    if all(p.status in STEP_SATISFIED for p in planned):
        used = {d for pid in step.plan_steps for d in state.step_def(pid).depends_on}
        leaves = {pid.split(".", 1)[1]: state.steps[pid].output for pid in step.plan_steps if pid not in used}
        return [PlanFinished(at=now, step_id=sid, output=leaves)]
    contexts: dict[str | None, dict[str, Any]] = {}
    return (  # built as they are asked for (see next_event)
        _start_step(state, pid, now, contexts)
        for pid, p in zip(step.plan_steps, planned)
        if p.status == StepStatus.PENDING and _deps_satisfied(state, pid)
    )


def _expand_map(step: StepDef, sid: str, attempt: int, items: Any, now: float) -> Event:
    cfg = step_config(step)
    assert isinstance(cfg, MapConfig)
    if not isinstance(items, list):
        return StepFailed(
            at=now,
            step_id=sid,
            attempt=attempt,
            retryable=False,
            error=f"map input must be an array, got {type(items).__name__}",
        )
    if len(items) > cfg.max_items:
        return StepFailed(
            at=now,
            step_id=sid,
            attempt=attempt,
            retryable=False,
            error=f"map over {len(items)} items exceeds max_items {cfg.max_items}",
        )
    return MapExpanded(at=now, step_id=sid, items=items)


def _advance_map(state: RunState, sid: str, now: float) -> Iterator[Event]:
    """Fail the map on a failed item, complete it when all are, else queue pending items (in
    index order) while slots are free. From the tally (core/tally.py): O(1) per item queued,
    not a scan of every item after every event."""
    counts = tally(state.steps).maps[sid]
    if counts.failed:
        iid = item_id(sid, min(counts.failed))
        error = f"item {iid} failed: {state.steps[iid].error}"
        yield StepFailed(at=now, step_id=sid, attempt=1, retryable=False, error=error)
        return
    if counts.completed == counts.count:
        yield StepCompleted(
            at=now, step_id=sid, attempt=1, output=[state.steps[i].output for i in item_ids(state, sid)]
        )
        return
    cfg = step_config(state.step_def(sid))
    assert isinstance(cfg, MapConfig)
    room = (cfg.concurrency or counts.count) - counts.active  # a retry frees its slot
    if room <= 0:
        return
    for index in islice(counts.pending_in_order(), room):
        iid = item_id(sid, index)
        item = state.steps[iid]
        yield StepQueued(at=now, step_id=iid, attempt=item.attempts + 1, input=item.input)


def _deps_satisfied(state: RunState, sid: str) -> bool:
    return all(state.steps[d].status in STEP_SATISFIED for d in state.step_def(sid).depends_on)


def _buffered_signal(state: RunState, name: str) -> Signal | None:
    return next((s for s in state.signals if s.name == name and s.consumed_by is None), None)


def _step_input(state: RunState, step: StepDef, ctx: dict[str, Any]) -> Any:
    override = state.steps[step.id].input_override if step.id in state.steps else msgspec.UNSET
    if override is not msgspec.UNSET:
        return override
    if step.input is not msgspec.UNSET:
        return template.render(step.input, ctx)
    deps = step.depends_on
    planner = planner_of(step.id)
    if not deps:
        return state.steps[planner].input if planner else state.input
    if len(deps) == 1:
        return state.steps[deps[0]].output
    return {d.split(".", 1)[-1]: state.steps[d].output for d in deps}


def _condition(cond: Condition, ctx: dict[str, Any]) -> bool:
    if isinstance(cond, str):
        try:
            return bool(template.render(cond, ctx))
        except template.TemplateError:
            return False  # a missing value reads as false
    assert isinstance(cond, Compare)
    try:
        left = template.lookup(ctx, cond.ref)
    except template.TemplateError:
        if cond.op in ("exists", "truthy", "!=", "not_in"):
            return cond.op in ("!=", "not_in")
        raise
    return _compare(left, cond.op, cond.value)


def _compare(left: Any, op: str, right: Any) -> bool:
    if op == "exists":
        return True
    if op == "truthy":
        return bool(left)
    if op == "==":
        return bool(left == right)
    if op == "!=":
        return bool(left != right)
    if op in ("in", "not_in"):
        try:
            found = isinstance(right, (list, str, dict)) and left in right
        except TypeError:  # 5 in "abc", [1] in {"a": 1}: not a member
            found = False
        return found if op == "in" else not found
    try:
        return bool({"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[op])
    except TypeError:
        return False


def _run_output(state: RunState) -> Any:
    wf = state.definition
    used = {d for s in wf.steps for d in s.depends_on}
    leaves = [s.id for s in wf.steps if s.id not in used]
    if len(leaves) == 1:
        return state.steps[leaves[0]].output
    return {sid: state.steps[sid].output for sid in leaves}
