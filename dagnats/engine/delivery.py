"""Delivery epochs: when the history events an engine was handed are provably all of a run's new ones."""

from __future__ import annotations

from dagnats.nats import names
from dagnats.ports import Delivery


class DeliveryTracker:
    """Follows the engine feed's delivery epochs.

    While every message this engine fetches is a first delivery whose consumer sequence follows
    the previous one's, no other engine took any message and none is missing: this engine sees
    every new history event, in stream order. A run whose state was complete in such an epoch
    then needs no tail read: the delivered events are its whole tail. A gap (another engine, a
    message lost in transit) or a redelivery starts a new epoch, and runs are read from the
    history again.
    """

    def __init__(self) -> None:
        self.epoch = 0
        self.live = False  # a message of this epoch was received (so reads started now count)
        self._next: int | None = None  # the consumer sequence expected next

    def track(self, deliveries: list[Delivery]) -> int:
        """Follow the delivery epoch; return the index from which `deliveries` belong to the current one."""
        since = 0
        for i, d in enumerate(deliveries):
            if d.attempts != 1:
                self.epoch += 1
                self.live = False
                since = i + 1
            else:
                if self._next is not None and d.delivery != self._next:
                    self.epoch += 1
                    since = i
                self.live = True
            self._next = d.delivery + 1
        return since

    def broken(self) -> None:
        """Something went wrong with delivery or processing: trust no run's cached tail."""
        self.epoch += 1
        self.live = False
        self._next = None

    def reading(self) -> int:
        """The epoch in which a history read started now leaves a run complete (-1: none):
        every later event will be delivered here only if this epoch has seen a message."""
        return self.epoch if self.live else -1


def delivered_tail(msgs: list[Delivery], applied: int, *, complete: bool = False) -> list[Delivery] | None:
    """The delivered messages newer than `applied`, in order, if they are provably the run's
    whole new tail, else None (the tail gets read). They are when the run's state is
    `complete` in the current delivery epoch, or when they follow the last folded sequence
    with no gap in the *stream*, so no event of the run can lie between. (Later events, if
    any, make the next optimistic append fail and the tail gets read.)"""
    ordered = sorted(msgs, key=lambda m: m.seq)
    if complete:
        return [m for m in ordered if m.seq > applied]
    if not msgs or applied == 0:
        return None
    seqs = [m.seq for m in ordered]
    if seqs[0] != applied + 1 or any(b != a + 1 for a, b in zip(seqs, seqs[1:])):
        return None
    return ordered


def starts_run(msgs: list[Delivery]) -> bool:
    """Whether the first of these history messages is a run.started (events are encoded with
    their type first)."""
    if not msgs:
        return False
    first = min(msgs, key=lambda m: m.seq)
    return bool(first.data.startswith(b'{"type":"run.started"'))


def by_run(msgs: list[Delivery]) -> dict[str, list[Delivery]]:
    grouped: dict[str, list[Delivery]] = {}
    for msg in msgs:
        grouped.setdefault(names.run_of_history_subject(msg.subject), []).append(msg)
    return grouped
