"""The engine: a short loop that feeds history events to the pure core and performs its actions.

Receive a batch of history events from the engine feed; hand each run's events to that run's
job (`RunQueues`); the job brings the run up to date in one pass (`passes.py`): take its state
(`SnapshotCache`), fold the new events through `decide` (delivered, or read from the history
when `DeliveryTracker` cannot prove they are all of them), record what `next_event` asks for
with optimistic appends, perform the effects (`effects.py`), save the snapshot with
compare-and-set, and only then acknowledge. Several engines may do this for the same run at
once: a lost append race re-reads the tail, and every effect carries a deterministic
Nats-Msg-Id. docs/architecture.md has the whole loop.
"""

from __future__ import annotations

import asyncio
import logging

from dagnats.core.state import RUN_TERMINAL
from dagnats.ports import ActiveRun, Delivery, Feed, Store

from .cache import Cached, SnapshotCache
from .delivery import DeliveryTracker, by_run, delivered_tail, starts_run
from .effects import Effects
from .passes import Pass, Recorder
from .queues import RunQueues

log = logging.getLogger("dagnats.engine.loop")

# What a run's job is handed: its delivered events with the delivery epoch they all came in
# (-1 if not), None to save its snapshot, or the run's index entry for the start-up sweep to
# bring the run up to date and check that entry.
Job = tuple[list[Delivery], int] | ActiveRun | None


class Engine:
    """One engine's loop. Any number of engines may share the feed, in one process or many."""

    def __init__(self, store: Store, *, batch: int = 256) -> None:
        self.store = store
        self.batch = batch
        self.processed = 0
        self._deliveries = DeliveryTracker()
        self._queues: RunQueues[Job] = RunQueues(self._work)
        self._cache = SnapshotCache(store, lambda run_id: self._queues.push(run_id, None))
        self._recorder = Recorder(store, self._deliveries, store.dispatch, values=store)
        self._effects = Effects(store)

    async def run(self, stop: asyncio.Event) -> None:
        feed = await self.store.engine_feed()
        sweep = asyncio.create_task(self._sweep())
        while not stop.is_set():
            await self._receive(await self._fetch(feed))
        sweep.cancel()
        await feed.stop()
        await self._queues.join()
        await self._cache.flush_all()  # save what is only in memory

    async def _fetch(self, feed: Feed) -> list[Delivery]:
        try:
            return await feed.fetch(self.batch, timeout=0.5)
        except Exception as exc:  # connection trouble: keep going once NATS is back
            self._deliveries.broken()
            log.warning("engine fetch failed: %s", exc)
            await asyncio.sleep(0.5)
            return []

    async def _receive(self, msgs: list[Delivery]) -> None:
        fresh = set(map(id, msgs[self._deliveries.track(msgs) :]))
        for run_id, run_msgs in by_run(msgs).items():
            if self._folded_already(run_id, run_msgs):
                for msg in run_msgs:  # this engine's own appends, coming back: done with
                    await msg.ack()
                continue
            # Each run is brought up to date on its own job, so a long pass over a big run
            # never holds back the others (nor the next fetch).
            epoch = self._deliveries.epoch if all(id(m) in fresh for m in run_msgs) else -1
            await self._queues.submit(run_id, (run_msgs, epoch))

    def _folded_already(self, run_id: str, msgs: list[Delivery]) -> bool:
        """Whether these messages were folded by a pass that has finished (its effects done),
        as this engine's own appends are by the time they are delivered back: they need no
        pass. (Acking them before a snapshot covers them is safe: at start an engine brings
        every unfinished run up to date from its snapshot and history.)"""
        if self._queues.busy(run_id):
            return False
        cached = self._cache.peek(run_id)
        return cached is not None and all(m.seq <= cached.applied for m in msgs)

    async def _sweep(self) -> None:
        """At start, bring every unfinished run up to date at once, rather than waiting for the
        messages a dead engine held to be redelivered, and repair its entry in the index of
        unfinished runs. The index lists every run with unfinished business (an entry is
        written before any of the run's messages is acked); without one, read every snapshot."""
        try:
            listed = await self.store.active_runs()
            if listed is None:
                snapshots = await self.store.all_snapshots()
                listed = [
                    ActiveRun(s.applied, s.summary) for s in snapshots if s.summary.status not in RUN_TERMINAL
                ]
        except Exception as exc:
            log.warning("start-up sweep skipped: %r", exc)
            return
        for entry in listed:  # a finished run among them is a stale entry: its repair removes it
            await self._queues.submit(entry.summary.run_id, entry)

    async def _work(self, run_id: str, job: Job) -> None:
        """One item of the run's job (one job per run keeps its passes in delivery order)."""
        if job is None:
            await self._cache.flush(run_id)
        elif isinstance(job, ActiveRun):
            await self._handle(run_id, [], -1)
            try:
                await self._cache.repair(run_id, job)
            except Exception as exc:  # the entry stays as it is until the next start
                log.warning("run %s: repairing its index entry failed: %r", run_id, exc)
        else:
            await self._handle(run_id, *job)

    async def _handle(self, run_id: str, msgs: list[Delivery], epoch: int) -> None:
        seen = max((m.seq for m in msgs), default=0)
        try:
            await self._process(run_id, seen, msgs, epoch)
        except Exception as exc:
            log.error("run %s: processing failed: %r", run_id, exc)
            self._cache.forget(run_id)  # its redo starts from the stored snapshot and history
            for msg in msgs:
                await msg.nak(delay=1.0)
            return
        for msg in msgs:
            await msg.ack()

    async def _process(self, run_id: str, seen_seq: int, msgs: list[Delivery], epoch: int) -> None:
        """Bring one run up to date (only ever on its job). Other engines race through
        optimistic appends and compare-and-set snapshots. `epoch`: the delivery epoch all of
        `msgs` came in, if they did (-1 otherwise)."""
        loaded = self._cache.peek(run_id) is None
        fresh = loaded and epoch == self._deliveries.epoch and starts_run(msgs)
        cached = await self._start(run_id, fresh)
        if cached.applied >= seen_seq > 0:
            if loaded:  # handed out again: a crash may have come between snapshot and index
                await self._cache.reindex(run_id, cached)
            return
        # A pass that starts from the stored state (a restart, an eviction, another engine's
        # run) cannot know which tasks an earlier pass sent before its step.queued was recorded.
        pass_ = Pass(cached.state, cached.applied, cached.epoch, recheck=loaded and not fresh)
        complete = cached.epoch == self._deliveries.epoch
        try:
            await self._recorder.advance(
                run_id, pass_, delivered_tail(msgs, cached.applied, complete=complete), seen=seen_seq
            )
            if pass_.state is not None:
                await self._effects.perform_all(pass_.due())
        finally:
            pass_.drop()  # after a failure: the redone pass redoes these effects
            self.processed += pass_.folded
        if pass_.state is None:
            return
        await self._cache.save(run_id, cached, pass_.state, pass_.last, pass_.epoch)

    async def _start(self, run_id: str, fresh: bool) -> Cached:
        """What the run's pass starts from. `fresh`: a new run whose run.started (always its
        first event) came in this epoch: every event it has is in hand or on its way here, so
        there is no snapshot to load and no tail to read."""
        if fresh:
            return Cached(state=None, applied=0, revision=0, epoch=self._deliveries.epoch)
        return await self._cache.load(run_id)
