"""Workflow definitions: the schema, strict parsing, and validation with exact error paths.

Rules:
- Unknown fields, unknown step types, bad durations, missing dependencies, cycles and
  references to steps that are not upstream are all rejected, naming the exact path.
- A parsed `WorkflowDef` is immutable; a run carries a copy of the version it started with.
"""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Literal, get_args

import msgspec

from . import schema as input_schema
from . import template
from .durations import parse_duration
from .values import is_ref

Duration = str | int | float
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_STEPS = 1000
MAX_ATTEMPTS = 100_000
MAX_MAP_ITEMS = 10_000
MAX_SLEEP = MAX_DURATION = 365 * 86400.0
MAX_APPROVAL_WAIT = 30 * 86400.0

AGENT_TASK = "_agent_loop"  # the built-in task that runs agent_loop steps
PLANNER_TASK = "_planner"  # the built-in task that asks a model for a plan
MAX_PLAN_STEPS = 100
# Used when a step names a provider but no model: the newest general models the pinned SDKs list.
DEFAULT_MODELS = {"anthropic": "claude-sonnet-5-5", "openai": "gpt-6.2-sol", "scripted": "scripted"}
BUILTIN_TOOLS = ("read_file", "write_file", "list_files", "run_command")
MAX_GENERATIONS = 100
CompareOp = Literal["==", "!=", "<", "<=", ">", ">=", "in", "not_in", "exists", "truthy"]
Backoff = Literal["fixed", "exponential"]
Provider = Literal["anthropic", "openai", "scripted"]
ENUM_CHOICES: dict[str, tuple[str, ...]] = {
    "backoff": get_args(Backoff),
    "op": get_args(CompareOp),
    "provider": get_args(Provider),
}


class StepKind(StrEnum):
    """A step's `type` (DESIGN §5). A StrEnum: equal to its value, encoded as it."""

    TASK = "task"
    SLEEP = "sleep"
    WAIT_FOR_EVENT = "wait_for_event"
    SUB_WORKFLOW = "sub_workflow"
    MAP = "map"
    APPROVAL = "approval"
    CONTINUE_AS_NEW = "continue_as_new"
    AGENT_LOOP = "agent_loop"
    PLANNER = "planner"


WORKER_KINDS = frozenset({StepKind.TASK, StepKind.AGENT_LOOP, StepKind.PLANNER})  # run by workers
# Engine-run steps that take neither `timeout` nor `retry` (a timeout of theirs is in their config).
UNRETRIED_KINDS = frozenset(
    {StepKind.SLEEP, StepKind.WAIT_FOR_EVENT, StepKind.APPROVAL, StepKind.CONTINUE_AS_NEW}
)


class DefinitionError(ValueError):
    """A definition problem, phrased as "<path>: <what is wrong>"."""


