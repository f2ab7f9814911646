"""Durable timers: messages in a work-queue stream, held back with delayed NAKs until due.

A timer is a message carrying its fire time. Whoever pulls it before that time hands it back
with `nak(delay=remaining)`; once due, it is turned into a `timer.fired` event on the run's
history (with a deterministic Nats-Msg-Id) and only then acknowledged. Timers therefore survive
restarts of every process, and any number of engines can share the work.
"""

from __future__ import annotations

import asyncio
import logging
import time

from dagnats.core.decide import fold
from dagnats.core.events import TimerFired
from dagnats.nats.store import decode_timer
from dagnats.ports import Delivery, Feed, Store

log = logging.getLogger("dagnats.engine.timers")
EARLY_SLACK = 0.005  # fire a timer that is due within this many seconds
MAX_NAK_DELAY = 86400.0  # NATS takes the delay in int64 nanoseconds: keep far timers well inside it


class TimerService:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def run(self, stop: asyncio.Event) -> None:
        feed = await self.store.timer_feed()
        while not stop.is_set():
            for msg in await self._fetch(feed):
                try:
                    await self._handle(msg)
                except Exception as exc:
                    log.error("timer handling failed: %r", exc)
                    await msg.nak(delay=1.0)
        await feed.stop()

    async def _fetch(self, feed: Feed) -> list[Delivery]:
        try:
            return await feed.fetch(256, timeout=0.5)
        except Exception as exc:
            log.warning("timer fetch failed: %s", exc)
            await asyncio.sleep(0.5)
            return []

    async def _handle(self, msg: Delivery) -> None:
        timer = decode_timer(msg.data)
        remaining = timer.fire_at - time.time()
        if remaining > EARLY_SLACK:
            await msg.nak(delay=min(remaining, MAX_NAK_DELAY))  # far timers just come back again
            return
        fired = TimerFired(
            at=max(time.time(), timer.fire_at), kind=timer.kind, step_id=timer.step_id, attempt=timer.attempt
        )
        if await self._matters(timer.run_id, fired):
            await self.store.append(timer.run_id, fired, msg_id=f"{timer.msg_id}:fired")
        await msg.ack()

    async def _matters(self, run_id: str, fired: TimerFired) -> bool:
        """False if recording the timer would change nothing (its step or run moved on).

        Decided on the run's current state read from its history: the event that started a
        timer is always recorded before the timer exists, so a live timer never looks stale.
        """
        state = await self.store.current_state(run_id)
        return state is None or fold(state, fired) is not state
