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
from collections.abc import Callable
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import APIError, NoStreamResponseError

TIMEOUT = 5.0


async def subscribe_direct(nc: NATS, subject: str, handler: Callable[[Any], None]) -> Any:
    """Subscribe so that each message is handed to `handler` as the connection reads it.

    A nats-py subscription with a callback queues each message for a task of its own, which
    then calls back: one more trip through the event loop per message, on every reply and
    every pulled message of the hot path. nats-py (pinned) hands a message to its
    subscription's `_pending_queue.put_nowait`; a stand-in there calls `handler` at once.
    `handler` must not block. Where the stand-in cannot go, a callback subscription does.
    """
    sub = await nc.subscribe(subject)
    if not isinstance(getattr(sub, "_pending_queue", None), asyncio.Queue):

        async def relay(msg: Any) -> None:
            handler(msg)

        await sub.unsubscribe()
        return await nc.subscribe(subject, cb=relay)
    sub._pending_queue = _HandOver(sub, handler)  # type: ignore[assignment]
    return sub


class _HandOver:
    """What nats-py uses of a subscription's pending queue, handing each message on at once."""

    def __init__(self, sub: Any, handler: Callable[[Any], None]) -> None:
        self.sub = sub
        self.handler = handler

    def put_nowait(self, msg: Any) -> None:
        self.sub._pending_size -= len(msg.data)  # nats-py counted it as waiting in the queue
        self.handler(msg)

    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True

    def task_done(self) -> None:
        pass

    async def join(self) -> None:
        pass


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
            self._sub = await subscribe_direct(self.nc, inbox + ".*", self._on_reply)
            self._prefix = inbox + "."

    def _on_reply(self, msg: Any) -> None:
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
