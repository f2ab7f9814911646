"""The help screen: every key, from the one bindings table."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import (
    Static,
)

from tui.bindings import BUILT_IN, KEYS, SCOPE_TITLES, key_label


class HelpScreen(ModalScreen[None]):
    """Every key, read from the one bindings table."""

    BINDINGS = [("escape,question_mark,q", "close", "Close")]
    CSS_PATH = "help.tcss"

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
