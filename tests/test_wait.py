"""Client.wait and wait_many (no JetStream consumer), `serve --fsync` and `dagnats.embedded`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nats.js.errors import APIError

from dagnats.api.client import Client, WaitTimeout, _history_after, _Waiter
from dagnats.core.events import RunCompleted, SignalReceived, encode_event
from dagnats.errors import NotFound, UserError
from dagnats.nats import names
from dagnats.nats.store import decode_recorded

from conftest import ServeProcess, cli_env, dagnats, dagnats_json

ECHO = {"name": "quick", "steps": [{"id": "a", "task": "echo"}]}
GATE = {"name": "gate", "steps": [{"id": "gate", "type": "approval", "config": {"prompt": "go?"}}]}


async def _consumers(client: Client) -> int:
    info = await client.nc.jetstream().stream_info(names.HISTORY_STREAM)
    return info.state.consumer_count


async def _until_waiting(client: Client, run_id: str) -> None:
    for _ in range(400):
        if (await client.run(run_id)).pending_approvals():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} never asked for its approval")


async def _gated(stack, n: int = 1) -> list[str]:
    await stack.register(GATE)
    ids = [await stack.client.start("gate") for _ in range(n)]
    for run_id in ids:
        await _until_waiting(stack.client, run_id)
    return ids


async def test_wait_on_a_finished_run_returns_its_end_state(stack):
    await stack.start()
    await stack.register(ECHO)
    run_id = await stack.client.start("quick", {"x": 1})
    first = await stack.client.wait(run_id, timeout=20)
    again = await stack.client.wait(run_id, timeout=20)
    assert first.status == again.status == "completed"
    assert again.output == first.output and again.run_id == run_id


async def test_wait_returns_when_the_run_ends_and_costs_no_consumer(stack):
    await stack.start()
    [run_id] = await _gated(stack)
    before = await _consumers(stack.client)
    waiting = asyncio.create_task(stack.client.wait(run_id, timeout=30))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    assert await _consumers(stack.client) == before  # the engine's own, nothing of the wait's
    await stack.client.decide(run_id, "gate", approved=True)
    state = await waiting
    assert state.status == "completed" and state.steps["gate"].status == "completed"


async def test_a_refused_publish_heard_by_the_wait_does_not_end_it(stack):
    """A core subscriber hears publishes the stream refuses: a wait that trusted what it heard
    would report this run completed."""
    await stack.start()
    [run_id] = await _gated(stack)
    waiting = asyncio.create_task(stack.client.wait(run_id, timeout=30))
    await asyncio.sleep(0.2)
    forged = encode_event(RunCompleted(at=time.time(), output="forged"))
    with pytest.raises(APIError):  # wrong last sequence: the stream refuses it
        await stack.client.nc.jetstream().publish(
            names.history_subject(run_id, names.SOURCE_OPERATOR),
            forged,
            headers={"Nats-Expected-Last-Subject-Sequence": "0"},  # it has run.started
        )
    await asyncio.sleep(1.0)  # the hint's re-reads (5 ms .. 500 ms) are over
    assert not waiting.done()
    await stack.client.decide(run_id, "gate", approved=True)
    state = await waiting
    assert state.status == "completed" and state.output != "forged"


async def test_wait_finds_an_ended_run_whose_last_event_came_after_its_end(stack):
    """The first look sees a last event that does not end the run; the look after a quiet
    spell finds the end in the run's snapshot."""
    await stack.start()
    await stack.register(ECHO)
    run_id = await stack.client.start("quick")
    await stack.client.wait(run_id, timeout=20)
    for _ in range(200):  # the engine saves the ended run's snapshot
        snap, _ = await stack.client.store.load_snapshot(run_id)
        if snap is not None and snap.summary.status == "completed":
            break
        await asyncio.sleep(0.02)
    late = SignalReceived(at=time.time(), name="late", by="test")  # the fold ignores it
    await stack.client.store.append(run_id, late)
    states = await stack.client.wait_many([run_id], timeout=30)
    assert states[run_id].status == "completed"


