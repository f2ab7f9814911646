"""The console's screens: runs, one run, the approvals inbox, help."""

from __future__ import annotations

import asyncio
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import (
    Footer,
    Input,
    OptionList,
    RichLog,
    Static,
    Tab,
    TabbedContent,
    TabPane,
    Tabs,
)
from textual.widgets.option_list import Option

from dagnats.api.client import PendingApproval
from dagnats.core.decide import fold
from dagnats.core.events import AgentTurnRecorded, Event, StepCompleted, StepFailed, StepStarted
from dagnats.core.state import RunState
from tui import render
from tui.bindings import BUILT_IN, KEYS, SCOPE_TITLES, bindings, key_label
from tui.dialogs import Fork, ForkRequest
from tui.messages import AnswerApproval, CancelRun, ConsoleState, ForkRun, OpenRun, RunDrawn, console_state
from tui.model import TABS, Shown
from tui.widgets import DagView, RunsHeader, RunsTable, StatusBar

WORKERS_EVERY = 2.0  # seconds between looks at which queued steps some live worker serves


class Base(Screen[None]):
    """What every screen shares: the status bar on top and the footer below. A screen reads
    the console's state and posts what the operator asks for (tui.messages) to the app."""

    status_title = "runs"  # what the status bar calls this screen

    @property
    def console(self) -> ConsoleState:
        return console_state(self)

    def on_screen_resume(self) -> None:
        """Back on top: catch up with what changed while another screen was showing."""
        self.sync_status()
        self.update_data()

    def sync_status(self) -> None:
        console = self.console
        for bar in self.query(StatusBar):
            bar.connection = console.connection
            bar.approvals = max(len(console.inbox), console.model.waiting_on_operator)
            bar.where = console.where
            bar.title = self.status_title

    def answer(self, shown: Shown, *, approved: bool) -> None:
        """y or n: answer the approval shown now, saying whether it was shown long enough."""
        settled = shown.settled(self.console.clock())
        self.post_message(AnswerApproval(shown.item, approved=approved, settled=settled))

    def update_data(self) -> None:
        """Redraw from the app's model, once the screen's widgets exist (its own on_mount
        draws it the first time)."""
        if self.is_mounted:
            self.refresh_data()

    def refresh_data(self) -> None:
        pass

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 2:
            self.app.pop_screen()


class RunsScreen(Base):
    BINDINGS = bindings("runs")
    DEFAULT_CSS = """
    RunsScreen Tabs { height: 2; }
    RunsScreen #filter { display: none; height: 1; border: none; padding: 0 1; }
    RunsScreen #filter.shown { display: block; }
    RunsScreen #empty { height: auto; color: $text-muted; padding: 1 2; display: none; }
    RunsScreen #empty.shown { display: block; }
    """

    def compose(self) -> ComposeResult:
        yield StatusBar()
        yield Tabs(
            *[Tab(f"{i} {title} 0", id=f"tab-{tab}") for i, (tab, title) in enumerate(TABS.items(), 1)],
            id="tabs",
        )
        yield Input(
            placeholder="filter runs: words in the id, workflow or status (escape clears)", id="filter"
        )
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


