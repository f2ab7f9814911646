"""Events: the facts recorded in a run's history. Past tense, immutable, tagged by `type`.

Every event carries `at` (seconds since the epoch, set by whoever records it): the core never
reads a clock, so time only ever enters through events.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .definition import StepDef, WorkflowDef


class _Event(msgspec.Struct, frozen=True, tag_field="type", omit_defaults=True, kw_only=True):
    at: float
    # Who recorded it: "e" engine, "o" operator, "w" worker, "" not read from a history. Set
    # on reading from the subject the event was published on, never trusted from the payload.
    source: str = ""


class ParentRef(msgspec.Struct, frozen=True, omit_defaults=True):
    run_id: str
    step_id: str
    attempt: int


class ForkOf(msgspec.Struct, frozen=True, omit_defaults=True):
    """Where a forked run comes from, and what it keeps of the original."""

    run_id: str
    step_id: str
    kept: dict[str, Any] = {}  # step id -> recorded output, for steps not downstream of step_id
    skipped: list[str] = []  # steps the original skipped, kept skipped
    input: Any = msgspec.UNSET  # a new input for step_id, if given
    turns: list[Any] = []  # an agent_loop step_id's transcript to continue from


class RunStarted(_Event, tag="run.started", frozen=True):
    run_id: str
    workflow: str
    version: int
    definition: WorkflowDef
    input: Any = None
    parent: ParentRef | None = None
    depth: int = 0
    root_run_id: str = ""
    by: str = ""
    generation: int = 1  # 1 for a fresh run, +1 with each continue_as_new
    continued_from: str | None = None
    chain_start: str = ""  # first run of a continue_as_new chain ("" = this run)
    fork: ForkOf | None = None


class RunContinued(_Event, tag="run.continued", frozen=True):
    """A continue_as_new step ended this run; `next_run_id` carries on with `input`."""

    step_id: str
    next_run_id: str


class RunCancelRequested(_Event, tag="run.cancel_requested", frozen=True):
    reason: str = ""
    by: str = ""


class RunCompleted(_Event, tag="run.completed", frozen=True):
    output: Any = None


class RunFailed(_Event, tag="run.failed", frozen=True):
    error: str


class SignalReceived(_Event, tag="signal.received", frozen=True):
    name: str
    data: Any = None
    by: str = ""


class StepQueued(_Event, tag="step.queued", frozen=True):
    step_id: str
    attempt: int
    input: Any = None


class StepStarted(_Event, tag="step.started", frozen=True):
    step_id: str
    attempt: int
    worker: str = ""


class StepWaiting(_Event, tag="step.waiting", frozen=True):
    """An engine-run step began waiting: for a timer (`until`) and/or a signal (`signal`)."""

    step_id: str
    attempt: int = 1
    until: float | None = None
    signal: str | None = None


class StepCompleted(_Event, tag="step.completed", frozen=True):
    step_id: str
    attempt: int
    output: Any = None
    # A short task reports no step.started of its own: its result says when and where it ran.
    started_at: float | None = None
    worker: str = ""


class StepFailed(_Event, tag="step.failed", frozen=True):
    step_id: str
    attempt: int
    error: str
    retryable: bool = True
    started_at: float | None = None
    worker: str = ""


class StepSkipped(_Event, tag="step.skipped", frozen=True):
    step_id: str
    reason: str = ""


class StepLog(_Event, tag="step.log", frozen=True):
    step_id: str
    attempt: int
    message: str


class MapExpanded(_Event, tag="map.expanded", frozen=True):
    step_id: str
    items: list[Any]


class ApprovalRequested(_Event, tag="approval.requested", frozen=True):
    """Something waits for an operator: a step (`step`), a tool call (`tool_call`) or a plan (`plan`)."""

    approval_id: str
    step_id: str
    kind: str
    attempt: int = 1
    prompt: str = ""
    details: Any = None
    expires_at: float | None = None


class ApprovalDecided(_Event, tag="approval.decided", frozen=True):
    """An operator's answer. `digest` quotes what they were shown (`Approval.digest`): a
    decision about something else, or an older version of it, does not apply. Empty (events
    from before digests, or `approval approve` without `--digest`) decides the current request."""

    approval_id: str
    step_id: str
    approved: bool
    by: str = ""
    comment: str = ""
    digest: str = ""


class AgentTurnRecorded(_Event, tag="agent.turn", frozen=True):
    """One model message of an agent_loop step: its text, tool calls and token use."""

    step_id: str
    attempt: int
    turn: int  # 0-based; turns are append-only across attempts
    text: str | dict[str, Any] = ""  # a reference (core/values.py) when too big for the event
    tool_calls: list[dict[str, Any]] = []  # {"id", "name", "arguments"}
    usage: dict[str, int] = {}
    stop_reason: str = ""


class AgentContinuing(_Event, tag="agent.continuing", frozen=True):
    """An agent_loop reached continue_as_new_after_turns: a new run carries on with `carry`."""

    step_id: str
    attempt: int
    carry: Any = None


class ToolResultRecorded(_Event, tag="agent.tool_result", frozen=True):
    step_id: str
    attempt: int
    turn: int
    call_id: str
    name: str
    result: str | dict[str, Any] = ""  # a reference (core/values.py) when too big for the event
    is_error: bool = False


class PlanExpanded(_Event, tag="plan.expanded", frozen=True):
    """A planner's plan was accepted: its steps (ids `<planner>.<id>`) join the run."""

    step_id: str
    steps: list[StepDef]


class PlanFinished(_Event, tag="plan.finished", frozen=True):
    """Every step of a planner's plan is done; the planner completes with their outputs."""

    step_id: str
    output: Any = None


class TimerFired(_Event, tag="timer.fired", frozen=True):
    kind: str  # "retry" | "step_timeout" | "run_timeout" | "wake"
    step_id: str = ""
    attempt: int = 0


class StepCheckpointed(_Event, tag="step.checkpointed", frozen=True):
    """A task saved progress; a later attempt of the same step receives `data`."""

    step_id: str
    attempt: int
    data: Any = None


class ChildRunFinished(_Event, tag="child.finished", frozen=True):
    step_id: str
    attempt: int
    child_run_id: str
    status: str
    output: Any = None
    error: str | None = None


Event = (
    RunStarted
    | RunCancelRequested
    | RunCompleted
    | RunContinued
    | RunFailed
    | SignalReceived
    | StepQueued
    | StepStarted
    | StepWaiting
    | StepCompleted
    | StepFailed
    | StepSkipped
    | StepLog
    | MapExpanded
    | ApprovalRequested
    | ApprovalDecided
    | AgentTurnRecorded
    | ToolResultRecorded
    | AgentContinuing
    | PlanExpanded
    | PlanFinished
    | TimerFired
    | StepCheckpointed
    | ChildRunFinished
)

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes) -> Event:
    event: Event = _decoder.decode(data)
    return event


def event_type(event: Event) -> str:
    return type(event).__struct_config__.tag  # type: ignore[return-value]
