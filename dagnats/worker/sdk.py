"""The worker SDK: register task handlers and tools; what a handler gets and may raise.

    worker = Worker()

    @worker.task("summarize")
    async def summarize(ctx: TaskContext) -> dict:
        ...

Returning completes the attempt, raising fails it (retried per the step's policy unless the
exception is `NonRetryable`). The engine alone decides about retries; a worker only reports.
Pulling, running and reporting tasks is the runtime's (`dagnats.worker.runtime`).
"""

from __future__ import annotations

import asyncio
import getpass
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dagnats.core.events import StepCheckpointed, StepLog

if TYPE_CHECKING:
    from dagnats.nats.store import Store

Handler = Callable[["TaskContext"], Awaitable[Any] | Any]
ToolHandler = Callable[[dict[str, Any]], Awaitable[Any] | Any]

SUSPEND = object()  # returned by a built-in handler that parks its step (the engine resumes it)


class NonRetryable(Exception):
    """Raise from a handler to fail the step at once, whatever its retry policy says."""


class TaskFailed(Exception):
    """Raise to fail the attempt with exactly this message (retried per the step's policy)."""


@dataclass
class TaskContext:
    """What a handler gets: the task's input and config, who it is, and ways to report."""

    input: Any
    config: dict[str, Any]
    run_id: str
    step_id: str
    attempt: int
    task: str
    checkpoint_data: Any = None
    _store: Store | None = field(default=None, repr=False)
    _msg: Any = field(default=None, repr=False)
    _announce: Callable[[], Awaitable[None]] | None = field(default=None, repr=False)

    async def announce(self) -> None:
        """Record step.started now. It is otherwise recorded only once a task has run for
        STARTED_AFTER, and before anything else the handler records (logs, checkpoints)."""
        if self._announce is not None:
            await self._announce()

    async def heartbeat(self) -> None:
        """Tell NATS this task is still being worked on (the runtime also does it by itself)."""
        if self._msg is not None:
            await self._msg.in_progress()

    async def checkpoint(self, data: Any) -> None:
        """Save progress; a later attempt of this step starts with `ctx.checkpoint_data == data`."""
        self.checkpoint_data = data
        await self.announce()
        if self._store is not None:
            await self._store.append(
                self.run_id,
                StepCheckpointed(at=time.time(), step_id=self.step_id, attempt=self.attempt, data=data),
            )

    async def log(self, message: str) -> None:
        """Record a line in the run's history, shown by `dagnats run events`."""
        await self.announce()
        if self._store is not None:
            await self._store.append(
                self.run_id,
                StepLog(at=time.time(), step_id=self.step_id, attempt=self.attempt, message=str(message)),
            )


class Worker:
    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"{getpass.getuser()}@{socket.gethostname()}:{os.getpid()}"
        self.handlers: dict[str, Handler] = {}
        self.tools: dict[str, tuple[dict[str, Any], str, ToolHandler]] = {}

    def task(self, name: str) -> Callable[[Handler], Handler]:
        """Register the decorated function as the handler of task `name`."""

        def register(fn: Handler) -> Handler:
            if name in self.handlers:
                raise ValueError(f"task {name!r} is registered twice")
            self.handlers[name] = fn
            return fn

        return register

    def tool(
        self, name: str, schema: dict[str, Any], description: str = ""
    ) -> Callable[[ToolHandler], ToolHandler]:
        """Register the decorated function as a tool agents may call: `fn(arguments) -> result`.

        `schema` is the JSON schema of the arguments; what the function returns (a string, or any
        JSON value) is handed to the model, and what it raises becomes an error result.
        """

        def register(fn: ToolHandler) -> ToolHandler:
            if name in self.tools:
                raise ValueError(f"tool {name!r} is registered twice")
            self.tools[name] = (schema, description or (fn.__doc__ or "").strip(), fn)
            return fn

        return register

    def include(self, other: Worker) -> None:
        for name, fn in other.handlers.items():
            self.task(name)(fn)
        for name, (schema, description, tool) in other.tools.items():
            self.tool(name, schema, description)(tool)

    async def run(self, store: Store, stop: asyncio.Event, *, concurrency: int = 8) -> None:
        """Pull and run tasks until `stop` is set, then finish the ones in hand."""
        from .runtime import Runtime

        runtime = Runtime(self, store, concurrency)
        beat = store.beat("worker", self.name, list(self.handlers), lambda: len(runtime.inflight))
        beat.start()  # says what this worker serves (dagnats status, no_worker); off the hot path
        try:
            await runtime.run(stop)
        finally:
            await beat.stop()
