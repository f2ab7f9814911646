"""The console's first screen over many stored runs: the newest ones and every unfinished one,
a line saying older runs exist (and how to see them), the inbox from the index of unfinished
runs, and live changes after it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from textual.widgets import Static

import tui.app
from dagnats.app import bench_scale
from tui.app import ConsoleApp
from tui.screens import RunsScreen

GATE = {"name": "gate", "steps": [{"id": "ok", "type": "approval", "config": {"prompt": "go?"}}]}


async def until(pilot: Any, check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        await pilot.pause(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_the_console_lists_the_newest_runs_and_says_older_ones_exist(stack, monkeypatch):
    monkeypatch.setattr(tui.app, "NEWEST", 10)
    await stack.start()
    await stack.register(GATE)
    client = stack.client
    waiting = await client.start("gate")  # older than every finished run, and still listed
    while not await client.approvals():
        await asyncio.sleep(0.05)
    await bench_scale.seed_finished(client, 40)
    stored = sorted((s.summary for s in await client.store.all_snapshots()), key=lambda s: -s.created_at)
    newest = {s.run_id for s in stored if s.status == "completed"}
    app = ConsoleApp(type(client)(client.nc), where="test")
    async with app.run_test(size=(120, 30)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, RunsScreen) and app.loaded, "the first screen")
        listed = set(app.model.runs)
        assert waiting in listed and len(listed) == 11
        assert len(listed & newest) == 10
        assert [p.run_id for p in app.inbox.items] == [waiting]
        older = app.screen.query_one("#older", Static)
        await until(pilot, lambda: older.has_class("shown"), "the line saying older runs exist")
        assert "dagnats run list" in str(older.render())
        fresh = await client.start("gate")  # live: a new run appears
        await until(pilot, lambda: fresh in app.model.runs, "the new run listed")
        await until(pilot, lambda: len(app.inbox) == 2, "its approval in the inbox")
