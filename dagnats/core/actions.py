"""Actions: what the shell must do after an event. Imperative names, immutable values.

Every action that publishes carries a deterministic `msg_id`, so doing it again after a crash
is absorbed by JetStream's de-duplication instead of repeating the effect.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .events import Event, ForkOf, ParentRef


class _Action(msgspec.Struct, frozen=True, tag_field="action", omit_defaults=True, kw_only=True):
    pass


class AppendEvent(_Action, tag="append_event", frozen=True):
    event: Event


class DispatchTask(_Action, tag="dispatch_task", frozen=True):
    run_id: str
    step_id: str
    attempt: int
    task: str
    msg_id: str
    input: Any = None
    config: dict[str, Any] = {}
    timeout: float | None = None
    checkpoint: Any = None
    # Sent by a pass that did not itself record the event behind it (recovery, a redo, another
    # writer's event): it may repeat a message whose de-duplication the server forgot, so the
    # worker checks the run's current state before it runs the task.
    recheck: bool = False


class StartTimer(_Action, tag="start_timer", frozen=True):
    run_id: str
    kind: str
    fire_at: float
    msg_id: str
    step_id: str = ""
    attempt: int = 0


class CancelTimers(_Action, tag="cancel_timers", frozen=True):
    """The run ended: its pending timers can go."""

    run_id: str


class DropTasks(_Action, tag="drop_tasks", frozen=True):
    """The run ended with tasks still queued: take them off the queue, unrun."""

    run_id: str


class StartChildRun(_Action, tag="start_child_run", frozen=True):
    child_run_id: str
    workflow: str
    parent: ParentRef
    depth: int
    root_run_id: str
    version: int | None = None
    input: Any = None


class ContinueRun(_Action, tag="continue_run", frozen=True):
    """Start the next run of a continue_as_new chain."""

    run_id: str
    step_id: str
    next_run_id: str
    workflow: str
    generation: int
    root_run_id: str
    chain_start: str
    depth: int
    version: int | None = None
    input: Any = None
    parent: ParentRef | None = None
    resume: ForkOf | None = None  # an agent's hand-over keeps what lies upstream of its step


class CancelChildRun(_Action, tag="cancel_child_run", frozen=True):
    child_run_id: str
    reason: str


class NotifyParent(_Action, tag="notify_parent", frozen=True):
    parent: ParentRef
    child_run_id: str
    status: str
    output: Any = None
    error: str | None = None


Action = (
    AppendEvent
    | DispatchTask
    | StartTimer
    | CancelTimers
    | DropTasks
    | StartChildRun
    | ContinueRun
    | CancelChildRun
    | NotifyParent
)
