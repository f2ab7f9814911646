"""One run's pass: fold its new events through the core, and record what the core asks for next.

The pass's state comes from the engine's cache or the run's snapshot; its new events are the
ones delivered when they provably are the whole tail, else read from the history. What
`next_event` asks for is appended optimistically (expected last subject sequence), a chain of
events as one atomic batch; a lost race re-reads the tail and decides again. The effects the
folded events call for are queued on the pass and done once it has caught up (`Pass.due`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import msgspec

from dagnats.core.actions import Action, AppendEvent, DispatchTask
from dagnats.core.decide import IllegalEvent, chain, decide, too_large
from dagnats.core.effects import still_due
from dagnats.core.events import Event, encode_event, event_type
from dagnats.core.plan import next_event
from dagnats.core.state import RunState
from dagnats.nats.store import decode_recorded
from dagnats.ports import (
    MAX_EVENT_BYTES,
    BatchUnsupported,
    Conflict,
    Delivery,
    EventLog,
    TooLarge,
    Values,
    ValueTooLarge,
    offload_event,
)

from .delivery import DeliveryTracker

log = logging.getLogger("dagnats.engine.passes")
MAX_APPENDS_PER_PASS = 10_000
STALE_READ_RETRIES = (0.01, 0.05, 0.2, 0.5)  # seconds between reads of a tail behind its delivery


class StaleRead(Exception):
    """A history read that did not reach an event already delivered (a lagging replica)."""


BATCH_EVENTS = 100  # events of one run appended in one atomic batch, at most
BATCH_BYTES = 1_000_000  # and their encoded size


class Pass:
    """One run's pass: its state so far, the events to record next, and effects not yet done."""

    def __init__(self, state: RunState | None, last: int, epoch: int, *, recheck: bool = False) -> None:
        self.state = state
        self.last = last  # last history sequence folded into `state`
        self.epoch = epoch  # see Cached.epoch
        self.next: list[Event] | None = None
        # (state after the event, effect, whether this pass recorded the event itself)
        self.effects: list[tuple[RunState, Action, bool]] = []
        self.folded = 0  # events folded (illegal ones skipped)
        # (step, attempt) of tasks sent with a step.queued whose append lost its race: sent
        # again, they are checked by their worker (the first copy may have run already)
        self.sent_unrecorded: set[tuple[str, int]] = set()
        # every task this pass sends is checked by its worker: the pass started from the stored
        # state, and an earlier pass (of an engine that died) may have sent it already
        self.recheck = recheck

    def apply(self, event: Event, seq: int, *, ours: bool = False) -> None:
        """Fold one event; queue its effects (done together, before the pass acknowledges).
        `ours`: this pass recorded the event itself."""
        try:
            new, actions = decide(self.state, event, first_only=True)
        except IllegalEvent as exc:
            self.last = seq
            log.warning("ignoring illegal event #%d (%s): %s", seq, type(event).__name__, exc)
            return
        self.record(seq, new, actions, ours)

    def record(self, seq: int, new: RunState, actions: list[Action], ours: bool) -> None:
        """Take in an event already decided: `new` and `actions` are what `decide` made of it."""
        self.last = seq
        self.folded += 1
        self.state = new
        # What to record next depends on the state alone, so the last event's answer is the one.
        self.next = [a.event for a in actions if isinstance(a, AppendEvent)]
        self.effects += [(new, a, ours) for a in actions if not isinstance(a, AppendEvent)]

    def drop(self) -> None:
        self.effects = []

    def due(self) -> list[tuple[RunState, Action]]:
        """The queued effects that the pass's final state still calls for (`still_due`): after
        a crash the tail holds events whose work is long done, and only what the run now waits
        for is done again. A dispatch for an event that this pass did not record itself may
        repeat one whose de-duplication the server forgot: its worker checks the run first."""
        assert self.state is not None
        effects, self.effects = self.effects, []
        out = []
        for state, action, ours in effects:
            if not still_due(self.state, action):
                continue
            if isinstance(action, DispatchTask) and (
                not ours or self.recheck or (action.step_id, action.attempt) in self.sent_unrecorded
            ):
                action = msgspec.structs.replace(action, recheck=True)
            out.append((state, action))
        return out


