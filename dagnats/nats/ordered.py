"""An ordered consumer that carries on from where it was when the server restarts or fails over.

nats-py's ordered consumers live in the server's memory: a restart loses them, and nats-py
notices only when its idle-heartbeat check fires, about 19 s later. This one makes a new
consumer as soon as the connection is back, starting after the last stream sequence it
delivered, so its reader misses nothing and sees nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from nats import errors as nats_errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api
from nats.js import errors as js_errors

TICK = 0.2  # how soon a quiet consumer sees that the connection came back

# What a subscribe may meet while the server is still coming back: try again at the next tick.
_NOT_YET = (
    TimeoutError,  # nats-py's included
    nats_errors.NoRespondersError,
    nats_errors.ConnectionReconnectingError,
    js_errors.ServiceUnavailableError,
)


class ResumingConsumer:
    """A push ordered consumer read with `next()`; `open()` it first, `close()` it after."""

    def __init__(
        self,
        nc: NATS,
        stream: str,
        subject: str,
        *,
        after: int = 0,
        last_per_subject: bool = False,
        inactive_threshold: float = 30.0,
    ) -> None:
        """From stream sequence `after` + 1; else from the start, or, with `last_per_subject`,
        from the last message of each subject."""
        self.nc = nc
        self.js = nc.jetstream()
        self.stream = stream
        self.subject = subject
        self.last = after  # stream sequence of the last message handed out
        self.last_per_subject = last_per_subject
        self.inactive_threshold = inactive_threshold
        self._sub: Any = None
        self._reconnects = 0  # the connection's reconnect count when `_sub` was made

    async def open(self) -> None:
        self._sub = await self._subscribe()

    async def pending(self) -> int:
        """Messages the current consumer has yet to deliver."""
        return int((await self._sub.consumer_info()).num_pending)

    async def next(self, timeout: float) -> Msg | None:
        """The next message, or None if none came within `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (left := deadline - loop.time()) > 0:
            if self.nc.is_closed:
                raise nats_errors.ConnectionClosedError
            if self.nc.stats["reconnects"] != self._reconnects and self.nc.is_connected:
                await self._reopen()
            try:
                msg: Msg = await self._sub.next_msg(timeout=min(TICK, left))
            except TimeoutError:  # nats-py's is a subclass
                continue
            seq = msg.metadata.sequence.stream
            if seq > self.last:  # a consumer that outlived the reconnect may repeat some
                self.last = seq
                return msg
        return None

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await self._drop(sub)

    async def _subscribe(self) -> Any:
        self._reconnects = self.nc.stats["reconnects"]
        if self.last:
            config = api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self.last + 1
            )
        elif self.last_per_subject:
            config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT)
        else:
            config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL)
        config.inactive_threshold = self.inactive_threshold
        return await self.js.subscribe(self.subject, stream=self.stream, config=config, ordered_consumer=True)

    async def _reopen(self) -> None:
        old = self._sub
        try:
            self._sub = await self._subscribe()
        except _NOT_YET:
            self._reconnects = -1  # so the next tick tries again
            return
        await self._drop(old)

    async def _drop(self, sub: Any) -> None:
        """Unsubscribe, and delete the consumer if the server still has it: the server caps
        consumers per stream, and an unused one would linger until its inactivity threshold."""
        name = None
        if self.nc.is_connected:
            with contextlib.suppress(Exception):  # lost with the server, most likely
                name = (await sub.consumer_info()).name
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
            if name:
                await self.js.delete_consumer(self.stream, name)
