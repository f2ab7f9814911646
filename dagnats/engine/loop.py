"""The engine: a short loop that feeds history events to the pure core and performs its actions.

For each run with new events: take its state (cached, else the snapshot), fold the new events
(delivered, or read from the history when delivery cannot prove they are all of them) through
`decide` while performing each event's effects, then record what `next_event` asks for with
optimistic appends (expected last subject sequence; a chain of them as one atomic batch), and
save the snapshot with compare-and-set (at once when listing would show news, else a moment
later). Several engines may do this for the same run at once: a lost append race re-reads
the tail, and every effect carries a deterministic Nats-Msg-Id. docs/architecture.md has the
whole loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.js import api

from dagnats.core import schema as input_schema
from dagnats.core.actions import (
    Action,
    AppendEvent,
    CancelChildRun,
    CancelTimers,
    ContinueRun,
    DispatchTask,
    DropTasks,
    NotifyParent,
    StartChildRun,
    StartTimer,
)
from dagnats.core.decide import IllegalEvent, decide
from dagnats.core.effects import still_due
from dagnats.core.events import (
    ChildRunFinished,
    Event,
    RunCancelRequested,
    RunContinued,
    RunFailed,
    RunStarted,
    StepFailed,
    encode_event,
)
from dagnats.core.plan import next_event
from dagnats.core.state import RUN_TERMINAL, RunState
from dagnats.errors import NotFound
from dagnats.nats import names
from dagnats.nats.pull import Puller, ensure_consumer
from dagnats.nats.store import (
    MAX_EVENT_BYTES,
    BatchUnsupported,
    Conflict,
    Store,
    TooLarge,
    WorkflowVersion,
    decode_recorded,
)

log = logging.getLogger("dagnats.engine.loop")
MAX_APPENDS_PER_PASS = 10_000
BATCH_EVENTS = 100  # events of one run appended in one atomic batch, at most
BATCH_BYTES = 1_000_000  # and their encoded size
CACHE_SIZE = 4096
MAX_ACTIVE_RUNS = 256  # runs being brought up to date at once by one engine
EFFECT_BATCH = 256  # effects in flight at once within one pass


@dataclass
class _Cached:
    state: RunState | None
    applied: int  # last history sequence folded into state
    revision: int  # KV revision of the stored snapshot
    saved: RunState | None = None  # the state that snapshot holds
    saved_applied: int = 0
    epoch: int = -1  # the delivery epoch in which `state` is known to miss no event (see Engine)


class _Pass:
    """One run's pass: its state so far, the events to record next, and effects not yet done."""

    def __init__(self, state: RunState | None, last: int, epoch: int) -> None:
        self.state = state
        self.last = last  # last history sequence folded into `state`
        self.epoch = epoch  # see _Cached.epoch
        self.next: list[Event] | None = None
        # (state after the event, effect, whether this pass recorded the event itself)
        self.effects: list[tuple[RunState, Action, bool]] = []

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
            if isinstance(action, DispatchTask) and not ours:
                action = msgspec.structs.replace(action, recheck=True)
            out.append((state, action))
        return out