async def test_wait_many_over_runs_some_finished_already(stack):
    await stack.start()
    await stack.register(ECHO)
    done = [await stack.client.start("quick", i) for i in range(10)]
    await stack.client.wait_many(done, timeout=30)
    gated = await _gated(stack, 20)
    before = await _consumers(stack.client)
    waiting = asyncio.create_task(stack.client.wait_many([*done, *gated, done[0]], timeout=60))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    assert await _consumers(stack.client) == before
    for run_id in gated[:10]:
        await stack.client.decide(run_id, "gate", approved=True)
    for run_id in gated[10:]:
        await stack.client.cancel(run_id, "enough")  # an operator's event ends these
    states = await waiting
    assert sorted(states) == sorted(done + gated)
    assert {r for r, s in states.items() if s.status == "completed"} == set(done + gated[:10])
    assert all(states[r].status == "cancelled" for r in gated[10:])


async def test_wait_survives_a_nats_server_restart(stack):
    await stack.start()
    [run_id] = await _gated(stack)
    client = await Client.connect(endpoint=stack.endpoint)
    # Bounded reconnects, and slower than the engine's (0.5 s): the run ends while this
    # client is still away, so it never hears the end and must read it after reconnecting.
    client.nc.options["max_reconnect_attempts"] = 30
    client.nc.options["reconnect_time_wait"] = 2.0
    try:
        waiting = asyncio.create_task(client.wait(run_id, timeout=60))
        await asyncio.sleep(0.3)
        stack.server.stop()
        stack.server.start()
        # Decide at once, on a fresh connection.
        async with await Client.connect(endpoint=stack.endpoint) as other:
            for _ in range(200):
                try:
                    await other.decide(run_id, "gate", approved=True)
                    break
                except UserError:
                    raise
                except Exception:
                    await asyncio.sleep(0.05)
        state = await waiting
        assert state.status == "completed"
        assert client.store.reconnects >= 1
    finally:
        await client.close()


async def test_wait_on_an_unknown_run_is_not_found(stack):
    await stack.start()
    with pytest.raises(NotFound, match="unknown run 'nosuchrun'"):
        await stack.client.wait("nosuchrun", timeout=5)
    await stack.register(ECHO)
    known = await stack.client.start("quick")
    with pytest.raises(NotFound, match="nosuchrun"):
        await stack.client.wait_many([known, "nosuchrun"], timeout=5)
    with pytest.raises(NotFound):
        await stack.client.wait("not.a.run", timeout=5)


async def test_wait_timeout_names_the_run(stack):
    await stack.start()
    [run_id] = await _gated(stack)
    with pytest.raises(WaitTimeout, match=f"run {run_id} had not ended within the 0.3s timeout") as exc:
        await stack.client.wait(run_id, timeout=0.3)
    assert isinstance(exc.value, TimeoutError) and isinstance(exc.value, UserError)
    with pytest.raises(TimeoutError, match="and 1 more"):
        await stack.client.wait_many([run_id, *await _gated(stack)], timeout=0.3)
    assert await stack.client.wait_many([]) == {}


def test_serve_fsync_with_an_external_nats_is_one_line(data_dir):
    proc = dagnats("serve", "--fsync", "--nats", "nats://127.0.0.1:1", data_dir=data_dir, timeout=30)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--fsync" in lines[0] and "sync_interval: always" in lines[0], proc.stderr


def test_serve_fsync_runs_the_embedded_server_with_sync_always(data_dir):
    server = ServeProcess(data_dir, args=("--fsync",)).start()
    try:
        assert "sync_interval: always" in (data_dir / "nats-server.conf").read_text()
        assert "fsync on every write" in server.log()
        doc = dagnats_json("status", data_dir=data_dir)
        assert doc["server"]["fsync"] is True
        assert "fsync on every write" in dagnats("status", data_dir=data_dir).stdout
        assert dagnats("workflow", "register", str(_quick_file(data_dir)), data_dir=data_dir).returncode == 0
        done = dagnats_json("run", "start", "quick", "--wait", data_dir=data_dir)
        assert done["status"] == "completed"
    finally:
        server.stop()


