"""One run: graph, step details, transcript, events, lineage."""

from __future__ import annotations

import asyncio

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import (
    Footer,
    OptionList,
    RichLog,
    Static,
    TabbedContent,
    TabPane,
)
from textual.widgets.option_list import Option

from dagnats.api.client import PendingApproval
from dagnats.core.decide import fold
from dagnats.core.events import AgentTurnRecorded, Event, StepCompleted, StepFailed, StepStarted
from dagnats.core.state import RunState
from tui import render
from tui.bindings import bindings
from tui.messages import CancelRun, ForkRun, OpenRun, RunDrawn
from tui.model import Shown
from tui.screens.base import Base
from tui.widgets import DagView, StatusBar
from tui.widgets.dialogs import Fork, ForkRequest

WORKERS_EVERY = 2.0  # seconds between looks at which queued steps some live worker serves


class RunScreen(Base):
    """One run: its graph and the selected step, an agent's transcript, the raw events and
    the runs it is related to. Follows the run's history live and folds it with the engine's
    own `fold`, so it shows what the engine decides."""

    BINDINGS = bindings("run")
    CSS_PATH = "run.tcss"

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
