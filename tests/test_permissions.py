"""Workers get their own NATS credentials: they report on their tasks and can do nothing else."""

from __future__ import annotations

import asyncio
import time

import pytest

from dagnats.core.events import RunCancelRequested, SignalReceived, StepCompleted, encode_event
from dagnats.nats.connection import connect
from dagnats.nats.names import history_subject


async def _violations(endpoint, subject: str, data: bytes) -> list[str]:
    """Publish as `endpoint` and return the server's permission errors."""
    errors: list[str] = []
    nc = await connect(endpoint)

    async def remember(exc: Exception) -> None:
        errors.append(str(exc))

    nc._error_cb = remember  # the connect helper installs its own quiet callback
    await nc.publish(subject, data)
    await nc.flush()
    for _ in range(40):
        if errors:
            break
        await asyncio.sleep(0.025)
    await nc.close()
    return errors


async def test_worker_credentials_cannot_steer_runs(stack):
    await stack.start()
    await stack.register(
        {"name": "gate", "steps": [{"id": "w", "type": "wait_for_event", "config": {"name": "go"}}]}
    )
    run_id = await stack.client.start("gate")
    for _ in range(100):
        if (await stack.client.run(run_id)).status == "waiting":
            break
        await asyncio.sleep(0.05)
    forged = encode_event(RunCancelRequested(at=time.time(), reason="forged", by="worker"))
    for source in ("o", "e"):  # the operator's and the engine's subjects are closed to workers
        errors = await _violations(stack.worker_endpoint, history_subject(run_id, source), forged)
        assert any("permissions violation" in e.lower() for e in errors), errors
    errors = await _violations(stack.worker_endpoint, "$JS.API.STREAM.DELETE.DAGNATS_HISTORY", b"")
    assert any("permissions violation" in e.lower() for e in errors), errors  # and so is changing streams
    assert (await stack.client.run(run_id)).status == "waiting"


async def test_events_a_worker_may_not_write_are_ignored(stack):
    await stack.start()
    await stack.register(
        {
            "name": "gate2",
            "steps": [
                {"id": "w", "type": "wait_for_event", "config": {"name": "go"}},
                {"id": "after", "task": "echo", "depends_on": ["w"], "input": "done"},
            ],
        }
    )
    run_id = await stack.client.start("gate2")
    for _ in range(100):
        if (await stack.client.run(run_id)).status == "waiting":
            break
        await asyncio.sleep(0.05)
    worker = stack.worker_store  # publishes on the worker's own subject, which it may
    await worker.append(run_id, RunCancelRequested(at=time.time(), reason="forged"))
    await worker.append(run_id, SignalReceived(at=time.time(), name="go", data="forged"))
    await worker.append(run_id, StepCompleted(at=time.time(), step_id="w", attempt=1, output="forged"))
    await asyncio.sleep(0.3)
    state = await stack.client.run(run_id)
    assert state.status == "waiting" and state.steps["w"].status == "waiting"
    await stack.client.signal(run_id, "go", "real")
    state = await asyncio.wait_for(stack.client.wait(run_id), 10)
    assert state.status == "completed" and state.steps["w"].output == "real"
    events = [e for _, e in await stack.client.events(run_id)]
    sources = {type(e).__name__: e.source for e in events}
    assert sources["RunStarted"] == "o" and sources["StepQueued"] == "e"
    after = [
        e for e in events if getattr(e, "step_id", "") == "after" and type(e).__name__ == "StepCompleted"
    ]
    assert [e.source for e in after] == ["w"]  # the worker's own result


async def test_a_worker_cannot_approve(stack):
    from dagnats.core.events import ApprovalDecided

    await stack.start()
    await stack.register(
        {"name": "gated", "steps": [{"id": "ok", "type": "approval", "config": {"prompt": "?"}}]}
    )
    run_id = await stack.client.start("gated")
    for _ in range(100):
        if (await stack.client.run(run_id)).status == "waiting":
            break
        await asyncio.sleep(0.05)
    decision = ApprovalDecided(at=time.time(), approval_id="ok.1", step_id="ok", approved=True, by="agent")
    errors = await _violations(stack.worker_endpoint, history_subject(run_id, "o"), encode_event(decision))
    assert any("permissions violation" in e.lower() for e in errors), errors
    await stack.worker_store.append(run_id, decision)  # its own subject: recorded, and ignored
    await asyncio.sleep(0.3)
    state = await stack.client.run(run_id)
    assert state.steps["ok"].status == "waiting" and state.approvals["ok.1"].status == "pending"
    assert [p.approval.approval_id for p in await stack.client.approvals()] == ["ok.1"]


async def test_a_worker_cannot_start_a_run(stack):
    from dagnats.core.definition import parse_definition
    from dagnats.core.events import RunStarted
    from dagnats.errors import NotFound

    await stack.start()
    wf = parse_definition({"name": "x", "steps": [{"id": "a", "task": "echo"}]})
    forged = RunStarted(at=time.time(), run_id="forged1", workflow="x", version=1, definition=wf, input=1)
    await stack.worker_store.append("forged1", forged)  # its own subject: recorded, never a run
    await asyncio.sleep(0.5)
    with pytest.raises(NotFound):
        await stack.client.run("forged1")
    assert [p.run_id for p in await stack.client.approvals()] == []


async def test_a_worker_writes_its_own_heartbeat_and_no_other(stack):
    from dagnats.nats.names import heartbeat_subject

    await stack.start()  # its workers connect with the worker's credentials
    for _ in range(100):
        beats = await stack.client.heartbeats() or []
        if any(b.name == "test-worker" for b in beats):
            break
        await asyncio.sleep(0.05)
    (beat,) = [b for b in beats if b.name == "test-worker"]
    assert beat.kind == "worker" and "echo" in beat.tasks
    assert await _violations(stack.worker_endpoint, heartbeat_subject("worker", "w1"), b"{}") == []
    for subject in (heartbeat_subject("engine", "e1"), "$KV.dagnats_runs.forged"):
        errors = await _violations(stack.worker_endpoint, subject, b"{}")
        assert any("permissions violation" in e.lower() for e in errors), (subject, errors)
