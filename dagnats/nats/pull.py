"""Pulling from a durable JetStream consumer with one callback subscription and no task per message.

nats-py's `PullSubscription.fetch` waits for each message with `next_msg`, which creates a task,
a uuid4 and an `asyncio.wait_for` per message: on the engine's and workers' hot path that was
a tenth of the process's CPU (py-spy, bench w2). Here messages land in a list as they arrive
and a fetch takes what is there, or waits (one future, one timer handle) for the first.

A pull request asks for up to `batch` messages and stays open until it has them all or it
expires; messages it brings after a fetch returned wait for the next fetch. Each request has
its own reply subject, so the end of an old one (a 408 when it expires) is not taken for the
end of the current one (messages come under their own subjects and count against the open
request). The messages are nats-py `Msg`s: ack, nak and `in_progress` as usual.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import api
from nats.js.errors import NotFoundError

from .replies import subscribe_direct


async def ensure_consumer(js: Any, stream: str, config: api.ConsumerConfig) -> api.ConsumerInfo:
    """The durable consumer `config.durable_name`, created with `config` unless it exists."""
    assert config.durable_name
    info: api.ConsumerInfo
    try:
        info = await js.consumer_info(stream, config.durable_name)
    except NotFoundError:
        config.name = config.durable_name
        info = await js.add_consumer(stream, config=config)
    return info


class PullFailed(Exception):
    """The server ended a pull request with an error (no consumer, no JetStream, ...)."""


class Puller:
    def __init__(self, nc: NATS, stream: str, consumer: str) -> None:
        self.nc = nc
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._buf: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None
        self._sub: Any = None
        self._prefix = ""
        self._request = 0  # number of the open request
        self._left = 0  # messages it may still bring
        self._until = 0.0  # when it expires (loop time)
        self._problem: str | None = None  # how the last request ended, when that was not normal

    async def start(self) -> Puller:
        inbox = self.nc.new_inbox()
        self._prefix = inbox + "."
        self._sub = await subscribe_direct(self.nc, inbox + ".*", self._on_msg)
        return self

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    def _on_msg(self, msg: Any) -> None:
        current = msg.subject == self._prefix + str(self._request)  # (statuses come on the inbox)
        headers = msg.headers
        status = headers.get("Status") if headers else None
        if status:
            if status != "100" and current:  # 404 none now, 408 expired, anything else: trouble
                self._left = 0
                if status not in ("404", "408"):
                    self._problem = f"{status} {headers.get('Description', '')}".strip()
        else:  # delivered under its own subject: counted against the open request
            self._buf.append(msg)
            self._left -= 1
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def fetch(self, batch: int, timeout: float, *, no_wait: bool = False) -> list[Any]:
        """Up to `batch` messages: those already here, else the first to arrive within
        `timeout` (with `no_wait`, only those the consumer has right now)."""
        if not self._buf:
            loop = asyncio.get_running_loop()
            if self._left <= 0 or loop.time() >= self._until:
                self._request += 1
                self._left, self._until = batch, loop.time() + timeout
                request: dict[str, Any] = {"batch": batch}
                if no_wait:
                    request["no_wait"] = True
                else:
                    request["expires"] = int(timeout * 1e9)
                await self.nc.publish(
                    self.subject, json.dumps(request).encode(), reply=self._prefix + str(self._request)
                )
            if not self._buf and not self._problem:  # (some may have come while requesting)
                self._waiter = loop.create_future()
                wake = loop.call_later(timeout, _settle, self._waiter)
                try:
                    await self._waiter
                finally:
                    wake.cancel()
                    self._waiter = None
        if not self._buf and self._problem:
            problem, self._problem = self._problem, None
            raise PullFailed(f"pulling from {self.subject}: {problem}")
        out, self._buf = self._buf[:batch], self._buf[batch:]
        return out


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
