"""In-memory streams and durable consumers that behave as JetStream's do, for `MemoryStore`.

A `Stream` numbers every message it takes with one sequence (the stream's, as JetStream does),
absorbs a repeated message id, and keeps the last sequence per subject. A `Consumer` hands its
stream's messages out in order to whoever fetches; each stays unacknowledged until acked,
and comes back (redelivered first, `attempts` higher) after a nak, its delay, or its ack wait.
In a work queue an acked or terminated message leaves the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dagnats.ports import Delivery


@dataclass(frozen=True)
class Message:
    subject: str
    data: bytes
    seq: int
    queued_at: float


class Stream:
    def __init__(self, work_queue: bool = False) -> None:
        self.work_queue = work_queue  # acked messages leave the stream
        self.messages: dict[int, Message] = {}
        self.last_seq = 0
        self._ids: dict[str, int] = {}  # message id -> the sequence it got (no window: tests are short)
        self._consumers: list[Consumer] = []

    def add(self, subject: str, data: bytes, msg_id: str | None = None) -> int:
        """Store a message, or return the sequence of the one that came with the same id."""
        if msg_id is not None and msg_id in self._ids:
            return self._ids[msg_id]
        self.last_seq += 1
        self.messages[self.last_seq] = Message(subject, data, self.last_seq, time.time())
        if msg_id is not None:
            self._ids[msg_id] = self.last_seq
        for consumer in self._consumers:
            consumer.wake()
        return self.last_seq

    def purge(self, matches: Callable[[str], bool]) -> None:
        for seq in [s for s, m in self.messages.items() if matches(m.subject)]:
            del self.messages[seq]

    def consumer(self, matches: Callable[[str], bool], ack_wait: float) -> Consumer:
        consumer = Consumer(self, matches, ack_wait)
        self._consumers.append(consumer)
        return consumer


@dataclass
class _Pending:
    """A message handed out and not yet acknowledged."""

    attempts: int
    due: float  # monotonic time after which it goes out again


@dataclass
class Consumer:
    """A durable consumer: one cursor and one set of unacknowledged messages, however many fetch."""

    stream: Stream
    matches: Callable[[str], bool]
    ack_wait: float
    cursor: int = 0  # the last stream sequence handed out for the first time
    delivered: int = 0  # deliveries so far (the consumer sequence)
    pending: dict[int, _Pending] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self) -> None:
        self._wake.set()

    async def fetch(self, batch: int, timeout: float, *, no_wait: bool = False) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while True:
            out = self._take(batch)
            left = deadline - time.monotonic()
            if out or no_wait or left <= 0:
                return out
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(left, self._next_due() - time.monotonic()))

    def _next_due(self) -> float:
        return min((p.due for p in self.pending.values()), default=float("inf"))

    def _take(self, batch: int) -> list[Delivery]:
        """Redeliveries that are due first, then messages not handed out yet."""
        now = time.monotonic()
        waiting = self._waiting()
        out: list[Delivery] = []
        for seq in sorted(s for s, p in self.pending.items() if p.due <= now):
            if len(out) == batch:
                return out
            if seq not in self.stream.messages:
                del self.pending[seq]  # purged meanwhile
                continue
            out.append(self._hand_out(seq, self.pending[seq].attempts + 1, waiting, now))
        while len(out) < batch and self.cursor < self.stream.last_seq:
            self.cursor += 1
            message = self.stream.messages.get(self.cursor)
            if message is not None and self.matches(message.subject):
                waiting -= 1
                out.append(self._hand_out(self.cursor, 1, waiting, now))
        return out

    def _waiting(self) -> int:
        """How many of the stream's messages this consumer has not handed out yet."""
        messages = self.stream.messages
        after = range(self.cursor + 1, self.stream.last_seq + 1)
        return sum(1 for s in after if s in messages and self.matches(messages[s].subject))

    def _hand_out(self, seq: int, attempts: int, waiting: int, now: float) -> MemoryDelivery:
        self.pending[seq] = _Pending(attempts, now + self.ack_wait)
        self.delivered += 1
        return MemoryDelivery(self, self.stream.messages[seq], self.delivered, attempts, waiting)

    def settle(self, seq: int) -> None:
        """Acked or terminated (by stream sequence, as JetStream does): it never comes back, and
        a work queue drops it."""
        self.pending.pop(seq, None)
        if self.stream.work_queue:
            self.stream.messages.pop(seq, None)

    def retry(self, seq: int, after: float) -> None:
        """Hand it out again `after` seconds from now (a nak), or not before (work in progress)."""
        if seq in self.pending:
            self.pending[seq].due = time.monotonic() + after
            self.wake()


class MemoryDelivery:
    """One message as handed out by a `Consumer` (a `dagnats.ports.Delivery`)."""

    def __init__(
        self, consumer: Consumer, message: Message, delivery: int, attempts: int, pending: int
    ) -> None:
        self._consumer = consumer
        self.subject = message.subject
        self.data = message.data
        self.seq = message.seq
        self.delivery = delivery
        self.attempts = attempts
        self.pending = pending
        self.queued_at = message.queued_at

    async def ack(self) -> None:
        self._consumer.settle(self.seq)

    async def nak(self, delay: float | None = None) -> None:
        self._consumer.retry(self.seq, delay or 0.0)

    async def term(self) -> None:
        self._consumer.settle(self.seq)

    async def in_progress(self) -> None:
        self._consumer.retry(self.seq, self._consumer.ack_wait)


class ConsumerFeed:
    """A `dagnats.ports.Feed` over a shared consumer; stopping it leaves the consumer (durable)."""

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer

    async def fetch(self, batch: int, timeout: float, *, no_wait: bool = False) -> list[Delivery]:
        return await self._consumer.fetch(batch, timeout, no_wait=no_wait)

    async def stop(self) -> None:
        self._consumer.wake()
