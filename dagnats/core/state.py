"""Run state: what a fold over a run's events yields. Immutable values, replaced on change."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import msgspec

from .definition import MapConfig, StepDef, WorkflowDef, step_config
from .events import ParentRef


class RunStatus(StrEnum):
    """A run's status (DESIGN §5). A StrEnum: equal to its value, encoded as it."""

    RUNNING = "running"
    WAITING = "waiting"  # only approvals, timers or signals outstanding
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    CONTINUED = "continued"


class StepStatus(StrEnum):
    """A step's public status (DESIGN §5), as recorded in its state."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


class StepPhase(StrEnum):
    """Where a step is, inside the core: its status, with "waiting for a retry" apart from
    the other waits. Recorded states keep the public status (`waiting`, `retry_at` set), so
    snapshots written before this phase existed fold as they did."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    RETRY_WAIT = "retry_wait"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


RUN_TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.CONTINUED})
STEP_TERMINAL = frozenset({StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELLED})
STEP_ACTIVE = frozenset({StepStatus.QUEUED, StepStatus.RUNNING, StepStatus.WAITING})
STEP_SATISFIED = frozenset({StepStatus.COMPLETED, StepStatus.SKIPPED})


BUSY = frozenset({StepStatus.QUEUED, StepStatus.RUNNING})  # with a worker (or a child run) on it
SLOT_PHASES = frozenset({StepPhase.QUEUED, StepPhase.RUNNING, StepPhase.WAITING})  # hold a map slot


class ToolResult(msgspec.Struct, frozen=True, omit_defaults=True):
    name: str
    result: Any = ""  # a str; a reference (core/values.py) to a result too big for its event
    is_error: bool = False


class Turn(msgspec.Struct, frozen=True, omit_defaults=True):
    """One turn of an agent transcript: the model's message and the results of its tool calls."""

    text: Any = ""  # a str; a reference (core/values.py) to a text too big for its event, as are big
    tool_calls: list[dict[str, Any]] = []  # calls' "arguments" (the core reads ids and names only)
    usage: dict[str, int] = {}
    stop_reason: str = ""
    at: float = 0.0
    results: dict[str, ToolResult] = {}

    @property
    def pending_calls(self) -> list[dict[str, Any]]:
        return [c for c in self.tool_calls if c["id"] not in self.results]


class StepState(msgspec.Struct, frozen=True, omit_defaults=True):
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    input: Any = None
    output: Any = None
    error: str | None = None
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    retry_at: float | None = None
    waiting_until: float | None = None
    waiting_signal: str | None = None
    child_run_id: str | None = None
    items: int | None = None
    checkpoint: Any = None
    input_override: Any = msgspec.UNSET  # a fork's new input for this step
    turns: list[Turn] = []  # agent_loop transcript
    carry: Any = None  # what an agent_loop hands to the run that continues it
    plan: Any = None  # a planner's proposed plan, as received
    plan_steps: list[str] = []  # a planner's expanded step ids


_PHASES = {str(p): p for p in StepPhase}


def step_phase(step: StepState) -> StepPhase:
    """The step's phase: a waiting step with a retry time set waits for its retry."""
    if step.retry_at is not None:
        return StepPhase.RETRY_WAIT
    return _PHASES[step.status]


def public_status(phase: StepPhase) -> StepStatus:
    """The status of DESIGN §5 a phase shows as."""
    return StepStatus.WAITING if phase == StepPhase.RETRY_WAIT else StepStatus(str(phase))


class Approval(msgspec.Struct, frozen=True, omit_defaults=True):
    approval_id: str
    step_id: str
    kind: str  # "step" | "tool_call" | "plan"
    attempt: int = 1
    prompt: str = ""
    details: Any = None
    requested_at: float = 0.0
    expires_at: float | None = None
    status: str = "pending"  # pending | approved | denied | expired | cancelled
    by: str = ""
    comment: str = ""
    decided_at: float | None = None

    @property
    def digest(self) -> str:
        """What is asked, as a digest a decision must quote (see `approval_digest`)."""
        return approval_digest(self.kind, self.prompt, self.details)


def approval_digest(kind: str, prompt: str, details: Any) -> str:
    """sha256 (hex) of what an operator is asked: the tool name and arguments of a tool call,
    the plan of a plan review, the prompt of an approval step. Keys are sorted, so the engine,
    the client and the console agree on it whatever order a JSON object arrived in."""
    asked: Any
    if kind == "tool_call" and isinstance(details, dict):
        asked = {"name": details.get("name"), "arguments": details.get("arguments")}
    elif kind == "plan":
        asked = details
    elif kind == "step":
        asked = prompt
    else:
        asked = {"prompt": prompt, "details": details}
    return hashlib.sha256(msgspec.json.encode([kind, asked], order="sorted")).hexdigest()