class RunScreen(Base):
    """One run: its graph and the selected step, an agent's transcript, the raw events and
    the runs it is related to. Follows the run's history live and folds it with the engine's
    own `fold`, so it shows what the engine decides."""

    BINDINGS = bindings("run")
    DEFAULT_CSS = """
    RunScreen #header { height: auto; max-height: 3; padding: 0 1; }
    RunScreen DagView { height: auto; max-height: 60%; min-height: 3; }
    RunScreen #details { height: 1fr; border-top: solid $panel-lighten-2; padding: 0 1; }
    RunScreen #transcript, RunScreen #lineage-box { padding: 0 1; }
    RunScreen TabbedContent { height: 1fr; }
    RunScreen TabPane { padding: 0; }
    """

    def __init__(
        self,
        run_id: str,
        state: RunState | None = None,
        events: list[tuple[int, Event]] | None = None,
        step: str | None = None,
    ):
        super().__init__()
        self.run_id = run_id
        self.status_title = f"run {run_id}"
        self.wanted_step = step  # selected once the run's graph is known
        self.state = state
        self.events: list[tuple[int, Event]] = list(events or [])
        self.last_seq = self.events[-1][0] if self.events else 0
        self.streaming: dict[str, str] = {}
        self._written = 0  # events already in the log widget
        self._dirty = False
        self.step: str | None = None
        self.shown = Shown()  # the approval y and n decide: the one the step's details show
        self.unserved: dict[str, str] = {}  # queued steps no live worker serves: {step: task}

    def compose(self) -> ComposeResult:
        yield StatusBar()
        yield Static(Text(f"{self.run_id}  loading…"), id="header")
        with TabbedContent(id="panes", initial="graph"):
            with TabPane("g Graph", id="graph"):
                yield DagView(id="dag")
                with VerticalScroll(id="details"):
                    yield Static(id="details-body")
            with TabPane("t Transcript", id="transcript"):
                with VerticalScroll(id="transcript-scroll"):
                    yield Static(id="transcript-body")
            with TabPane("e Events", id="events"):
                yield RichLog(id="log", max_lines=20_000, wrap=False, auto_scroll=True)
            with TabPane("l Lineage", id="lineage"):
                with Vertical(id="lineage-box"):
                    yield Static("enter opens the selected run", classes="hint")
                    yield OptionList(id="related")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one(DagView).focus()
        if self.state is not None:
            self.redraw()
        if self.console.client is not None:
            self.follow()
            self.follow_text()
            self.watch_workers()

    # --- live data ---------------------------------------------------------------------------

    @work(exclusive=True, group="workers", exit_on_error=False)
    async def watch_workers(self) -> None:
        """Heartbeats are not events: look every WORKERS_EVERY seconds, only while a step is
        queued for a worker (no I/O otherwise), whether some live worker serves it."""
        client = self.console.client
        assert client is not None
        while True:
            try:
                unserved = await client.unserved(self.state) if self.state is not None else {}
            except Exception:  # lost connection: keep what was known; the next look retries
                unserved = self.unserved
            if unserved != self.unserved:
                self.unserved = unserved
                self.schedule()
            await asyncio.sleep(WORKERS_EVERY)

    @work(exclusive=True, group="follow")
    async def follow(self) -> None:
        """The run's events as they land. The client's follow rides out server restarts; any
        other failure is shown in the header and tried again, from the last event shown."""
        client = self.console.client
        assert client is not None
        delay = 0.5
        while True:
            try:
                async for seq, event in client.follow(self.run_id, until_terminal=False, after=self.last_seq):
                    delay = 0.5
                    self.state = fold(self.state, event)
                    self.events.append((seq, event))
                    self.last_seq = seq
                    if isinstance(event, (AgentTurnRecorded, StepStarted, StepCompleted, StepFailed)):
                        self.streaming.pop(event.step_id, None)  # what streamed is recorded, or lost
                    self.schedule()
            except Exception as exc:
                self.query_one("#header", Static).update(Text(f"{self.run_id}: {exc}", style="red"))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
            self.schedule()  # the header shows the run again, unless the next try fails too

    @work(exclusive=True, group="live-text", exit_on_error=False)
    async def follow_text(self) -> None:
        """Streamed model text is a nicety: losing it must never take the console down."""
        client = self.console.client
        assert client is not None
        while True:
            try:
                async for step_id, chunk in client.live_text(self.run_id):
                    self.streaming[step_id] = self.streaming.get(step_id, "") + chunk
                    self.schedule()
            except Exception:
                pass
            await asyncio.sleep(1.0)

    def refresh_data(self) -> None:
        if self.state is not None:
            self._draw_lineage()  # forks and children appear in the run list, not in this run

    def schedule(self) -> None:
        """Coalesce: many events in a burst give one redraw."""
        if not self._dirty:
            self._dirty = True
            self.set_timer(self.console.redraw_delay, self.redraw)

    def redraw(self) -> None:
        self._dirty = False
        state = self.state
        if state is None:
            return
        now = self.console.now()
        self.query_one("#header", Static).update(render.run_header(state, now))
        dag = self.query_one(DagView)
        dag.show(state, self.unserved)
        if self.wanted_step and self.wanted_step in state.steps:
            dag.select(self.wanted_step)
            self.wanted_step = None
        self.step = dag.selected
        self._draw_step()
        log = self.query_one(RichLog)
        for seq, event in self.events[self._written :]:
            log.write(render.event_text(seq, event))
        self._written = len(self.events)
        self._draw_lineage()
        self.post_message(RunDrawn(self.run_id))

    def _draw_step(self) -> None:
        assert self.state is not None
        now = self.console.now()
        self.query_one("#details-body", Static).update(
            render.step_details(self.state, self.step, self.events, now, self.unserved.get(self.step or ""))
        )
        self.query_one("#transcript-body", Static).update(
            render.transcript(
                self.state, self._agent_step(), self.streaming.get(self._agent_step() or "", "")
            )
        )
        self.shown.show(self._shown_approval(), self.console.clock())

    def _shown_approval(self) -> PendingApproval | None:
        """The first approval the selected step waits for, as its details show it; on the
        transcript pane, that of the agent step the transcript shows."""
        state = self.state
        if state is None:
            return None
        steps = [self.step]
        if self.query_one(TabbedContent).active == "transcript":
            steps.append(self._agent_step())
        for sid in steps:
            pending = [a for a in state.pending_approvals() if a.step_id == sid]
            if pending:
                return PendingApproval(state.run_id, state.workflow, pending[0])
        return None

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self.shown.show(self._shown_approval(), self.console.clock())

    def _agent_step(self) -> str | None:
        """The selected step if it is an agent loop, else the run's first agent loop."""
        assert self.state is not None
        state = self.state
        if self.step and self.step in state.steps and state.step_def(self.step).type == "agent_loop":
            return self.step
        agents = [s.id for s in state.definition.steps if s.type == "agent_loop"]
        return agents[0] if agents else self.step

    def _draw_lineage(self) -> None:
        assert self.state is not None
        related = render.lineage(self.state, self.console.model.runs)
        box = self.query_one("#related", OptionList)
        options = [Option(f"{label}: {rid}", id=f"{i}:{rid}") for i, (label, rid) in enumerate(related)]
        options = options or [Option("no related runs", id="none", disabled=True)]
        if [o.id for o in options] != [box.get_option_at_index(i).id for i in range(box.option_count)]:
            box.clear_options()
            box.add_options(options)

    def on_dag_view_selected(self, event: DagView.Selected) -> None:
        self.step = event.step_id
        if self.state is not None:
            self._draw_step()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id and ":" in event.option.id:
            self.post_message(OpenRun(event.option.id.split(":", 1)[1]))

    # --- actions -----------------------------------------------------------------------------

    def action_pane(self, pane: str) -> None:
        # Focus goes into the pane first: TabbedContent shows the pane holding the focus.
        target = {
            "graph": "#dag",
            "transcript": "#transcript-scroll",
            "events": "#log",
            "lineage": "#related",
        }
        self.query_one(TabbedContent).active = pane
        self.query_one(target[pane]).focus()

    def action_approve(self) -> None:
        self._answer(approved=True)

    def action_deny(self) -> None:
        self._answer(approved=False)

    def _answer(self, *, approved: bool) -> None:
        if self.shown.item is None:
            waiting = sorted({a.step_id for a in self.state.pending_approvals()}) if self.state else []
            hint = f": select {', '.join(waiting)}" if waiting else ""
            self.app.notify(f"step {self.step} is not waiting for an approval{hint}", severity="warning")
            return
        self.answer(self.shown, approved=approved)

    def action_cancel(self) -> None:
        self.post_message(CancelRun(self.run_id))

    def action_fork(self) -> None:
        state = self.state
        if state is None or self.step is None:
            return
        sid = self.step
        if sid not in state.static_ids():
            self.app.notify(
                f"{sid} was added while the run ran; fork from a step of the workflow", severity="warning"
            )
            return
        step = state.steps[sid]
        turns = len(step.turns) if state.step_def(sid).type == "agent_loop" else None

        def done(request: ForkRequest | None) -> None:
            if request is not None:
                self.post_message(ForkRun(self.run_id, request))

        self.app.push_screen(Fork(self.run_id, sid, step.input, turns), done)


