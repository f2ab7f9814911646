"""Per-run job queues: one job per run, items in order, a bounded number of runs at once."""

from __future__ import annotations

import asyncio

from dagnats.engine.queues import RunQueues


class Recorded:
    """A `work` that records what it was handed and holds each item until released."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []
        self.gates: dict[tuple[str, int], asyncio.Event] = {}
        self.active: set[str] = set()
        self.most = 0  # runs worked on at once, at most

    def gate(self, run_id: str, item: int) -> asyncio.Event:
        return self.gates.setdefault((run_id, item), asyncio.Event())

    async def __call__(self, run_id: str, item: int) -> None:
        assert run_id not in self.active, "two jobs on one run"
        self.active.add(run_id)
        self.most = max(self.most, len(self.active))
        try:
            self.seen.append((run_id, item))
            await self.gate(run_id, item).wait()
        finally:
            self.active.discard(run_id)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_items_of_one_run_go_to_its_one_job_in_order():
    work = Recorded()
    queues = RunQueues(work)
    for item in (1, 2, 3):
        await queues.submit("r", item)
    await settle()
    assert work.seen == [("r", 1)] and queues.busy("r")
    for item in (1, 2, 3):
        work.gate("r", item).set()
    await queues.join()
    assert work.seen == [("r", 1), ("r", 2), ("r", 3)] and not queues.busy("r")


async def test_at_most_limit_runs_are_worked_on_at_once():
    work = Recorded()
    queues = RunQueues(work, limit=2)
    await queues.submit("a", 1)
    await queues.submit("b", 1)
    third = asyncio.create_task(queues.submit("c", 1))
    await settle()
    assert not third.done() and not queues.busy("c")  # waits for a slot
    await queues.submit("a", 2)  # a run with a job takes more items without a slot
    work.gate("a", 1).set()
    work.gate("a", 2).set()
    await third
    await settle()
    assert ("c", 1) in work.seen
    for gate in ("b", 1), ("c", 1):
        work.gate(*gate).set()
    await queues.join()
    assert work.most == 2


async def test_a_push_never_waits_for_a_slot_and_joins_a_working_job():
    work = Recorded()
    queues = RunQueues(work, limit=1)
    await queues.submit("a", 1)
    queues.push("b", 1)  # all slots taken: still starts
    queues.push("a", 2)  # queued behind the job working on "a"
    await settle()
    assert work.seen == [("a", 1), ("b", 1)]
    for gate in ("a", 1), ("a", 2), ("b", 1):
        work.gate(*gate).set()
    await queues.join()
    assert work.seen == [("a", 1), ("b", 1), ("a", 2)]
    await asyncio.wait_for(queues.submit("c", 1), 1)  # the push's job held no slot
    work.gate("c", 1).set()
    await queues.join()


async def test_a_failing_item_ends_its_job_and_frees_the_run():
    async def work(run_id: str, item: int) -> None:
        raise RuntimeError("boom")

    queues: RunQueues[int] = RunQueues(work, limit=1)
    await queues.submit("a", 1)
    await queues.join()
    assert not queues.busy("a")
    await asyncio.wait_for(queues.submit("a", 2), 1)  # its slot came back
    await queues.join()
