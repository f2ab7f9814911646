"""`dagnats serve`: the embedded NATS server, the engine, the timers and the built-in workers."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
from pathlib import Path

from nats.aio.client import Client as NATS

from dagnats.errors import UserError
from dagnats.nats import datadir, names
from dagnats.nats.connection import Endpoint, connect, resolve_endpoint
from dagnats.nats.connection import close as _close
from dagnats.nats.embedded import CONFIG_FILE, EmbeddedServer
from dagnats.nats.heartbeat import Beat
from dagnats.nats.store import Store
from dagnats.worker import Worker

from .output import exit_by_deadline, say
from .stack import Stack, combine

log = logging.getLogger("dagnats.app.serve")
DRAIN_SECONDS = 3.0  # for the tasks in hand at a stop: with the closing, a stop takes under 5 s


def embedded_fsync(data_dir: str | os.PathLike[str] | None) -> bool | None:
    """Whether the embedded server of `data_dir` fsyncs every write (`serve --fsync`), from
    the config it was started with; None when that data dir has no embedded server."""
    try:
        conf = (datadir.resolve(data_dir) / CONFIG_FILE).read_text()
    except OSError:
        return None
    return "sync_interval: always" in conf


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
    *,
    data_dir: str | None,
    port: int,
    nats_url: str | None,
    workers: list[Worker],
    concurrency: int = 16,
    builtins: bool = True,
    fsync: bool = False,
    replicas: int = 1,
) -> None:
    stack = LocalStack(
        data_dir=data_dir,
        port=port,
        nats_url=nats_url,
        workers=workers,
        concurrency=concurrency,
        builtins=builtins,
        fsync=fsync,
        replicas=replicas,
    )
    await stack.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if not stop.is_set():  # the drain below is bounded by DRAIN_SECONDS, the rest by this
            exit_by_deadline("dagnats serve")
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        where = (
            f"embedded NATS at {stack.endpoint.url}, data in {stack.path}"
            + (" (fsync on every write)" if stack.fsync else "")
            if stack.server
            else f"NATS at {stack.endpoint.url}"
            + (f" ({stack.replicas} replicas)" if stack.replicas > 1 else "")
        )
        tasks = ", ".join(stack.task_names) or "none (engine and timers only)"
        say(f"dagnats serve: {where}; tasks: {tasks}. Ctrl-C to stop.")
        failed = await stack.wait(stop)
        if failed:
            say(f"dagnats serve: {failed}", err=True)
        say("dagnats serve: stopping; finishing tasks in hand…", err=True)
    finally:
        await stack.stop()


class LocalStack:
    """NATS (embedded unless a URL is given), the engine, the timers and the built-in workers,
    as asyncio tasks of the running loop. `serve` runs one; so do `tui` and `demo` when they find
    no server to attach to."""

    def __init__(
        self,
        *,
        data_dir: str | os.PathLike[str] | None,
        port: int,
        nats_url: str | None = None,
        workers: list[Worker] | None = None,
        concurrency: int = 16,
        builtins: bool = True,  # run the built-in workers (and agents) in this process
        fsync: bool = False,  # the embedded server fsyncs every write (sync_interval: always)
        replicas: int = 1,  # copies of every stream and bucket (a NATS cluster: `--nats URLS`)
    ) -> None:
        self.path = datadir.resolve(data_dir)
        self.builtins = builtins
        self.port = port
        self.nats_url = nats_url
        self.workers = workers or []
        self.concurrency = concurrency
        self.fsync = fsync
        self.replicas = replicas
        self.server: EmbeddedServer | None = None
        self.endpoint = Endpoint(url=nats_url or "")
        self._lock: DataDirLock | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._conns: list[NATS] = []
        self.task_names: list[str] = []
        self._beat: Beat | None = None

    async def start(self) -> None:
        if self.replicas > 1 and not self.nats_url:
            raise UserError(
                f"--replicas {self.replicas} needs a NATS cluster: the embedded server is a single node; "
                "run a cluster and give `--nats URL[,URL...]`, or drop --replicas"
            )
        if self.nats_url:
            self.endpoint = worker_endpoint = resolve_endpoint(self.nats_url)
        else:
            datadir.ensure(self.path)
            self._lock = DataDirLock(self.path)
            self._lock.acquire()
            creds = datadir.load_or_create_credentials(self.path)
            self.server = EmbeddedServer(self.path, self.port, creds, sync_always=self.fsync)
            try:
                self.server.start()
            except BaseException:
                self._release()
                raise
            self.endpoint = Endpoint(url=self.server.url, user="operator", password=creds.operator)
            worker_endpoint = Endpoint(url=self.server.url, user="worker", password=creds.worker)
        try:
            nc = await connect(self.endpoint, name="dagnats-serve", long_lived=True)
            self._conns.append(nc)
            store = Store(nc, replicas=self.replicas)
            await store.ensure()
            # The built-in workers (and, with them, agents and their tools) get a worker's
            # connection: they can report on their tasks but never approve, cancel or signal.
            worker_nc = await connect(worker_endpoint, name="dagnats-serve-workers", long_lived=True)
            self._conns.append(worker_nc)
            worker_store = Store(worker_nc, source=names.SOURCE_WORKER)
            if self.server is not None:
                datadir.write_server_info(self.path, self.server.url, creds)
        except BaseException:
            await self._close_all()
            raise
        workspaces = self.path / "workspaces" if self.builtins else None
        combined = combine(f"serve:{os.getpid()}", workspaces, self.workers)
        self.task_names = sorted(combined.handlers)
        parts = Stack(store, worker_store, combined, concurrency=self.concurrency)
        engine = parts.engines[0]
        # `dagnats status` lists the engine; its in_flight is the runs it is working on.
        in_hand = lambda: len(getattr(engine, "_queues", ()))  # noqa: E731
        self._beat = store.beat("engine", f"serve:{os.getpid()}", [], in_hand)
        self._beat.start()
        self._tasks = parts.start(self._stop)

    async def wait(self, stop: asyncio.Event) -> str | None:
        """Until `stop` is set or a part dies; what died and why, if one did."""
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopping, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        for task in done:
            if task is not stopping and task.exception() is not None:
                return f"{task.get_name()} stopped: {task.exception()!r}"
        return None

    async def stop(self) -> None:
        """Finish the tasks in hand (bounded by DRAIN_SECONDS), then close and stop the server."""
        self._stop.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=DRAIN_SECONDS)
            for task in pending:
                log.warning("%s did not stop within %.0fs; cancelling it", task.get_name(), DRAIN_SECONDS)
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []
        if self._beat is not None:
            await self._beat.stop()
            self._beat = None
        await self._close_all()

    async def _close_all(self) -> None:
        for nc in reversed(self._conns):
            await _close(nc)
        self._conns = []
        self._release()

    def _release(self) -> None:
        if self.server is not None:
            datadir.remove_server_info(self.path)
            self.server.stop()
            self.server = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None
