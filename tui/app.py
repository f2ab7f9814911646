"""`dagnats tui`: the operator console.

It renders from JetStream subscriptions through the client (a watch of the run summaries for
the list and the inbox, an ordered consumer per open run), coalesces bursts into one redraw,
and acts only through the client, which records the operator's identity with every action.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from textual import work
from textual.app import App
from textual.screen import ModalScreen, Screen

from dagnats.api.client import Client, Listed, PendingApproval, RunSummary
from dagnats.errors import UserError
from tui.bindings import bindings
from tui.messages import AnswerApproval, CancelRun, ForkRun, OpenRun, RunDrawn
from tui.model import Inbox, RunsModel
from tui.screens import ApprovalsScreen, Base, HelpScreen, RunScreen, RunsScreen
from tui.widgets import DagView

if TYPE_CHECKING:
    from dagnats.app.serve import LocalStack
from tui.widgets.dialogs import Confirm, ForkRequest, Reason, Start, StartRequest

NEWEST = 500  # finished runs the console lists (every unfinished one too); `run list` has the rest


class ConsoleApp(App[None]):
    TITLE = "dagnats"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = bindings("global")
    CSS_PATH = ["console.tcss", "widgets/widgets.tcss"]

    def __init__(
        self,
        client: Client | None = None,
        *,
        where: str = "",
        now: Callable[[], float] = time.time,
        redraw_delay: float = 0.05,
    ) -> None:
        """`client` None: a console fed by hand (tests and snapshots call `runs_changed`)."""
        super().__init__()
        self.client = client
        self.where = where
        self.now = now
        self.clock: Callable[[], float] = time.monotonic  # how long an approval has been shown
        self.redraw_delay = redraw_delay
        self.model = RunsModel()
        self.inbox = Inbox()
        self.connection = "connecting" if client else "connected"
        self.loaded = client is None
        self._dirty = False
        self._approvals_stale: set[str] = set()
        self._approvals_wake = asyncio.Event()
        self.on_rendered: Callable[[str], None] | None = None  # for measuring (bench)

    def on_mount(self) -> None:
        self.push_screen(RunsScreen())
        if self.client is not None:
            self.watch_runs()
            self.refresh_approvals()

    # --- data in -------------------------------------------------------------------------------

    @work(exclusive=True, group="watch-runs")
    async def watch_runs(self) -> None:
        assert self.client is not None
        delay = 0.5
        while True:  # a failed watch (no buckets yet, a timeout) is tried again, not given up
            stored: list[RunSummary] | None = []  # what was stored, until the watch has given it
            try:
                async for item in self.client.watch_runs(newest=NEWEST):
                    delay = 0.5
                    if isinstance(item, Listed):
                        self.listed(stored or [], item)
                        stored = None
                    elif stored is not None:
                        stored.append(item)
                    else:
                        self.runs_changed([item])
            except Exception as exc:
                if self.connection == "connected":  # the status bar already says it is away
                    self.notify(f"run list: {exc}; trying again", severity="warning", timeout=4)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    def listed(self, stored: list[RunSummary], listed: Listed) -> None:
        """The newest runs, every unfinished one and what waits for an operator, as stored when
        the watch began: shown at once, with the inbox as the index of unfinished runs has it."""
        self.model.update(stored)
        self.model.older = listed.older
        by_run: dict[str, list[PendingApproval]] = {}
        for p in listed.pending:
            by_run.setdefault(p.run_id, []).append(p)
        self.inbox.by_run = by_run
        self.loaded = True
        self.set_connection("connected")
        self.schedule()

    def runs_changed(self, summaries: list[RunSummary]) -> None:
        """Take new summaries; runs whose approvals may have changed get their inbox entries
        re-read. The screen is redrawn once per burst."""
        for s in summaries:
            before = self.model.runs.get(s.run_id)
            if s.approvals or (before is not None and before.approvals) or s.run_id in self.inbox.by_run:
                self._approvals_stale.add(s.run_id)
        self.model.update(summaries)
        if self._approvals_stale:
            self._approvals_wake.set()
        self.schedule()

    @work(exclusive=True, group="approvals")
    async def refresh_approvals(self) -> None:
        assert self.client is not None
        while True:
            await self._approvals_wake.wait()
            self._approvals_wake.clear()
            stale, self._approvals_stale = self._approvals_stale, set()
            for run_id in stale:
                summary = self.model.runs.get(run_id)
                try:
                    pending = await self.client.approvals_of(run_id) if summary and summary.approvals else []
                except Exception:
                    self._approvals_stale.add(run_id)  # try again with the next change
                    continue
                self.inbox.replace(run_id, pending)
            self.schedule()

    def approvals_changed(self, run_id: str, pending: list[Any]) -> None:
        self.inbox.replace(run_id, pending)
        self.schedule()

    def schedule(self) -> None:
        if not self._dirty:
            self._dirty = True
            if self.redraw_delay > 0:
                self.set_timer(self.redraw_delay, self.flush)
            else:
                self.call_later(self.flush)

    def flush(self) -> None:
        self._dirty = False
        if not self.screen_stack:  # shutting down
            return
        if isinstance(self.screen, Base):
            self.screen.update_data()
        self._sync_status(self.screen_stack)  # a dialog on top leaves the bars below it visible
        if self.on_rendered is not None:
            self.on_rendered("runs")

    def on_run_drawn(self, message: RunDrawn) -> None:
        if self.on_rendered is not None:
            self.on_rendered(message.what)

    def _sync_status(self, screens: list[Screen[Any]]) -> None:
        for screen in screens:
            if isinstance(screen, Base):
                screen.sync_status()

    def set_connection(self, state: str) -> None:
        self.connection = state
        if self.screen_stack:
            self._sync_status([self.screen])

    async def disconnected(self) -> None:
        self.set_connection("reconnecting")

    async def reconnected(self) -> None:
        """The client's live reads carry on by themselves after a server restart, from the last
        change they gave; inbox entries that failed to load while it was away load now."""
        self.set_connection("connected")
        if self._approvals_stale:
            self._approvals_wake.set()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """With a dialog open, its keys are the only keys: no screens open on top of it."""
        if action in ("approvals", "start_run", "help") and isinstance(self.screen, ModalScreen):
            return False
        return True

    # --- navigation --------------------------------------------------------------------------

    def open_run(self, run_id: str, step: str | None = None) -> None:
        for screen in self.screen_stack:
            if isinstance(screen, RunScreen) and screen.run_id == run_id:
                while self.screen is not screen:  # back to it, instead of a second copy
                    self.pop_screen()
                if step:
                    screen.query_one(DagView).select(step)
                return
        self.push_screen(RunScreen(run_id, step=step))

    def action_approvals(self) -> None:
        if not isinstance(self.screen, ApprovalsScreen):
            self.push_screen(ApprovalsScreen())

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    # --- actions, each through the client ------------------------------------------------------

    def _act(
        self, what: Callable[[Client], Any], done: str, then: Callable[[Any], None] | None = None
    ) -> None:
        if self.client is None:
            self.notify("not connected", severity="error")
            return
        self._run_action(what, done, then)

    @work(group="actions")
    async def _run_action(
        self, what: Callable[[Client], Any], done: str, then: Callable[[Any], None] | None
    ) -> None:
        assert self.client is not None
        try:
            result = await what(self.client)
        except UserError as exc:
            self.notify(str(exc), severity="error", timeout=8)
            return
        except Exception as exc:
            self.notify(f"{type(exc).__name__}: {exc}", severity="error", timeout=8)
            return
        self.notify(done.format(result=result))
        if then is not None:
            then(result)

    def on_open_run(self, message: OpenRun) -> None:
        self.open_run(message.run_id, message.step)

    def on_cancel_run(self, message: CancelRun) -> None:
        self.confirm_cancel(message.run_id)

    def on_fork_run(self, message: ForkRun) -> None:
        self.fork(message.run_id, message.request)

    def on_answer_approval(self, message: AnswerApproval) -> None:
        """y or n on a screen: answer the approval it showed, once it had been shown a moment;
        denying asks for a reason first, and still answers the item the key was pressed on."""
        p = message.item
        if p is None:
            return
        if not message.settled:
            self.notify("this item just appeared — look again", severity="warning", timeout=4)
            return
        if message.approved:
            self.answer_approval(p, approved=True)
            return

        def done(reason: str | None) -> None:
            if reason:
                self.answer_approval(p, approved=False, comment=reason)

        a = p.approval
        self.push_screen(Reason(f"{a.kind} of step {a.step_id} (run {p.run_id})"), done)

    def answer_approval(self, p: PendingApproval, *, approved: bool, comment: str = "") -> None:
        """Decide exactly `p`: the server refuses it if it was answered or changed meanwhile."""
        a = p.approval
        verb = "approved" if approved else "denied"
        self._act(
            lambda c: c.decide(
                p.run_id,
                a.step_id,
                approved=approved,
                comment=comment,
                approval_id=a.approval_id,
                digest=p.digest,
            ),
            f"{verb} {a.step_id} of {p.run_id}",
        )

    def confirm_cancel(self, run_id: str) -> None:
        def done(yes: bool | None) -> None:
            if yes:
                self._act(
                    lambda c: c.cancel(run_id, reason="cancelled from the console"), f"cancelling {run_id}"
                )

        self.push_screen(Confirm(f"Cancel run {run_id}?"), done)

    def fork(self, run_id: str, request: ForkRequest) -> None:
        self._act(
            lambda c: c.fork(run_id, request.step_id, input=request.input, turn=request.turn),
            f"forked {run_id} from {request.step_id} as {{result}}",
            then=self.open_run,
        )

    def action_start_run(self) -> None:
        if self.client is None:
            self.push_screen(Start([]))
            return
        self._load_workflows()

    @work(group="actions")
    async def _load_workflows(self) -> None:
        assert self.client is not None
        try:
            workflows = await self.client.workflows()
        except Exception as exc:
            self.notify(f"cannot list workflows: {exc}", severity="error")
            return

        def done(request: StartRequest | None) -> None:
            if request is not None:
                self._act(
                    lambda c: c.start(request.workflow, request.input),
                    f"started {request.workflow} as {{result}}",
                    then=self.open_run,
                )

        self.push_screen(Start([(w.name, w.definition.description) for w in workflows]), done)


async def run_console(
    nats_url: str | None,
    data_dir: str | None,
    *,
    port: int = 4222,
    setup: Callable[[Client], Any] | None = None,
    embedded_dir: str | None = None,
) -> None:
    """Attach to the server found through --nats or the data dir; with none there, start one
    (server, engine, workers) in this process for as long as the console is open."""
    app_ref: list[ConsoleApp] = []

    async def on_disconnect() -> None:
        if app_ref:
            await app_ref[0].disconnected()

    async def on_reconnect() -> None:
        if app_ref:
            await app_ref[0].reconnected()

    client, stack = await _connect(nats_url, data_dir, port, embedded_dir, on_disconnect, on_reconnect)
    where = client.nc.connected_url.netloc if client.nc.connected_url else ""
    if stack is not None:
        where += " (embedded)"
    try:
        if setup is not None:
            await setup(client)
        app = ConsoleApp(client, where=where)
        app_ref.append(app)
        # SIGTERM quits as `q` does: the terminal is given back and an embedded server stopped
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, app.exit)
        await app.run_async()
    finally:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
        await client.close()
        if stack is not None:
            await stack.stop()


Hook = Callable[[], Awaitable[None]]


async def _connect(
    nats_url: str | None,
    data_dir: str | None,
    port: int,
    embedded_dir: str | None,
    on_disconnect: Hook,
    on_reconnect: Hook,
) -> tuple[Client, LocalStack | None]:
    """A client of the server found (`tui`: if there is one; `demo` never looks), else of a
    stack started here; the stack is returned to be stopped when the console closes."""
    from dagnats.app.serve import LocalStack

    explicit = bool(nats_url or os.environ.get("DAGNATS_NATS_URL"))  # then never embed instead
    if embedded_dir is None:
        client = await _attach(nats_url, data_dir, explicit, on_disconnect, on_reconnect)
        if client is not None:
            return client, None
    stack = LocalStack(data_dir=embedded_dir or data_dir, port=port)
    await stack.start()
    try:
        client = await Client.connect(
            endpoint=stack.endpoint, long_lived=True, on_disconnect=on_disconnect, on_reconnect=on_reconnect
        )
    except BaseException:
        await stack.stop()
        raise
    return client, stack


async def _attach(
    nats_url: str | None, data_dir: str | None, explicit: bool, on_disconnect: Hook, on_reconnect: Hook
) -> Client | None:
    """A client of the server that --nats, DAGNATS_NATS_URL or the data dir name; None if there
    is none to reach, unless one was named explicitly (then the error is raised)."""
    from dagnats.nats.connection import resolve_endpoint

    try:
        endpoint = resolve_endpoint(nats_url, data_dir)
        return await Client.connect(
            endpoint=endpoint, long_lived=True, on_disconnect=on_disconnect, on_reconnect=on_reconnect
        )
    except UserError:
        if explicit:
            raise
        return None
