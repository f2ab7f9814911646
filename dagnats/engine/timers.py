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

from nats.errors import TimeoutError as NatsTimeout
from nats.js import api

from dagnats.core.decide import fold
from dagnats.core.events import TimerFired
from dagnats.nats import names
from dagnats.nats.store import Store, decode_timer

log = logging.getLogger("dagnats.engine.timers")
EARLY_SLACK = 0.005  # fire a timer that is due within this many seconds
MAX_NAK_DELAY = 86400.0  # NATS takes the delay in int64 nanoseconds: keep far timers well inside it


class TimerService:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def run(self, stop: asyncio.Event) -> None:
        psub = await self.store.js.pull_subscribe(
            f"{names.TIMER_PREFIX}.>",
            durable=names.TIMER_CONSUMER,
            stream=names.TIMERS_STREAM,
            config=api.ConsumerConfig(ack_wait=30, max_deliver=-1, max_ack_pending=100_000),
        )
        while not stop.is_set():
            try:
                msgs = await psub.fetch(256, timeout=0.5)
            except (TimeoutError, NatsTimeout):
                continue
            except Exception as exc:
                log.warning("timer fetch failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                try:
                    await self._handle(msg)
                except Exception as exc:
                    log.error("timer handling failed: %r", exc)
                    await msg.nak(delay=1.0)

    async def _handle(self, msg) -> None:  # type: ignore[no-untyped-def]
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
