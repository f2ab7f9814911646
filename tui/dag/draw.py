"""A Layout painted as Rich Text: edges dim, labels in their status style."""

from __future__ import annotations

from functools import lru_cache

from rich.style import Style
from rich.text import Text

from tui.dag.layout import Layout
from tui.theme import STEP_STYLE

EDGE_STYLE = "dim"


def render(layout: Layout, selected: str | None = None) -> list[Text]:
    """One Text per row, each `layout.width` cells: edges dim, labels in their status style."""
    out = []
    for line, labels in zip(layout.lines, layout.labels):
        text = Text(line, style=EDGE_STYLE, no_wrap=True, end="")
        for x0, x1, nid in labels:
            text.stylize(_label_style(layout.nodes[nid].status, nid == selected), x0, x1)
        out.append(text)
    return out


@lru_cache(maxsize=64)
def _label_style(status: str, selected: bool) -> Style:
    style = Style(dim=False) + Style.parse(STEP_STYLE.get(status, ""))
    return style + Style(reverse=True) if selected else style
