"""The runs list: a virtual table drawing only the lines on screen (Textual's line API), so a
list of thousands of runs costs no more to redraw than a list of twenty; and its header."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget

from tui.model import RunsModel
from tui.render import run_row, runs_header

CURSOR = Style(reverse=True)


class RunsTable(ScrollView, can_focus=True):
    """The runs, newest first, one line each, drawn from a RunsModel. The cursor stays on the
    same run when new runs arrive above it."""

    BINDINGS = [
        Binding("up,k", "cursor(-1)", "Up", show=False),
        Binding("down,j", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
        Binding("enter", "open", "Open", show=False),
    ]

    class Opened(Message):
        def __init__(self, run_id: str) -> None:
            super().__init__()
            self.run_id = run_id

    def __init__(self, model: RunsModel, now: Callable[[], float] = time.time, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.model = model
        self.now = now
        self.cursor = 0
        self.cursor_id: str | None = None
        self._shown = 0  # the cursor's line when the view was last laid out
        self._drawn: str | None = None  # the run last drawn under the cursor

    @property
    def selected(self) -> str | None:
        """The run under the cursor: the cursor follows its run, even when the model changed
        since the last redraw (runs arriving above it do not move it to another run)."""
        self._follow()
        view = self.model.view
        return view[self.cursor] if 0 <= self.cursor < len(view) else None

    def _follow(self) -> None:
        if self.cursor_id is None:  # the cursor stays on the run it was drawn on
            self.cursor_id = self._drawn
        index = self.model.index_of(self.cursor_id)
        if index is not None:
            self.cursor = index

    def refresh_view(self) -> None:
        """The model changed: keep the cursor on its run, resize, redraw what is visible."""
        view = self.model.view
        before = self._shown
        _, top = self.scroll_offset
        visible = top <= before < top + self.size.height
        if self.cursor_id is None:
            self.cursor_id = self._drawn
        index = self.model.index_of(self.cursor_id)
        self.cursor = index if index is not None else min(self.cursor, max(0, len(view) - 1))
        self.cursor_id = self.selected
        self.virtual_size = Size(self.size.width, len(view))
        if visible and self.cursor != before:  # runs arrived above: the page moves with its run
            self.scroll_to(y=max(0, top + self.cursor - before), animate=False, immediate=True)
        self._shown = self.cursor
        self.refresh()

    def on_resize(self) -> None:
        self.virtual_size = Size(self.size.width, len(self.model.view))

    def render_line(self, y: int) -> Strip:
        _, scroll_y = self.scroll_offset
        index = scroll_y + y
        width = self.size.width
        view = self.model.view
        if index >= len(view):
            return Strip.blank(width)
        summary = self.model.runs[view[index]]
        text = run_row(summary, self.now(), width)
        segments = list(text.render(self.app.console))
        strip = Strip(segments).crop_extend(0, width, None)
        if index == self.cursor:
            self._drawn = view[index]
            strip = strip.apply_style(CURSOR if self.has_focus else Style(bgcolor="grey23"))
        return strip

    def _move_to(self, index: int) -> None:
        view = self.model.view
        if not view:
            return
        self.cursor = self._shown = max(0, min(len(view) - 1, index))
        self.cursor_id = view[self.cursor]
        self.scroll_to_region(Region(0, self.cursor, 1, 1), animate=False, immediate=True)
        self.refresh()

    def action_cursor(self, delta: int) -> None:
        self._follow()
        self._move_to(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        self._follow()
        self._move_to(self.cursor + direction * max(1, self.size.height - 1))

    def action_jump(self, where: int) -> None:
        self._move_to(0 if where == 0 else len(self.model.view) - 1)

    def action_open(self) -> None:
        if self.selected:
            self.post_message(self.Opened(self.selected))

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()


class RunsHeader(Widget):
    def render(self) -> Text:
        return runs_header(self.size.width)
