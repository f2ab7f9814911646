"""`dagnats status` and heartbeats: who is alive, what each serves, and the steps nobody serves."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dagnats.nats.heartbeat import Beat

from conftest import ROOT, ServeProcess, cli_env, dagnats, dagnats_json, wait_until

# Fast heartbeats: a process not heard from for 2 s is gone.
FAST = {"DAGNATS_HEARTBEAT_TTL": "2", "DAGNATS_HEARTBEAT_INTERVAL": "0.3"}
UNSERVED = {
    "name": "unserved",
    "steps": [
        {"id": "hello", "task": "echo", "input": "hi"},
        {"id": "count", "task": "word-count", "depends_on": ["hello"], "input": {"text": "a b"}},
        {"id": "gate", "type": "approval", "config": {"prompt": "ok?"}},
        {"id": "nap", "type": "sleep", "config": {"duration": "1h"}},
    ],
}


@pytest.fixture
def fast_serve(data_dir: Path):
    proc = ServeProcess(data_dir, env=cli_env(data_dir, **FAST)).start()
    yield proc
    proc.kill()


def status(data_dir: Path) -> dict:
    return dagnats_json("status", data_dir=data_dir, env=cli_env(data_dir, **FAST))


def worker(data_dir: Path, spec: str = "examples.worker:worker") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dagnats", "worker", spec],
        env=cli_env(data_dir, **FAST),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def register(data_dir: Path, doc: dict) -> None:
    path = data_dir.parent / f"{doc['name']}.json"
    path.write_text(json.dumps(doc))
    assert dagnats("workflow", "register", str(path), data_dir=data_dir).returncode == 0


def test_status_json_shows_server_streams_engine_workers_and_tasks(fast_serve, data_dir):
    w = worker(data_dir)
    try:
        doc = wait_until(
            lambda: (d := status(data_dir)) and len(d["workers"]) == 2 and d["engines"] and d,
            what="the engine and both workers in status",
        )
    finally:
        w.send_signal(signal.SIGTERM)
        w.wait(10)
    assert doc["server"]["version"] and doc["server"]["nodes"] and doc["server"]["url"].startswith("nats://")
    streams = {s["name"]: s for s in doc["streams"]}
    assert set(streams) >= {
        "DAGNATS_HISTORY",
        "DAGNATS_TASKS",
        "DAGNATS_TIMERS",
        "dagnats_runs",
        "dagnats_workflows",
        "dagnats_heartbeats",
    }
    for s in streams.values():
        assert s["replicas"] == 1 and s["leader"] in doc["server"]["nodes"]
        assert isinstance(s["messages"], int) and isinstance(s["bytes"], int)
    assert streams["dagnats_heartbeats"]["kind"] == "kv" and streams["DAGNATS_TASKS"]["kind"] == "stream"
    (engine,) = doc["engines"]
    assert engine["pid"] == fast_serve.proc.pid and engine["tasks"] == []
    by_pid = {w_["pid"]: w_ for w_ in doc["workers"]}
    assert set(by_pid) == {fast_serve.proc.pid, w.pid}
    assert {"echo", "shell", "sleep", "_agent_loop", "_planner"} <= set(by_pid[fast_serve.proc.pid]["tasks"])
    assert by_pid[w.pid]["tasks"] == ["word-count"]
    for beat in [engine, *doc["workers"]]:
        assert set(beat) >= {"id", "host", "pid", "tasks", "in_flight", "last_seen"}
        assert beat["in_flight"] == 0 and beat["last_seen"].endswith("Z")
    assert doc["tasks"]["echo"] == {"queued": 0, "running": 0, "workers": 1}
    assert doc["tasks"]["word-count"]["workers"] == 1
    text = dagnats("status", data_dir=data_dir, env=cli_env(data_dir, **FAST)).stdout
    assert "DAGNATS_HISTORY" in text and "engine" in text and "word-count" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_a_worker_heartbeat_goes_when_it_stops_or_dies(fast_serve, data_dir):
    def pids() -> set[int]:
        return {w["pid"] for w in status(data_dir)["workers"]}

    stopped, killed = worker(data_dir), worker(data_dir)
    wait_until(lambda: {stopped.pid, killed.pid} <= pids(), what="both workers' heartbeats")
    stopped.send_signal(signal.SIGTERM)  # a clean stop deletes its heartbeat at once
    stopped.wait(10)
    assert stopped.pid not in pids()
    killed.kill()  # a dead one stops beating and ages out
    killed.wait(10)
    assert killed.pid in pids()
    wait_until(lambda: killed.pid not in pids(), timeout=10, what="the killed worker to age out")
    assert pids() == {fast_serve.proc.pid}


def test_run_show_marks_a_queued_step_that_no_worker_serves(fast_serve, data_dir):
    register(data_dir, UNSERVED)
    run_id = dagnats_json("run", "start", "unserved", data_dir=data_dir)["run_id"]

    def show() -> dict:
        return dagnats_json("run", "show", run_id, data_dir=data_dir, env=cli_env(data_dir, **FAST))

    steps = wait_until(
        lambda: (s := show()["steps"]).get("count", {}).get("status") == "queued" and s, what="count queued"
    )
    assert steps["count"]["no_worker"] is True
    # the engine's own steps, and a step a live worker serves, never say so
    assert all("no_worker" not in steps[sid] for sid in ("hello", "gate", "nap"))
    text = dagnats("run", "show", run_id, data_dir=data_dir, env=cli_env(data_dir, **FAST)).stdout
    assert "queued — no worker serves 'word-count'" in text
    w = worker(data_dir)
    try:
        wait_until(lambda: show()["steps"]["count"]["status"] == "completed", what="count to run")
    finally:
        w.send_signal(signal.SIGTERM)
        w.wait(10)
    assert "no_worker" not in show()["steps"]["count"]
    assert status(data_dir)["tasks"]["word-count"] == {"queued": 0, "running": 0, "workers": 0}


def test_run_start_wait_warns_once_about_a_step_no_worker_serves(fast_serve, data_dir):
    register(data_dir, {"name": "counting", "steps": UNSERVED["steps"][:2]})
    waiting = subprocess.Popen(
        [sys.executable, "-m", "dagnats", "run", "start", "counting", "--wait"],
        env=cli_env(data_dir, **FAST),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    err: list[str] = []

    def read() -> None:
        for line in waiting.stderr:
            err.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    warning = (
        "warning: step count is queued but no worker serves 'word-count'; "
        "start one with dagnats worker MODULE:ATTR\n"
    )
    try:
        run_id = waiting.stdout.readline().strip()
        wait_until(lambda: warning in err, timeout=15, what="the warning")
        time.sleep(2.5)  # two more looks of the waiting command: it does not say it again
        assert waiting.poll() is None and err.count(warning) == 1, err
        w = worker(data_dir)
        try:
            assert waiting.wait(30) == 0, err
        finally:
            w.send_signal(signal.SIGTERM)
            w.wait(10)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    reader.join(5)
    assert waiting.stdout.read().strip() == "completed"
    assert err.count(warning) == 1, err
    assert dagnats_json("run", "show", run_id, data_dir=data_dir)["status"] == "completed"


async def test_a_live_worker_for_the_task_clears_no_worker(stack):
    await stack.start()
    await stack.register(UNSERVED)
    run_id = await stack.client.start("unserved")

    async def unserved() -> dict[str, str]:
        return await stack.client.unserved(await stack.client.run(run_id))

    for _ in range(200):
        if await unserved():
            break
        await asyncio.sleep(0.05)
    assert await unserved() == {"count": "word-count"}  # not gate (approval) nor nap (sleep)
    beat = Beat(stack.client.nc.jetstream(), "worker", "elsewhere", ["word-count"], lambda: 0).start()
    for _ in range(200):
        if not await unserved():
            break
        await asyncio.sleep(0.05)
    assert await unserved() == {}
    assert (await stack.client.run(run_id)).steps["count"].status == "queued"  # served, not yet run
    await beat.stop()
    assert await unserved() == {"count": "word-count"}


def test_status_without_a_server_is_one_line(data_dir):
    proc = dagnats("status", "--json", data_dir=data_dir)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