class Compare(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    ref: str
    op: CompareOp = "truthy"
    value: Any = None


Condition = str | Compare


class RetryPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    max_attempts: int = 1
    backoff: Backoff = "fixed"
    initial: Duration = 1.0
    max: Duration | None = None
    multiplier: float = 2.0

    def delay(self, failed_attempt: int) -> float:
        """Seconds to wait after attempt `failed_attempt` (1-based) failed."""
        base = parse_duration(self.initial)
        cap = parse_duration(self.max) if self.max is not None else 3600.0
        if self.backoff == "exponential" and base > 0 and cap > 0 and failed_attempt > 1:
            # Compare in log space: multiplier ** attempts overflows a float long before 100k attempts.
            if math.log(base) + (failed_attempt - 1) * math.log(self.multiplier) >= math.log(cap):
                return cap
            base *= self.multiplier ** (failed_attempt - 1)
        return min(base, cap)


class StepDef(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    id: str
    type: StepKind = StepKind.TASK
    task: str | None = None
    description: str = ""
    depends_on: list[str] = []
    config: dict[str, Any] = {}
    input: Any = msgspec.UNSET
    when: Condition | None = None
    skip_if: Condition | None = None
    retry: RetryPolicy | None = None
    timeout: Duration | None = None

    @property
    def timeout_seconds(self) -> float | None:
        return None if self.timeout is None else parse_duration(self.timeout)


class WorkflowDef(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, weakref=True):
    name: str
    steps: list[StepDef]
    description: str = ""
    input_schema: dict[str, Any] | None = None
    timeout: Duration | None = None

    def step(self, step_id: str) -> StepDef:
        return _index(self)[step_id]

    @property
    def timeout_seconds(self) -> float | None:
        return None if self.timeout is None else parse_duration(self.timeout)

    def downstream(self, step_id: str) -> set[str]:
        """Every step that depends on `step_id`, directly or not."""
        found: set[str] = set()
        changed = True
        while changed:
            changed = False
            for step in self.steps:
                if step.id not in found and any(d == step_id or d in found for d in step.depends_on):
                    found.add(step.id)
                    changed = True
        return found


# Per-type config schemas: checked at validation, read by the engine and built-in tasks.
class SleepConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    duration: Duration


class WaitConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    timeout: Duration | None = None


class SubWorkflowConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    workflow: str
    version: int | None = None


class ApprovalConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    prompt: str
    timeout: Duration | None = None


class ContinueAsNewConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    input: Any = msgspec.UNSET  # template; by default the step's own input
    workflow: str | None = None  # by default the same workflow and version as this run
    version: int | None = None
    max_generations: int = MAX_GENERATIONS


class AgentConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    provider: Provider
    model: str = ""
    system: str = ""
    prompt: str | None = None  # template; by default the step's input
    temperature: float | None = None
    max_output_tokens: int = 4096
    tools: list[str] = []
    approve_tools: list[str] | Literal["all"] = []
    max_turns: int = 20
    max_duration: Duration | None = None
    max_total_tokens: int | None = None
    workdir: str | None = None  # template; by default a per-run workspace in the data dir
    command_timeout: Duration = 60.0
    script: list[Any] = []  # scripted provider: the assistant turns to replay
    continue_as_new_after_turns: int | None = None
    max_retries: int = 2


class PlannerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    provider: Provider | None = None  # an LLM writes the plan...
    task: str | None = None  # ...or a worker task returns it
    model: str = ""
    system: str = ""
    prompt: str | None = None  # template; by default the step's input
    temperature: float | None = None
    max_output_tokens: int = 4096
    max_retries: int = 2
    script: list[Any] = []
    allowed_tasks: list[str] = []  # empty: any task
    max_steps: int = 20
    review: bool = False  # an operator approves the plan before any of it runs


class MapConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    task: str
    config: dict[str, Any] = {}
    max_items: int = 1000
    concurrency: int = 0


class ShellConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    command: str | list[str]
    cwd: str | None = None
    env: dict[str, str] = {}
    timeout: Duration | None = None


class TaskSleepConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    duration: Duration = 1.0


class EmptyConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


STEP_CONFIGS: dict[str, type[msgspec.Struct]] = {
    StepKind.SLEEP: SleepConfig,
    StepKind.WAIT_FOR_EVENT: WaitConfig,
    StepKind.SUB_WORKFLOW: SubWorkflowConfig,
    StepKind.MAP: MapConfig,
    StepKind.APPROVAL: ApprovalConfig,
    StepKind.CONTINUE_AS_NEW: ContinueAsNewConfig,
    StepKind.AGENT_LOOP: AgentConfig,
    StepKind.PLANNER: PlannerConfig,
}
BUILTIN_TASK_CONFIGS: dict[str, type[msgspec.Struct]] = {
    "echo": EmptyConfig,
    "shell": ShellConfig,
    "sleep": TaskSleepConfig,
}


# Agent and planner configs carry scripts and plans whose own `${...}` belong to what they
# describe, so only these fields of theirs are templates of the run.
TEMPLATED_AGENT_FIELDS = ("prompt", "system", "workdir")


def templated_config(step: StepDef) -> dict[str, Any]:
    """The part of a step's config that is rendered against the run before dispatch."""
    if step.type in (StepKind.AGENT_LOOP, StepKind.PLANNER):
        return {k: v for k, v in step.config.items() if k in TEMPLATED_AGENT_FIELDS}
    return step.config


def render_config(step: StepDef, context: dict[str, Any]) -> dict[str, Any]:
    """The step's config with its templated part rendered (raises TemplateError)."""
    rendered = template.render(templated_config(step), context)
    return {**step.config, **rendered}


def parse_definition(data: Any) -> WorkflowDef:
    """Decode and validate a definition document; raise DefinitionError naming the path."""
    if not isinstance(data, dict):
        raise DefinitionError(f"definition: expected an object, got {type(data).__name__}")
    try:
        wf = msgspec.convert(data, WorkflowDef)
    except msgspec.ValidationError as exc:
        raise DefinitionError(_msgspec_message(exc, "")) from None
    validate(wf)
    return wf


def step_config(step: StepDef) -> Any:
    """The typed config of an engine-run step type (validated already)."""
    return msgspec.convert(step.config, STEP_CONFIGS[step.type])


def validate(wf: WorkflowDef) -> None:
    if not NAME_RE.match(wf.name):
        raise DefinitionError(f"name: {wf.name!r} must be 1-64 letters, digits, '-' or '_'")
    if not wf.steps:
        raise DefinitionError("steps: a workflow needs at least one step")
    if len(wf.steps) > MAX_STEPS:
        raise DefinitionError(f"steps: at most {MAX_STEPS} steps, got {len(wf.steps)}")
    _check_duration(wf.timeout, "timeout")
    if wf.input_schema is not None and (problem := input_schema.check_schema(wf.input_schema)):
        raise DefinitionError(problem)
    index: dict[str, int] = {}
    for i, step in enumerate(wf.steps):
        if not NAME_RE.match(step.id):
            raise DefinitionError(f"steps[{i}].id: {step.id!r} must be 1-64 letters, digits, '-' or '_'")
        if step.id in index:
            raise DefinitionError(f"steps[{i}].id: duplicate id {step.id!r} (also steps[{index[step.id]}])")
        index[step.id] = i
    for i, step in enumerate(wf.steps):
        _validate_step(step, f"steps[{i}]", index)
    order = _topological_order(wf, index)
    ancestors = _ancestors(wf, order)
    for i, step in enumerate(wf.steps):
        _validate_references(step, f"steps[{i}]", ancestors[step.id])


def _validate_step(step: StepDef, path: str, index: dict[str, int]) -> None:
    if step.type == StepKind.TASK:
        _validate_task_step(step, path)
    else:
        _validate_kind_step(step, path)
    for j, dep in enumerate(step.depends_on):
        if dep == step.id:
            raise DefinitionError(f"{path}.depends_on[{j}]: a step cannot depend on itself")
        if dep not in index:
            raise DefinitionError(f"{path}.depends_on[{j}]: unknown step {dep!r}")
    if len(set(step.depends_on)) != len(step.depends_on):
        raise DefinitionError(f"{path}.depends_on: lists a step twice")
    _check_duration(step.timeout, f"{path}.timeout")
    if step.retry is not None:
        _validate_retry(step.retry, f"{path}.retry")


def _validate_task_step(step: StepDef, path: str) -> None:
    if not step.task:
        raise DefinitionError(f"{path}.task: a task step needs the name of its task")
    if not NAME_RE.match(step.task):
        raise DefinitionError(f"{path}.task: {step.task!r} must be 1-64 letters, digits, '-' or '_'")
    if step.task in BUILTIN_TASK_CONFIGS:
        _check_config(step.config, BUILTIN_TASK_CONFIGS[step.task], f"{path}.config")
        if step.task == "shell":
            cfg = msgspec.convert(step.config, ShellConfig)
            _check_duration(cfg.timeout, f"{path}.config.timeout")


def _validate_kind_step(step: StepDef, path: str) -> None:
    """A step of a type other than `task`: its config, and the fields its type does not use."""
    if step.task is not None:
        raise DefinitionError(f"{path}.task: only task steps name a task (this is '{step.type}')")
    _check_config(step.config, STEP_CONFIGS[step.type], f"{path}.config")
    _validate_engine_step(step, path)
    if step.type in UNRETRIED_KINDS and step.timeout is not None:
        raise DefinitionError(f"{path}.timeout: not used by {step.type} steps (see its config)")
    if step.type in (StepKind.AGENT_LOOP, StepKind.PLANNER) and step.timeout is not None:
        bound = "config.max_duration" if step.type == StepKind.AGENT_LOOP else "the run's timeout"
        raise DefinitionError(f"{path}.timeout: not used by {step.type} steps (use {bound})")
    if step.type in UNRETRIED_KINDS and step.retry is not None:
        raise DefinitionError(f"{path}.retry: {step.type} steps are not retried")


def _validate_engine_step(step: StepDef, path: str) -> None:
    cfg = step_config(step)
    check = _CONFIG_CHECKS.get(type(cfg))
    if check is not None:
        check(cfg, step, f"{path}.config")


def _validate_sleep(cfg: SleepConfig, step: StepDef, path: str) -> None:
    seconds = _check_duration(cfg.duration, f"{path}.duration")
    if seconds is not None and seconds > MAX_SLEEP:
        raise DefinitionError(f"{path}.duration: at most 365d")


def _validate_wait(cfg: WaitConfig, step: StepDef, path: str) -> None:
    _check_duration(cfg.timeout, f"{path}.timeout")


def _validate_continue(cfg: ContinueAsNewConfig, step: StepDef, path: str) -> None:
    if cfg.workflow is not None and not NAME_RE.match(cfg.workflow):
        raise DefinitionError(f"{path}.workflow: {cfg.workflow!r} is not a workflow name")
    if not 1 <= cfg.max_generations <= 1_000_000:
        raise DefinitionError(f"{path}.max_generations: must be 1..1000000")


def _validate_approval(cfg: ApprovalConfig, step: StepDef, path: str) -> None:
    seconds = _check_duration(cfg.timeout, f"{path}.timeout")
    if seconds is not None and seconds > MAX_APPROVAL_WAIT:
        raise DefinitionError(f"{path}.timeout: at most 30d")


def _validate_sub_workflow(cfg: SubWorkflowConfig, step: StepDef, path: str) -> None:
    if not NAME_RE.match(cfg.workflow):
        raise DefinitionError(f"{path}.workflow: {cfg.workflow!r} is not a workflow name")


def _validate_map(cfg: MapConfig, step: StepDef, path: str) -> None:
    if not NAME_RE.match(cfg.task):
        raise DefinitionError(f"{path}.task: {cfg.task!r} must be 1-64 letters, digits, '-' or '_'")
    if not 1 <= cfg.max_items <= MAX_MAP_ITEMS:
        raise DefinitionError(f"{path}.max_items: must be 1..{MAX_MAP_ITEMS}")
    if cfg.concurrency < 0:
        raise DefinitionError(f"{path}.concurrency: must be >= 0 (0 = no limit)")
    if cfg.task in BUILTIN_TASK_CONFIGS:
        _check_config(cfg.config, BUILTIN_TASK_CONFIGS[cfg.task], f"{path}.config")
    if step.input is msgspec.UNSET and len(step.depends_on) != 1:
        raise DefinitionError(
            f"{path.removesuffix('.config')}: a map step needs exactly one dependency or an input "
            "template giving its array"
        )


def _validate_planner(cfg: PlannerConfig, path: str) -> None:
    if (cfg.provider is None) == (cfg.task is None):
        raise DefinitionError(f"{path}: a planner needs either a provider (an LLM writes the plan) or a task")
    if cfg.task is not None and not NAME_RE.match(cfg.task):
        raise DefinitionError(f"{path}.task: {cfg.task!r} must be 1-64 letters, digits, '-' or '_'")
    if cfg.provider == "scripted" and not cfg.script:
        raise DefinitionError(f"{path}.script: the scripted provider needs a script")
    if cfg.provider == "anthropic" and cfg.temperature is not None:
        raise DefinitionError(f"{path}.temperature: the anthropic provider does not take a temperature")
    if not 1 <= cfg.max_steps <= MAX_PLAN_STEPS:
        raise DefinitionError(f"{path}.max_steps: must be 1..{MAX_PLAN_STEPS}")


# What each engine-run step type's config must satisfy beyond its schema, by config type.
_CONFIG_CHECKS: dict[type, Callable[[Any, StepDef, str], None]] = {
    SleepConfig: _validate_sleep,
    WaitConfig: _validate_wait,
    PlannerConfig: lambda cfg, step, path: _validate_planner(cfg, path),
    AgentConfig: lambda cfg, step, path: _validate_agent(cfg, path),
    ContinueAsNewConfig: _validate_continue,
    ApprovalConfig: _validate_approval,
    SubWorkflowConfig: _validate_sub_workflow,
    MapConfig: _validate_map,
}


def check_plan(fragment: Any, planner: StepDef) -> list[StepDef] | str:
    """The plan's steps with ids namespaced `<planner>.<id>`, or why the plan is refused."""
    cfg = msgspec.convert(planner.config, PlannerConfig)
    if is_ref(fragment):  # the worker kept it in the object store: a plan must fit in an event
        return f"a plan of {fragment['size']} bytes is over the message limit (plans are not kept in the object store)"
    if not isinstance(fragment, dict) or not isinstance(fragment.get("steps"), list):
        return 'a plan must be an object {"steps": [...]}'
    if not fragment["steps"]:
        return "the plan has no steps"
    if len(fragment["steps"]) > cfg.max_steps:
        return f"the plan has {len(fragment['steps'])} steps, more than max_steps ({cfg.max_steps})"
    try:
        plan = parse_definition({"name": "plan", "steps": fragment["steps"]})
    except DefinitionError as exc:
        return f"invalid plan: {exc}"
    for i, step in enumerate(plan.steps):
        if step.type != StepKind.TASK:
            return f"invalid plan: steps[{i}]: a plan may only contain task steps, not {step.type}"
        if cfg.allowed_tasks and step.task not in cfg.allowed_tasks:
            allowed = ", ".join(cfg.allowed_tasks)
            return f"invalid plan: steps[{i}].task: {step.task!r} is not allowed (allowed: {allowed})"
    ns = planner.id
    return [
        msgspec.structs.replace(step, id=f"{ns}.{step.id}", depends_on=[f"{ns}.{d}" for d in step.depends_on])
        for step in plan.steps
    ]


def _validate_agent(cfg: AgentConfig, path: str) -> None:
    if cfg.provider == "anthropic" and cfg.temperature is not None:
        raise DefinitionError(f"{path}.temperature: the anthropic provider does not take a temperature")
    if cfg.provider == "scripted" and not cfg.script:
        raise DefinitionError(f"{path}.script: the scripted provider needs a script of assistant turns")
    if not 1 <= cfg.max_turns <= 10_000:
        raise DefinitionError(f"{path}.max_turns: must be 1..10000")
    _check_duration(cfg.max_duration, f"{path}.max_duration")
    _check_duration(cfg.command_timeout, f"{path}.command_timeout")
    for i, name in enumerate(cfg.tools):
        if not NAME_RE.match(name):
            raise DefinitionError(f"{path}.tools[{i}]: {name!r} must be 1-64 letters, digits, '-' or '_'")
    if isinstance(cfg.approve_tools, list):
        for i, name in enumerate(cfg.approve_tools):
            if name not in cfg.tools:
                raise DefinitionError(f"{path}.approve_tools[{i}]: {name!r} is not in tools")
    if cfg.continue_as_new_after_turns is not None and cfg.continue_as_new_after_turns < 1:
        raise DefinitionError(f"{path}.continue_as_new_after_turns: must be >= 1")


def _validate_retry(retry: RetryPolicy, path: str) -> None:
    if not 1 <= retry.max_attempts <= MAX_ATTEMPTS:
        raise DefinitionError(f"{path}.max_attempts: must be 1..{MAX_ATTEMPTS}")
    _check_duration(retry.initial, f"{path}.initial")
    _check_duration(retry.max, f"{path}.max")
    if not (math.isfinite(retry.multiplier) and retry.multiplier >= 1):
        raise DefinitionError(f"{path}.multiplier: must be >= 1 (and finite)")


def _validate_references(step: StepDef, path: str, upstream: set[str]) -> None:
    for field, value in (
        ("input", step.input),
        ("config", templated_config(step)),
        ("when", step.when),
        ("skip_if", step.skip_if),
    ):
        if value is msgspec.UNSET or value is None:
            continue
        if problem := template.check_syntax(value):
            raise DefinitionError(f"{path}.{field}: {problem}")
        refs = [value.ref] if isinstance(value, Compare) else template.references(value)
        for ref in refs:
            if problem := template.check_reference(ref):
                raise DefinitionError(f"{path}.{field}: {problem}")
            needed = template.step_of(ref)
            if needed is not None and needed not in upstream:
                raise DefinitionError(
                    f"{path}.{field}: ${{{ref}}} reads step {needed!r}, which is not upstream of "
                    f"{step.id!r} (add it to depends_on)"
                )


def _topological_order(wf: WorkflowDef, index: dict[str, int]) -> list[str]:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    order: list[str] = []
    for root in wf.steps:
        if root.id in state:
            continue
        stack: list[tuple[str, int]] = [(root.id, 0)]
        path: list[str] = []
        while stack:
            sid, pos = stack.pop()
            if pos == 0:
                state[sid] = 1
                path.append(sid)
            deps = wf.steps[index[sid]].depends_on
            if pos < len(deps):
                stack.append((sid, pos + 1))
                dep = deps[pos]
                if state.get(dep) == 1:
                    cycle = path[path.index(dep) :] + [dep]
                    raise DefinitionError(f"steps[{index[dep]}]: dependency cycle {' -> '.join(cycle)}")
                if dep not in state:
                    stack.append((dep, 0))
            else:
                state[sid] = 2
                path.pop()
                order.append(sid)
    return order


def _ancestors(wf: WorkflowDef, order: list[str]) -> dict[str, set[str]]:
    by_id = {s.id: s for s in wf.steps}
    result: dict[str, set[str]] = {}
    for sid in order:
        acc: set[str] = set()
        for dep in by_id[sid].depends_on:
            acc.add(dep)
            acc |= result[dep]
        result[sid] = acc
    return result


def _check_config(config: dict[str, Any], kind: type[msgspec.Struct], path: str) -> None:
    try:
        msgspec.convert(config, kind)
    except msgspec.ValidationError as exc:
        raise DefinitionError(_msgspec_message(exc, path)) from None


def _check_duration(value: Any, path: str) -> float | None:
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise DefinitionError(f"{path}: {exc}") from None
    if seconds > MAX_DURATION:
        raise DefinitionError(f"{path}: at most 365d")
    return seconds


def _msgspec_message(exc: msgspec.ValidationError, prefix: str) -> str:
    """Turn "Expected `str`, got `int` - at `$.steps[0].id`" into "steps[0].id: expected str, got int"."""
    text = str(exc)
    where = prefix
    if " - at `$" in text:
        text, _, tail = text.partition(" - at `$")
        where = prefix + tail.rstrip("`")
        where = where.lstrip(".")
    text = text.replace("`", "")
    text = text[:1].lower() + text[1:]
    field = where.rsplit(".", 1)[-1]
    if text.startswith("invalid enum value") and field == "type":
        got = text.removeprefix("invalid enum value ").strip()
        text = f"unknown step type {got} (expected one of {', '.join(StepKind)})"
    elif text.startswith("invalid enum value") and field in ENUM_CHOICES:
        got = text.removeprefix("invalid enum value ").strip()
        text = f"expected one of {', '.join(ENUM_CHOICES[field])}, got {got}"
    if text.startswith("object contains unknown field"):
        text = "unknown field " + text.removeprefix("object contains unknown field ").strip()
        text = f"{text!s}"
    elif text.startswith("object missing required field"):
        text = "missing required field " + text.removeprefix("object missing required field ").strip()
    return f"{where or 'definition'}: {text}"


# Step lookup by id, built once per definition (the core asks for steps by id on every event).
# Keyed by identity, and dropped when the definition is: a definition is immutable.
_INDEXES: dict[int, tuple[weakref.ref[WorkflowDef], dict[str, StepDef]]] = {}


def _index(wf: WorkflowDef) -> dict[str, StepDef]:
    key = id(wf)
    entry = _INDEXES.get(key)
    if entry is not None and entry[0]() is wf:
        return entry[1]
    index = {step.id: step for step in wf.steps}

    def forget(ref: weakref.ref[WorkflowDef]) -> None:
        if _INDEXES.get(key, (None, None))[0] is ref:
            del _INDEXES[key]

    _INDEXES[key] = (weakref.ref(wf, forget), index)
    return index