class Recorder:
    """Brings passes up to date against the event log (one run's pass at a time on each run's job)."""

    def __init__(
        self,
        events: EventLog,
        deliveries: DeliveryTracker,
        dispatch: Callable[[DispatchTask], Awaitable[None]] | None = None,
        values: Values | None = None,
    ) -> None:
        self.events = events
        self.values = values  # where an event too big for a message puts its input or output
        self.deliveries = deliveries
        self.dispatch = dispatch  # tasks go out together with their step.queued, if given
        self.batching = events.atomic_batches  # append a pass's chain of events in one batch

    async def advance(
        self, run_id: str, pass_: Pass, delivered: list[Delivery] | None, *, seen: int = 0
    ) -> None:
        """Fold the run's new events (`delivered`, or read from the history if None) and record
        what they call for, until the run needs nothing more. `seen`: the newest sequence
        delivered for the run, which a read tail must reach (see `_fold_up_to`)."""
        if delivered is None:
            await self._fold_up_to(run_id, pass_, seen)
        else:  # the messages in hand are the whole tail: no need to read it again
            for msg in delivered:
                pass_.apply(decode_recorded(msg.subject, msg.data), msg.seq)
        for _ in range(MAX_APPENDS_PER_PASS):
            if not await self._record_next(run_id, pass_):
                break

    async def _fold_up_to(self, run_id: str, pass_: Pass, seen: int) -> None:
        """Read and fold the tail until it holds the delivered sequence `seen`. On a cluster a
        replica that lags the stream's leader may answer the read (direct gets are served by
        every replica): folding only what it had, the pass would find nothing to do and the
        delivery would be acknowledged with the run left waiting for good. Read again a few
        times, then give up so the delivery is handed out again."""
        await self.fold_tail(run_id, pass_)
        for delay in STALE_READ_RETRIES:
            if pass_.last >= seen:
                return
            await asyncio.sleep(delay)
            await self.fold_tail(run_id, pass_)
        if pass_.last < seen:
            raise StaleRead(f"run {run_id}: the history read ends at #{pass_.last}, before #{seen} delivered")

    async def fold_tail(self, run_id: str, pass_: Pass) -> None:
        epoch = self.deliveries.reading()
        for seq, event in await self.events.read_history(run_id, after=pass_.last):
            pass_.apply(event, seq)
        if epoch == self.deliveries.epoch:  # complete now, and every later event will be delivered here
            pass_.epoch = epoch

    async def _record_next(self, run_id: str, pass_: Pass) -> bool:
        """Append what the pass calls for next (or learn, on a lost race, what others did);
        False when it calls for nothing."""
        if pass_.state is None:
            return False
        if pass_.next is None:  # nothing folded yet in this pass: ask the plan directly
            first = next_event(pass_.state)
            pass_.next = [] if first is None else [first]
        if not pass_.next:
            return False
        links = (
            chain(
                pass_.state,
                pass_.next,
                max_events=BATCH_EVENTS,
                max_bytes=BATCH_BYTES,
                max_event_bytes=MAX_EVENT_BYTES,
            )
            if self.batching
            else []
        )
        if links:  # decided once here, appended in one round trip
            await self._append_chain(run_id, pass_, links)
        else:
            await self._append_one(run_id, pass_, pass_.next[0])
        return True

    async def _append_chain(
        self, run_id: str, pass_: Pass, links: list[tuple[Event, RunState, list[Action]]]
    ) -> None:
        events = [event for event, _, _ in links]
        sends = self._sends(pass_, links)
        try:
            seqs, sent = await self._append_sending(run_id, events, pass_.last, sends, pass_.recheck)
        except Conflict:
            pass_.sent_unrecorded.update((a.step_id, a.attempt) for a in sends)
            await self.fold_tail(run_id, pass_)
            return
        except BatchUnsupported as exc:
            log.warning("appending one event at a time: %s", exc)
            self.batching = False
            return
        for (_, new, actions), seq in zip(links, seqs):
            pass_.record(seq, new, [a for a in actions if id(a) not in sent], ours=True)

    def _sends(self, pass_: Pass, links: list[tuple[Event, RunState, list[Action]]]) -> list[DispatchTask]:
        """The tasks the chain's events dispatch, to send while the events are appended. A
        task already sent once in this pass with a step.queued that was not recorded is left
        to the pass's effects, which ask its worker to check it."""
        if self.dispatch is None:
            return []
        return [
            a
            for _, _, actions in links
            for a in actions
            if isinstance(a, DispatchTask) and (a.step_id, a.attempt) not in pass_.sent_unrecorded
        ]

    async def _append_sending(
        self, run_id: str, events: list[Event], last: int, sends: list[DispatchTask], recheck: bool = False
    ) -> tuple[list[int], set[int]]:
        """Append the events (optimistically, after `last`) and send the tasks at the same time:
        one round trip on the step's critical path instead of two. Returns the sequences and
        the ids of the tasks sent (one that failed to go is left to the pass's effects).

        A task may thus be out while its step.queued loses its race; its worker's report is
        then taken as the step's queueing (core/decide.py `_sent_before_queued`), and a second
        copy is checked by its worker (`Pass.sent_unrecorded`). docs/architecture.md, "One write
        per dispatch", has the argument and the tests."""
        if not sends:
            return await self._append(run_id, events, last), set()
        assert self.dispatch is not None
        appended, *results = await asyncio.gather(
            self._append(run_id, events, last),
            *(self.dispatch(msgspec.structs.replace(a, recheck=True) if recheck else a) for a in sends),
            return_exceptions=True,
        )
        if isinstance(appended, BaseException):
            raise appended
        assert isinstance(appended, list)
        sent = {id(a) for a, r in zip(sends, results) if not isinstance(r, BaseException)}
        return appended, sent

    async def _append(self, run_id: str, events: list[Event], last: int) -> list[int]:
        if len(events) == 1:
            return [await self.events.append(run_id, events[0], expected_last=last)]
        return await self.events.append_batch(run_id, events, expected_last=last)

    async def _shrunk(self, event: Event, size: int) -> Event:
        """What to record instead of an event of `size` bytes that does not fit in a message:
        the event with its input or output in the object store (written first, awaited), or,
        when that is not enough or not possible, the failure it causes (`too_large`)."""
        if self.values is not None:
            what = f"{event_type(event)} {getattr(event, 'step_id', '')}".rstrip()
            try:
                smaller = await offload_event(self.values, event, f"{what}: value")
            except ValueTooLarge as exc:
                return too_large(event, exc.size, str(exc))
            if len(encode_event(smaller)) <= MAX_EVENT_BYTES:
                return smaller
        return too_large(event, size)

    async def _append_one(self, run_id: str, pass_: Pass, event: Event) -> None:
        try:
            seq = await self.events.append(run_id, event, expected_last=pass_.last)
        except TooLarge as exc:
            event = await self._shrunk(event, exc.size)
            seq = await self.events.append(run_id, event, expected_last=pass_.last)  # small by construction
        except Conflict:
            await self.fold_tail(run_id, pass_)
            return
        pass_.apply(event, seq, ours=True)
