"""The engine, the timer service and a worker on MemoryStore alone: whole runs with no nats-server."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from dagnats import NonRetryable, TaskContext, Worker
from dagnats.core.definition import parse_definition
from dagnats.core.events import ApprovalDecided, RunCancelRequested, RunStarted, StepQueued
from dagnats.core.state import RunState
from dagnats.engine.loop import Engine
from dagnats.engine.timers import TimerService
from dagnats.testing import MemoryStore


class Deployment:
    """One in-memory deployment: engines, a timer service and a worker on one MemoryStore."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.operator = self.store.with_source("o")
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []
        self.calls: Counter[tuple[str, int]] = Counter()  # (step, attempt) -> handler calls
        self.worker = Worker(name="memory-worker")

    def engine(self, store: Any = None) -> asyncio.Task[None]:
        task = asyncio.create_task(Engine(store or self.store).run(self.stop))
        self.tasks.append(task)
        return task

    def start(self, *, engine: bool = True) -> None:
        if engine:
            self.engine()
        self.tasks.append(asyncio.create_task(TimerService(self.store).run(self.stop)))
        self.tasks.append(asyncio.create_task(self.worker.run(self.store.with_source("w"), self.stop)))

    async def run(self, workflow: dict[str, Any], input: Any = None, run_id: str = "r1") -> str:
        wf = parse_definition(workflow)
        version, _ = await self.store.register_workflow(wf, time.time())
        started = RunStarted(
            at=time.time(), run_id=run_id, workflow=wf.name, version=version, definition=wf, input=input
        )
        await self.operator.append(run_id, started, expected_last=0)
        return run_id

    async def until(self, run_id: str, done: Callable[[RunState], bool], timeout: float = 10) -> RunState:
        async with asyncio.timeout(timeout):
            while (state := await self.store.current_state(run_id)) is None or not done(state):
                await asyncio.sleep(0.01)
        return state

    async def to_end(self, run_id: str, timeout: float = 10) -> RunState:
        return await self.until(run_id, lambda s: s.terminal, timeout)

    async def queued(self, run_id: str) -> Counter[tuple[str, int]]:
        events = [e for _, e in await self.store.read_history(run_id)]
        return Counter((e.step_id, e.attempt) for e in events if isinstance(e, StepQueued))

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 10)


@pytest.fixture
async def deployment() -> AsyncIterator[Deployment]:
    d = Deployment()

    @d.worker.task("counted")
    async def counted(ctx: TaskContext) -> Any:
        d.calls[(ctx.step_id, ctx.attempt)] += 1
        if isinstance(ctx.config, dict) and ctx.attempt < ctx.config.get("fail_until", 0):
            raise RuntimeError(f"attempt {ctx.attempt} broke")
        if isinstance(ctx.config, dict) and ctx.config.get("never"):
            raise NonRetryable("no")
        return ctx.input if ctx.input is not None else ctx.step_id

    yield d
    await d.close()


def steps(*specs: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"task": "counted", **spec} for spec in specs]


async def test_a_chain_runs_each_step_once_in_order(deployment):
    deployment.start()
    run_id = await deployment.run(
        {
            "name": "chain",
            "steps": steps(
                {"id": "a", "input": 1},
                {"id": "b", "input": "${steps.a.output}", "depends_on": ["a"]},
                {"id": "c", "depends_on": ["b"]},
            ),
        }
    )
    state = await deployment.to_end(run_id)
    assert state.status == "completed" and state.steps["b"].output == 1  # a's output, passed on
    assert deployment.calls == {("a", 1): 1, ("b", 1): 1, ("c", 1): 1}


async def test_a_fan_out_queues_every_branch_once_and_joins(deployment):
    deployment.start()
    fan = [{"id": f"p{i}", "depends_on": ["a"]} for i in range(20)]
    run_id = await deployment.run(
        {
            "name": "fan",
            "steps": steps({"id": "a"}, *fan, {"id": "z", "depends_on": [f"p{i}" for i in range(20)]}),
        }
    )
    state = await deployment.to_end(run_id)
    assert state.status == "completed"
    assert set(deployment.calls.values()) == {1} and len(deployment.calls) == 22
    assert set((await deployment.queued(run_id)).values()) == {1}


async def test_a_failed_attempt_is_retried_after_its_backoff(deployment):
    deployment.start()
    run_id = await deployment.run(
        {
            "name": "retry",
            "steps": steps(
                {
                    "id": "flaky",
                    "config": {"fail_until": 3},
                    "retry": {"max_attempts": 3, "initial": "50ms"},
                },
            ),
        }
    )
    state = await deployment.to_end(run_id)
    assert state.status == "completed" and state.steps["flaky"].attempts == 3
    assert deployment.calls == {("flaky", 1): 1, ("flaky", 2): 1, ("flaky", 3): 1}


async def test_a_step_that_cannot_succeed_fails_the_run_without_retries(deployment):
    deployment.start()
    run_id = await deployment.run(
        {
            "name": "doomed",
            "steps": steps({"id": "f", "config": {"never": True}, "retry": {"max_attempts": 5}}),
        }
    )
    state = await deployment.to_end(run_id)
    assert state.status == "failed" and deployment.calls == {("f", 1): 1}


