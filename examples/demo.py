"""A tour of dagnats from the command line, on a throwaway server.

Starts `dagnats serve` on a temporary data dir and a free port, runs a user worker, registers
the example workflows, runs them, and shows what the CLI reports. Everything it does is a
`dagnats` command you can type yourself; each is printed before it runs.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DAGNATS = [sys.executable, "-m", "dagnats"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(*args: str, check: bool = True) -> str:
    print(f"\n$ dagnats {shlex.join(args)}", flush=True)
    proc = subprocess.run([*DAGNATS, *args], capture_output=True, text=True, cwd=HERE.parent)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    if check and proc.returncode != 0:
        raise SystemExit(f"demo: `dagnats {args[0]}` failed")
    return proc.stdout.strip()


def coding_tour(data_dir: str) -> None:
    """The agent pipeline: a plan, an agent fixing a bug in a git repository, tests, an approval."""
    repo = Path(data_dir) / "calc-repo"
    sh("workflow", "register", "examples/coding.yaml")
    run_id = sh(
        "run", "start", "coding", "--input", json.dumps({"repo": str(repo), "issue": "add() subtracts"})
    )
    deadline = time.monotonic() + 60
    while "ship" not in sh_quiet("approval", "list"):
        if time.monotonic() > deadline:
            raise SystemExit("demo: the coding run never asked for approval")
        time.sleep(0.2)
    sh("approval", "list")
    sh("run", "events", run_id)
    sh("approval", "approve", run_id, "ship", "--comment", "looks good")
    while json.loads(sh_quiet("run", "show", run_id, "--json"))["status"] not in ("completed", "failed"):
        time.sleep(0.2)
    sh("run", "show", run_id)


def sh_quiet(*args: str) -> str:
    proc = subprocess.run([*DAGNATS, *args], capture_output=True, text=True, cwd=HERE.parent)
    return proc.stdout


def main() -> None:
    data_dir = tempfile.mkdtemp(prefix="dagnats-demo-")
    os.environ["DAGNATS_DATA_DIR"] = data_dir
    port = free_port()
    print(f"$ dagnats serve --port {port}   # data in {data_dir}", flush=True)
    serve = subprocess.Popen([*DAGNATS, "serve", "--port", str(port)], cwd=HERE.parent)
    worker = None
    try:
        deadline = time.monotonic() + 20
        while not (Path(data_dir) / "server.json").exists():
            if serve.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("demo: dagnats serve did not start")
            time.sleep(0.05)
        print("$ dagnats worker examples.worker:worker &", flush=True)
        worker = subprocess.Popen([*DAGNATS, "worker", "examples.worker:worker"], cwd=HERE.parent)
        sh(
            "workflow",
            "register",
            "examples/hello.yaml",
            "examples/diamond.yaml",
            "examples/count.yaml",
            "examples/pipeline.py",
        )
        sh("workflow", "list")
        sh("run", "start", "hello-yaml", "--input", '{"name": "operator"}', "--wait")
        diamond = sh("run", "start", "diamond", "--wait").splitlines()[0]
        sh("run", "show", diamond)
        sh("run", "events", diamond)
        sh("run", "start", "count", "--input", '{"text": "durable workflows on nats jetstream"}', "--wait")
        sh("run", "start", "pipeline", "--input", '{"sentence": "agents need approval"}', "--wait")
        sh("run", "start", "hello-yaml", "--input", '{"nom": "x"}', check=False)
        coding_tour(data_dir)
        sh("run", "list")
        print("\nThe demo is done; its server and data dir go away now.")
    finally:
        for proc in (worker, serve):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(20)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
