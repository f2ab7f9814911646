"""Per-run job queues: one job at a time works on a run, and a bounded number of runs at once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

MAX_ACTIVE_RUNS = 256  # runs being brought up to date at once by one engine

Item = TypeVar("Item")


class RunQueues(Generic[Item]):
    """Runs being worked on, each by one job that takes what is queued for it in turn and hands
    each item to `work`. One job per run keeps a run's items in the order they were queued."""

    def __init__(self, work: Callable[[str, Item], Awaitable[None]], limit: int = MAX_ACTIVE_RUNS) -> None:
        self._work = work
        self._queues: dict[str, list[Item]] = {}
        self._slots = asyncio.Semaphore(limit)
        self._jobs: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        """How many runs are being worked on (what a heartbeat reports as in hand)."""
        return len(self._queues)

    def busy(self, run_id: str) -> bool:
        """Whether a job works on the run (or has items of it still to take)."""
        return run_id in self._queues

    async def submit(self, run_id: str, item: Item) -> None:
        """Queue `item` for the run's job, starting one (waiting for one of `limit` slots) if
        none works on the run."""
        if self._enqueue(run_id, item):
            return
        await self._slots.acquire()
        if self._enqueue(run_id, item):  # a push started a job meanwhile
            self._slots.release()
            return
        self._start(run_id, [item], self._finished)

    def push(self, run_id: str, item: Item) -> None:
        """Queue `item` for the run's job, or start one outside the limit: never waits (for
        work that must not queue behind other runs, like a delayed snapshot save)."""
        if not self._enqueue(run_id, item):
            self._start(run_id, [item], self._jobs.discard)

    async def join(self) -> None:
        """Wait until every job has finished, including any started meanwhile."""
        while self._jobs:
            await asyncio.gather(*self._jobs, return_exceptions=True)

    def _enqueue(self, run_id: str, item: Item) -> bool:
        """Queue `item` for the run's job, if it has one working."""
        queue = self._queues.get(run_id)
        if queue is not None:
            queue.append(item)
        return queue is not None

    def _start(self, run_id: str, queue: list[Item], done: Callable[[Any], None]) -> None:
        self._queues[run_id] = queue
        job = asyncio.create_task(self._drain(run_id, queue))
        self._jobs.add(job)
        job.add_done_callback(done)

    async def _drain(self, run_id: str, queue: list[Item]) -> None:
        try:
            while queue:
                await self._work(run_id, queue.pop(0))
        finally:
            del self._queues[run_id]

    def _finished(self, job: asyncio.Task[None]) -> None:
        self._jobs.discard(job)
        self._slots.release()
