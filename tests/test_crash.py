"""Crash safety: SIGKILL `serve` or a `dagnats worker` mid-step, restart, and count side effects."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, ServeProcess, cli_env, dagnats, dagnats_json, wait_until

ACK_WAIT = "2"  # seconds before an unacknowledged task is handed out again


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _register(tmp: Path, data_dir: Path, steps: list[dict]) -> None:
    wf = tmp / "crash.json"
    wf.write_text(json.dumps({"name": "crash", "steps": steps}))
    proc = dagnats("workflow", "register", str(wf), data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr


def _status(run_id: str, data_dir: Path) -> str:
    return dagnats_json("run", "show", run_id, data_dir=data_dir)["status"]


def test_sigkill_serve_mid_step_resumes_without_rerunning_completed_steps(tmp_path, data_dir):
    env = cli_env(data_dir, DAGNATS_TASK_ACK_WAIT=ACK_WAIT)
    marks = tmp_path / "marks"
    marks.mkdir()
    serve = ServeProcess(data_dir, env=env).start()
    try:
        _register(
            tmp_path,
            data_dir,
            [
                {"id": "before", "task": "shell", "config": {"command": f"echo ran >> {marks}/before"}},
                {
                    "id": "slow",
                    "task": "shell",
                    "depends_on": ["before"],
                    "config": {
                        "command": f"echo started >> {marks}/slow; (sleep 2; echo finished >> {marks}/slow)"
                    },
                },
                {
                    "id": "after",
                    "task": "shell",
                    "depends_on": ["slow"],
                    "config": {"command": f"echo ran >> {marks}/after"},
                },
            ],
        )
        run_id = dagnats_json("run", "start", "crash", data_dir=data_dir)["run_id"]
        wait_until(lambda: _lines(marks / "slow") == ["started"], what="slow step to start")
        serve.kill(signal.SIGKILL)
    finally:
        serve.kill()
    restarted = ServeProcess(data_dir, port=serve.port, env=env).start()
    try:
        wait_until(
            lambda: _status(run_id, data_dir) == "completed", timeout=40, what="run to complete after restart"
        )
    finally:
        restarted.stop()
    assert _lines(marks / "before") == ["ran"]  # completed before the crash: not run again
    slow = _lines(marks / "slow")
    assert slow.count("started") == 2 and slow[-1] == "finished"  # killed mid-way, then run again
    assert "finished" not in slow[:-1]  # the killed attempt's shell died with serve
    assert _lines(marks / "after") == ["ran"]


def test_sigkill_worker_mid_task_runs_task_again_elsewhere(tmp_path, data_dir):
    env = cli_env(data_dir, DAGNATS_TASK_ACK_WAIT=ACK_WAIT, DAGNATS_TEST_MARKS=str(tmp_path))
    serve = ServeProcess(data_dir, env=env).start()
    workers: list[subprocess.Popen[str]] = []

    def start_worker() -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dagnats", "worker", "tests.crash_worker:worker"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        workers.append(proc)
        return proc

    try:
        _register(
            tmp_path,
            data_dir,
            [
                {"id": "before", "task": "shell", "config": {"command": f"echo ran >> {tmp_path}/before"}},
                {"id": "work", "task": "crash-test-slow", "depends_on": ["before"]},
            ],
        )
        first = start_worker()
        run_id = dagnats_json("run", "start", "crash", data_dir=data_dir)["run_id"]
        wait_until(lambda: _lines(tmp_path / "slow") == ["started"], what="worker task to start")
        first.kill()
        first.wait()
        start_worker()
        wait_until(lambda: _status(run_id, data_dir) == "completed", timeout=40, what="run to complete")
        shown = dagnats_json("run", "show", run_id, data_dir=data_dir)
        assert shown["steps"]["work"]["output"] == {"done": True}
        assert shown["steps"]["work"]["attempts"] == 1  # a lost worker is not a failed attempt
    finally:
        for proc in workers:
            proc.kill()
            proc.wait()
        serve.stop()
    assert _lines(tmp_path / "before") == ["ran"]
    assert _lines(tmp_path / "slow") == ["started", "started", "finished"]


def test_durable_sleep_survives_sigkill_of_serve(tmp_path, data_dir):
    serve = ServeProcess(data_dir).start()
    try:
        _register(
            tmp_path,
            data_dir,
            [
                {"id": "nap", "type": "sleep", "config": {"duration": "3s"}},
                {"id": "after", "task": "echo", "depends_on": ["nap"], "input": "woke"},
            ],
        )
        started = time.time()
        run_id = dagnats_json("run", "start", "crash", data_dir=data_dir)["run_id"]
        wait_until(lambda: _status(run_id, data_dir) == "waiting", what="the sleep to begin")
        serve.kill(signal.SIGKILL)
    finally:
        serve.kill()
    restarted = ServeProcess(data_dir, port=serve.port).start()
    try:
        wait_until(lambda: _status(run_id, data_dir) == "completed", timeout=30, what="the sleep to end")
        shown = dagnats_json("run", "show", run_id, data_dir=data_dir)
    finally:
        restarted.stop()
    assert shown["output"] == "woke"
    assert time.time() - started >= 3.0
    assert shown["steps"]["nap"]["output"]["slept"] >= 2.9


def test_sigkill_mid_agent_loop_resumes_without_repeating_recorded_tool_calls(tmp_path, data_dir):
    env = cli_env(data_dir, DAGNATS_TASK_ACK_WAIT=ACK_WAIT)
    work = tmp_path / "work"
    script = [
        {
            "text": "first",
            "tool_calls": [{"name": "run_command", "arguments": {"command": "echo t0 >> calls"}}],
        },
        {
            "text": "second",
            "tool_calls": [
                {
                    "name": "run_command",
                    "arguments": {"command": "echo t1-start >> calls; sleep 2; echo t1-end >> calls"},
                }
            ],
        },
        {"text": "done"},
    ]
    serve = ServeProcess(data_dir, env=env).start()
    try:
        _register(
            tmp_path,
            data_dir,
            [
                {
                    "id": "agent",
                    "type": "agent_loop",
                    "config": {
                        "provider": "scripted",
                        "script": script,
                        "tools": ["run_command"],
                        "workdir": str(work),
                    },
                }
            ],
        )
        run_id = dagnats_json("run", "start", "crash", "--input", '"go"', data_dir=data_dir)["run_id"]
        wait_until(lambda: _lines(work / "calls") == ["t0", "t1-start"], what="the second tool call to start")
        serve.kill(signal.SIGKILL)
    finally:
        serve.kill()
    restarted = ServeProcess(data_dir, port=serve.port, env=env).start()
    try:
        wait_until(lambda: _status(run_id, data_dir) == "completed", timeout=40, what="the loop to complete")
        shown = dagnats_json("run", "show", run_id, data_dir=data_dir)
        events = dagnats_json("run", "events", run_id, data_dir=data_dir)
    finally:
        restarted.stop()
    assert _lines(work / "calls") == ["t0", "t1-start", "t1-start", "t1-end"]
    assert (
        shown["steps"]["agent"]["output"]["text"] == "done"
        and shown["steps"]["agent"]["output"]["turns"] == 3
    )
    turns = [e["turn"] for e in events if e["type"] == "agent.turn"]
    results = [(e["turn"], e["call_id"]) for e in events if e["type"] == "agent.tool_result"]
    assert turns == [0, 1, 2] and results == [(0, "call_0_0"), (1, "call_1_0")]


def test_sigterm_with_a_step_in_hand_loses_and_repeats_nothing(tmp_path, data_dir):
    serve = ServeProcess(data_dir).start()
    _register(
        tmp_path,
        data_dir,
        [
            {
                "id": "work",
                "task": "shell",
                "config": {"command": f"echo started >> {tmp_path}/w; sleep 1; echo done >> {tmp_path}/w"},
            },
            {
                "id": "next",
                "task": "shell",
                "depends_on": ["work"],
                "config": {"command": f"echo ran >> {tmp_path}/n"},
            },
        ],
    )
    run_id = dagnats_json("run", "start", "crash", data_dir=data_dir)["run_id"]
    wait_until(lambda: _lines(tmp_path / "w") == ["started"], what="the step to start")
    serve.stop()  # SIGTERM: finishes the step in hand before it exits
    assert serve.proc.returncode == 0
    assert _lines(tmp_path / "w") == ["started", "done"]
    restarted = ServeProcess(data_dir, port=serve.port).start()
    try:
        wait_until(lambda: _status(run_id, data_dir) == "completed", timeout=30, what="the run to complete")
    finally:
        restarted.stop()
    assert _lines(tmp_path / "w") == ["started", "done"] and _lines(tmp_path / "n") == ["ran"]
