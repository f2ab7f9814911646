"""A worker for tests/test_big_values.py: tasks with values over the NATS payload limit.

With $DAGNATS_TEST_KILL_AFTER_VALUE set to a marker path, the process SIGKILLs itself right
after its first value write reaches the object store (before the event naming it is
appended), once: the marker file says it happened.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from dagnats import TaskContext, Worker
from dagnats.nats import objects

worker = Worker()


def blob(size: int) -> dict[str, Any]:
    """A value whose JSON is about `size` bytes, not all alike (no run of one character)."""
    text = hashlib.sha256(str(size).encode()).hexdigest() * (size // 64 + 1)
    return {"size": size, "text": text[:size]}


@worker.task("big-make")
def make(ctx: TaskContext) -> Any:
    _mark(ctx)
    return blob(int(ctx.config.get("bytes", 5_000_000)))


@worker.task("big-relay")
def relay(ctx: TaskContext) -> Any:
    """Its input as it arrived (a reference left unread would come back as the small ref)."""
    _mark(ctx)
    return ctx.input


@worker.task("big-measure")
def measure(ctx: TaskContext) -> dict[str, Any]:
    data = json.dumps(ctx.input).encode()
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _mark(ctx: TaskContext) -> None:
    marks = os.environ.get("DAGNATS_TEST_MARKS")
    if marks:
        with (Path(marks) / f"{ctx.run_id}.{ctx.step_id}").open("a") as f:
            f.write(f"{time.time():.6f}\n")


_KILL = os.environ.get("DAGNATS_TEST_KILL_AFTER_VALUE")
if _KILL:
    _real_put = objects.ObjectValues.put_value

    async def _put_then_die(self: objects.ObjectValues, name: str, data: bytes) -> None:
        await _real_put(self, name, data)
        if not os.path.exists(_KILL):
            Path(_KILL).write_text(name)
            os.kill(os.getpid(), signal.SIGKILL)

    objects.ObjectValues.put_value = _put_then_die  # type: ignore[method-assign]
