"""Every long-running process stops on SIGINT and SIGTERM within 5 s, even when the reader of
its stdout and stderr has gone (`dagnats worker … | tee`, the tee killed, then Ctrl-C)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, ServeProcess, cli_env, dagnats_json, free_port, wait_until

STOPS_WITHIN = 5.0
SIGNALS = [signal.SIGINT, signal.SIGTERM]
NOISY = {
    "name": "noisy",
    "steps": [{"id": "say", "task": "noisy"}],
}
LONG = {
    "name": "long",
    "steps": [{"id": "nap", "task": "shell", "config": {"command": "sleep 60"}}],
}
WAITS = {
    "name": "waits",
    "steps": [{"id": "go", "type": "wait_for_event", "config": {"name": "go"}}],
}


def started(args: list[str], data_dir: Path, ready: str) -> subprocess.Popen[bytes]:
    """`dagnats ARGS` with pipes for stdout and stderr, once it has printed `ready`; then the
    pipes' read ends are closed, so whatever it writes next meets a broken pipe."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagnats", *args],
        env=cli_env(data_dir),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + 30
    while ready.encode() not in seen:
        left = deadline - time.monotonic()
        readable, _, _ = select.select([proc.stdout, proc.stderr], [], [], max(0.0, left))
        chunks = [os.read(stream.fileno(), 65536) for stream in readable]
        if left <= 0 or (readable and not any(chunks)):
            proc.kill()
            raise AssertionError(f"{args[0]} did not print {ready!r}: {seen.decode(errors='replace')}")
        seen += b"".join(chunks)
    proc.stdout.close()
    proc.stderr.close()
    return proc


def assert_stops(proc: subprocess.Popen[bytes], sig: int) -> None:
    proc.send_signal(sig)
    try:
        proc.wait(STOPS_WITHIN)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"still running {STOPS_WITHIN}s after {signal.Signals(sig).name}") from None


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_worker_stops_with_closed_pipes(serve, data_dir, sig):
    proc = started(["worker", "examples.worker:worker"], data_dir, "serving")
    assert_stops(proc, sig)


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_worker_logging_to_a_closed_stderr_still_works_and_stops(serve, data_dir, tmp_path, sig):
    """Log lines meeting a broken pipe fail neither the task that logs them nor the worker,
    and the worker still stops on the signal."""
    (tmp_path / "noisy.json").write_text(json.dumps(NOISY))
    dagnats_json("workflow", "register", str(tmp_path / "noisy.json"), data_dir=data_dir)
    proc = started(["worker", "tests.noisy_worker:worker"], data_dir, "serving")
    done = dagnats_json("run", "start", "noisy", "--wait", data_dir=data_dir)
    assert done["status"] == "completed" and "said it all" in json.dumps(done["output"])
    assert proc.poll() is None, "the worker died of its closed pipes"
    assert_stops(proc, sig)


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_worker_with_a_long_task_in_hand_stops_in_time(serve, data_dir, tmp_path, sig):
    """Tasks in hand get a few seconds to finish; a longer one is cancelled and handed out again."""
    (tmp_path / "long.json").write_text(json.dumps(LONG))
    dagnats_json("workflow", "register", str(tmp_path / "long.json"), data_dir=data_dir)
    serve.stop()  # its own workers would take the task: a serve without them takes over
    bare = ServeProcess(data_dir, port=serve.port, args=("--no-workers",)).start()
    try:
        proc = started(["worker", "dagnats.worker.builtins:builtin"], data_dir, "serving")
        run_id = dagnats_json("run", "start", "long", data_dir=data_dir)["run_id"]
        wait_until(
            lambda: (
                dagnats_json("run", "show", run_id, data_dir=data_dir)["steps"]["nap"]["status"] == "running"
            ),
            what="the long step to start",
        )
        assert_stops(proc, sig)
    finally:
        bare.kill()


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_serve_stops_with_closed_pipes_and_a_long_task_in_hand(tmp_path, sig):
    data = tmp_path / "own"
    proc = started(["serve", "--data-dir", str(data), "--port", str(free_port())], data, "Ctrl-C to stop")
    (tmp_path / "long.json").write_text(json.dumps(LONG))
    dagnats_json("workflow", "register", str(tmp_path / "long.json"), data_dir=data)
    run_id = dagnats_json("run", "start", "long", data_dir=data)["run_id"]
    wait_until(
        lambda: dagnats_json("run", "show", run_id, data_dir=data)["steps"]["nap"]["status"] == "running",
        what="the long step to start",
    )
    assert_stops(proc, sig)
    assert not (data / "server.json").exists()  # it stopped cleanly, not by dying


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_following_events_stops_with_closed_pipes(serve, data_dir, tmp_path, sig):
    (tmp_path / "waits.json").write_text(json.dumps(WAITS))
    dagnats_json("workflow", "register", str(tmp_path / "waits.json"), data_dir=data_dir)
    run_id = dagnats_json("run", "start", "waits", data_dir=data_dir)["run_id"]
    proc = started(["run", "events", run_id, "--follow"], data_dir, "run.started")
    assert_stops(proc, sig)


def test_worker_whose_server_died_holding_a_task_still_stops(data_dir, tmp_path):
    """The server (serve and its nats-server) dies while the worker holds a long task: the
    drain cannot reach anybody, and the stop must still come within the limit."""
    server = ServeProcess(data_dir, args=("--no-workers",)).start()
    try:
        proc = started(["worker", "dagnats.worker.builtins:builtin"], data_dir, "serving")
        wf = tmp_path / "long.json"
        wf.write_text(json.dumps(LONG))
        dagnats_json("workflow", "register", str(wf), data_dir=data_dir)
        run_id = dagnats_json("run", "start", "long", data_dir=data_dir)["run_id"]
        wait_until(
            lambda: (
                dagnats_json("run", "show", run_id, data_dir=data_dir)["steps"]["nap"]["status"] == "running"
            ),
            what="the worker to take the task",
        )
        pid = int((data_dir / "nats-server.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        server.kill(signal.SIGKILL)
        assert_stops(proc, signal.SIGTERM)
    finally:
        server.kill()
