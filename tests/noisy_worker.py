"""A worker whose task logs a lot: `dagnats worker tests.noisy_worker:worker` (its log goes to stderr)."""

from __future__ import annotations

import logging

from dagnats import TaskContext, Worker

worker = Worker()
log = logging.getLogger("noisy")


@worker.task("noisy")
async def noisy(ctx: TaskContext) -> str:
    for _ in range(1000):
        log.warning("a line for a stderr nobody reads")
    return "said it all"
