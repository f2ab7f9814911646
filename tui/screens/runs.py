"""The runs list, with its status tabs and filter."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.widgets import (
    Footer,
    Input,
    Static,
    Tab,
    Tabs,
)

from tui.bindings import bindings
from tui.messages import CancelRun, OpenRun
from tui.model import TABS
from tui.screens.base import Base
from tui.widgets import RunsHeader, RunsTable, StatusBar

OLDER = "newest runs and every unfinished one; older runs: dagnats run list --limit N"


class RunsScreen(Base):
    BINDINGS = bindings("runs")
    CSS_PATH = "runs.tcss"

    def compose(self) -> ComposeResult:
        yield StatusBar()
        yield Tabs(
            *[Tab(f"{i} {title} 0", id=f"tab-{tab}") for i, (tab, title) in enumerate(TABS.items(), 1)],
            id="tabs",
        )
        yield Input(
            placeholder="filter runs: words in the id, workflow or status (escape clears)", id="filter"
        )
        yield Static(OLDER, id="older")
        yield RunsHeader()
        yield Static("no runs yet: press s to start one", id="empty")
        yield RunsTable(self.console.model, now=self.console.now, id="runs")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one(RunsTable).focus()
        self.refresh_data()
        self.set_interval(1.0, self.table.refresh)  # ages move on; only the visible lines redraw

    @property
    def table(self) -> RunsTable:
        return self.query_one(RunsTable)

    def refresh_data(self) -> None:
        model = self.console.model
        self.table.refresh_view()
        counts = model.counts()
        for i, (tab, title) in enumerate(TABS.items(), 1):
            self.query_one(f"#tab-{tab}", Tab).label = f"{i} {title} {counts[tab]}"
        self.query_one("#older", Static).set_class(model.older, "shown")
        empty = self.query_one("#empty", Static)
        empty.set_class(not model.view, "shown")
        if not self.console.loaded:
            empty.update("loading runs…")
        elif model.runs and not model.view:
            empty.update("no runs match: change the tab (1-6) or the filter (/)")
        else:
            empty.update("no runs yet: press s to start one")

    def on_tabs_tab_activated(self, event: Tabs.TabActivated) -> None:
        if event.tab is None or event.tab.id is None:
            return
        self.console.model.set_tab(event.tab.id.removeprefix("tab-"))
        self.refresh_data()

    def action_tab(self, tab: str) -> None:
        self.query_one(Tabs).active = f"tab-{tab}"

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("shown")
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter":
            self.console.model.set_filter(event.value)
            self.refresh_data()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            if not event.value:
                event.input.remove_class("shown")
            self.table.focus()

    def on_key(self, event: Any) -> None:
        box = self.query_one("#filter", Input)
        if event.key == "escape" and (box.has_focus or box.value):
            box.value = ""
            box.remove_class("shown")
            self.table.focus()
            event.stop()

    def on_runs_table_opened(self, event: RunsTable.Opened) -> None:
        self.post_message(OpenRun(event.run_id))

    def action_open(self) -> None:
        if self.table.selected:
            self.post_message(OpenRun(self.table.selected))

    def action_cancel(self) -> None:
        if self.table.selected:
            self.post_message(CancelRun(self.table.selected))
