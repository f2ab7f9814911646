"""Crash recovery counted by side effects: fast chains and many runs, killed at many points.

Each step of these runs appends the time it began to its own file. After the runs finish, a
step's file says how often it ran; its recorded `step.completed` says when its result was
recorded. The promise (DESIGN.md §9): no execution begins after the step's result was
recorded, and a step runs again only if a crash came while it was in flight.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from dagnats.api.client import Client

from conftest import ROOT, ServeProcess, cli_env, dagnats, dagnats_json, wait_until

ACK_WAIT = "2"  # seconds before a task held by a dead worker is handed out again


def _register_chain(tmp: Path, data_dir: Path, length: int) -> None:
    steps = [{"id": "s00", "task": "crash-test-mark"}]
    steps += [
        {"id": f"s{i:02d}", "task": "crash-test-mark", "depends_on": [f"s{i - 1:02d}"]}
        for i in range(1, length)
    ]
    wf = tmp / "chain.json"
    wf.write_text(json.dumps({"name": "chain", "steps": steps}))
    proc = dagnats("workflow", "register", str(wf), data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr


def _progress(marks: Path) -> int:
    """How many steps have run at least once, over all runs."""
    return sum(1 for _ in marks.glob("*/*"))


def _kill_nats_server(data_dir: Path) -> None:
    pid = int((data_dir / "nats-server.pid").read_text())
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    wait_until(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), what="nats-server to die")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


def _check(run_ids: list[str], marks: Path, data_dir: Path, crashes: list[float], length: int) -> int:
    """Assert the promise for every step of every run; return how many executions were repeats."""
    repeats = 0
    for run_id in run_ids:
        shown = dagnats_json("run", "show", run_id, data_dir=data_dir)
        assert shown["status"] == "completed", shown
        events = dagnats_json("run", "events", run_id, data_dir=data_dir)
        completed = {
            e["step_id"]: datetime.fromisoformat(e["at"]).timestamp()
            for e in events
            if e["type"] == "step.completed"
        }
        for i in range(length):
            sid = f"s{i:02d}"
            began = [float(x) for x in (marks / run_id / sid).read_text().splitlines()]
            recorded = completed[sid]
            late = [t for t in began if t > recorded + 0.002]  # `at` is shown to the millisecond
            assert not late, (
                f"{run_id}/{sid} ran again after its result was recorded at {recorded}: {began}"
                f" (crashes at {crashes})"
            )
            # Every execution but the last was cut short by a crash that came while it ran.
            for first, second in zip(began, began[1:]):
                assert any(first <= c <= second for c in crashes), (
                    f"{run_id}/{sid} ran twice ({first}, {second}) with no crash in between"
                    f" (crashes at {crashes}); its events: {[e for e in events if e.get('step_id') == sid]}"
                )
            repeats += len(began) - 1
    return repeats


def _start_runs(data_dir: Path, count: int) -> list[str]:
    """Start `count` runs at once (one CLI process per run would start them 0.3 s apart)."""

    async def start() -> list[str]:
        async with await Client.connect(data_dir=str(data_dir)) as client:
            return list(await asyncio.gather(*(client.start("chain") for _ in range(count))))

    return asyncio.run(start())


def _all_done(run_ids: list[str], data_dir: Path) -> bool:
    runs = dagnats_json("run", "list", "--workflow", "chain", "--limit", "1000", data_dir=data_dir)
    done = {r["run_id"] for r in runs if r["status"] == "completed"}
    return set(run_ids) <= done


@pytest.mark.parametrize("what", ["machine", "serve"])
@pytest.mark.parametrize("runs,length", [(1, 24), (12, 8)], ids=["one-fast-chain", "many-runs"])
def test_killed_at_many_points_no_recorded_step_runs_again(tmp_path, data_dir, what, runs, length):
    """`machine`: serve and its nats-server SIGKILLed together. `serve`: serve alone (its
    nats-server then exits by itself). Several crashes in a row, at increasing progress."""
    marks = tmp_path / "marks"
    marks.mkdir()
    env = cli_env(data_dir, DAGNATS_TASK_ACK_WAIT=ACK_WAIT, DAGNATS_TEST_MARKS=str(marks))
    args = ("--worker", "tests.crash_worker:worker")
    serve = ServeProcess(data_dir, args=args, env=env).start()
    _register_chain(tmp_path, data_dir, length)
    run_ids = _start_runs(data_dir, runs)
    total = runs * length
    crashes: list[float] = []
    try:
        for fraction in (0.15, 0.4, 0.7):
            wait_until(lambda f=fraction: _progress(marks) >= f * total, timeout=60, what="progress")
            if what == "machine":
                _kill_nats_server(data_dir)
            serve.kill(signal.SIGKILL)
            crashes.append(time.time())  # everything begun before this was in flight or done
            serve = ServeProcess(data_dir, port=serve.port, args=args, env=env).start()
        wait_until(lambda: _all_done(run_ids, data_dir), timeout=90, what="every run to complete")
        repeats = _check(run_ids, marks, data_dir, crashes, length)
    finally:
        serve.stop()
    # Only work in flight at a crash runs again: in a chain that is at most one step per run.
    assert repeats <= len(crashes) * runs


def test_killed_worker_repeats_only_what_it_held(tmp_path, data_dir):
    """Tasks run in a `dagnats worker` process that is SIGKILLed twice; serve stays up."""
    marks = tmp_path / "marks"
    marks.mkdir()
    env = cli_env(data_dir, DAGNATS_TASK_ACK_WAIT=ACK_WAIT, DAGNATS_TEST_MARKS=str(marks))
    serve = ServeProcess(data_dir, args=("--no-workers",), env=env).start()
    workers: list[subprocess.Popen[bytes]] = []

    def start_worker() -> None:
        cmd = [sys.executable, "-m", "dagnats", "worker", "tests.crash_worker:worker"]
        workers.append(
            subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )

    length, runs = 8, 12
    crashes: list[float] = []
    try:
        _register_chain(tmp_path, data_dir, length)
        start_worker()
        run_ids = _start_runs(data_dir, runs)
        for fraction in (0.2, 0.6):
            wait_until(lambda f=fraction: _progress(marks) >= f * runs * length, timeout=60, what="progress")
            workers[-1].kill()
            workers[-1].wait()
            crashes.append(time.time())
            start_worker()
        wait_until(lambda: _all_done(run_ids, data_dir), timeout=90, what="every run to complete")
        repeats = _check(run_ids, marks, data_dir, crashes, length)
    finally:
        for proc in workers:
            proc.kill()
            proc.wait()
        serve.stop()
    assert repeats <= len(crashes) * runs
