"""The worker runtime: pull a worker's tasks, check them, run their handlers, report results.

One puller per task type on its shared durable consumer; a semaphore bounds the tasks in
flight; a task that outlives a short one gets its `step.started` and a keep-alive watcher.
docs/architecture.md ("Workers") has the rules, and what a task must prove to skip its check.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec

from dagnats.core.actions import DispatchTask
from dagnats.core.decide import fold
from dagnats.core.events import StepCompleted, StepFailed, StepStarted
from dagnats.core.state import RUN_TERMINAL, RunState, attempt_superseded
from dagnats.nats.store import MAX_EVENT_BYTES, Store, decode_task
from dagnats.ports import Delivery, Feed, ValueTooLarge, load_values, offload_event

from .sdk import SUSPEND, Handler, NonRetryable, TaskContext, TaskFailed, Worker

log = logging.getLogger("dagnats.worker.runtime")


def _env_seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


CANCEL_CHECK_SECONDS = 1.0  # how soon a running handler notices that its run was cancelled


def _needs_check(msg: Delivery, task: DispatchTask, connected_at: float) -> bool:
    """Whether a task must be checked against its run's current state before it runs.

    A task delivered for the first time, soon after the engine queued it on recording its
    `step.queued`, cannot be stale: its run was live when it was queued, a run that ends takes
    its queued tasks off the queue, and an attempt is superseded only when its timeout passes.
    Anything else is checked:
    - a task the engine sent again (`recheck`: recovery, whose message may repeat one that was
      done and removed, and whose de-duplication the server forgot on a restart);
    - a task queued before this worker's connection to the server began (`connected_at`): a
      server killed mid-way may forget that it delivered it, and hand it out again as a first
      delivery after its result was recorded;
    - a redelivery (its result may already be recorded), or a task that waited in the queue.
    """
    if task.recheck or msg.attempts != 1 or msg.queued_at <= connected_at:
        return True
    prompt = min(FRESH_SECONDS, task.timeout / 2) if task.timeout else FRESH_SECONDS
    return abs(time.time() - msg.queued_at) > prompt


FRESH_SECONDS = 1.0
STALE_READ_DELAYS = (0.01, 0.05, 0.2, 0.5)  # seconds between reads of a history behind its leader
FETCH_MAX = 32  # tasks asked for in one fetch, at most


# A task still running after this long gets a step.started event (the console shows it
# running); a shorter one is recorded by its result alone.
STARTED_AFTER = 0.1


class _StepStarted:
    """A task's `step.started`, recorded at most once. A task still running after STARTED_AFTER
    gets it (publishes on one connection keep their order, so it lands before the result). A
    shorter one reports only its result, which carries when and where it ran: one event and one
    engine pass less per step."""

    def __init__(self, store: Store, task: DispatchTask, worker: str) -> None:
        self.store, self.task, self.worker = store, task, worker
        self.at = time.time()
        self._future: asyncio.Future[int] | None = None

    @property
    def recorded(self) -> bool:
        """Whether it was sent (the result then need not say when and where the task ran)."""
        return self._future is not None

    def record(self) -> None:
        if self._future is not None:
            return
        task = self.task
        event = StepStarted(at=self.at, step_id=task.step_id, attempt=task.attempt, worker=self.worker)
        self._future = asyncio.ensure_future(
            self.store.append(
                task.run_id, event, msg_id=f"{task.run_id}:started:{task.step_id}:{task.attempt}"
            )
        )

    async def ensure(self) -> None:
        """Record it now and wait until it is (a handler announcing that it runs)."""
        self.record()
        assert self._future is not None
        await self._future

    async def settle(self) -> None:
        """Wait for it to be recorded, if it was sent."""
        if self._future is None:
            return
        try:
            await self._future
        except Exception as exc:  # the result still counts: an engine accepts it from "queued"
            log.warning(
                "step.started of %s/%s was not recorded: %r", self.task.run_id, self.task.step_id, exc
            )


class _KnownRuns:
    """The states of the runs this worker checked lately, each with the last history sequence
    it includes, so the next check reads and folds only the events recorded since (one check
    at a time per run). The same answer as `Store.current` (the history only grows), without
    reading a big run's snapshot and tail again for each of its tasks: a map of 10,000 items,
    whose snapshot holds no state, was replayed whole for every task that waited in the queue."""

    HELD = 64

    def __init__(self, store: Store) -> None:
        self.store = store
        self.runs: OrderedDict[str, tuple[RunState | None, int]] = OrderedDict()
        self.locks: dict[str, asyncio.Lock] = {}

    async def current(self, run_id: str) -> RunState | None:
        async with self.locks.setdefault(run_id, asyncio.Lock()):
            return await self._read(run_id)

    async def _read(self, run_id: str) -> RunState | None:
        known = self.runs.pop(run_id, None)
        # Where the leader says the history ends: the reads below are direct gets, which a
        # replica behind the leader may answer (a cluster), without a result just recorded.
        end = await self.store.leader_last_sequence(run_id)
        if known is None:
            state, last = await self.store.current(run_id)
        else:
            state, last = known
            for seq, event in await self.store.read_history(run_id, after=last):
                state, last = fold(state, event), seq
        for delay in STALE_READ_DELAYS:
            if last >= end:
                break
            await asyncio.sleep(delay)
            for seq, event in await self.store.read_history(run_id, after=last):
                state, last = fold(state, event), seq
        if last < end:  # the task fails to be processed and is handed out again
            raise RuntimeError(f"run {run_id}: its history read ends at #{last}, before #{end}")
        self.runs[run_id] = (state, last)
        while len(self.runs) > self.HELD:
            gone, _ = self.runs.popitem(last=False)
            if not self.locks[gone].locked():
                del self.locks[gone]
        return state


class Runtime:
    def __init__(self, worker: Worker, store: Store, concurrency: int) -> None:
        self.worker = worker
        self.store = store
        self.slots = asyncio.Semaphore(concurrency)
        self.concurrency = concurrency
        self.inflight: set[asyncio.Task[None]] = set()
        self.ack_wait = _env_seconds("DAGNATS_TASK_ACK_WAIT", 10.0)  # for consumers this worker creates
        self.ack_waits: dict[str, float] = {}  # what each task's consumer actually uses
        self.running: set[tuple[str, str, int]] = set()  # (run, step, attempt) in hand here
        self.connected = (time.time(), -1)  # when this connection (re)connected, as far as seen
        self.known = _KnownRuns(store)  # the states stale checks read, kept to read only what is new

    def _connected_at(self) -> float:
        """When the connection to the server last began: at start, or the first time a task
        came after a reconnect (a little late, which only means a few more checks)."""
        reconnects = self.store.reconnects
        if reconnects != self.connected[1]:
            self.connected = (time.time() if self.connected[1] >= 0 else self.connected[0], reconnects)
        return self.connected[0]

    async def run(self, stop: asyncio.Event) -> None:
        pullers: list[asyncio.Task[Any]] = [
            asyncio.create_task(self._pull(task, stop)) for task in sorted(self.worker.handlers)
        ]
        subs = [await self._serve_tool(name) for name in sorted(self.worker.tools)]
        if subs and not pullers:
            pullers.append(asyncio.create_task(stop.wait()))
        try:
            await asyncio.gather(*pullers)
        finally:
            for sub in subs:
                await sub.unsubscribe()
            if self.inflight:
                await asyncio.gather(*self.inflight, return_exceptions=True)

    async def _serve_tool(self, name: str) -> Any:
        schema, description, fn = self.worker.tools[name]

        async def answer(data: bytes) -> bytes:
            try:
                request = json.loads(data)
                if request.get("op") == "spec":
                    reply: dict[str, Any] = {"description": description, "parameters": schema}
                else:
                    result = fn(request.get("arguments") or {})
                    if inspect.isawaitable(result):
                        result = await result
                    reply = {"result": result}
            except Exception as exc:  # the model gets the error, the worker keeps going
                reply = {"result": f"{type(exc).__name__}: {exc}", "is_error": True}
            return json.dumps(reply, default=str).encode()

        return await self.store.tools.serve(name, answer)

    async def _pull(self, task: str, stop: asyncio.Event) -> None:
        feed, actual = await self.store.task_feed(task, self.ack_wait)
        # The consumer may predate this worker with another ack wait: heartbeats must follow it.
        self.ack_waits[task] = actual
        if abs(actual - self.ack_wait) > 0.001:
            log.info(
                "task %s: the consumer's ack wait is %gs (not %gs); heartbeats follow it",
                task,
                actual,
                self.ack_wait,
            )
        try:
            await self._serve(feed, task, stop)
        finally:
            await feed.stop()

    async def _serve(self, feed: Feed, task: str, stop: asyncio.Event) -> None:
        while not stop.is_set():
            # Wait for work holding one slot (other tasks' pullers need theirs); when more tasks
            # are queued behind the one delivered, take them in one request, as many as slots.
            await self.slots.acquire()
            msgs = await self._fetch(feed, task, 1, 0.5)
            if msgs and msgs[0].pending > 0:
                more = 0
                while more < min(FETCH_MAX, msgs[0].pending) and not self.slots.locked():
                    await self.slots.acquire()
                    more += 1
                if more:
                    extra = await self._fetch(feed, task, more, 0.05, no_wait=True)
                    for _ in range(more - len(extra)):
                        self.slots.release()
                    msgs += extra
            for msg in msgs:
                job = asyncio.create_task(self._guarded(msg))
                self.inflight.add(job)
                job.add_done_callback(self._done)
            if not msgs:
                self.slots.release()

    async def _fetch(
        self, feed: Feed, task: str, n: int, timeout: float, no_wait: bool = False
    ) -> list[Delivery]:
        try:
            return await feed.fetch(n, timeout, no_wait=no_wait)
        except Exception as exc:
            log.warning("fetch for %s failed: %s", task, exc)
            await asyncio.sleep(0.5)
            return []

    def _done(self, job: asyncio.Task[None]) -> None:
        self.inflight.discard(job)
        self.slots.release()

    async def _guarded(self, msg: Delivery) -> None:
        try:
            await self._execute(msg)
        except asyncio.CancelledError:  # shutting down: hand the task back now, not after the ack wait
            try:
                await msg.nak()
            except Exception:
                pass
            raise
        except Exception as exc:  # NATS trouble or a bug: hand the task back for a later try
            log.error("task on %s could not be processed: %r", msg.subject, exc)
            try:
                await msg.nak(delay=1.0)
            except Exception:
                pass

    async def _execute(self, msg: Delivery) -> None:
        try:
            task = decode_task(msg.data)
        except msgspec.DecodeError:
            log.error("dropping malformed task message on %s", msg.subject)
            await msg.term()
            return
        key = (task.run_id, task.step_id, task.attempt)
        if key in self.running:  # redelivered while we still check or run it: keep it, do not run it twice
            await msg.in_progress()
            return
        # Claimed before the check: a check can outlast the ack wait (a node died, its reads
        # hang), and the copies handed out meanwhile must wait for it, not run beside it.
        self.running.add(key)
        try:
            if _needs_check(msg, task, self._connected_at()) and await self._settled_by_check(msg, task):
                return
            await self._run_task(msg, task)
        finally:
            self.running.discard(key)

    async def _settled_by_check(self, msg: Delivery, task: DispatchTask) -> bool:
        """Check the task (`_stale`); True if that settled its message: acked as stale, or
        handed back because the check took so long that the server may have handed the task
        to another worker meanwhile (its ack wait ran out), which runs it after its own check."""
        began = time.monotonic()
        if await self._stale(task):
            await msg.ack()
            return True
        if time.monotonic() - began > self.ack_waits.get(task.task, self.ack_wait) / 3:
            log.info(
                "task %s/%s: its check was slow; handed back to be checked again", task.run_id, task.step_id
            )
            await msg.nak()
            return True
        return False

    async def _run_task(self, msg: Delivery, task: DispatchTask) -> None:
        started = _StepStarted(self.store, task, self.worker.name)
        ctx = TaskContext(
            input=await load_values(self.store, task.input),  # referenced values, read back
            config=task.config,
            run_id=task.run_id,
            step_id=task.step_id,
            attempt=task.attempt,
            task=task.task,
            checkpoint_data=task.checkpoint,
            _store=self.store,
            _msg=msg,
            _announce=started.ensure,
        )
        outcome = await self._supervise(msg, task, ctx, started)
        if outcome is None:  # the run ended, the attempt timed out or was superseded: nothing to report
            await msg.ack()
            return
        await started.settle()
        if not (outcome[0] and outcome[1] is SUSPEND):
            await self._report(task, outcome, None if started.recorded else started.at)
        await msg.ack()

    async def _supervise(
        self, msg: Delivery, task: DispatchTask, ctx: TaskContext, started: _StepStarted
    ) -> tuple[bool, Any, bool] | None:
        """Run the task's handler to its outcome, or None if we stopped it ourselves."""
        handler = asyncio.create_task(self._call(self.worker.handlers[task.task], ctx))
        stopped: list[str] = []  # why we cancelled the handler ourselves, if we did

        def stop(why: str) -> None:
            stopped.append(why)
            handler.cancel()

        watchers: list[asyncio.Task[None]] = []

        def outlived() -> None:  # a task running past a short one's time: most never get here
            started.record()
            watchers.append(asyncio.create_task(self._keep_alive(msg, task, handler, stop)))

        loop = asyncio.get_running_loop()
        long_task = loop.call_later(STARTED_AFTER, outlived)
        # The engine's step timer decides the attempt's fate; stop the handler to match.
        timer = loop.call_later(task.timeout, stop, "timed out") if task.timeout is not None else None
        try:
            return await asyncio.shield(handler)
        except asyncio.CancelledError:
            if not handler.cancelled():
                raise  # this worker is shutting down: the task goes back to the queue
            if stopped:
                return None
            return False, "the task was cancelled (CancelledError escaped its handler)", True
        finally:
            long_task.cancel()
            for watcher in watchers:
                watcher.cancel()
            if timer is not None:
                timer.cancel()

    async def _call(self, fn: Handler, ctx: TaskContext) -> tuple[bool, Any, bool]:
        """(ok, output-or-error, retryable)."""
        try:
            if inspect.iscoroutinefunction(fn):
                result = await fn(ctx)
            else:
                result = await asyncio.to_thread(fn, ctx)
                if inspect.isawaitable(result):
                    result = await result
            return True, result, True
        except asyncio.CancelledError:
            raise
        except NonRetryable as exc:
            return False, str(exc) or type(exc).__name__, False
        except TaskFailed as exc:
            return False, str(exc) or type(exc).__name__, True
        except Exception as exc:
            log.debug("task %s failed:\n%s", ctx.task, traceback.format_exc())
            return False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, True

    async def _report(
        self, task: DispatchTask, outcome: tuple[bool, Any, bool], started_at: float | None = None
    ) -> None:
        """Record the attempt's result; `started_at` when no step.started was recorded for it."""
        ok, value, retryable = outcome
        base = f"{task.run_id}:%s:{task.step_id}:{task.attempt}"
        event = await self._result(task, value) if ok else _failure(task, str(value)[:4000], retryable)
        if started_at is not None:
            event = msgspec.structs.replace(event, started_at=started_at, worker=self.worker.name)
        kind = "completed" if isinstance(event, StepCompleted) else "failed"
        await self.store.append(task.run_id, event, msg_id=base % kind)

    async def _result(self, task: DispatchTask, output: Any) -> StepCompleted | StepFailed:
        """The attempt's completion, its output in the object store first if the event would
        not fit in a message (awaited: the event never names a value not stored)."""
        event = _result(task, output)
        if not isinstance(event, _Oversized):
            return event
        try:
            return await offload_event(self.store, event.event, f"step {task.step_id}: output")
        except ValueTooLarge as exc:
            return _failure(task, str(exc), False)

    async def _stale(self, task: DispatchTask) -> bool:
        """True if the run ended or this attempt already has a result or a successor: skip it
        without running. Read from the history, not the snapshot alone: a snapshot of progress
        is saved a moment later, and a result recorded just before a crash may not be in it."""
        state = await self.known.current(task.run_id)
        stale = state is not None and attempt_superseded(state, task.step_id, task.attempt)
        if stale:
            assert state is not None
            log.info(
                "skipping %s/%s attempt %d: run is %s, step %s",
                task.run_id,
                task.step_id,
                task.attempt,
                state.status,
                state.steps[task.step_id].status if task.step_id in state.steps else "unknown",
            )
        return stale

    async def _keep_alive(
        self, msg: Delivery, task: DispatchTask, handler: asyncio.Task[Any], stop: Callable[[str], None]
    ) -> None:
        """Extend the ack deadline while the handler runs; stop it soon after its run ends."""
        beat = max(0.2, self.ack_waits.get(task.task, self.ack_wait) / 3)
        last_beat = time.monotonic()
        while not handler.done():
            await asyncio.sleep(min(beat, CANCEL_CHECK_SECONDS))
            try:
                if time.monotonic() - last_beat >= beat:
                    await msg.in_progress()
                    last_beat = time.monotonic()
                snap, _ = await self.store.load_snapshot(task.run_id)
            except Exception:
                continue
            if snap is not None and (
                attempt_superseded(snap.state, task.step_id, task.attempt)
                if snap.state is not None
                else snap.summary.status in RUN_TERMINAL
            ):
                stop("run ended")
                return


def _failure(task: DispatchTask, error: str, retryable: bool) -> StepFailed:
    return StepFailed(
        at=time.time(), step_id=task.step_id, attempt=task.attempt, error=error, retryable=retryable
    )


class _Oversized(msgspec.Struct, frozen=True):
    """A completion too big for one message: its output goes to the object store."""

    event: StepCompleted


def _result(task: DispatchTask, output: Any) -> StepCompleted | StepFailed | _Oversized:
    """The attempt's completion, the failure an output that cannot be recorded causes, or an
    `_Oversized` completion."""
    event = StepCompleted(at=time.time(), step_id=task.step_id, attempt=task.attempt, output=output)
    try:
        size = len(msgspec.json.encode(event))
    except (TypeError, msgspec.EncodeError) as exc:
        return _failure(task, f"output is not JSON-serializable: {exc}", False)
    if size > MAX_EVENT_BYTES:
        return _Oversized(event)
    return event
