"""Maps big enough that the core shares their steps table (core/steps.py, SHARED_FROM) and counts
their items in a tally (core/tally.py), end to end against a real nats-server."""

from __future__ import annotations

import asyncio

from dagnats import NonRetryable, TaskContext, Worker
from dagnats.core.steps import SHARED_FROM
from dagnats.core.tally import Tally

BIG = SHARED_FROM + 88  # items: more than the table size from which steps are shared


def _map(name: str, task: str, **config: object) -> dict[str, object]:
    step = {"id": "each", "type": "map", "input": "${input}", "config": {"task": task, **config}}
    return {"name": name, "steps": [step]}


async def test_a_map_over_3000_items_completes_with_every_output_in_order(stack):
    await stack.start()
    await stack.register(_map("big", "echo", max_items=3000))
    items = [{"i": i} for i in range(3000)]
    state = await stack.run_to_end("big", items, timeout=180)
    assert state.status == "completed", state.error
    assert state.output == items
    assert len(state.steps) == 3001
    assert all(state.steps[f"each[{i}]"].attempts == 1 for i in range(3000))


async def test_a_big_map_never_runs_more_items_at_once_than_its_concurrency(stack):
    worker = Worker()
    live = {"now": 0, "peak": 0}

    @worker.task("count")
    async def count(ctx: TaskContext):
        live["now"] += 1
        live["peak"] = max(live["peak"], live["now"])
        await asyncio.sleep(0.001)
        live["now"] -= 1
        return ctx.input

    await stack.start(worker)
    await stack.register(_map("limited", "count", max_items=BIG, concurrency=4))
    state = await stack.run_to_end("limited", list(range(BIG)), timeout=180)
    assert state.status == "completed", state.error
    assert state.output == list(range(BIG))
    assert live["peak"] == 4  # the slots were used, and never more of them


async def test_a_failing_item_fails_a_big_map_and_names_the_item(stack):
    worker = Worker()

    @worker.task("picky")
    async def picky(ctx: TaskContext):
        if ctx.input == 437:
            raise NonRetryable("437 is not allowed")
        return ctx.input

    await stack.start(worker)
    await stack.register(_map("picky", "picky", max_items=BIG))
    state = await stack.run_to_end("picky", list(range(BIG)), timeout=180)
    assert state.status == "failed"
    assert "item each[437] failed: 437 is not allowed" in state.error
    assert state.steps["each"].status == "failed"


async def test_the_items_of_a_big_map_are_retried(stack):
    worker = Worker()

    @worker.task("flaky")
    async def flaky(ctx: TaskContext):
        if ctx.input % 50 == 7 and ctx.attempt == 1:
            raise RuntimeError("first attempt broke")
        return ctx.input

    await stack.start(worker)
    doc = _map("retried", "flaky", max_items=BIG, concurrency=16)
    doc["steps"][0]["retry"] = {"max_attempts": 2, "backoff": "fixed", "initial": "10ms"}  # type: ignore[index]
    await stack.register(doc)
    state = await stack.run_to_end("retried", list(range(BIG)), timeout=180)
    assert state.status == "completed", state.error
    assert state.output == list(range(BIG))
    again = [i for i in range(BIG) if state.steps[f"each[{i}]"].attempts == 2]
    assert again == [i for i in range(BIG) if i % 50 == 7]


async def test_a_map_whose_state_is_bigger_than_a_snapshot_still_finishes(stack):
    """The state of 3,000 items of 200 bytes each (in and out) does not fit in one message:
    its snapshot keeps only the summary, and every reader folds the history instead."""
    await stack.start()
    await stack.register(_map("wide", "echo", max_items=3000))
    items = [f"{i:05d}" + "x" * 195 for i in range(3000)]
    run_id = await stack.client.start("wide", items)
    state = await asyncio.wait_for(stack.client.wait(run_id), 180)
    assert state.status == "completed", state.error
    assert state.output == items
    counts = Tally(dict(state.steps)).maps["each"]
    assert (counts.completed, counts.active, counts.pending) == (3000, 0, set())
    snap, _ = await stack.store.load_snapshot(run_id)
    assert snap is not None and snap.state is None  # too big: the summary alone
    assert snap.summary.status == "completed"
