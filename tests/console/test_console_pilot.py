"""The console against a real server: every screen opens, and approve, deny, cancel, fork and
start act through the client; each result is checked by reading the run back through the client."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from typing import Any

import pytest
from console_live import live_console
from rich.console import Console
from textual.widgets import Input, OptionList, RichLog, Select, Static, TabbedContent, TextArea

from dagnats.api.client import operator_identity
from dagnats.core.events import ApprovalDecided
from dagnats.nats.names import live_subject
from tui.app import ConsoleApp
from tui.model import LOOK_AGAIN
from tui.screens import ApprovalsScreen, HelpScreen, RunScreen, RunsScreen
from tui.widgets import DagView, RunsTable, StatusBar
from tui.widgets.dialogs import Confirm, Fork, Reason, Start

SHIP = {
    "name": "ship",
    "description": "build, ask, release",
    "steps": [
        {"id": "build", "task": "echo", "input": {"version": "v1"}},
        {
            "id": "ship",
            "type": "approval",
            "depends_on": ["build"],
            "config": {"prompt": "Ship ${steps.build.output.version}?"},
        },
        {"id": "done", "task": "echo", "depends_on": ["ship"]},
    ],
}
SLOW = {
    "name": "slow",
    "steps": [
        {"id": "a", "task": "echo"},
        {"id": "nap", "type": "sleep", "depends_on": ["a"], "config": {"duration": "1h"}},
        {"id": "b", "task": "echo", "depends_on": ["nap"]},
    ],
}
AGENT = {
    "name": "agent",
    "steps": [
        {
            "id": "fix",
            "type": "agent_loop",
            "config": {
                "provider": "scripted",
                "prompt": "list the files",
                "tools": ["list_files", "run_command"],
                "approve_tools": ["run_command"],
                "script": [
                    {"text": "Looking around.", "tool_calls": [{"name": "list_files", "arguments": {}}]},
                    {
                        "text": "Run it.",
                        "tool_calls": [{"name": "run_command", "arguments": {"command": "echo hi"}}],
                    },
                    {"text": "All done."},
                ],
            },
        }
    ],
}


async def until(pilot: Any, check: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await pilot.pause(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def until_async(check: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def opened(pilot: Any, app: ConsoleApp, run_id: str, step: str | None = None, selected: bool = True):
    """Open a run's screen; wait until it shows, and (with `step`) until that step is selected."""
    app.open_run(run_id, step=step)
    screen = await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen, "the run screen")
    if step and selected:
        await until(pilot, lambda: screen.step == step and screen.state is not None, f"{step} selected")
    return screen


@pytest.fixture
async def console(stack):
    await stack.start()
    for doc in (SHIP, SLOW, AGENT):
        await stack.register(doc)
    client = type(stack.client)(stack.client.nc)  # the app's own client on the same connection
    return stack, ConsoleApp(client, where="test")


async def look(pilot: Any) -> None:
    """Give the approval under the cursor the moment it must be shown before y or n decide it."""
    await pilot.pause(LOOK_AGAIN + 0.05)


def notes(app: ConsoleApp, severity: str) -> list[str]:
    return [n.message for n in app._notifications if n.severity == severity]