class Engine:
    def __init__(self, store: Store, *, batch: int = 256) -> None:
        self.store = store
        self.batch = batch
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        # Runs being worked on, each by one job that takes what is queued for it in turn:
        # delivered messages (with their delivery epoch), or None to save the snapshot.
        self._queues: dict[str, list[tuple[list[Any] | None, int]]] = {}
        self._slots = asyncio.Semaphore(MAX_ACTIVE_RUNS)
        self._jobs: set[asyncio.Task[None]] = set()
        self.processed = 0
        self.batching = store.atomic_batches  # append a pass's chain of events in one batch
        # Delivery epochs. While every message this engine fetches is a first delivery whose
        # consumer sequence follows the previous one's, no other engine took any message and
        # none is missing: this engine sees every new history event, in stream order. A run
        # whose state was complete in such an epoch then needs no tail read: the delivered
        # events are its whole tail. A gap (another engine, a message lost in transit) or a
        # redelivery starts a new epoch, and runs are read from the history again.
        self._epoch = 0
        self._live = False  # a message of this epoch was received (so reads started now count)
        self._next_delivery: int | None = None  # the consumer sequence expected next
        self._due: dict[str, asyncio.TimerHandle] = {}  # runs whose snapshot is saved soon

    async def run(self, stop: asyncio.Event) -> None:
        await ensure_consumer(
            self.store.js,
            names.HISTORY_STREAM,
            api.ConsumerConfig(
                durable_name=names.ENGINE_CONSUMER,
                filter_subject=f"{names.HISTORY_PREFIX}.>",
                ack_wait=15,
                max_deliver=-1,
                max_ack_pending=50_000,
            ),
        )
        puller = await Puller(self.store.nc, names.HISTORY_STREAM, names.ENGINE_CONSUMER).start()
        sweep = asyncio.create_task(self._sweep())
        while not stop.is_set():
            try:
                msgs = await puller.fetch(self.batch, timeout=0.5)
                if not msgs:
                    continue
            except Exception as exc:  # connection trouble: keep going once NATS is back
                self._broken()
                log.warning("engine fetch failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            fresh = set(map(id, msgs[self._track_deliveries(msgs) :]))
            for run_id, run_msgs in _by_run(msgs).items():
                if self._folded_already(run_id, run_msgs):
                    for msg in run_msgs:  # this engine's own appends, coming back: done with
                        await msg.ack()
                    continue
                # Each run is brought up to date on its own task, so a long pass over a big run
                # never holds back the others (nor the next fetch).
                epoch = self._epoch if all(id(m) in fresh for m in run_msgs) else -1
                await self._submit(run_id, run_msgs, epoch)
        sweep.cancel()
        await puller.stop()
        while self._jobs:
            await asyncio.gather(*self._jobs, return_exceptions=True)
        for run_id, handle in list(self._due.items()):  # save what is only in memory
            handle.cancel()
            self._due.pop(run_id, None)
            await self._flush(run_id)

    async def _submit(self, run_id: str, msgs: list[Any], epoch: int) -> None:
        """Queue a run's messages for its job, starting one (within MAX_ACTIVE_RUNS) if none
        works on the run. One job per run keeps its passes in delivery order."""
        if self._enqueue(run_id, (msgs, epoch)):
            return
        await self._slots.acquire()
        if self._enqueue(run_id, (msgs, epoch)):  # a save started a job meanwhile
            self._slots.release()
            return
        self._start(run_id, [(msgs, epoch)], self._finished)

    def _enqueue(self, run_id: str, item: tuple[list[Any] | None, int]) -> bool:
        """Queue `item` for the run's job, if it has one working."""
        queue = self._queues.get(run_id)
        if queue is not None:
            queue.append(item)
        return queue is not None

    def _start(
        self, run_id: str, queue: list[tuple[list[Any] | None, int]], done: Callable[[Any], None]
    ) -> None:
        self._queues[run_id] = queue
        job = asyncio.create_task(self._drain(run_id, queue))
        self._jobs.add(job)
        job.add_done_callback(done)

    async def _drain(self, run_id: str, queue: list[tuple[list[Any] | None, int]]) -> None:
        try:
            while queue:
                msgs, epoch = queue.pop(0)
                if msgs is None:
                    await self._flush(run_id)
                else:
                    await self._handle(run_id, msgs, epoch)
        finally:
            del self._queues[run_id]

    def _folded_already(self, run_id: str, msgs: list[Any]) -> bool:
        """Whether these messages were folded by a pass that has finished (its effects done),
        as this engine's own appends are by the time they are delivered back: they need no
        pass. (Acking them before a snapshot covers them is safe: at start an engine brings
        every unfinished run up to date from its snapshot and history.)"""
        if run_id in self._queues:
            return False
        cached = self._cache.get(run_id)
        return cached is not None and all(m.metadata.sequence.stream <= cached.applied for m in msgs)

    def _track_deliveries(self, msgs: list[Any]) -> int:
        """Follow the delivery epoch; return the index from which `msgs` belong to the current one."""
        since = 0
        for i, msg in enumerate(msgs):
            meta = msg.metadata
            if meta.num_delivered != 1:
                self._epoch += 1
                self._live = False
                since = i + 1
            else:
                if self._next_delivery is not None and meta.sequence.consumer != self._next_delivery:
                    self._epoch += 1
                    since = i
                self._live = True
            self._next_delivery = meta.sequence.consumer + 1
        return since

    def _broken(self) -> None:
        """Something went wrong with delivery or processing: trust no run's cached tail."""
        self._epoch += 1
        self._live = False
        self._next_delivery = None

    async def _sweep(self) -> None:
        """At start, bring every unfinished run up to date at once, rather than waiting for the
        messages a dead engine held to be redelivered."""
        try:
            snapshots = await self.store.all_snapshots()
        except Exception as exc:
            log.warning("start-up sweep skipped: %r", exc)
            return
        for snap in snapshots:
            if snap.summary.status in RUN_TERMINAL:
                continue
            await self._submit(snap.summary.run_id, [], -1)

    def _finished(self, job: asyncio.Task[None]) -> None:
        self._jobs.discard(job)
        self._slots.release()

    async def _handle(self, run_id: str, msgs: list[Any], epoch: int) -> None:
        seen = max((m.metadata.sequence.stream for m in msgs), default=0)
        try:
            await self._process(run_id, seen, msgs, epoch)
        except Exception as exc:
            log.error("run %s: processing failed: %r", run_id, exc)
            self._cache.pop(run_id, None)  # its redo starts from the stored snapshot and history
            for msg in msgs:
                await msg.nak(delay=1.0)
            return
        for msg in msgs:
            await msg.ack()

    async def _process(self, run_id: str, seen_seq: int, msgs: list[Any], epoch: int) -> None:
        """Bring one run up to date (only ever on its job: see _submit). Other engines race
        through optimistic appends and compare-and-set snapshots. `epoch`: the delivery epoch
        all of `msgs` came in, if they did (-1 otherwise)."""
        if run_id not in self._cache and epoch == self._epoch and _starts_run(msgs):
            # A new run whose run.started (always its first event) came in this epoch: every
            # event it has is in hand or on its way here. No snapshot to load, no tail to read.
            cached = _Cached(state=None, applied=0, revision=0, epoch=epoch)
        else:
            cached = await self._load(run_id)
        if cached.applied >= seen_seq > 0:
            return
        pass_ = _Pass(cached.state, cached.applied, cached.epoch)
        delivered = _delivered_tail(msgs, cached.applied, complete=cached.epoch == self._epoch)
        try:
            await self._advance(run_id, pass_, delivered)
        finally:
            pass_.drop()  # after a failure: the redone pass redoes these effects
        if pass_.state is None:
            return
        await self._save(run_id, cached, pass_.state, pass_.last, pass_.epoch)

    async def _advance(self, run_id: str, pass_: _Pass, delivered: list[Any] | None) -> None:
        """Fold the run's new events, record what they call for, and do their effects."""
        if delivered is None:
            await self._fold_tail(run_id, pass_)
        else:  # the messages in hand are the whole tail: no need to read it again
            for msg in delivered:
                self._apply(pass_, decode_recorded(msg.subject, msg.data), msg.metadata.sequence.stream)
        for _ in range(MAX_APPENDS_PER_PASS):
            if pass_.state is None:
                break
            if pass_.next is None:  # nothing folded yet in this pass: ask the plan directly
                first = next_event(pass_.state)
                pass_.next = [] if first is None else [first]
            if not pass_.next:
                break
            chain = self._chain(pass_) if self.batching else []
            if chain:  # decided once here, appended in one round trip
                try:
                    events = [event for event, _, _ in chain]
                    seqs = (
                        [await self.store.append(run_id, events[0], expected_last=pass_.last)]
                        if len(events) == 1
                        else await self.store.append_batch(run_id, events, expected_last=pass_.last)
                    )
                except Conflict:
                    await self._fold_tail(run_id, pass_)
                    continue
                except BatchUnsupported as exc:
                    log.warning("appending one event at a time: %s", exc)
                    self.batching = False
                    continue
                for (_, new, actions), seq in zip(chain, seqs):
                    self._record(pass_, seq, new, actions, ours=True)
                continue
            event = pass_.next[0]
            try:
                seq = await self.store.append(run_id, event, expected_last=pass_.last)
            except TooLarge as exc:
                event = _too_large(event, exc)
                seq = await self.store.append(
                    run_id, event, expected_last=pass_.last
                )  # small by construction
            except Conflict:
                await self._fold_tail(run_id, pass_)
                continue
            self._apply(pass_, event, seq, ours=True)
        if pass_.state is not None:
            effects = [self._perform(state, action) for state, action in pass_.due()]
            for start in range(0, len(effects), EFFECT_BATCH):  # independent and idempotent
                await asyncio.gather(*effects[start : start + EFFECT_BATCH])

    async def _fold_tail(self, run_id: str, pass_: _Pass) -> None:
        epoch = self._epoch if self._live else -1
        for seq, event in await self.store.read_history(run_id, after=pass_.last):
            self._apply(pass_, event, seq)
        if epoch == self._epoch:  # complete now, and every later event will be delivered here
            pass_.epoch = epoch

    def _chain(self, pass_: _Pass) -> list[tuple[Event, RunState, list[Action]]]:
        """The events the loop below would append one after another, each decided on the state
        the previous one leaves, up to a batch's bounds. Appended as one atomic batch checked
        against the pass's last sequence, they land exactly as that sequence of appends would
        have, or not at all, in one round trip instead of one per event (a fan-out of 100
        steps is 100 `step.queued` events)."""
        out: list[tuple[Event, RunState, list[Action]]] = []
        state, upcoming, size = pass_.state, pass_.next, 0
        while upcoming and len(out) < BATCH_EVENTS:
            event = upcoming[0]
            encoded = len(encode_event(event))
            if encoded > MAX_EVENT_BYTES:
                break  # the one-at-a-time path records what an oversize event causes instead
            size += encoded
            if size > BATCH_BYTES and out:
                break
            try:
                new, actions = decide(state, event, first_only=True)
            except IllegalEvent:
                break  # the one-at-a-time path logs and skips it
            out.append((event, new, actions))
            state = new
            upcoming = [a.event for a in actions if isinstance(a, AppendEvent)]
        return out

    def _apply(self, pass_: _Pass, event: Event, seq: int, *, ours: bool = False) -> None:
        """Fold one event; queue its effects (done together, before the pass acknowledges).
        `ours`: this pass recorded the event itself."""
        try:
            new, actions = decide(pass_.state, event, first_only=True)
        except IllegalEvent as exc:
            pass_.last = seq
            log.warning("ignoring illegal event #%d (%s): %s", seq, type(event).__name__, exc)
            return
        self._record(pass_, seq, new, actions, ours)

    def _record(self, pass_: _Pass, seq: int, new: RunState, actions: list[Action], ours: bool) -> None:
        pass_.last = seq
        self.processed += 1
        pass_.state = new
        # What to record next depends on the state alone, so the last event's answer is the one.
        pass_.next = [a.event for a in actions if isinstance(a, AppendEvent)]
        pass_.effects += [(new, a, ours) for a in actions if not isinstance(a, AppendEvent)]

    async def _perform(self, state: RunState, action: Action) -> None:
        match action:
            case DispatchTask():
                await self.store.dispatch(action)
            case StartTimer():
                await self.store.start_timer(action)
            case CancelTimers(run_id=run_id):
                await self.store.cancel_timers(run_id)
            case DropTasks(run_id=run_id):
                await self.store.drop_tasks(run_id)
            case StartChildRun():
                await self._start_child(state, action)
            case ContinueRun():
                await self._continue(state, action)
            case CancelChildRun(child_run_id=child, reason=reason):
                await self.store.append(
                    child,
                    RunCancelRequested(at=state.updated_at, reason=reason, by="engine"),
                    msg_id=f"{child}:cancel:parent",
                )
            case NotifyParent():
                p = action.parent
                await self.store.append(
                    p.run_id,
                    ChildRunFinished(
                        at=state.updated_at,
                        step_id=p.step_id,
                        attempt=p.attempt,
                        child_run_id=action.child_run_id,
                        status=action.status,
                        output=action.output,
                        error=action.error,
                    ),
                    msg_id=f"{p.run_id}:child:{p.step_id}:{p.attempt}:finished",
                )
            case AppendEvent():
                pass

    async def _start_child(self, state: RunState, action: StartChildRun) -> None:
        p = action.parent

        async def fail(error: str) -> None:  # the parent's step fails; no child run exists
            finished = ChildRunFinished(
                at=state.updated_at,
                step_id=p.step_id,
                attempt=p.attempt,
                child_run_id=action.child_run_id,
                status="failed",
                error=error,
            )
            await self.store.append(
                p.run_id, finished, msg_id=f"{p.run_id}:child:{p.step_id}:{p.attempt}:finished"
            )

        try:
            wfv = await self.store.get_workflow(action.workflow, action.version)
        except NotFound as exc:
            await fail(str(exc))
            return
        if problem := _input_problem(wfv, action.input):
            await fail(problem)
            return
        started = RunStarted(
            at=state.updated_at,
            run_id=action.child_run_id,
            workflow=wfv.name,
            version=wfv.version,
            definition=wfv.definition,
            input=action.input,
            parent=p,
            depth=action.depth,
            root_run_id=action.root_run_id,
            by=f"run {p.run_id}",
        )
        try:
            await self.store.append(action.child_run_id, started, expected_last=0)
        except Conflict:
            pass  # already started by an earlier attempt at this effect

    async def _continue(self, state: RunState, action: ContinueRun) -> None:
        """Start the next run of a continue_as_new chain, then mark this one continued."""
        failed_id = f"{action.run_id}:continue:failed"

        async def fail(error: str) -> None:
            event = StepFailed(
                at=state.updated_at, step_id=action.step_id, attempt=1, retryable=False, error=error
            )
            await self.store.append(action.run_id, event, msg_id=failed_id)

        try:
            wfv = await self.store.get_workflow(action.workflow, action.version)
        except NotFound as exc:
            await fail(str(exc))
            return
        if problem := _input_problem(wfv, action.input):
            await fail(problem)
            return
        started = RunStarted(
            at=state.updated_at,
            run_id=action.next_run_id,
            workflow=wfv.name,
            version=wfv.version,
            definition=wfv.definition,
            input=action.input,
            parent=action.parent,
            depth=action.depth,
            root_run_id=action.root_run_id,
            generation=action.generation,
            continued_from=action.run_id,
            chain_start=action.chain_start,
            fork=action.resume,
            by=f"run {action.run_id}",
        )
        try:
            await self.store.append(action.next_run_id, started, expected_last=0)
        except Conflict:
            pass  # started by an earlier attempt at this effect
        continued = RunContinued(at=state.updated_at, step_id=action.step_id, next_run_id=action.next_run_id)
        await self.store.append(action.run_id, continued, msg_id=f"{action.run_id}:continued")

    async def _load(self, run_id: str) -> _Cached:
        cached = self._cache.get(run_id)
        if cached is not None:
            self._cache.move_to_end(run_id)
            return cached
        snap, revision = await self.store.load_snapshot(run_id)
        if snap is None or snap.state is None:  # no snapshot, or one too big to hold the state
            return _Cached(state=None, applied=0, revision=revision)
        return _Cached(snap.state, snap.applied, revision, saved=snap.state, saved_applied=snap.applied)

    async def _save(self, run_id: str, cached: _Cached, state: RunState, last: int, epoch: int) -> None:
        if last <= cached.applied and cached.state is not None:
            cached.epoch = max(cached.epoch, epoch)
            self._remember(run_id, cached)
            return
        entry = _Cached(state, last, cached.revision, cached.saved, cached.saved_applied, epoch)
        self._remember(run_id, entry)
        if _shows_news(cached.saved, state):
            await self._write(run_id, entry)
        elif run_id not in self._due:
            # The snapshot is only a cache: what listing shows did not change, so the state
            # waits in memory and is saved once, a moment later, whatever happens meanwhile.
            loop = asyncio.get_running_loop()
            self._due[run_id] = loop.call_later(SAVE_DELAY, self._flush_soon, run_id)

    def _flush_soon(self, run_id: str) -> None:
        self._due.pop(run_id, None)
        if not self._enqueue(run_id, (None, -1)):
            self._start(run_id, [(None, -1)], self._jobs.discard)

    async def _flush(self, run_id: str) -> None:
        try:
            entry = self._cache.get(run_id)
            if entry is not None and entry.state is not None and entry.applied > entry.saved_applied:
                await self._write(run_id, entry)
        except Exception as exc:  # the history still has everything; the next pass saves
            log.warning("run %s: saving the snapshot failed: %r", run_id, exc)

    async def _write(self, run_id: str, entry: _Cached) -> None:
        """Save the entry's state with compare-and-set; give up the entry if another engine is ahead."""
        assert entry.state is not None
        revision = entry.revision
        for _ in range(5):
            new_rev = await self.store.save_snapshot(entry.applied, entry.state, revision)
            if new_rev is not None:
                entry.revision, entry.saved, entry.saved_applied = new_rev, entry.state, entry.applied
                return
            theirs, revision = await self.store.load_snapshot(run_id)
            if theirs is not None and theirs.applied >= entry.applied:
                self._cache.pop(run_id, None)  # another engine is ahead; reload next time
                return
        self._cache.pop(run_id, None)

    def _remember(self, run_id: str, cached: _Cached) -> None:
        self._cache[run_id] = cached
        self._cache.move_to_end(run_id)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)


