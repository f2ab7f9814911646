"""Requests and acknowledged JetStream publishes on the engine's hot path, lighter than nats-py's.

nats-py's `request` draws random bytes from the OS for every request token and waits through
`asyncio.wait_for`; JetStream's `publish` adds a JSON parse of the ack. On a step that is a few
publishes and a read, that was about a tenth of the process's CPU (py-spy, bench w2). Here
one wildcard subscription per connection takes every reply, tokens are a counter, a timer
handle bounds the wait, and acks decode with msgspec into a struct.

The errors raised are nats-py's own (`nats.js.errors.APIError` and subclasses with `err_code`,
`NoStreamResponseError`, `nats.errors.TimeoutError`), so callers handle both paths alike.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import APIError, NoStreamResponseError

TIMEOUT = 5.0


class PubAck(msgspec.Struct, frozen=True):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    batch: str | None = None
    count: int | None = None  # an atomic batch: how many messages it committed
    error: dict[str, Any] | None = None


_ack = msgspec.json.Decoder(PubAck)


class Replies:
    """Requests whose replies arrive on one subscription of this connection."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._prefix = ""
        self._next = 0
        self._waiting: dict[str, asyncio.Future[Any]] = {}
        self._sub: Any = None
        self._ready: asyncio.Lock | None = None

    async def _start(self) -> None:
        if self._ready is None:
            self._ready = asyncio.Lock()
        async with self._ready:
            if self._sub is not None:
                return
            inbox = self.nc.new_inbox()
            self._sub = await self.nc.subscribe(inbox + ".*", cb=self._on_reply)
            self._prefix = inbox + "."

    async def _on_reply(self, msg: Any) -> None:
        future = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if future is not None and not future.done():
            future.set_result(msg)

    async def request(
        self, subject: str, data: bytes, headers: dict[str, str] | None = None, timeout: float = TIMEOUT
    ) -> Any:
        """Send and wait for the first reply (a nats `Msg`); raise nats' TimeoutError if none."""
        if self._sub is None:
            await self._start()
        self._next += 1
        token = str(self._next)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._waiting[token] = future
        expire = loop.call_later(timeout, self._expire, token)
        try:
            await self.nc.publish(subject, data, reply=self._prefix + token, headers=headers)
            return await future
        finally:
            expire.cancel()
            self._waiting.pop(token, None)

    def _expire(self, token: str) -> None:
        future = self._waiting.pop(token, None)
        if future is not None and not future.done():
            future.set_exception(NatsTimeout())

    async def publish(
        self, subject: str, data: bytes, headers: dict[str, str] | None = None, timeout: float = TIMEOUT
    ) -> PubAck:
        """A JetStream publish: return the stream's ack, or raise its error."""
        msg = await self.request(subject, data, headers, timeout)
        if not msg.data:
            status = (msg.headers or {}).get("Status")
            if status == "503":
                raise NoStreamResponseError
            raise APIError(code=int(status or 0), description=(msg.headers or {}).get("Description", ""))
        ack = _ack.decode(msg.data)
        if ack.error is not None:
            APIError.from_error(ack.error)  # raises the matching subclass
        return ack
