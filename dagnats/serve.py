"""`dagnats serve`: the embedded NATS server, the engine, the timers and the built-in workers."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import sys
from pathlib import Path

from . import datadir, names
from .agent.runtime import agent_worker
from .builtins import builtin
from .connection import Endpoint, connect, resolve_endpoint
from .connection import close as _close
from .engine import Engine
from .errors import UserError
from .server import EmbeddedServer
from .store import Store
from .timers import TimerService
from .worker import Worker

log = logging.getLogger("dagnats.serve")
DRAIN_SECONDS = 5.0


class DataDirLock:
    """One `serve` per data dir: an flock the kernel releases when the process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path / datadir.LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode().strip() or "unknown"
            os.close(fd)
            raise UserError(
                f"another `dagnats serve` (pid {holder}) is already using data dir {self.path.parent}; "
                "stop it first or pass a different --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


async def serve(
    *, data_dir: str | None, port: int, nats_url: str | None, workers: list[Worker], concurrency: int = 16
) -> None:
    server: EmbeddedServer | None = None
    lock: DataDirLock | None = None
    path = datadir.resolve(data_dir)
    if nats_url:
        endpoint = worker_endpoint = resolve_endpoint(nats_url)
    else:
        datadir.ensure(path)
        lock = DataDirLock(path)
        lock.acquire()
        creds = datadir.load_or_create_credentials(path)
        server = EmbeddedServer(path, port, creds)
        server.start()
        endpoint = Endpoint(url=server.url, user="operator", password=creds.operator)
        worker_endpoint = Endpoint(url=server.url, user="worker", password=creds.worker)
    try:
        nc = await connect(endpoint, name="dagnats-serve", long_lived=True)
        store = Store(nc)
        await store.ensure()
        # The built-in workers (and, with them, agents and their tools) get a worker's
        # connection: they can report on their tasks but never approve, cancel or signal.
        worker_nc = await connect(worker_endpoint, name="dagnats-serve-workers", long_lived=True)
        worker_store = Store(worker_nc, source=names.SOURCE_WORKER)
        if server is not None:
            datadir.write_server_info(path, server.url, creds)
        await _run(store, worker_store, endpoint, server, path, workers, concurrency)
        await _close(worker_nc)
        await _close(nc)
    finally:
        if server is not None:
            datadir.remove_server_info(path)
            server.stop()
        if lock is not None:
            lock.release()


async def _run(
    store: Store,
    worker_store: Store,
    endpoint: Endpoint,
    server: EmbeddedServer | None,
    path: Path,
    workers: list[Worker],
    concurrency: int,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)  # the drain below is bounded by DRAIN_SECONDS
    combined = Worker(name=f"serve:{os.getpid()}")
    for w in [builtin, agent_worker(path / "workspaces"), *workers]:
        combined.include(w)
    engine = Engine(store)
    tasks = [
        asyncio.create_task(engine.run(stop), name="engine"),
        asyncio.create_task(TimerService(store).run(stop), name="timers"),
        asyncio.create_task(combined.run(worker_store, stop, concurrency=concurrency), name="workers"),
    ]
    where = f"embedded NATS at {endpoint.url}, data in {path}" if server else f"NATS at {endpoint.url}"
    print(
        f"dagnats serve: {where}; tasks: {', '.join(sorted(combined.handlers))}. Ctrl-C to stop.", flush=True
    )
    done, _ = await asyncio.wait(
        [asyncio.create_task(stop.wait()), *tasks], return_when=asyncio.FIRST_COMPLETED
    )
    stop.set()
    for task in done:
        if task in tasks and task.exception() is not None:
            print(f"dagnats serve: {task.get_name()} stopped: {task.exception()!r}", file=sys.stderr)
    print("dagnats serve: stopping; finishing tasks in hand…", file=sys.stderr, flush=True)
    _, pending = await asyncio.wait(tasks, timeout=DRAIN_SECONDS)
    for task in pending:
        log.warning("%s did not stop within %.0fs; cancelling it", task.get_name(), DRAIN_SECONDS)
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
