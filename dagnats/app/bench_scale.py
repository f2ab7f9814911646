"""`dagnats bench`'s listing figures at scale: `run list --limit 50`, `approval list` and the
console's first screen, with many finished runs stored and many runs waiting for an operator.

The finished runs are written straight to the store, as the engine and a worker would have
written them: each run's history (run.started by an operator, step.queued and run.completed by
the engine, step.completed by a worker, worked out by the core's own `decide`) and then its
snapshot (the state those events fold to, the sequence of its last event, compare-and-set on
revision 0), all publishes pipelined. The waiting runs are real: started through the client and
brought to their approval step by the engine. Each figure is the median of a few calls of the
command's own code path, after one warm call.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from dagnats.api.client import Client, new_run_id
from dagnats.core.actions import AppendEvent
from dagnats.core.decide import decide
from dagnats.core.definition import parse_definition
from dagnats.core.events import Event, RunStarted, StepCompleted, StepQueued, encode_event
from dagnats.core.state import RunState
from dagnats.nats import names
from dagnats.ports import RunSummary, Snapshot

FINISHED_NAME = "bench-scale-done"
WAITING_NAME = "bench-scale-wait"
FINISHED: dict[str, Any] = {
    "name": FINISHED_NAME,
    "description": "one task step, finished long ago (seeded)",
    "steps": [{"id": "only", "task": "echo"}],
}
WAITING: dict[str, Any] = {
    "name": WAITING_NAME,
    "description": "waits for an operator's approval",
    "steps": [{"id": "ok", "type": "approval", "config": {"prompt": "ship it?"}}],
}
CHUNK = 1000  # finished runs seeded per round of pipelined publishes
TEMPLATE_ID = "template-run-id"
CALLS = 5

FirstScreen = Callable[[Client], Awaitable[float]]  # the console's first screen, in seconds


async def measure_listing(
    client: Client,
    *,
    runs: int,
    approvals: int,
    say: Callable[[str], None] = lambda s: None,
    first_screen: FirstScreen | None = None,
) -> dict[str, Any]:
    """Seed `runs` finished runs and `approvals` runs waiting at an approval step, then time
    `run list --limit 50`, `approval list` and (given `first_screen`) the console's first screen."""
    t0 = time.monotonic()
    await seed_finished(client, runs)
    say(f"scale: {runs} finished runs seeded in {time.monotonic() - t0:.1f}s")
    t0 = time.monotonic()
    await start_waiting(client, approvals)
    say(f"scale: {approvals} runs waiting for approval after {time.monotonic() - t0:.1f}s")
    list_ms = await _median_ms(lambda: client.runs(limit=50))
    approvals_ms = await _median_ms(client.approvals)
    say(f"scale: run list --limit 50 {list_ms} ms, approval list {approvals_ms} ms")
    screen_ms = None
    if first_screen is not None:
        screen_ms = round(await first_screen(client) * 1000, 1)
        say(f"scale: console first screen {screen_ms} ms")
    return {"list_ms": list_ms, "approvals_ms": approvals_ms, "console_first_screen_ms": screen_ms}


async def _median_ms(call: Callable[[], Awaitable[Any]]) -> float:
    await call()  # warm: connections, subscriptions, caches
    took = []
    for _ in range(CALLS):
        t0 = time.perf_counter()
        await call()
        took.append(time.perf_counter() - t0)
    return round(statistics.median(took) * 1000, 1)


async def seed_finished(client: Client, runs: int) -> None:
    """`runs` finished runs of FINISHED, written as the engine and a worker would have."""
    await client.register(parse_definition(FINISHED))
    wfv = await client.workflow(FINISHED_NAME)
    for start in range(0, runs, CHUNK):
        events, state = finished_run(wfv.version, wfv.definition, time.time())
        ids = [new_run_id() for _ in range(min(CHUNK, runs - start))]
        await _seed_chunk(client, ids, events, state)


def finished_run(version: int, definition: Any, at: float) -> tuple[list[tuple[str, Event]], RunState]:
    """One run's history, (source, event) in order, and the state it folds to: the core's own
    `decide` appends what the engine would, and the worker's result comes after step.queued."""
    started = RunStarted(
        at=at, run_id=TEMPLATE_ID, workflow=FINISHED_NAME, version=version, definition=definition
    )
    recorded: list[tuple[str, Event]] = []
    pending: list[tuple[str, Event]] = [(names.SOURCE_OPERATOR, started)]
    state: RunState | None = None
    while pending:
        source, event = pending.pop(0)
        state, actions = decide(state, event, first_only=True)
        recorded.append((source, event))
        pending += [(names.SOURCE_ENGINE, a.event) for a in actions if isinstance(a, AppendEvent)][:1]
        if isinstance(event, StepQueued):
            result = StepCompleted(at=at, step_id=event.step_id, attempt=1, started_at=at, worker="bench")
            pending.append((names.SOURCE_WORKER, result))
    assert state is not None and state.terminal, "the seeded run does not finish"
    return recorded, state


async def _seed_chunk(
    client: Client, ids: list[str], events: list[tuple[str, Event]], state: RunState
) -> None:
    """Each run's history, then its snapshot, all pipelined (every publish acknowledged, so
    the server is never handed more than a chunk at a time): the ack of a run's last event
    gives its last sequence, the snapshot's `applied`."""
    replies = client.store.replies
    datas = [(source, encode_event(e), e) for source, e in events]
    started = events[0][1]
    assert isinstance(started, RunStarted)
    sends = []
    for rid in ids:
        for i, (source, data, event) in enumerate(datas):
            if i == 0:
                data = encode_event(msgspec.structs.replace(started, run_id=rid))
            headers = _worker_id(rid, event) if source == names.SOURCE_WORKER else None
            sends.append(replies.publish(names.history_subject(rid, source), data, headers))
    commits = (await asyncio.gather(*sends))[len(datas) - 1 :: len(datas)]
    snaps = []
    for rid, ack in zip(ids, commits, strict=True):
        run_state = msgspec.structs.replace(state, run_id=rid, root_run_id=rid, chain_start=rid)
        snap = Snapshot(applied=ack.seq, summary=RunSummary.of(run_state), state=run_state)
        subject = f"$KV.{names.RUNS_BUCKET}.{rid}"
        headers = {"Nats-Expected-Last-Subject-Sequence": "0"}  # the engine's save, if first, wins
        snaps.append(replies.publish(subject, _enc.encode(snap), headers))
    await asyncio.gather(*snaps, return_exceptions=True)


_enc = msgspec.json.Encoder()


def _worker_id(run_id: str, event: Event) -> dict[str, str]:
    """The message id a worker gives its result (docs/architecture.md, deterministic ids)."""
    assert isinstance(event, StepCompleted)
    return {"Nats-Msg-Id": f"{run_id}:completed:{event.step_id}:{event.attempt}"}


async def start_waiting(client: Client, count: int, timeout: float = 120.0) -> list[str]:
    """`count` real runs of WAITING, started through the client, until the engine has brought
    each to its approval (as `approval list` shows)."""
    await client.register(parse_definition(WAITING))
    ids: list[str] = []
    for start in range(0, count, 200):
        ids += await asyncio.gather(*(client.start(WAITING_NAME) for _ in range(min(200, count - start))))
    wanted = set(ids)
    deadline = time.monotonic() + timeout
    while len(wanted & {p.run_id for p in await client.approvals()}) < len(wanted):
        if time.monotonic() > deadline:
            raise RuntimeError(f"scale bench: not all {count} runs reached their approval in {timeout:.0f}s")
        await asyncio.sleep(0.2)
    return ids
