"""The run's graph as a widget: tui.dag lays it out and styles it; this draws the lines on
screen and moves the selection."""

from __future__ import annotations

from collections.abc import Collection

from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from dagnats.core.state import RunState
from tui.bindings import bindings
from tui.dag import Direction, Layout, layout, nodes_of, render


class DagView(ScrollView, can_focus=True):
    """The run's graph, layered left to right, with a selected step moved by the arrow keys."""

    BINDINGS = bindings("graph")

    class Selected(Message):
        def __init__(self, step_id: str | None) -> None:
            super().__init__()
            self.step_id = step_id

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.layout_: Layout | None = None
        self.lines: list[Strip] = []
        self.selected: str | None = None

    def show(self, state: RunState, unserved: Collection[str] = ()) -> None:
        self.layout_ = layout(nodes_of(state, unserved))  # deterministic: the same graph keeps its places
        if self.selected is None or self.selected not in self.layout_.pos:
            first = next(iter(self.layout_.pos), None)
            self._select(first)
        self._draw()

    def _draw(self) -> None:
        assert self.layout_ is not None
        console = self.app.console
        self.lines = [Strip(list(t.render(console))) for t in render(self.layout_, self.selected)]
        self.virtual_size = Size(self.layout_.width, self.layout_.height)
        self.refresh()

    def _select(self, step_id: str | None) -> None:
        if step_id != self.selected:
            self.selected = step_id
            self.post_message(self.Selected(step_id))

    def select(self, step_id: str) -> None:
        if self.layout_ is not None and step_id in self.layout_.pos:
            self._select(step_id)
            self._draw()
            self._scroll_to_selected()

    def _scroll_to_selected(self) -> None:
        if self.layout_ is None or self.selected is None:
            return
        x, y = self.layout_.pos[self.selected]
        self.scroll_to_region(Region(x, max(0, y - 1), 24, 3), animate=False, immediate=True)

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        index = scroll_y + y
        width = self.size.width
        if index >= len(self.lines):
            return Strip.blank(width)
        return self.lines[index].crop_extend(scroll_x, scroll_x + width, None)

    def action_move(self, direction: Direction) -> None:
        if self.layout_ is None or self.selected is None:
            return
        target = self.layout_.neighbor(self.selected, direction)
        if target is not None:
            self.select(target)