def _quick_file(data_dir: Path) -> Path:
    path = data_dir.parent / "quick.json"
    path.write_text(json.dumps(ECHO))
    return path


USER_PROGRAM = """
import asyncio, sys

import dagnats
from dagnats.core.definition import parse_definition

worker = dagnats.Worker()


@worker.task("greet")
async def greet(ctx: dagnats.TaskContext) -> dict:
    return {"greeting": f"hello, {ctx.input['name']}"}


async def main() -> None:
    data_dir = sys.argv[1] if len(sys.argv) > 1 else None
    async with dagnats.embedded(data_dir=data_dir, workers=[worker], fsync=data_dir is not None) as client:
        assert isinstance(client, dagnats.Client)
        await client.register(parse_definition({"name": "hello", "steps": [{"id": "greet", "task": "greet"}]}))
        state = await client.wait(await client.start("hello", {"name": "Ada"}), timeout=30)
        print(state.status, state.output["greeting"])
        ids = [await client.start("hello", {"name": n}) for n in ("Bo", "Cy")]
        print(sorted(s.output["greeting"] for s in (await client.wait_many(ids, timeout=30)).values()))


asyncio.run(main())
"""


@pytest.mark.parametrize("own_dir", [False, True])
def test_embedded_runs_a_users_program_in_one_process(tmp_path, own_dir):
    script = tmp_path / "app.py"
    script.write_text(USER_PROGRAM)
    data_dir = tmp_path / "keep"
    args = [str(data_dir)] if own_dir else []
    proc = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=60, env=cli_env()
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["completed hello, Ada", "['hello, Bo', 'hello, Cy']"]
    if own_dir:
        assert "sync_interval: always" in (data_dir / "nats-server.conf").read_text()
        assert not (data_dir / "server.json").exists()  # stopped cleanly


async def test_the_waits_history_read_matches_the_stores_across_batches(stack):
    """`_history_after` (the wait's tail read) reads what `Store.read_history` does, past the
    512 events of one batched direct get."""
    await stack.start()
    [run_id] = await _gated(stack)
    await asyncio.gather(
        *(stack.client.store.append(run_id, SignalReceived(at=time.time(), name=f"s{i}")) for i in range(600))
    )
    theirs = await stack.client.store.read_history(run_id)
    assert len(theirs) > 600
    for after in (0, theirs[100][0], theirs[-1][0]):
        ours = await _history_after(stack.client.nc, run_id, after)
        assert [decode_recorded(s, d) for s, d in ours] == [e for seq, e in theirs if seq > after]


async def test_a_wait_that_heard_an_end_just_before_the_connection_went_lets_it_come_back(stack):
    """A hint heard just before the connection drops is read once it is back: the wait must
    not spin on it meanwhile (a loop that never awaits starves the client's reconnect, and the
    wait hangs until its timeout)."""
    await stack.start()
    await stack.register(ECHO)
    run_id = await stack.client.start("quick", {"x": 1})
    await stack.client.wait(run_id, timeout=20)
    client = await Client.connect(endpoint=stack.endpoint)
    client.nc.options["max_reconnect_attempts"] = 100
    client.nc.options["reconnect_time_wait"] = 0.2
    try:
        waiter = _Waiter(client, [run_id], timeout=30)
        stack.server.stop()
        for _ in range(500):
            if not client.nc.is_connected:
                break
            await asyncio.sleep(0.01)
        assert not client.nc.is_connected
        waiter.hinted.add(run_id)  # the run's end, heard as the connection went

        async def waiting() -> dict:
            while waiter.waiting:  # Waiter.run's loop, after its first look
                await waiter.sleep()
                await waiter.step()
            return waiter.done

        task = asyncio.create_task(waiting())
        await asyncio.sleep(0.05)  # the wait loops while the server is away
        stack.server.start()
        done = await task
        assert done[run_id].status == "completed"
    finally:
        await client.close()