def _input_problem(wfv: WorkflowVersion, value: Any) -> str | None:
    """Why `value` may not start a run of this workflow version, or None."""
    schema = wfv.definition.input_schema
    problem = input_schema.validate(schema, value) if schema is not None else None
    return f"input does not match {wfv.name}'s input_schema: {problem}" if problem else None


def _too_large(event: Event, exc: TooLarge) -> Event:
    """What to record instead of an engine event that does not fit: the failure it causes."""
    step_id = getattr(event, "step_id", "")
    what = type(event).__name__
    if step_id:
        attempt = getattr(event, "attempt", 1)
        return StepFailed(
            at=event.at,
            step_id=step_id,
            attempt=attempt,
            retryable=False,
            error=f"{what} of {exc.size} bytes exceeds the message limit (input or output too large)",
        )
    return RunFailed(at=event.at, error=f"run output of {exc.size} bytes exceeds the message limit")


def _delivered_tail(msgs: list[Any], applied: int, *, complete: bool = False) -> list[Any] | None:
    """The delivered messages newer than `applied`, in order, if they are provably the run's
    whole new tail, else None (the tail gets read). They are when the run's state is
    `complete` in the current delivery epoch, or when they follow the last folded sequence
    with no gap in the *stream*, so no event of the run can lie between. (Later events, if
    any, make the next optimistic append fail and the tail gets read.)"""
    ordered = sorted(msgs, key=lambda m: m.metadata.sequence.stream)
    if complete:
        return [m for m in ordered if m.metadata.sequence.stream > applied]
    if not msgs or applied == 0:
        return None
    seqs = [m.metadata.sequence.stream for m in ordered]
    if seqs[0] != applied + 1 or any(b != a + 1 for a, b in zip(seqs, seqs[1:])):
        return None
    return ordered


SAVE_DELAY = 0.5  # seconds a run's newer state may wait in memory while listing shows nothing new


def _shows_news(saved: RunState | None, state: RunState) -> bool:
    """Whether listing the run would show something new: it appears, changes status, or waits
    for an operator. Progress alone (steps done) is saved within SAVE_DELAY."""
    return (
        saved is None
        or state.status != saved.status
        or len(state.pending_approvals()) != len(saved.pending_approvals())
    )


def _starts_run(msgs: list[Any]) -> bool:
    """Whether the first of these history messages is a run.started (events are encoded with
    their type first)."""
    if not msgs:
        return False
    first = min(msgs, key=lambda m: m.metadata.sequence.stream)
    return bool(first.data.startswith(b'{"type":"run.started"'))


def _by_run(msgs: list[Any]) -> dict[str, list[Any]]:
    grouped: dict[str, list[Any]] = {}
    for msg in msgs:
        grouped.setdefault(names.run_of_history_subject(msg.subject), []).append(msg)
    return grouped
