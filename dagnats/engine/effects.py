"""The engine's effects: what the core's actions other than appends do to the world.

Every one is idempotent, so a pass redone after a crash may do it again: dispatches and timers
carry a deterministic Nats-Msg-Id, a child or continued run starts with expected sequence 0,
and the events appended to other runs carry their own message ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from dagnats.core import schema as input_schema
from dagnats.core.actions import (
    Action,
    AppendEvent,
    CancelChildRun,
    CancelTimers,
    ContinueRun,
    DispatchTask,
    DropTasks,
    NotifyParent,
    StartChildRun,
    StartTimer,
)
from dagnats.core.events import ChildRunFinished, RunCancelRequested, RunContinued, RunStarted, StepFailed
from dagnats.core.state import RunState
from dagnats.errors import NotFound
from dagnats.ports import Conflict, Store, WorkflowVersion

EFFECT_BATCH = 256  # effects in flight at once within one pass


class Effects:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def perform_all(self, due: list[tuple[RunState, Action]]) -> None:
        """Do a pass's effects, each with the state its event left (independent and idempotent)."""
        effects = [self.perform(state, action) for state, action in due]
        for start in range(0, len(effects), EFFECT_BATCH):
            await asyncio.gather(*effects[start : start + EFFECT_BATCH])

    async def perform(self, state: RunState, action: Action) -> None:
        match action:
            case DispatchTask():
                await self.store.dispatch(action)
            case StartTimer():
                await self.store.start_timer(action)
            case CancelTimers(run_id=run_id):
                await self.store.cancel_timers(run_id)
            case DropTasks(run_id=run_id):
                await self.store.drop_tasks(run_id)
            case StartChildRun():
                await self._start_child(state, action)
            case ContinueRun():
                await self._continue(state, action)
            case CancelChildRun(child_run_id=child, reason=reason):
                await self.store.append(
                    child,
                    RunCancelRequested(at=state.updated_at, reason=reason, by="engine"),
                    msg_id=f"{child}:cancel:parent",
                )
            case NotifyParent():
                await self._notify_parent(state, action)
            case AppendEvent():
                pass

    async def _notify_parent(self, state: RunState, action: NotifyParent) -> None:
        p = action.parent
        await self.store.append(
            p.run_id,
            ChildRunFinished(
                at=state.updated_at,
                step_id=p.step_id,
                attempt=p.attempt,
                child_run_id=action.child_run_id,
                status=action.status,
                output=action.output,
                error=action.error,
            ),
            msg_id=f"{p.run_id}:child:{p.step_id}:{p.attempt}:finished",
        )

    async def _start_child(self, state: RunState, action: StartChildRun) -> None:
        p = action.parent

        async def fail(error: str) -> None:  # the parent's step fails; no child run exists
            finished = ChildRunFinished(
                at=state.updated_at,
                step_id=p.step_id,
                attempt=p.attempt,
                child_run_id=action.child_run_id,
                status="failed",
                error=error,
            )
            await self.store.append(
                p.run_id, finished, msg_id=f"{p.run_id}:child:{p.step_id}:{p.attempt}:finished"
            )

        await self._start_run(
            state,
            action.workflow,
            action.version,
            action.input,
            fail,
            run_id=action.child_run_id,
            parent=p,
            depth=action.depth,
            root_run_id=action.root_run_id,
            by=f"run {p.run_id}",
        )

    async def _continue(self, state: RunState, action: ContinueRun) -> None:
        """Start the next run of a continue_as_new chain, then mark this one continued."""

        async def fail(error: str) -> None:
            event = StepFailed(
                at=state.updated_at, step_id=action.step_id, attempt=1, retryable=False, error=error
            )
            await self.store.append(action.run_id, event, msg_id=f"{action.run_id}:continue:failed")

        started = await self._start_run(
            state,
            action.workflow,
            action.version,
            action.input,
            fail,
            run_id=action.next_run_id,
            parent=action.parent,
            depth=action.depth,
            root_run_id=action.root_run_id,
            generation=action.generation,
            continued_from=action.run_id,
            chain_start=action.chain_start,
            fork=action.resume,
            by=f"run {action.run_id}",
        )
        if started:
            continued = RunContinued(
                at=state.updated_at, step_id=action.step_id, next_run_id=action.next_run_id
            )
            await self.store.append(action.run_id, continued, msg_id=f"{action.run_id}:continued")

    async def _start_run(
        self,
        state: RunState,
        workflow: str,
        version: int | None,
        value: Any,
        fail: Callable[[str], Awaitable[None]],
        **fields: Any,
    ) -> bool:
        """Append the `run.started` of a run of `workflow` (`fields` say which run and whose),
        unless the version is missing or `value` is no input for it: then `fail` says why.
        Whether the run exists now (an earlier attempt at this effect may have started it)."""
        try:
            wfv = await self.store.get_workflow(workflow, version)
        except NotFound as exc:
            await fail(str(exc))
            return False
        if problem := input_problem(wfv, value):
            await fail(problem)
            return False
        started = RunStarted(
            at=state.updated_at,
            workflow=wfv.name,
            version=wfv.version,
            definition=wfv.definition,
            input=value,
            **fields,
        )
        try:
            await self.store.append(started.run_id, started, expected_last=0)
        except Conflict:
            pass  # already started by an earlier attempt at this effect
        return True


def input_problem(wfv: WorkflowVersion, value: Any) -> str | None:
    """Why `value` may not start a run of this workflow version, or None."""
    schema = wfv.definition.input_schema
    problem = input_schema.validate(schema, value) if schema is not None else None
    return f"input does not match {wfv.name}'s input_schema: {problem}" if problem else None
