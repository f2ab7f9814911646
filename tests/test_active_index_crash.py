"""The index of unfinished runs survives a crash between a snapshot and its index entry.

The engine writes a run's snapshot and its entry in DAGNATS_ACTIVE at the same time and acks
the run's messages once both are written. A crash after the snapshot landed but before the
entry did leaves the messages unacked: handed out again, they are covered by the snapshot, so
the pass has nothing to fold; it must still write the entry, or `approval list` (which reads
only the index) never shows what the run waits for, and a finished run stays listed.
"""

from __future__ import annotations

import asyncio

import pytest
from test_engine_crash_points import CrashOnce

from dagnats.engine.loop import Engine
from dagnats.nats.store import Store

ASK = {"name": "ask", "steps": [{"id": "ok", "type": "approval", "config": {"prompt": "go?"}}]}


async def _engine_that_crashes(stack, method: str) -> CrashOnce:
    await stack.start(engines=0)
    engine_store = Store(stack.store.nc)
    fault = CrashOnce(engine_store, method, "before", 1)
    engine = Engine(engine_store)
    fault.engines.append(engine)
    stack.tasks.append(asyncio.create_task(engine.run(stack.stop_event)))
    return fault


async def _until(predicate, what: str, timeout: float = 20.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


async def test_a_crash_before_the_index_entry_still_lists_the_approval(stack):
    fault = await _engine_that_crashes(stack, "save_active")
    await stack.register(ASK)
    run_id = await stack.client.start("ask")

    async def listed():
        return [p for p in await stack.client.approvals() if p.run_id == run_id]

    pending = await _until(listed, "the approval to be listed")
    assert fault.fired, "the crash point was never reached"
    assert [p.approval.step_id for p in pending] == ["ok"]
    active = await stack.store.active_runs()
    assert active is not None and [a.summary.run_id for a in active] == [run_id]


async def test_a_crash_before_dropping_the_entry_still_drops_it(stack):
    fault = await _engine_that_crashes(stack, "drop_active")
    await stack.register({"name": "one", "steps": [{"id": "a", "task": "echo", "input": 1}]})
    state = await stack.run_to_end("one")
    assert state.status == "completed"

    async def dropped():
        active = await stack.store.active_runs()
        return active is not None and all(a.summary.run_id != state.run_id for a in active)

    await _until(dropped, "the finished run to leave the index")
    assert fault.fired, "the crash point was never reached"
