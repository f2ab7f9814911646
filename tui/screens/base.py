"""What every screen shares."""

from __future__ import annotations

from textual.screen import Screen

from tui.messages import AnswerApproval, ConsoleState, console_state
from tui.model import Shown
from tui.widgets import StatusBar


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
