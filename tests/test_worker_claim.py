"""A worker holds a task from the moment it starts checking it, not from when it starts running it.

Seen on a three-node cluster when the node leading the history died: a task's check hung on a
read for longer than the ack wait, the server handed the same message out again (twice) to the
same worker, those copies queued behind the check, and once the reads came back two of them
passed the check (no result was recorded yet) and both ran the step. And a check that outlasts
the ack wait may have let the server hand the task to another worker: it is handed back to be
checked again rather than run.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec

from dagnats.core.actions import DispatchTask
from dagnats.core.decide import fold
from dagnats.core.definition import parse_definition
from dagnats.core.events import RunStarted, StepCompleted, StepQueued
from dagnats.core.state import RunState
from dagnats.testing.store import MemoryStore
from dagnats.worker.runtime import Runtime
from dagnats.worker.sdk import Worker

TASK = DispatchTask(run_id="r1", step_id="s", attempt=1, task="count", msg_id="r1:task:s:1")


class Message:
    """One task message as a worker gets it; `attempts` > 1 (a redelivery) makes it checked."""

    def __init__(self, attempts: int) -> None:
        self.subject = "dagnats.task.count.r1"
        self.data = msgspec.json.encode(TASK)
        self.seq = 7
        self.delivery = attempts
        self.attempts = attempts
        self.pending = 0
        self.queued_at = time.time()
        self.settled: list[str] = []

    async def ack(self) -> None:
        self.settled.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.settled.append("nak")

    async def term(self) -> None:
        self.settled.append("term")

    async def in_progress(self) -> None:
        self.settled.append("in_progress")


class HangingReads(MemoryStore):
    """A store whose run reads wait until `released` is set (a node died under them); or, with
    `slow`, each take that long."""

    reconnects = 0

    def __init__(self, slow: float = 0.0) -> None:
        super().__init__()
        self.released = asyncio.Event()
        self.slow = slow

    async def current(self, run_id: str) -> tuple[RunState | None, int]:
        if self.slow:
            await asyncio.sleep(self.slow)
        else:
            await self.released.wait()
        return None, 0  # nothing recorded says the task is done


def _runtime(store: MemoryStore, ack_wait: float) -> tuple[Runtime, list[int]]:
    worker = Worker("w")
    ran: list[int] = []

    @worker.task("count")
    async def count(ctx: Any) -> int:
        ran.append(ctx.attempt)
        return len(ran)

    runtime = Runtime(worker, store, 4)  # type: ignore[arg-type]
    runtime.ack_waits["count"] = ack_wait
    return runtime, ran


async def test_copies_of_a_task_handed_out_while_its_check_hangs_do_not_run_beside_it():
    store = HangingReads()
    runtime, ran = _runtime(store, ack_wait=30.0)
    first, second, third = Message(2), Message(3), Message(4)
    checking = asyncio.create_task(runtime._execute(first))
    await asyncio.sleep(0.05)  # the first copy is in its check, waiting for the read
    # The ack wait ran out: the server handed it out again, twice. Each copy is taken in hand
    # at once (without it, they wait behind the first check, then run too).
    copies = [asyncio.create_task(runtime._execute(m)) for m in (second, third)]
    await asyncio.sleep(0.05)
    store.released.set()
    await asyncio.wait_for(asyncio.gather(checking, *copies), 10)
    assert ran == [1]
    assert first.settled == ["ack"]
    assert second.settled == third.settled == ["in_progress"]


async def test_a_check_that_outlasts_a_third_of_the_ack_wait_hands_the_task_back():
    store = HangingReads(slow=0.5)
    runtime, ran = _runtime(store, ack_wait=0.3)  # another worker may hold the task by now
    msg = Message(2)
    await asyncio.wait_for(runtime._execute(msg), 10)
    assert ran == []
    assert msg.settled == ["nak"]


class LaggingReplica(MemoryStore):
    """A store whose reads come from a replica behind its leader: for the first `behind`
    reads it has not yet got the run's last event (its result), which the leader has."""

    reconnects = 0

    def __init__(self, behind: int) -> None:
        super().__init__()
        self.behind = behind

    async def current(self, run_id: str) -> tuple[RunState | None, int]:
        events = await super().read_history(run_id)
        if self.behind > 0:
            self.behind -= 1
            events = events[:-1]
        state = None
        for _, event in events:
            state = fold(state, event)
        return state, events[-1][0] if events else 0

    async def read_history(self, run_id: str, after: int = 0) -> list[tuple[int, Any]]:
        if self.behind > 0:
            self.behind -= 1
            return []
        return await super().read_history(run_id, after)


async def test_a_check_read_from_a_replica_behind_its_leader_waits_for_the_result_the_leader_has():
    """A redelivered task whose result is recorded must not run again because the replica
    that answered the check had not got that result yet (a cluster's direct gets)."""
    store = LaggingReplica(behind=3)
    wf = parse_definition({"name": "one", "steps": [{"id": "s", "task": "count"}]})
    await store.append("r1", RunStarted(at=1.0, run_id="r1", workflow="one", version=1, definition=wf))
    await store.append("r1", StepQueued(at=2.0, step_id="s", attempt=1))
    await store.append("r1", StepCompleted(at=3.0, step_id="s", attempt=1, output=1))
    runtime, ran = _runtime(store, ack_wait=30.0)
    msg = Message(2)
    await asyncio.wait_for(runtime._execute(msg), 10)
    assert ran == []
    assert msg.settled == ["ack"]
