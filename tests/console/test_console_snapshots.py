"""SVG snapshots of every screen at 80×24 and 120×40, from fixed data (fixed ids, fixed clock,
UTC), kept under snapshots/. `pytest --snapshot-update` rewrites them after a deliberate change;
look at them (they open in a browser) before committing."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from console_data import NOW, coding_run, listing, pending_approvals, release_run
from pytest_textual_snapshot import SVGImageExtension
from textual._doc import take_svg_screenshot

from tui.app import ConsoleApp
from tui.screens import RunScreen
from tui.widgets import DagView

os.environ["TZ"] = "UTC"
time.tzset()

SNAPSHOTS = Path(__file__).resolve().parents[2] / "snapshots"
SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]


class ConsoleSVG(SVGImageExtension):
    """Keep the console's snapshots in one top-level folder, where people look for them."""

    @classmethod
    def dirname(cls, *, test_location) -> str:  # type: ignore[override]
        return str(SNAPSHOTS / test_location.basename)


@pytest.fixture
def snap(snapshot):
    def compare(app, size, press=(), run_before=None) -> bool:
        svg = take_svg_screenshot(app=app, press=press, terminal_size=size, run_before=run_before)
        return snapshot.use_extension(ConsoleSVG) == svg

    return compare


def fed_app() -> ConsoleApp:
    """A console fed by hand with the fixed data: no server, no clock."""
    app = ConsoleApp(None, now=lambda: NOW, where="127.0.0.1:4222", redraw_delay=0.0)
    return app


async def feed(pilot) -> None:
    app = pilot.app
    app.runs_changed(listing())
    for p in pending_approvals():
        app.approvals_changed(p.run_id, [p])
    await pilot.pause(0.1)


def open_run(sim, step: str | None = None):
    async def run_before(pilot) -> None:
        await feed(pilot)
        pilot.app.push_screen(RunScreen(sim.st.run_id, sim.st, sim.events, step=step))
        await pilot.pause(0.2)

    return run_before


@pytest.mark.parametrize("size", SIZES)
def test_runs_list(snap, size):
    assert snap(fed_app(), size, run_before=feed)


@pytest.mark.parametrize("size", SIZES)
def test_run_graph_mid_flight(snap, size):
    sim = release_run()
    assert len(sim.st.steps) >= 8
    assert snap(fed_app(), size, run_before=open_run(sim, step="unit"))


@pytest.mark.parametrize("size", SIZES)
def test_agent_transcript(snap, size):
    assert snap(fed_app(), size, press=["t", "_"], run_before=open_run(coding_run(), step="fix"))


@pytest.mark.parametrize("size", SIZES)
def test_approvals_inbox(snap, size):
    async def run_before(pilot) -> None:
        await feed(pilot)
        await pilot.press("a", "down")  # the tool call, with its exact arguments
        await pilot.pause(0.1)

    assert snap(fed_app(), size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_plan_approval_draws_the_plan(snap, size):
    async def run_before(pilot) -> None:
        await feed(pilot)
        await pilot.press("a", "down", "down")
        await pilot.pause(0.1)

    assert snap(fed_app(), size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_fork_dialog(snap, size):
    sim = release_run()

    async def run_before(pilot) -> None:
        await open_run(sim, step="integration")(pilot)
        assert pilot.app.screen.query_one(DagView).selected == "integration"
        await pilot.press("f")
        await pilot.pause(0.1)

    assert snap(fed_app(), size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_help_screen(snap, size):
    assert snap(fed_app(), size, press=["question_mark", "_"], run_before=feed)
