"""`dagnats.embedded()`: everything `dagnats serve` runs, inside the caller's own process."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from dagnats.api.client import Client
from dagnats.worker import Worker

from .serve import LocalStack


@asynccontextmanager
async def embedded(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    workers: Iterable[Worker] = (),
    fsync: bool = False,
    port: int | None = None,
) -> AsyncIterator[Client]:
    """Start a nats-server (in `data_dir`, else a fresh temporary directory, removed at the
    end), the engine, the timers, the built-in workers and `workers` in this process, and
    yield a connected `Client`; stop everything on leaving the block.

    `fsync=True` makes the server fsync every write (as `dagnats serve --fsync`); `port` is the
    server's loopback port (default: a free one). A `data_dir` keeps the runs for next time and
    may not be in use by a `dagnats serve` at the same time.

        async with dagnats.embedded(workers=[worker]) as client:
            await client.register(definition)
            state = await client.wait(await client.start("hello", {"name": "Ada"}))
    """
    own_dir = tempfile.mkdtemp(prefix="dagnats-") if data_dir is None else None
    stack = LocalStack(
        data_dir=own_dir or data_dir,
        port=port or _free_port(),
        workers=list(workers),
        fsync=fsync,
    )
    try:
        await stack.start()
        client = await Client.connect(endpoint=stack.endpoint)
        try:
            yield client
        finally:
            await client.close()
    finally:
        await stack.stop()
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