async def test_an_approval_holds_the_run_until_an_operator_decides(deployment):
    deployment.start()
    run_id = await deployment.run(
        {
            "name": "gated",
            "steps": [
                {"id": "build", "task": "counted"},
                {"id": "ship", "type": "approval", "depends_on": ["build"], "config": {"prompt": "ship?"}},
                {"id": "after", "task": "counted", "depends_on": ["ship"]},
            ],
        }
    )
    state = await deployment.until(run_id, lambda s: bool(s.pending_approvals()))
    assert ("after", 1) not in deployment.calls
    (approval,) = state.pending_approvals()
    snap, _ = await deployment.store.load_snapshot(run_id)
    assert snap is not None and snap.summary.approvals == 1  # listing shows it at once
    decided = ApprovalDecided(
        at=time.time(), approval_id=approval.approval_id, step_id="ship", approved=True, by="test"
    )
    await deployment.operator.append(run_id, decided)
    state = await deployment.to_end(run_id)
    assert state.status == "completed" and deployment.calls == {("build", 1): 1, ("after", 1): 1}


async def test_a_cancelled_run_stops_its_running_task_and_drops_its_queued_ones(deployment):
    release = asyncio.Event()
    stopped: list[str] = []

    @deployment.worker.task("slow")
    async def slow(ctx: TaskContext) -> None:
        try:
            await release.wait()
        except asyncio.CancelledError:
            stopped.append(ctx.step_id)
            raise

    deployment.start()
    run_id = await deployment.run(
        {
            "name": "cancelled",
            "steps": [
                {"id": "s", "task": "slow"},
                {"id": "never", "task": "unserved"},  # no worker takes it: stays queued
                {"id": "later", "task": "counted", "depends_on": ["s"]},
            ],
        }
    )
    await deployment.until(run_id, lambda s: s.steps["s"].status == "running")
    assert deployment.store.queued(run_id)  # "never" waits in the queue
    await deployment.operator.append(run_id, RunCancelRequested(at=time.time(), reason="enough", by="test"))
    state = await deployment.to_end(run_id)
    assert state.status == "cancelled"
    async with asyncio.timeout(5):
        while not stopped:
            await asyncio.sleep(0.01)
    assert stopped == ["s"] and deployment.store.queued(run_id) == []
    assert ("later", 1) not in deployment.calls


class Dies:
    """An engine's store that dies at the first call `when` picks (before or after doing it):
    that call and every later one, the feed's fetches included, never return, as in a process
    that was killed."""

    def __init__(self, store: MemoryStore, when: Callable[[str, tuple[Any, ...]], bool], after: bool) -> None:
        self._store, self._when, self._after = store, when, after
        self.dead = asyncio.Event()
        self._hung: list[asyncio.Future[None]] = []
        self._buried = False

    async def _hang(self) -> None:
        self.dead.set()
        if self._buried:
            raise asyncio.CancelledError
        hung = asyncio.get_running_loop().create_future()
        self._hung.append(hung)
        await hung

    def bury(self) -> None:
        """End what still waits in the dead engine (its jobs, its delayed saves)."""
        self._buried = True
        for hung in self._hung:
            hung.cancel()

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._store, name)
        if not inspect.iscoroutinefunction(real):
            return real

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.dead.is_set():
                await self._hang()
            if self._when(name, args):
                if self._after:
                    await real(*args, **kwargs)
                await self._hang()
            result = await real(*args, **kwargs)
            return _Dying(result, self) if name == "engine_feed" else result

        return call


class _Dying:
    def __init__(self, feed: Any, dies: Dies) -> None:
        self._feed, self._dies = feed, dies

    async def fetch(self, batch: int, timeout: float, *, no_wait: bool = False) -> list[Any]:
        if self._dies.dead.is_set():
            await self._dies._hang()
        return await self._feed.fetch(batch, timeout, no_wait=no_wait)

    async def stop(self) -> None:
        await self._feed.stop()


@pytest.mark.parametrize("after", [False, True], ids=["before", "after"])
@pytest.mark.parametrize("method", ["dispatch", "append", "save_snapshot"])
async def test_an_engine_killed_mid_pass_is_replaced_and_no_step_runs_twice(deployment, method, after):
    """The engine dies inside a pass (around dispatching step b, appending b's step.queued, or
    saving the first snapshot after a finished): a new engine on the same store finishes the run from the
    snapshot and the history, and every step still runs exactly once."""

    def when(name: str, args: tuple[Any, ...]) -> bool:
        if name != method:
            return False
        if method == "dispatch":
            return bool(args[0].step_id == "b")
        if method == "append":
            return isinstance(args[1], StepQueued) and args[1].step_id == "b"
        return bool(args[1].steps["a"].status == "completed")  # the first save after a finished

    dies = Dies(deployment.store, when, after)
    first = deployment.engine(dies)
    deployment.start(engine=False)
    run_id = await deployment.run(
        {
            "name": "killed",
            "steps": steps({"id": "a"}, {"id": "b", "depends_on": ["a"]}, {"id": "c", "depends_on": ["b"]}),
        }
    )
    async with asyncio.timeout(10):
        await dies.dead.wait()
        while not first.done():  # (a cancel that lands as a wait_for ends is lost: cancel again)
            first.cancel()
            await asyncio.sleep(0.01)
    deployment.engine()  # a new engine process: nothing in memory, the same store
    try:
        state = await deployment.to_end(run_id)
    finally:
        dies.bury()
    assert state.status == "completed"
    assert deployment.calls == {("a", 1): 1, ("b", 1): 1, ("c", 1): 1}
    assert set((await deployment.queued(run_id)).values()) == {1}
