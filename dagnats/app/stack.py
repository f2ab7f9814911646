"""The engine, the timers and the workers over one store: the stack `serve`, `bench` and the tests run."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

from dagnats.agent.runtime import agent_worker
from dagnats.engine.loop import Engine
from dagnats.engine.timers import TimerService
from dagnats.nats.store import Store
from dagnats.worker import Worker
from dagnats.worker.builtins import builtin


def combine(name: str, workspaces: Path | None, others: Iterable[Worker] = ()) -> Worker:
    """One worker serving the built-in tasks and agents (their workspaces under `workspaces`;
    none of them when it is None) and every task and tool of `others`."""
    combined = Worker(name=name)
    own = [builtin, agent_worker(workspaces)] if workspaces is not None else []
    for w in [*own, *others]:
        combined.include(w)
    return combined


class Stack:
    """`engines` engines and the timers over `store`, and `worker` over `worker_store` (a
    worker's connection: it can report on its tasks but never approve, cancel or signal)."""

    def __init__(
        self, store: Store, worker_store: Store, worker: Worker, *, concurrency: int, engines: int = 1
    ) -> None:
        self.engines = [Engine(store) for _ in range(engines)]
        self.timers = TimerService(store)
        self.worker = worker
        self.worker_store = worker_store
        self.concurrency = concurrency

    def start(self, stop: asyncio.Event) -> list[asyncio.Task[None]]:
        """Each part as a named task of the running loop, until `stop` is set. A worker with no
        task and no tool is not started."""
        tasks = [asyncio.create_task(e.run(stop), name="engine") for e in self.engines]
        tasks.append(asyncio.create_task(self.timers.run(stop), name="timers"))
        if self.worker.handlers or self.worker.tools:
            run = self.worker.run(self.worker_store, stop, concurrency=self.concurrency)
            tasks.append(asyncio.create_task(run, name="workers"))
        return tasks
