"""A worker for the crash tests: marks its progress in files under $DAGNATS_TEST_MARKS."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from dagnats import TaskContext, Worker

worker = Worker()


@worker.task("crash-test-slow")
async def slow(ctx: TaskContext) -> dict[str, bool]:
    marks = Path(os.environ["DAGNATS_TEST_MARKS"]) / "slow"
    with marks.open("a") as f:
        f.write("started\n")
    await asyncio.sleep(2)
    with marks.open("a") as f:
        f.write("finished\n")
    return {"done": True}


@worker.task("crash-test-mark")
def mark(ctx: TaskContext) -> dict[str, int]:
    """A side effect to count: one line per execution, with the time it began."""
    runs = Path(os.environ["DAGNATS_TEST_MARKS"]) / ctx.run_id
    runs.mkdir(exist_ok=True)
    with (runs / ctx.step_id).open("a") as f:
        f.write(f"{time.time():.6f}\n")
    return {"step": ctx.step_id}