class Clock:
    """The console's monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def text_of(widget: Static) -> str:
    """What the widget shows, as plain text."""
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(widget.content)
    return console.export_text()


async def test_runs_screen_lists_runs_live_and_opens_one(console):
    stack, app = console
    first = await stack.client.start("slow")
    async with app.run_test(size=(100, 30)) as pilot:
        table = await until(pilot, lambda: app.screen.query_one(RunsTable), "the runs table")
        await until(pilot, lambda: first in app.model.view, "the first run listed")
        # the table has shown it (the cursor starts on the top run of the first listing it draws)
        await until(pilot, lambda: table.cursor_id == first, "the cursor on the first run")
        second = await stack.client.start("ship")  # arrives while the console is open
        await until(pilot, lambda: app.model.view[:1] == [second], "the new run on top")
        await until(
            pilot, lambda: app.model.runs[second].status == "waiting", "the approval to reach the listing"
        )
        await until(pilot, lambda: app.screen.query_one(StatusBar).approvals == 1, "the badge")
        assert table.selected == first  # a new run above does not move the cursor off its run
        await pilot.press("up")
        assert table.selected == second
        await pilot.press("down")
        assert table.selected == first
        await pilot.press("enter")
        screen = await until(
            pilot, lambda: isinstance(app.screen, RunScreen) and app.screen, "the run screen"
        )
        await until(
            pilot, lambda: screen.state is not None and screen.state.steps["nap"].status == "waiting", "sleep"
        )
        dag = screen.query_one(DagView)
        assert dag.layout_ is not None and set(dag.layout_.pos) == {"a", "nap", "b"}
        await pilot.press("e")
        log = screen.query_one(RichLog)
        await until(pilot, lambda: len(log.lines) >= 3, "the event log")
        assert screen.query_one(TabbedContent).active == "events"
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)
        # filter and status tabs
        await pilot.press("slash")
        await pilot.press(*"ship")
        await until(pilot, lambda: app.model.view == [second], "the filter")
        await pilot.press("escape")
        await until(pilot, lambda: len(app.model.view) == 2, "the filter cleared")
        await pilot.press("3")  # needs you
        await until(pilot, lambda: app.model.view == [second], "the needs-you tab")
        await pilot.press("1")
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")


async def test_approve_from_the_inbox(console):
    stack, app = console
    run_id = await stack.client.start("ship")
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: len(app.inbox) == 1, "the approval in the inbox")
        await pilot.press("a")
        assert isinstance(app.screen, ApprovalsScreen)
        detail = app.screen.query_one("#detail-body", Static)
        assert "Ship v1?" in text_of(detail)
        await pilot.press("y")  # the item has only just been drawn: refused, nothing sent
        await until(pilot, lambda: notes(app, "warning"), "the look-again warning")
        assert notes(app, "warning") == ["this item just appeared — look again"]
        assert (await stack.client.run(run_id)).approvals["ship.1"].status == "pending"
        await look(pilot)
        await pilot.press("y")
        state = await until_async(lambda: _finished(stack, run_id), "the run to finish after the approval")
        assert state.status == "completed"
        approval = state.approvals["ship.1"]
        assert (approval.status, approval.by) == ("approved", operator_identity())
        await until(pilot, lambda: len(app.inbox) == 0, "the inbox to empty")


GATED = {
    "name": "gated",
    "steps": [
        {
            "id": "fix",
            "type": "agent_loop",
            "config": {
                "provider": "scripted",
                "tools": ["run_command"],
                "approve_tools": ["run_command"],
                "script": [
                    {
                        "text": "Run it.",
                        "tool_calls": [{"name": "run_command", "arguments": {"command": "echo hi"}}],
                    },
                    {"text": "All done."},
                ],
            },
        },
        {"id": "gate", "type": "approval", "depends_on": ["fix"], "config": {"prompt": "Ship the fix?"}},
    ],
}


async def test_a_key_never_decides_an_item_that_just_took_the_place_of_another(console):
    """The inbox shows a tool call; it is answered elsewhere and the same run's `gate` takes its
    row. `y` on the tool call before the screen caught up fails with the server's error; `y`
    within 1 s of `gate` appearing is refused and sends nothing; after 1 s it approves `gate`,
    quoting the digest of what was shown."""
    stack, app = console
    clock = Clock()
    app.clock = clock
    await stack.register(GATED)
    run_id = await stack.client.start("gated")
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: len(app.inbox) == 1, "the tool call in the inbox")
        await pilot.press("a")
        screen = app.screen
        assert isinstance(screen, ApprovalsScreen)
        await until(pilot, lambda: screen.shown.item is not None, "the tool call under the cursor")
        call = screen.shown.item
        assert call.approval.kind == "tool_call"
        clock.t += LOOK_AGAIN  # the operator reads it
        app.redraw_delay = 3600.0  # the screen falls behind: it still draws the tool call
        await stack.client.decide(run_id, "fix", approved=True, comment="elsewhere")
        await until(
            pilot, lambda: [p.approval.step_id for p in app.inbox.items] == ["gate"], "gate in the inbox"
        )
        assert screen.shown.item == call
        await pilot.press("y")
        await until(pilot, lambda: notes(app, "error"), "the server's refusal")
        assert "is already approved by" in notes(app, "error")[0]

        app.redraw_delay = 0.05
        app.flush()  # gate takes the tool call's row, under the cursor
        await until(
            pilot, lambda: screen.shown.item and screen.shown.item.approval.step_id == "gate", "gate shown"
        )
        gate = screen.shown.item
        clock.t += LOOK_AGAIN / 2
        await pilot.press("y")
        await until(pilot, lambda: notes(app, "warning"), "the look-again warning")
        assert notes(app, "warning") == ["this item just appeared — look again"]
        await pilot.press("n")  # deny is held back the same way: no dialog opens
        assert app.screen is screen and len(notes(app, "warning")) == 2
        await pilot.pause(0.2)
        assert (await stack.client.run(run_id)).approvals["gate.1"].status == "pending"

        clock.t += LOOK_AGAIN / 2
        await pilot.press("y")
        state = await until_async(lambda: _finished(stack, run_id), "the run to finish")
        assert state.status == "completed" and state.approvals["gate.1"].status == "approved"
        decided = [e for _, e in await stack.client.events(run_id) if isinstance(e, ApprovalDecided)]
        assert [(e.approval_id, e.digest) for e in decided] == [
            (call.approval.approval_id, call.digest),
            ("gate.1", gate.digest),
        ]


async def test_deny_with_a_reason_from_the_run_screen(console):
    stack, app = console
    run_id = await stack.client.start("ship")
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: len(app.inbox) == 1, "the approval in the inbox")
        screen = await opened(pilot, app, run_id, step="ship", selected=False)
        await until(pilot, lambda: screen.step == "ship", "the ship step selected")
        await look(pilot)
        await pilot.press("n")
        assert isinstance(app.screen, Reason)
        await pilot.press("enter")  # an empty reason is refused in the dialog
        assert isinstance(app.screen, Reason)
        assert "needs a reason" in text_of(app.screen.query_one("#error", Static))
        await pilot.press(*"not today")
        await pilot.press("enter")
        state = await until_async(lambda: _finished(stack, run_id), "the run to fail")
        assert state.status == "failed"
        approval = state.approvals["ship.1"]
        assert (approval.status, approval.comment) == ("denied", "not today")


async def test_cancel_asks_first(console):
    stack, app = console
    run_id = await stack.client.start("slow")
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: run_id in app.model.runs, "the run listed")
        await opened(pilot, app, run_id)
        await pilot.press("c")
        assert isinstance(app.screen, Confirm)
        await pilot.press("n")
        assert isinstance(app.screen, RunScreen)
        await asyncio.sleep(0.5)  # long enough for a cancel, had one been sent
        assert not any(type(e).__name__ == "RunCancelRequested" for _, e in await stack.client.events(run_id))
        await pilot.press("c")
        await pilot.press("y")
        state = await until_async(lambda: _finished(stack, run_id), "the run to be cancelled")
        assert state.status == "cancelled"
        await until(pilot, lambda: app.model.runs[run_id].status == "cancelled", "the listing to show it")


async def test_fork_with_an_edited_input(console):
    stack, app = console
    run_id = await stack.client.start("ship")
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: len(app.inbox) == 1, "the run waiting")
        await opened(pilot, app, run_id, step="build")
        await pilot.press("f")
        dialog = app.screen
        assert isinstance(dialog, Fork)
        area = dialog.query_one(TextArea)
        assert '"version": "v1"' in area.text
        area.text = "{not json"
        await pilot.press("ctrl+s")
        assert isinstance(app.screen, Fork)
        assert "not valid JSON" in text_of(dialog.query_one("#error", Static))
        area.text = '{"version": "v2"}'
        await pilot.press("ctrl+s")
        forked = await until(
            pilot,
            lambda: isinstance(app.screen, RunScreen) and app.screen.run_id != run_id and app.screen.run_id,
            "the fork to open",
        )
        state = await until_async(lambda: _waiting(stack, forked), "the fork to wait for approval")
        assert state.forked_from == run_id
        assert state.steps["build"].output == {"version": "v2"}
        assert state.pending_approvals()[0].prompt == "Ship v2?"
        original = await stack.client.run(run_id)
        assert original.steps["build"].output == {"version": "v1"}


async def test_start_a_run_from_the_dialog(console):
    stack, app = console
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.loaded, "the listing to load")
        await pilot.press("s")
        dialog = await until(pilot, lambda: isinstance(app.screen, Start) and app.screen, "the start dialog")
        await pilot.press("ctrl+s")
        assert "pick a workflow" in text_of(dialog.query_one("#error", Static))
        dialog.query_one(Select).value = "slow"
        dialog.query_one(TextArea).text = '{"note": "from the console"}'
        await pilot.press("ctrl+s")
        screen = await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen, "the new run")
        state = await stack.client.run(screen.run_id)
        assert (state.workflow, state.input) == ("slow", {"note": "from the console"})


async def test_agent_transcript_follows_turns_and_tool_approval(console):
    stack, app = console
    run_id = await stack.client.start("agent")
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: len(app.inbox) == 1, "the tool call waiting")
        item = app.inbox.items[0]
        assert item.approval.kind == "tool_call" and item.approval.details["arguments"] == {
            "command": "echo hi"
        }
        screen = await opened(pilot, app, run_id, step="fix", selected=False)
        await pilot.press("t")
        body = screen.query_one("#transcript-body", Static)
        await until(pilot, lambda: "run_command" in text_of(body), "the tool call in the transcript")
        assert "Looking around." in text_of(body) and "echo hi" in text_of(body)
        # model text streamed on the live subject shows up before its turn is recorded
        await stack.client.nc.publish(live_subject(run_id, "fix"), b"Thinking about")
        await stack.client.nc.publish(live_subject(run_id, "fix"), " the output…".encode())
        await until(pilot, lambda: "Thinking about the output…" in text_of(body), "the streamed text")
        assert "(streaming)" in text_of(body)
        await look(pilot)
        await pilot.press("y")
        await until(pilot, lambda: "All done." in text_of(body), "the final turn in the transcript")
        assert "Thinking about" not in text_of(body)  # the recorded turn replaced the stream
        state = await until_async(lambda: _finished(stack, run_id), "the run to complete")
        assert state.status == "completed"
        assert (
            "hi"
            in state.steps["fix"].turns[1].results[state.steps["fix"].turns[1].tool_calls[0]["id"]].result
        )


async def test_lineage_jumps_to_a_fork(console):
    stack, app = console
    run_id = await stack.client.start("slow")
    await until_async(lambda: _step_status(stack, run_id, "nap", "waiting"), "the sleep")
    fork_id = await stack.client.fork(run_id, "b")
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: fork_id in app.model.runs, "both runs listed")
        screen = await opened(pilot, app, run_id, selected=False)
        await pilot.press("l")
        related = screen.query_one(OptionList)
        await until(
            pilot,
            lambda: related.option_count and fork_id in str(related.get_option_at_index(0).prompt),
            "lineage",
        )
        related.highlighted = 0
        await pilot.press("enter")
        await until(
            pilot,
            lambda: isinstance(app.screen, RunScreen) and app.screen.run_id == fork_id,
            "the fork opened",
        )


async def _finished(stack, run_id):
    state = await stack.client.run(run_id)
    return state if state.terminal else None


async def _waiting(stack, run_id):
    state = await stack.client.run(run_id)
    return state if state.pending_approvals() else None


async def _step_status(stack, run_id, sid, status):
    state = await stack.client.run(run_id)
    return state.steps[sid].status == status


async def test_reconnects_after_the_server_restarts(serve, data_dir, tmp_path):
    """The console shows that it lost the server, and when the server is back it follows the
    run list again by itself (its watchers are started anew)."""
    import json

    from conftest import dagnats_json

    wf = tmp_path / "slow.json"
    wf.write_text(json.dumps(SLOW))
    assert dagnats_json("workflow", "register", str(wf), "--json", data_dir=data_dir)
    first = dagnats_json("run", "start", "slow", "--json", data_dir=data_dir)["run_id"]
    async with live_console(data_dir) as app, app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: first in app.model.runs, "the run listed")
        bar = app.screen.query_one(StatusBar)
        serve.kill()
        await until(pilot, lambda: bar.connection == "reconnecting", "the reconnecting state")
        serve.start()
        await until(pilot, lambda: bar.connection == "connected", "the connection back", timeout=30)
        second = dagnats_json("run", "start", "slow", "--json", data_dir=data_dir)["run_id"]
        await until(pilot, lambda: second in app.model.runs, "a run started after the restart", timeout=30)


async def test_global_keys_wait_while_a_dialog_is_open():
    app = ConsoleApp(None)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("s")
        assert isinstance(app.screen, Start)
        await pilot.press("a", "q")  # neither opens the inbox nor quits under the dialog
        assert isinstance(app.screen, Start) and app.is_running
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)


async def test_fork_an_agent_from_a_turn(console):
    stack, app = console
    run_id = await stack.client.start("agent")
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: len(app.inbox) == 1, "the tool call waiting")
        await opened(pilot, app, run_id, step="fix")
        await pilot.press("f")
        dialog = app.screen
        assert isinstance(dialog, Fork) and dialog.turns == 2
        dialog.query_one("#turn", Input).value = "5"
        await pilot.press("ctrl+s")
        assert "turn must be a number from 0 to 2" in text_of(dialog.query_one("#error", Static))
        dialog.query_one("#turn", Input).value = "1"
        await pilot.press("ctrl+s")
        forked = await until(
            pilot,
            lambda: isinstance(app.screen, RunScreen) and app.screen.run_id != run_id and app.screen.run_id,
            "the fork to open",
        )
        state = await until_async(lambda: _waiting(stack, forked), "the fork's agent to ask again")
        assert [t.text for t in state.steps["fix"].turns] == ["Looking around.", "Run it."]
        assert state.pending_approvals()[0].kind == "tool_call"


async def test_a_refused_action_shows_the_servers_error(console):
    stack, app = console
    run_id = await stack.client.start("ship")
    await until_async(lambda: _waiting(stack, run_id), "the approval")
    await stack.client.cancel(run_id)
    await until_async(lambda: _finished(stack, run_id), "the cancel")
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: run_id in app.model.runs, "the run listed")
        await opened(pilot, app, run_id)
        await pilot.press("c", "y")
        note = await until(
            pilot, lambda: [n for n in app._notifications if n.severity == "error"], "an error notification"
        )
        assert "already cancelled" in note[0].message


async def test_updates_while_a_screen_is_still_mounting_do_not_crash():
    """An update landing in the same moment a screen is pushed finds it half built."""
    from console_data import listing, pending_approvals

    app = ConsoleApp(None, redraw_delay=0.0)
    async with app.run_test(size=(80, 24)) as pilot:
        app.push_screen(ApprovalsScreen())
        app.runs_changed(listing())  # redraw scheduled before the inbox has its widgets
        for p in pending_approvals():
            app.approvals_changed(p.run_id, [p])
        await pilot.pause(0.2)
        assert isinstance(app.screen, ApprovalsScreen) and app.is_running
        assert app.screen.query_one("#items", OptionList).option_count == 3


async def test_inbox_keeps_its_place_when_an_item_goes():
    """Deciding the highlighted item moves to the next one, never back to the oldest."""
    from console_data import pending_approvals

    pending = pending_approvals()
    app = ConsoleApp(None, redraw_delay=0.0)
    async with app.run_test(size=(100, 30)) as pilot:
        for p in pending:
            app.approvals_changed(p.run_id, [p])
        await pilot.press("a", "down")
        box = app.screen.query_one("#items", OptionList)
        assert box.highlighted == 1
        third = app.inbox.items[2]
        app.approvals_changed(app.inbox.items[1].run_id, [])  # the highlighted one was decided
        await pilot.pause(0.1)
        assert box.highlighted == 1 and app.inbox.items[1] == third
