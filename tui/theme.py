"""Status glyphs and styles shared by every console view.

Every glyph is a single terminal cell that no terminal draws as an emoji: tables and the DAG
line up columns by counting cells, and a glyph that renders two cells wide (or as a colour
emoji) would shift everything after it. That is why waiting is "◷" rather than "⏸" (an emoji
code point) and the arrows are "►" rather than "▶".
"""

from __future__ import annotations

from rich.text import Text

STEP_GLYPH: dict[str, str] = {
    "pending": "○",
    "queued": "◌",
    "running": "●",
    "waiting": "◷",
    "completed": "✓",
    "failed": "✗",
    "skipped": "↷",
    "cancelled": "⊘",
}

STEP_STYLE: dict[str, str] = {
    "pending": "dim",
    "queued": "cyan",
    "running": "bold yellow",
    "waiting": "bold magenta",
    "completed": "green",
    "failed": "bold red",
    "skipped": "dim",
    "cancelled": "dim red",
}

RUN_GLYPH: dict[str, str] = {
    "pending": "○",
    "running": "●",
    "waiting": "◷",
    "completed": "✓",
    "failed": "✗",
    "cancelled": "⊘",
    "continued": "↪",
}

RUN_STYLE: dict[str, str] = {
    "pending": "dim",
    "running": "bold yellow",
    "waiting": "bold magenta",
    "completed": "green",
    "failed": "bold red",
    "cancelled": "dim red",
    "continued": "blue",
}

UNKNOWN_GLYPH = "?"  # a status this console does not know yet (a newer server): shown, not hidden


def glyph(status: str, *, run: bool = False) -> str:
    return (RUN_GLYPH if run else STEP_GLYPH).get(status, UNKNOWN_GLYPH)


def style(status: str, *, run: bool = False) -> str:
    return (RUN_STYLE if run else STEP_STYLE).get(status, "")


def status_text(status: str, *, run: bool = False) -> Text:
    """ "✓ completed" in the status's style: the glyph carries the colour, the word the meaning."""
    return Text(f"{glyph(status, run=run)} {status}", style=style(status, run=run))
