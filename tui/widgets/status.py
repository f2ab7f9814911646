"""The status bar on top of every screen: where the console is connected, and how many things
wait for the operator."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget


class StatusBar(Widget):
    """One line on every screen: where we are connected, and how many things wait for you."""

    connection: reactive[str] = reactive("connecting")
    approvals: reactive[int] = reactive(0)
    where: reactive[str] = reactive("")
    title: reactive[str] = reactive("")

    def render(self) -> Text:
        text = Text()
        text.append(" dagnats ", style="bold reverse")
        text.append(f" {self.title}" if self.title else "")
        right = Text()
        if self.approvals:
            right.append(f" ⚑ {self.approvals} waiting for you ", style="bold black on magenta")
        else:
            right.append(" ⚑ 0 ", style="dim")
        style = {"connected": "green", "reconnecting": "bold black on yellow"}.get(self.connection, "yellow")
        label = "● connected" if self.connection == "connected" else f"◌ {self.connection}…"
        right.append(f" {label} ", style=style)
        if self.where and text.cell_len + right.cell_len + len(self.where) + 2 <= self.size.width:
            right.append(f"{self.where} ", style="dim")
        pad = max(1, self.size.width - text.cell_len - right.cell_len)
        text.append(" " * pad)
        text.append_text(right)
        text.truncate(self.size.width)
        return text