class ApprovalsScreen(Base):
    """Everything that waits for an operator, across all runs, oldest first."""

    BINDINGS = bindings("approvals")
    status_title = "approvals"
    DEFAULT_CSS = """
    ApprovalsScreen #items { height: 1fr; min-height: 4; }
    ApprovalsScreen #detail { height: 2fr; border-top: solid $panel-lighten-2; padding: 0 1; }
    ApprovalsScreen #none { padding: 1 2; color: $text-muted; }
    """

    def __init__(self) -> None:
        super().__init__()
        self._drawn: dict[str, PendingApproval] = {}  # by option id, as the list last drew them
        self.shown = Shown()  # the one under the cursor: what y and n decide

    def compose(self) -> ComposeResult:
        yield StatusBar()
        yield OptionList(id="items")
        with VerticalScroll(id="detail"):
            yield Static(id="detail-body")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#items").focus()
        self.refresh_data()

    def refresh_data(self) -> None:
        box = self.query_one("#items", OptionList)
        items = self.console.inbox.items
        now = self.console.now()
        width = max(40, self.size.width - 6)  # the list's border and padding
        keep = box.highlighted_option.id if box.highlighted_option else None
        was = box.highlighted or 0
        box.clear_options()
        self._drawn = {f"{p.run_id}/{p.approval.approval_id}": p for p in items}
        if not items:
            box.add_option(Option(Text("nothing waits for you", style="dim"), disabled=True))
        for p in items:
            box.add_option(
                Option(render.approval_line(p, now, width), id=f"{p.run_id}/{p.approval.approval_id}")
            )
        ids = [f"{p.run_id}/{p.approval.approval_id}" for p in items]
        if ids:
            # the same item, or, when it went away, the one that took its place: never jump to
            # another run's approval at the top, where a second `y` would approve it unseen
            box.highlighted = ids.index(keep) if keep in ids else min(was, len(ids) - 1)
        self._show_detail()

    def _current(self) -> PendingApproval | None:
        option = self.query_one("#items", OptionList).highlighted_option
        return self._drawn.get(option.id) if option is not None and option.id is not None else None

    def _show_detail(self) -> None:
        p = self._current()
        self.shown.show(p, self.console.clock())
        body = self.query_one("#detail-body", Static)
        body.update(render.approval_details(p) if p else Text(""))

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        self._show_detail()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.action_open()

    def action_approve(self) -> None:
        self.answer(self.shown, approved=True)

    def action_deny(self) -> None:
        self.answer(self.shown, approved=False)

    def action_open(self) -> None:
        p = self._current()
        if p is not None:
            self.post_message(OpenRun(p.run_id, step=p.approval.step_id))


class HelpScreen(ModalScreen[None]):
    """Every key, read from the one bindings table."""

    BINDINGS = [("escape,question_mark,q", "close", "Close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 72; max-width: 100%; height: 90%; border: thick $accent;
                                  background: $surface; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(help_text())

    def action_close(self) -> None:
        self.dismiss(None)


def help_text() -> Group:
    parts: list[Any] = [Text("dagnats console: keys (escape closes)", style="bold")]
    for scope, keys in KEYS.items():
        table = Table(box=None, show_header=False, padding=(0, 1))
        table.add_column(min_width=10, style="bold cyan")
        table.add_column()
        for binding in keys:
            table.add_row(key_label(binding), binding.description)
        for key, what in BUILT_IN.get(scope, []):
            table.add_row(key, what)
        parts += [Text(""), Text(SCOPE_TITLES[scope], style="bold underline"), table]
    return Group(*parts)
