"""The console across a real restart of `dagnats serve` (its nats-server dies with it, and comes
back on the same port and data dir): every open screen is live again within 2 s, shows the
current state, and says nothing about the restart but the status bar's `reconnecting`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from console_live import live_console
from textual.widgets import OptionList, RichLog, Static

from dagnats.api.client import Client
from dagnats.core.definition import parse_definition
from dagnats.core.events import SignalReceived
from tui.screens import ApprovalsScreen, RunScreen, RunsScreen
from tui.widgets import RunsTable, StatusBar

RESUMED_WITHIN = 2.0
SIGNALLED = {
    "name": "signalled",
    "steps": [
        {"id": "a", "task": "echo"},
        {"id": "go", "type": "wait_for_event", "depends_on": ["a"], "config": {"name": "go"}},
        {"id": "b", "task": "echo", "depends_on": ["go"]},
    ],
}
ASKS = {
    "name": "asks",
    "steps": [{"id": "ok", "type": "approval", "config": {"prompt": "Go on?"}}],
}


async def until(pilot: Any, check: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await pilot.pause(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def plain(widget: Static) -> str:
    return str(widget.render())


def log_text(log: RichLog) -> str:
    return "\n".join(line.text for line in log.lines)


async def test_every_screen_resumes_within_2s_of_a_server_restart(serve, data_dir):
    async with await Client.connect(data_dir=str(data_dir)) as ops:
        for doc in (SIGNALLED, ASKS):
            await ops.register(parse_definition(doc))
        first = await ops.start("signalled")
    async with live_console(data_dir) as app, app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: first in app.model.runs, "the run listed")
        app.open_run(first)
        run = await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen, "run screen")
        await until(
            pilot,
            lambda: run.state is not None and run.state.steps["go"].status == "waiting",
            "the run waiting for its signal",
        )
        await pilot.press("e")
        await pilot.press("a")
        inbox = await until(pilot, lambda: isinstance(app.screen, ApprovalsScreen) and app.screen, "inbox")
        bar = inbox.query_one(StatusBar)

        serve.kill()  # SIGKILL: its nats-server goes with it
        await until(pilot, lambda: bar.connection == "reconnecting", "the reconnecting state")
        serve.start()
        restarted = time.monotonic()
        async with await Client.connect(data_dir=str(data_dir)) as ops:
            await ops.signal(first, "go")
            second = await ops.start("asks")
            items = inbox.query_one("#items", OptionList)
            shown = f"{second}/ok.1"
            await until(pilot, lambda: any(o.id == shown for o in items.options), "the new item shown")
            assert time.monotonic() - restarted < RESUMED_WITHIN, "the inbox did not resume in time"
            await until(
                pilot, lambda: any(isinstance(e, SignalReceived) for _, e in run.events), "the signal"
            )
            assert time.monotonic() - restarted < RESUMED_WITHIN, "the run screen did not resume in time"
            assert second in app.model.runs
            assert bar.connection == "connected"

            await pilot.press("escape")  # back to the run screen, which kept following
            assert app.screen is run
            await until(pilot, lambda: run.state.status == "completed", "the run to complete")
            log = run.query_one("#log", RichLog)
            await until(pilot, lambda: "run.completed" in log_text(log), "the event log to show the end")
            assert "completed" in plain(run.query_one("#header", Static))
            history = await ops.events(first)
            assert [seq for seq, _ in run.events] == [seq for seq, _ in history]  # none lost, none twice

            await pilot.press("escape")
            assert isinstance(app.screen, RunsScreen)
            table = app.screen.query_one(RunsTable)
            await until(pilot, lambda: app.model.runs[first].status == "completed", "the listing")
            drawn = "\n".join(table.render_line(y).text for y in range(table.size.height))
            assert f"{first[:8]}" in drawn and "completed" in drawn and second[:8] in drawn
        assert not [n for n in app._notifications if n.severity in ("error", "warning")]
