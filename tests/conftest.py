"""Shared test helpers: real nats-server processes on random loopback ports, `dagnats` as a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import Cluster

from dagnats import Worker
from dagnats.api.client import Client
from dagnats.app.stack import Stack as AppStack
from dagnats.app.stack import combine
from dagnats.core.definition import parse_definition
from dagnats.nats.connection import Endpoint, connect
from dagnats.nats.datadir import Credentials
from dagnats.nats.embedded import EmbeddedServer
from dagnats.nats.names import SOURCE_WORKER
from dagnats.nats.store import Store

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(
    predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def cli_env(data_dir: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGNATS_")}
    if data_dir is not None:
        env["DAGNATS_DATA_DIR"] = str(data_dir)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def dagnats(
    *args: str,
    data_dir: Path | None = None,
    timeout: float = 60,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the CLI exactly as a user would, in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "dagnats", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or cli_env(data_dir),
        cwd=cwd or ROOT,
    )


def dagnats_json(*args: str, data_dir: Path | None = None, **kw: Any) -> Any:
    proc = dagnats(*args, "--json", data_dir=data_dir, **kw)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


class ServeProcess:
    """`dagnats serve` in a child process, with its own data dir and port."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.args = args
        self.env = env or cli_env(data_dir)
        self.proc: subprocess.Popen[str] | None = None
        self.log_path = data_dir.parent / f"serve-{self.port}-{time.monotonic_ns()}.log"

    def start(self, timeout: float = 20.0) -> ServeProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "w")
        cmd = [
            sys.executable,
            "-m",
            "dagnats",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
            *self.args,
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=self.env, cwd=ROOT
        )
        wait_until(
            lambda: "Ctrl-C to stop" in self.log() or self.proc.poll() is not None,
            timeout,
            what="serve to start",
        )
        assert self.proc.poll() is None, f"serve exited: {self.log()}"
        return self

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A real three-node JetStream cluster on loopback (tests/cluster.py), with a meta leader."""
    with Cluster(tmp_path / "cluster") as nodes:
        yield nodes


@pytest.fixture
def serve(data_dir: Path) -> Iterator[ServeProcess]:
    proc = ServeProcess(data_dir).start()
    yield proc
    proc.kill()


class Stack:
    """An embedded server, engine, timers and workers inside the test's event loop."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.creds = Credentials(operator="operator-secret", worker="worker-secret")
        self.server = EmbeddedServer(tmp, free_port(), self.creds)
        self.endpoint = Endpoint(url="")
        self.stop_event = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.client: Client
        self.store: Store

    async def start(self, *workers: Worker, engines: int = 1) -> Stack:
        self.server.start()
        self.endpoint = Endpoint(url=self.server.url, user="operator", password=self.creds.operator)
        self.worker_endpoint = Endpoint(url=self.server.url, user="worker", password=self.creds.worker)
        nc = await connect(self.endpoint, long_lived=True)
        self.store = Store(nc)
        await self.store.ensure()
        self.worker_store = Store(await connect(self.worker_endpoint, long_lived=True), source=SOURCE_WORKER)
        combined = combine("test-worker", self.tmp / "workspaces", workers)
        parts = AppStack(self.store, self.worker_store, combined, concurrency=16, engines=engines)
        self.tasks += parts.start(self.stop_event)
        self.client = await Client.connect(endpoint=self.endpoint)
        return self

    async def register(self, doc: dict[str, Any]) -> None:
        await self.client.register(parse_definition(doc))

    async def run_to_end(self, workflow: str, input: Any = None, timeout: float = 20.0) -> Any:
        run_id = await self.client.start(workflow, input)
        return await asyncio.wait_for(self.client.wait(run_id), timeout)

    async def close(self) -> None:
        if not self.tasks:
            return
        self.stop_event.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 10)
        await self.client.close()
        await self.store.nc.close()
        await self.worker_store.nc.close()
        self.server.stop()


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    s = Stack(tmp_path)
    yield s
    await s.close()
