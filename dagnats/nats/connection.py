"""Finding and connecting to NATS: bounded, quiet, one clear line when it fails."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.aio.client import Client as NATS

from dagnats.errors import UserError

from . import datadir


@dataclass(frozen=True)
class Endpoint:
    url: str
    token: str | None = None
    user: str | None = None
    password: str | None = None

    @property
    def servers(self) -> list[str]:
        """The URLs in `url` (a comma-separated list names several nodes of one cluster)."""
        return split_urls(self.url)


def split_urls(url: str) -> list[str]:
    """`nats://a:4222, nats://b:4222` -> both; blanks dropped."""
    return [u.strip() for u in url.split(",") if u.strip()]


def resolve_endpoint(
    nats_url: str | None = None, data_dir: str | os.PathLike[str] | None = None, role: str = "operator"
) -> Endpoint:
    """--nats / DAGNATS_NATS_URL first, else the local server recorded in the data dir. The URL
    may be a comma-separated list of a cluster's nodes: the client connects to any that answers
    and fails over to the others.

    `role` picks the credentials: "operator" (server.json) or "worker" (worker.json). For an
    external NATS they come from DAGNATS_NATS_TOKEN or DAGNATS_NATS_USER/DAGNATS_NATS_PASSWORD.
    """
    url = nats_url or os.environ.get("DAGNATS_NATS_URL")
    if url:
        return Endpoint(
            url=url,
            token=os.environ.get("DAGNATS_NATS_TOKEN") or None,
            user=os.environ.get("DAGNATS_NATS_USER") or None,
            password=os.environ.get("DAGNATS_NATS_PASSWORD") or None,
        )
    info = datadir.read_server_info(datadir.resolve(data_dir), role)
    return Endpoint(url=info.url, user=info.user, password=info.password)


async def connect(
    endpoint: Endpoint,
    *,
    name: str = "dagnats",
    long_lived: bool = False,
    timeout: float = 3.0,
    on_disconnect: Callable[[], Awaitable[None]] | None = None,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
) -> NATS:
    """Connect, failing within about `timeout` seconds with a UserError instead of hanging.

    `on_disconnect` / `on_reconnect` are called when a live connection drops and comes back.
    Every URL of the endpoint (and every node the cluster advertises) is tried: a short-lived
    client tries each about twice, a `long_lived` one (serve, worker, console) keeps trying them
    once connected, so it rides out the loss of its node.
    """
    seen: list[Exception] = []

    async def remember(exc: Exception) -> None:  # also keeps nats-py from logging tracebacks
        seen.append(exc)

    try:
        nc = await asyncio.wait_for(
            nats.connect(
                endpoint.servers or [endpoint.url],
                token=endpoint.token,
                user=endpoint.user,
                password=endpoint.password,
                name=name,
                connect_timeout=timeout,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.1,
                allow_reconnect=True,
                error_cb=remember,
                pending_size=64 * 1024 * 1024,
                **({"disconnected_cb": on_disconnect} if on_disconnect else {}),
                **({"reconnected_cb": on_reconnect} if on_reconnect else {}),
            ),
            timeout * max(1, len(endpoint.servers)) + 1.0,
        )
    except Exception as exc:  # nats-py raises several unrelated types here
        raise UserError(_explain(endpoint, [*seen, exc])) from None
    if long_lived:
        # Once connected, a long-lived process rides out server restarts (and, on a cluster, the
        # loss of its node: nats-py moves to another of the pool) instead of exiting.
        nc.options["max_reconnect_attempts"] = -1
        nc.options["reconnect_time_wait"] = 0.5
    return nc


def _explain(endpoint: Endpoint, errors: list[Exception]) -> str:
    if any("authorization" in str(e).lower() for e in errors):
        return (
            f"NATS at {endpoint.url} refused the connection: authorization violation "
            "(wrong or missing credentials; clients on this host find them through --data-dir)"
        )
    text = str(errors[-1]) or type(errors[-1]).__name__
    return (
        f"cannot reach NATS at {endpoint.url} ({text.strip()}): is `dagnats serve` running? "
        "Use --nats URL or --data-dir to point elsewhere"
    )


def data_dir_path(data_dir: str | None) -> Path:
    return datadir.resolve(data_dir)


async def close(nc: NATS) -> None:
    """Flush what we published (acks included), then close. `drain()` stalls on pull subscriptions.
    With the server away there is nothing to flush to: close at once, quietly."""
    if nc.is_connected:
        try:
            await asyncio.wait_for(nc.flush(), 2.0)
        except Exception:
            pass
    try:
        await nc.close()
    except OSError:  # the connection was lost under the close
        pass
