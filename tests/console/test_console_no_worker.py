"""The run screen says when a queued step waits for a task no live worker serves."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from textual.widgets import Static

import tui.screens.run
from dagnats.nats.heartbeat import Beat
from tui.app import ConsoleApp
from tui.screens import RunScreen, RunsScreen
from tui.widgets import DagView

NOBODY = {
    "name": "nobody",
    "steps": [
        {"id": "a", "task": "echo"},
        {"id": "count", "task": "word-count", "depends_on": ["a"]},
    ],
}


async def until(pilot: Any, check: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        await pilot.pause(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def details(screen: RunScreen) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(screen.query_one("#details-body", Static).content)
    return console.export_text()


def graph(screen: RunScreen) -> str:
    return "\n".join(strip.text for strip in screen.query_one(DagView).lines)


async def test_the_run_screen_marks_a_step_no_worker_serves(stack, monkeypatch):
    monkeypatch.setattr(tui.screens.run, "WORKERS_EVERY", 0.1)
    await stack.start()
    await stack.register(NOBODY)
    run_id = await stack.client.start("nobody")
    app = ConsoleApp(type(stack.client)(stack.client.nc), where="test")
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, RunsScreen), "the runs screen")
        app.open_run(run_id, step="count")
        screen = await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen, "the run")
        await until(pilot, lambda: screen.step == "count" and screen.state is not None, "count selected")
        await until(pilot, lambda: "no worker serves 'word-count'" in details(screen), "the mark")
        assert "◌ queued — no worker serves 'word-count'" in details(screen)
        assert "unserved" in graph(screen)
        beat = Beat(stack.client.nc.jetstream(), "worker", "elsewhere", ["word-count"], lambda: 0).start()
        try:
            await until(pilot, lambda: "no worker" not in details(screen), "the mark to go")
            assert "unserved" not in graph(screen) and "queued" in details(screen)
        finally:
            await beat.stop()