class Signal(msgspec.Struct, frozen=True, omit_defaults=True):
    name: str
    data: Any = None
    consumed_by: str | None = None


class RunState(msgspec.Struct, frozen=True, omit_defaults=True):
    run_id: str
    workflow: str
    version: int
    definition: WorkflowDef
    input: Any = None
    status: RunStatus = RunStatus.RUNNING
    output: Any = None
    error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float | None = None
    parent: ParentRef | None = None
    depth: int = 0
    root_run_id: str = ""
    generation: int = 1
    continued_from: str | None = None
    continued_to: str | None = None
    chain_start: str = ""
    forked_from: str | None = None
    fork_step: str | None = None
    steps: Mapping[str, StepState] = {}  # a dict, or for a big run a shared table (core/steps.py)
    signals: list[Signal] = []
    approvals: dict[str, Approval] = {}
    dynamic: dict[str, StepDef] = {}  # steps added by planners, by namespaced id
    events: int = 0

    @property
    def terminal(self) -> bool:
        return self.status in RUN_TERMINAL

    def progress(self) -> tuple[int, int]:
        """(finished static steps, static steps)."""
        ids = self.static_ids()
        done = sum(1 for sid in ids if self.steps[sid].status in STEP_TERMINAL)
        return done, len(ids)

    def pending_approvals(self) -> list[Approval]:
        if self.terminal:
            return []
        return [a for a in self.approvals.values() if a.status == "pending"]

    def static_ids(self) -> list[str]:
        """Ids of the definition's own steps, in definition order (map items excluded)."""
        return [s.id for s in self.definition.steps]

    def step_def(self, sid: str) -> StepDef:
        """The definition of a static step, or the one synthesized for a map item."""
        if sid in self.dynamic:
            return self.dynamic[sid]
        owner = parent_of(sid)
        if owner is None:
            return self.definition.step(sid)
        map_step = self.definition.step(owner)
        cfg = step_config(map_step)
        assert isinstance(cfg, MapConfig)
        return StepDef(
            id=sid, task=cfg.task, config=cfg.config, retry=map_step.retry, timeout=map_step.timeout
        )

    def template_context(self, for_step: str = "") -> dict[str, Any]:
        """What `${...}` references resolve against: input, finished steps' outputs, run id.

        A planned step (`<planner>.<id>`) sees its plan's steps by their own ids.
        """
        planner = planner_of(for_step)
        if planner is None:
            ids = {sid: sid for sid in self.static_ids()}
        else:
            ids = {sid.split(".", 1)[1]: sid for sid in self.steps[planner].plan_steps}
        steps = {
            local: {"output": self.steps[sid].output}
            for local, sid in ids.items()
            if self.steps[sid].status in STEP_SATISFIED
        }
        return {"input": self.input, "steps": steps, "run": {"id": self.run_id}}


def item_id(map_step: str, index: int) -> str:
    """Id of the index-th item of a map step. Brackets keep it apart from any static id."""
    return f"{map_step}[{index}]"


def item_ids(state: RunState, map_step: str) -> list[str]:
    count = state.steps[map_step].items or 0
    return [item_id(map_step, i) for i in range(count)]


def planner_of(step_id: str) -> str | None:
    """The planner a planned step belongs to, or None."""
    return step_id.split(".", 1)[0] if "." in step_id else None


def parent_of(step_id: str) -> str | None:
    """The map step an item id belongs to, or None for a static step."""
    return step_id.split("[", 1)[0] if step_id.endswith("]") and "[" in step_id else None


def attempt_superseded(state: RunState, step_id: str, attempt: int) -> bool:
    """Whether `attempt` of a step is no longer current: the run ended, the step has a later
    attempt, or this attempt already has a result or waits for its retry. A worker holding
    such a task skips it; recovery does not redo its effects."""
    if state.terminal:
        return True
    step = state.steps.get(step_id)
    if step is None:
        return False
    if step.attempts != attempt:
        return step.attempts > attempt
    return step.status in STEP_TERMINAL or step_phase(step) == StepPhase.RETRY_WAIT


def fork_keeps(state: RunState, step_id: str) -> tuple[dict[str, Any], list[str]]:
    """What a run that runs `step_id` and everything downstream of it again keeps of `state`:
    the outputs of the other completed static steps, and the ids of the skipped ones."""
    rerun = state.definition.downstream(step_id) | {step_id}
    ids = [sid for sid in state.static_ids() if sid not in rerun]
    kept = {sid: state.steps[sid].output for sid in ids if state.steps[sid].status == StepStatus.COMPLETED}
    skipped = [sid for sid in ids if state.steps[sid].status == StepStatus.SKIPPED]
    return kept, skipped
