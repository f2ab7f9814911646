"""The durable consumers behind the engine, the workers and the timer service, as `dagnats.ports` feeds.

Each feed is a `Puller` (pull.py) over a durable consumer made here, with the settings every
process of a deployment shares; its nats-py messages are handed out as `Delivery`s, whose
JetStream metadata (parsed from the reply subject) is read once, when the message arrives.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import api

from dagnats.ports import Delivery

from . import names
from .pull import Puller, ensure_consumer


class NatsDelivery:
    """A JetStream message as a `Delivery`."""

    __slots__ = ("_msg", "subject", "data", "seq", "delivery", "attempts", "pending", "queued_at")

    def __init__(self, msg: Any) -> None:
        meta = msg.metadata
        self._msg = msg
        self.subject: str = msg.subject
        self.data: bytes = msg.data
        self.seq: int = meta.sequence.stream
        self.delivery: int = meta.sequence.consumer
        self.attempts: int = meta.num_delivered
        self.pending: int = meta.num_pending
        self.queued_at: float = meta.timestamp.timestamp()

    async def ack(self) -> None:
        await self._msg.ack()

    async def nak(self, delay: float | None = None) -> None:
        await self._msg.nak(delay=delay)

    async def term(self) -> None:
        await self._msg.term()

    async def in_progress(self) -> None:
        await self._msg.in_progress()


class PullFeed:
    """A durable consumer's messages, fetched through one `Puller`."""

    def __init__(self, puller: Puller) -> None:
        self._puller = puller

    async def fetch(self, batch: int, timeout: float, *, no_wait: bool = False) -> list[Delivery]:
        return [NatsDelivery(m) for m in await self._puller.fetch(batch, timeout, no_wait=no_wait)]

    async def stop(self) -> None:
        await self._puller.stop()


async def engine_feed(nc: NATS, js: Any) -> PullFeed:
    """Every history event, on the consumer all engines share."""
    return await _shared(
        nc, js, names.HISTORY_STREAM, names.ENGINE_CONSUMER, names.HISTORY_PREFIX, 15, 50_000
    )


async def timer_feed(nc: NATS, js: Any) -> PullFeed:
    """Every timer, on the consumer all timer services share."""
    return await _shared(nc, js, names.TIMERS_STREAM, names.TIMER_CONSUMER, names.TIMER_PREFIX, 30, 100_000)


async def _shared(
    nc: NATS, js: Any, stream: str, consumer: str, prefix: str, ack_wait: float, max_ack_pending: int
) -> PullFeed:
    """Every message under `prefix`, on the durable consumer every process of its kind shares."""
    config = api.ConsumerConfig(
        durable_name=consumer,
        filter_subject=f"{prefix}.>",
        ack_wait=ack_wait,
        max_deliver=-1,
        max_ack_pending=max_ack_pending,
    )
    await ensure_consumer(js, stream, config)
    return PullFeed(await Puller(nc, stream, consumer).start())


async def task_feed(nc: NATS, js: Any, task: str, ack_wait: float) -> tuple[PullFeed, float]:
    """The tasks named `task`, on the consumer its workers share, and the ack wait that consumer
    uses: one made by an earlier worker keeps its own."""
    filters = names.task_filters(task)
    info = await ensure_consumer(
        js,
        names.TASKS_STREAM,
        api.ConsumerConfig(
            durable_name=names.task_consumer(task),
            ack_wait=ack_wait,
            max_deliver=-1,
            max_ack_pending=100_000,
            filter_subjects=filters,
        ),
    )
    config = info.config
    if sorted(config.filter_subjects or [config.filter_subject or ""]) != sorted(filters):
        # a consumer from before tasks carried their run in the subject
        await js.add_consumer(
            names.TASKS_STREAM, replace(config, filter_subject=None, filter_subjects=filters)
        )
    puller = await Puller(nc, names.TASKS_STREAM, names.task_consumer(task)).start()
    return PullFeed(puller), config.ack_wait or ack_wait
