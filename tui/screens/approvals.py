"""The approvals inbox."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import (
    Footer,
    OptionList,
    Static,
)
from textual.widgets.option_list import Option

from dagnats.api.client import PendingApproval
from tui import render
from tui.bindings import bindings
from tui.messages import OpenRun
from tui.model import Shown
from tui.screens.base import Base
from tui.widgets import StatusBar


class ApprovalsScreen(Base):
    """Everything that waits for an operator, across all runs, oldest first."""

    BINDINGS = bindings("approvals")
    status_title = "approvals"
    CSS_PATH = "approvals.tcss"

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
