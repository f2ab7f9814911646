"""The console's figure for `dagnats bench`: a headless console over many runs while a stream
of events changes them. It measures, for each run that finishes, the time from its
`run.completed` event (the engine's clock) to the console's redraw that shows it, and how long
a key press takes while all that goes on.

`dagnats bench` calls `measure` with its own client; dagnats itself never imports the console.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from textual import events

from dagnats.api.client import Client
from dagnats.core.definition import parse_definition
from dagnats.nats.names import HISTORY_PREFIX
from tui.app import ConsoleApp
from tui.widgets import RunsTable

EVENTS_PER_SIGNAL = 3
HISTORY_ALL = f"{HISTORY_PREFIX}.>"
WORKFLOW = {
    "name": "bench-console",
    "description": "waits for a signal, then finishes: one listing change per signal",
    "steps": [{"id": "wait", "type": "wait_for_event", "config": {"name": "go", "timeout": "1h"}}],
}


async def measure(
    client: Client, *, runs: int, rate: float, seconds: float, say: Callable[[str], None] = lambda s: None
) -> dict[str, Any]:
    """`rate` is in history events per second: each signal records EVENTS_PER_SIGNAL events
    (signal.received, step.completed, run.completed), all counted as they are stored."""
    await client.register(parse_definition(WORKFLOW))
    say(f"console: starting {runs} runs for the console to list")
    ids: list[str] = []
    for start in range(0, runs, 200):
        batch = range(start, min(runs, start + 200))
        ids += await asyncio.gather(*(client.start("bench-console") for _ in batch))
    app = ConsoleApp(client)
    latencies: list[float] = []
    keys: list[float] = []
    renders = 0
    pending: set[str] = set()

    def on_rendered(what: str) -> None:
        nonlocal renders
        renders += 1
        now = time.time()
        for rid in [r for r in pending if _finished_at(app, r)]:
            latencies.append(now - _finished_at(app, rid))  # type: ignore[operator]
            pending.discard(rid)

    async with app.run_test(headless=True, size=(120, 40)) as pilot:
        await _all_waiting(app, ids)
        app.on_rendered = on_rendered
        signal_rate = rate / EVENTS_PER_SIGNAL
        count = min(len(ids), int(signal_rate * seconds))
        say(
            f"console: {len(app.model.runs)} runs listed; signalling {count} of them at "
            f"{signal_rate:.0f}/s ({rate:.0f} events/s)"
        )
        recorded = 0
        window: list[int] = []  # events recorded while the signals went out

        async def count_event(_msg: Any) -> None:
            nonlocal recorded
            recorded += 1

        counter = await client.nc.subscribe(HISTORY_ALL, cb=count_event)
        t0 = time.monotonic()

        async def send() -> float:
            """On a fixed schedule, not one after another: a slow answer must not slow the stream."""
            inflight = []
            for i, rid in enumerate(ids[:count]):
                delay = t0 + i / signal_rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                pending.add(rid)
                inflight.append(asyncio.create_task(client.signal(rid, "go")))
            took = time.monotonic() - t0
            window.append(recorded)
            await asyncio.gather(*inflight)
            return took

        sender = asyncio.create_task(send())
        table = app.screen.query_one(RunsTable)
        keys += await _keys_while(pilot, table, lambda: not sender.done() or bool(pending), t0 + seconds + 60)
        sent_for = await sender
        await counter.unsubscribe()
    return {
        "ms_p50": _ms(_pct(latencies, 0.5)),
        "ms_p99": _ms(_pct(latencies, 0.99)),
        "key_ms_p50": _ms(_pct(keys, 0.5)),
        "key_ms_p99": _ms(_pct(keys, 0.99)),
        "runs_listed": len(app.model.runs),
        "signals_per_s": round(count / sent_for, 1),
        "history_events_per_s": round(window[0] / sent_for, 1),
        "measured": len(latencies),
        "missed": len(pending),
        "redraws": renders,
        "keys_pressed": len(keys),
    }


async def _all_waiting(app: ConsoleApp, ids: list[str]) -> None:
    """Until the console lists every run as waiting (two minutes at most)."""
    deadline = time.monotonic() + 120
    while not (app.loaded and _waiting(app, ids) == len(ids)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"console bench: only {_waiting(app, ids)} of {len(ids)} runs became waiting")
        await asyncio.sleep(0.1)


async def _keys_while(pilot: Any, table: RunsTable, busy: Callable[[], bool], deadline: float) -> list[float]:
    """A key every 0.2 s while `busy()` (and before `deadline`, monotonic): their latencies."""
    keys: list[float] = []
    while busy():
        keys.append(await _key_latency(pilot, table))
        await asyncio.sleep(0.2)
        if time.monotonic() > deadline:
            break
    return keys


async def _key_latency(pilot: Any, table: RunsTable) -> float:
    """From a key arriving (as the terminal driver delivers it) to the cursor having moved."""
    before = table.cursor
    key = "up" if before >= len(table.model.view) - 1 else "down"
    event = events.Key(key, None)
    event.set_sender(pilot.app)
    started = time.perf_counter()
    pilot.app._driver.send_message(event)
    while table.cursor == before and time.perf_counter() - started < 5:
        await asyncio.sleep(0.0005)
    return time.perf_counter() - started


def _finished_at(app: ConsoleApp, run_id: str) -> float | None:
    s = app.model.runs.get(run_id)
    return s.finished_at if s is not None and s.status == "completed" else None


def _waiting(app: ConsoleApp, ids: list[str]) -> int:
    return sum(1 for rid in ids if (s := app.model.runs.get(rid)) is not None and s.status == "waiting")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def first_screen(client: Client) -> float:
    """Seconds from opening a headless console to its first screen with the stored runs and the
    inbox drawn (what `dagnats tui` shows first)."""
    app = ConsoleApp(client)
    shown = asyncio.Event()

    def on_rendered(what: str) -> None:
        if app.loaded:
            shown.set()

    app.on_rendered = on_rendered
    t0 = time.perf_counter()
    async with app.run_test(headless=True, size=(120, 40)):
        await asyncio.wait_for(shown.wait(), 60)
        took = time.perf_counter() - t0
    return took
