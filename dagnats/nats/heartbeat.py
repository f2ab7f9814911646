"""Heartbeats: engines and workers say they are alive in a KV bucket whose entries expire.

Each process puts `<kind>.<id>` every INTERVAL seconds from a background task (nothing in the
hot path waits on it) and deletes it when it stops cleanly; the bucket's TTL removes the
entry of a process that died. Readers count an entry as alive while its `last_seen` is
younger than ALIVE seconds. `dagnats status` lists them, and `run show`, the console and
`run start --wait` use them to say when a queued step's task has no live worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from dagnats.core.effects import task_of
from dagnats.core.state import RunState
from dagnats.ports import Heartbeat

from . import names

log = logging.getLogger("dagnats.nats.heartbeat")


def _env_seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


# Tests shorten both; a reader's ALIVE narrower than the bucket's TTL only hides entries sooner.
INTERVAL = _env_seconds("DAGNATS_HEARTBEAT_INTERVAL", 5.0)
ALIVE = _env_seconds("DAGNATS_HEARTBEAT_TTL", names.HEARTBEAT_TTL_SECONDS)
NO_WORKER_GRACE = 2.0  # `run start --wait` warns about a step queued this long with no worker


_enc = msgspec.json.Encoder()


class Publisher(Protocol):
    """Where beats go: a JetStream context (its `publish`)."""

    async def publish(
        self, subject: str, payload: bytes = b"", timeout: float | None = None, *, headers: Any = None
    ) -> Any: ...


class Beat:
    """The background task that keeps one process's heartbeat fresh."""

    def __init__(
        self,
        js: Publisher,
        kind: str,
        name: str,
        tasks: list[str],
        in_flight: Callable[[], int],
        interval: float = INTERVAL,
    ) -> None:
        self.js = js
        self.interval = interval
        self.in_flight = in_flight
        self.record = Heartbeat.of_this_process(kind, name, tasks)
        self.subject = names.heartbeat_subject(kind, self.record.id)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Beat:
        self._task = asyncio.create_task(self._run(), name=f"heartbeat-{self.record.kind}")
        return self

    async def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                beat = msgspec.structs.replace(self.record, in_flight=self.in_flight(), last_seen=time.time())
                await self.js.publish(self.subject, _enc.encode(beat), timeout=2.0)
                failing = False
            except Exception as exc:  # no bucket yet (an older serve), a restart: try again later
                # (a failing `in_flight` is reported too, not left to end the task unseen)
                if not failing:
                    log.warning("heartbeat %s not recorded: %r", self.record.id, exc)
                failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)

    async def stop(self) -> None:
        """Stop beating and delete the entry, so readers see the process gone at once."""
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        with contextlib.suppress(Exception):
            await self.js.publish(self.subject, b"", headers={"KV-Operation": "DEL"}, timeout=1.0)


def served(beats: list[Heartbeat]) -> set[str]:
    """The tasks some live worker serves."""
    return {t for b in beats if b.kind == "worker" for t in b.tasks}


WORKER_STEP_TYPES = ("task", "agent_loop", "planner")  # the rest are the engine's own


def queued_tasks(state: RunState) -> dict[str, str]:
    """The run's queued steps that wait for a worker, with the task each waits for."""
    out = {}
    for sid, step in state.steps.items():
        if step.status != "queued":
            continue
        sdef = state.step_def(sid)
        task = task_of(sdef) if sdef.type in WORKER_STEP_TYPES else None
        if task:
            out[sid] = task
    return out
