"""The command line as users run it: `dagnats serve` in a child process, every command a subprocess."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, ServeProcess, cli_env, dagnats, dagnats_json, free_port, wait_until

EXAMPLES = ROOT / "examples"


def test_diamond_completes_with_outputs_and_ordered_events(serve, data_dir):
    reg = dagnats("workflow", "register", str(EXAMPLES / "diamond.yaml"), data_dir=data_dir)
    assert reg.returncode == 0, reg.stderr
    assert "diamond: registered version 1" in reg.stdout
    started = dagnats_json("run", "start", "diamond", "--wait", data_dir=data_dir)
    assert started["status"] == "completed"
    run_id = started["run_id"]

    shown = dagnats_json("run", "show", run_id, data_dir=data_dir)
    assert shown["status"] == "completed" and shown["workflow"] == "diamond"
    assert set(shown) >= {
        "run_id",
        "workflow",
        "status",
        "input",
        "output",
        "error",
        "created_at",
        "finished_at",
        "steps",
        "lineage",
    }
    steps = shown["steps"]
    assert {sid: s["status"] for sid, s in steps.items()} == dict.fromkeys(
        ["fetch", "count", "upper", "join", "report"], "completed"
    )
    assert all(s["attempts"] == 1 for s in steps.values())
    assert steps["fetch"]["output"] == {"words": ["alpha", "beta", "gamma"]}
    assert steps["count"]["output"]["stdout"] == "3\n"
    assert steps["upper"]["output"]["stdout"] == "ALPHA\n"
    assert steps["join"]["output"] == {"count": steps["count"]["output"], "upper": steps["upper"]["output"]}
    assert steps["report"]["output"]["stdout"] == "3 words, first is ALPHA"
    assert shown["output"] == steps["report"]["output"]

    events = dagnats_json("run", "events", run_id, data_dir=data_dir)
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)
    kinds = [(e["type"], e.get("step_id")) for e in events]
    assert kinds[0] == ("run.started", None) and kinds[-1] == ("run.completed", None)
    done = [sid for kind, sid in kinds if kind == "step.completed"]
    assert done[0] == "fetch" and set(done[1:3]) == {"count", "upper"} and done[3:] == ["join", "report"]
    by_step = {e["step_id"]: e for e in events if e["type"] == "step.completed"}
    for sid in done:  # each step: queued, started (only if it ran over 0.1 s), completed
        order = [k for k, s in kinds if s == sid]
        assert order in (["step.queued", "step.started", "step.completed"], ["step.queued", "step.completed"])
        if "step.started" not in order:  # a short task's result says when and where it ran
            assert by_step[sid]["worker"] and by_step[sid]["started_at"]
        assert steps[sid]["started_at"]

    text = dagnats("run", "events", run_id, data_dir=data_dir).stdout
    assert "run.completed" in text and "step.completed" in text
    out = dagnats("run", "output", run_id, data_dir=data_dir)
    assert json.loads(out.stdout)["stdout"] == "3 words, first is ALPHA"
    listed = dagnats_json("run", "list", data_dir=data_dir)
    assert [r["run_id"] for r in listed] == [run_id] and listed[0]["status"] == "completed"


def test_follow_prints_events_until_the_run_ends(serve, data_dir):
    assert dagnats("workflow", "register", str(EXAMPLES / "hello.json"), data_dir=data_dir).returncode == 0
    run_id = dagnats("run", "start", "hello", "--input", '{"name": "bo"}', data_dir=data_dir).stdout.strip()
    follow = dagnats("run", "events", run_id, "--follow", "--json", data_dir=data_dir, timeout=30)
    assert follow.returncode == 0, follow.stderr
    lines = [json.loads(line) for line in follow.stdout.splitlines()]
    assert lines[0]["type"] == "run.started" and lines[-1]["type"] == "run.completed"
    assert lines[-1]["output"]["stdout"] == "HELLO, BO\n"


BAD_DEFINITIONS = {
    "malformed.json": ('{"name": "x", "steps": [', "malformed JSON at line 1"),
    "malformed.yaml": ("name: x\nsteps: [\n  - id: a\n", "malformed YAML"),
    "unknown-field.json": (
        '{"name": "x", "steps": [{"id": "a", "task": "echo", "retries": 3}]}',
        "steps[0]: unknown field retries",
    ),
    "cycle.yaml": (
        "name: x\nsteps:\n  - {id: a, task: echo, depends_on: [b]}\n  - {id: b, task: echo, depends_on: [a]}\n",
        "dependency cycle a -> b -> a",
    ),
    "missing-dep.json": (
        '{"name": "x", "steps": [{"id": "a", "task": "echo", "depends_on": ["nope"]}]}',
        "steps[0].depends_on[0]: unknown step 'nope'",
    ),
    "bad-duration.json": (
        '{"name": "x", "steps": [{"id": "a", "task": "echo", "timeout": "10 minutes"}]}',
        "steps[0].timeout: invalid duration",
    ),
}


@pytest.mark.parametrize("filename", sorted(BAD_DEFINITIONS))
def test_bad_definitions_fail_with_one_clear_line(serve, data_dir, tmp_path, filename):
    text, expected = BAD_DEFINITIONS[filename]
    path = tmp_path / filename
    path.write_text(text)
    good = EXAMPLES / "hello.json"
    for args in (["workflow", "validate", str(path)], ["workflow", "register", str(good), str(path)]):
        proc = dagnats(*args, data_dir=data_dir)
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0], proc.stderr
        assert expected in lines[0]
        assert "Traceback" not in proc.stderr
    assert dagnats_json("workflow", "list", data_dir=data_dir) == []  # nothing registered, not even hello


def test_bad_requests_fail_with_one_clear_line(serve, data_dir):
    assert dagnats("workflow", "register", str(EXAMPLES / "hello.json"), data_dir=data_dir).returncode == 0
    cases = [
        (["run", "start", "nope"], "unknown workflow 'nope'"),
        (["run", "start", "hello", "--input", '{"who": 1}'], "input: missing required field 'name'"),
        (["run", "start", "hello", "--input", '{"name": 5}'], "input.name: expected string, got integer"),
        (["run", "start", "hello", "--input", "{not json"], "--input is not valid JSON"),
        (["run", "show", "r-missing"], "unknown run 'r-missing'"),
        (["run", "events", "r-missing"], "unknown run 'r-missing'"),
        (["run", "cancel", "r-missing"], "unknown run 'r-missing'"),
        (["workflow", "show", "ghost"], "unknown workflow 'ghost'"),
    ]
    for args, expected in cases:
        proc = dagnats(*args, data_dir=data_dir)
        assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (args, proc.stderr)
    assert dagnats_json("run", "list", data_dir=data_dir) == []  # nothing was started
    usage = dagnats("run", "start", data_dir=data_dir)
    assert usage.returncode == 2


def test_unreachable_server_fails_fast(tmp_path):
    port = free_port()
    commands = [
        ["run", "list"],
        ["run", "show", "r1"],
        ["run", "start", "hello"],
        ["run", "events", "r1"],
        ["run", "cancel", "r1"],
        ["run", "signal", "r1", "go"],
        ["run", "fork", "r1", "--from", "a"],
        ["workflow", "list"],
        ["workflow", "show", "hello"],
        ["approval", "list"],
        ["approval", "approve", "r1", "a"],
        ["workflow", "register", str(EXAMPLES / "hello.json")],
    ]
    cases = [[*c, "--nats", f"nats://127.0.0.1:{port}"] for c in commands] + commands
    for args in cases:
        t0 = time.monotonic()
        proc = dagnats(*args, data_dir=tmp_path / "empty")
        assert time.monotonic() - t0 < 5
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "cannot reach NATS" in dagnats("run", "list", "--nats", f"nats://127.0.0.1:{port}").stderr
    assert "dagnats serve" in dagnats("run", "list", data_dir=tmp_path / "empty").stderr


def test_client_without_the_secret_is_refused(serve, data_dir):
    info = json.loads((data_dir / "server.json").read_text())
    for name in ("server.json", "worker.json", "secret"):
        assert stat.S_IMODE(os.stat(data_dir / name).st_mode) == 0o600
    assert info["user"] == "operator" and info["password"]
    assert info["url"] == f"nats://127.0.0.1:{serve.port}"
    proc = dagnats("run", "list", "--nats", info["url"])
    assert proc.returncode == 1 and "authorization violation" in proc.stderr
    wrong = dagnats(
        "run",
        "list",
        "--nats",
        info["url"],
        env=cli_env(DAGNATS_NATS_USER="operator", DAGNATS_NATS_PASSWORD="wrong"),
    )
    assert wrong.returncode == 1 and "authorization violation" in wrong.stderr
    right = dagnats(
        "run",
        "list",
        "--nats",
        info["url"],
        env=cli_env(DAGNATS_NATS_USER="operator", DAGNATS_NATS_PASSWORD=info["password"]),
    )
    assert right.returncode == 0, right.stderr


def test_cancel_stops_pending_steps(serve, data_dir, tmp_path):
    wf = tmp_path / "slow.json"
    wf.write_text(
        json.dumps(
            {
                "name": "slow",
                "steps": [
                    {
                        "id": "first",
                        "task": "shell",
                        "config": {"command": f"echo $$ > {tmp_path}/pid; exec sleep 30"},
                    },
                    {"id": "second", "task": "echo", "depends_on": ["first"]},
                ],
            }
        )
    )
    assert dagnats("workflow", "register", str(wf), data_dir=data_dir).returncode == 0
    run_id = dagnats_json("run", "start", "slow", data_dir=data_dir)["run_id"]
    wait_until(
        lambda: (
            dagnats_json("run", "show", run_id, data_dir=data_dir)["steps"]["first"]["status"] == "running"
        ),
        what="first step running",
    )
    wait_until(lambda: (tmp_path / "pid").exists() and (tmp_path / "pid").read_text().strip(), what="the pid")
    pid = int((tmp_path / "pid").read_text())
    assert Path(f"/proc/{pid}").exists()  # the step's process runs when we cancel
    proc = dagnats("run", "cancel", run_id, "--reason", "not needed", data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr
    shown = dagnats_json("run", "show", run_id, data_dir=data_dir)
    assert shown["status"] == "cancelled" and shown["error"] == "cancelled: not needed"
    assert (
        shown["steps"]["first"]["status"] == "cancelled" and shown["steps"]["second"]["status"] == "cancelled"
    )
    wait_until(
        lambda: not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2],
        timeout=10,
        what="the cancelled step's process to be stopped",
    )
    events = dagnats_json("run", "events", run_id, data_dir=data_dir)
    assert not [e for e in events if e.get("step_id") == "second"]  # never queued, never started
    again = dagnats("run", "cancel", run_id, data_dir=data_dir)
    assert again.returncode == 1 and "already cancelled" in again.stderr
    assert dagnats("run", "output", run_id, data_dir=data_dir).returncode == 1


def test_signal_reaches_wait_for_event(serve, data_dir, tmp_path):
    wf = tmp_path / "gate.yaml"
    wf.write_text("name: gate\nsteps:\n  - {id: w, type: wait_for_event, config: {name: go, timeout: 1m}}\n")
    assert dagnats("workflow", "register", str(wf), data_dir=data_dir).returncode == 0
    run_id = dagnats_json("run", "start", "gate", data_dir=data_dir)["run_id"]
    wait_until(
        lambda: dagnats_json("run", "show", run_id, data_dir=data_dir)["status"] == "waiting", what="waiting"
    )
    proc = dagnats("run", "signal", run_id, "go", '{"ok": true}', data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr
    wait_until(
        lambda: dagnats_json("run", "show", run_id, data_dir=data_dir)["status"] == "completed", what="done"
    )
    assert json.loads(dagnats("run", "output", run_id, data_dir=data_dir).stdout) == {"ok": True}


def test_versions_are_kept_and_runs_pin_theirs(serve, data_dir, tmp_path):
    wf = tmp_path / "v.json"
    wf.write_text(
        json.dumps({"name": "v", "steps": [{"id": "a", "type": "sleep", "config": {"duration": "2s"}}]})
    )
    assert "registered version 1" in dagnats("workflow", "register", str(wf), data_dir=data_dir).stdout
    assert "unchanged, version 1" in dagnats("workflow", "register", str(wf), data_dir=data_dir).stdout
    run_id = dagnats_json("run", "start", "v", data_dir=data_dir)["run_id"]
    wf.write_text(json.dumps({"name": "v", "steps": [{"id": "b", "task": "echo", "input": 2}]}))
    assert "registered version 2" in dagnats("workflow", "register", str(wf), data_dir=data_dir).stdout
    shown = dagnats_json("workflow", "show", "v", data_dir=data_dir)
    assert shown["version"] == 2 and shown["versions"] == [1, 2]
    assert dagnats_json("workflow", "show", "v@1", data_dir=data_dir)["definition"]["steps"][0]["id"] == "a"
    wait_until(
        lambda: dagnats_json("run", "show", run_id, data_dir=data_dir)["status"] == "completed", what="v1 run"
    )
    assert list(dagnats_json("run", "show", run_id, data_dir=data_dir)["steps"]) == ["a"]
    new = dagnats_json("run", "start", "v", "--wait", data_dir=data_dir)
    assert new["status"] == "completed" and new["output"] == 2
    old = dagnats_json("run", "start", "v@1", data_dir=data_dir)["run_id"]
    assert dagnats_json("run", "show", old, data_dir=data_dir)["version"] == 1


def _worker_process(spec: str, data_dir: Path) -> subprocess.Popen[bytes]:
    """`dagnats worker SPEC` for the server of `data_dir`, in a child process."""
    return subprocess.Popen(
        [sys.executable, "-m", "dagnats", "worker", spec],
        env=cli_env(data_dir),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_user_worker_process_runs_python_tasks(serve, data_dir):
    worker = _worker_process("examples.worker:worker", data_dir)
    try:
        assert (
            dagnats("workflow", "register", str(EXAMPLES / "count.yaml"), data_dir=data_dir).returncode == 0
        )
        done = dagnats_json(
            "run", "start", "count", "--input", '{"text": "one two three"}', "--wait", data_dir=data_dir
        )
        assert done["status"] == "completed" and done["output"] == {"words": 3}
        events = dagnats_json("run", "events", done["run_id"], data_dir=data_dir)
        assert any(e["type"] == "step.log" and "counting words" in e["message"] for e in events)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(10)
    assert worker.returncode == 0


def test_serve_without_workers_leaves_tasks_to_a_worker_process(data_dir):
    engine = ServeProcess(data_dir, args=("--no-workers",)).start()
    try:
        assert "tasks: none (engine and timers only)" in engine.log()
        wf = data_dir.parent / "one.json"
        wf.write_text(json.dumps({"name": "one", "steps": [{"id": "a", "task": "echo", "input": 7}]}))
        dagnats("workflow", "register", str(wf), data_dir=data_dir)
        run_id = dagnats_json("run", "start", "one", data_dir=data_dir)["run_id"]
        time.sleep(1.0)
        assert dagnats_json("run", "show", run_id, data_dir=data_dir)["steps"]["a"]["status"] == "queued"
        worker = _worker_process("dagnats.worker.builtins:builtin", data_dir)
        try:
            wait_until(
                lambda: dagnats_json("run", "show", run_id, data_dir=data_dir)["status"] == "completed",
                what="the worker process to run the queued task",
            )
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(10)
        assert dagnats_json("run", "show", run_id, data_dir=data_dir)["output"] == 7
    finally:
        engine.kill()


def test_second_serve_on_same_data_dir_refuses(serve, data_dir):
    proc = dagnats("serve", "--data-dir", str(data_dir), "--port", str(free_port()), timeout=20)
    assert proc.returncode == 1
    assert "already using data dir" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def _nats_server_pids(data_dir: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"nats-server" in cmd and str(data_dir).encode() in cmd:
                stat_text = (proc / "stat").read_text()
                if stat_text.split(") ", 1)[1].split()[0] != "Z":
                    pids.append(int(proc.name))
    return pids


def test_sigterm_stops_server_and_forgets_address(data_dir):
    serve = ServeProcess(data_dir).start()
    assert _nats_server_pids(data_dir)
    serve.kill(signal.SIGTERM)
    assert serve.proc.returncode == 0, serve.log()
    assert not _nats_server_pids(data_dir)
    assert not (data_dir / "server.json").exists()
    assert "dagnats serve" in dagnats("run", "list", data_dir=data_dir).stderr


def test_sigkill_leaves_no_server_behind_and_restart_is_clean(data_dir):
    serve = ServeProcess(data_dir).start()
    serve.kill(signal.SIGKILL)
    wait_until(lambda: not _nats_server_pids(data_dir), timeout=10, what="nats-server to exit")
    again = ServeProcess(data_dir, port=serve.port).start()
    try:
        assert dagnats("run", "list", data_dir=data_dir).returncode == 0
    finally:
        again.stop()


def test_wait_exits_nonzero_when_the_run_fails(serve, data_dir, tmp_path):
    wf = tmp_path / "fails.yaml"
    wf.write_text(
        "name: fails\nsteps:\n  - {id: boom, task: shell, config: {command: 'echo oops >&2; exit 3'}}\n"
    )
    assert dagnats("workflow", "register", str(wf), data_dir=data_dir).returncode == 0
    proc = dagnats("run", "start", "fails", "--wait", data_dir=data_dir)
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[-1] == "failed: step boom failed: exit code 3: oops"
    doc = json.loads(dagnats("run", "start", "fails", "--wait", "--json", data_dir=data_dir).stdout)
    assert doc["status"] == "failed" and doc["error"] == "step boom failed: exit code 3: oops"
