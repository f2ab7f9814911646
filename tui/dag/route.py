"""Routing the edges of one channel (the gap between two layers) into lanes, and painting
lines on a canvas of direction bits: the box character of a cell is chosen from its bits at
the end, so crossings and junctions come out right whatever was drawn first."""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass

ARROW = "►"
UP, DOWN, LEFT, RIGHT = 1, 2, 4, 8
_BOX = {
    0: " ",
    LEFT: "─",
    RIGHT: "─",
    LEFT | RIGHT: "─",
    UP: "│",
    DOWN: "│",
    UP | DOWN: "│",
    DOWN | RIGHT: "┌",
    DOWN | LEFT: "┐",
    UP | RIGHT: "└",
    UP | LEFT: "┘",
    UP | DOWN | RIGHT: "├",
    UP | DOWN | LEFT: "┤",
    DOWN | LEFT | RIGHT: "┬",
    UP | LEFT | RIGHT: "┴",
    UP | DOWN | LEFT | RIGHT: "┼",
}


@dataclass
class Lane:
    """Sources that have exactly the same targets: one vertical line serves them all truthfully."""

    sources: list[int]
    targets: list[int]
    top: int = 0
    bottom: int = 0  # one past the lowest row, for a source that has to step down a row (a jog)
    column: int = 0


@dataclass
class Channel:
    lanes: list[Lane]
    columns: int
    jogs: set[int]  # sources whose line leaves on the row below their label


def route(column: list[int], succs: list[list[int]], ys: list[int]) -> Channel:
    by_targets: dict[tuple[int, ...], Lane] = {}
    for u in column:
        if succs[u]:
            targets = tuple(sorted(set(succs[u]), key=ys.__getitem__))
            by_targets.setdefault(targets, Lane([], list(targets))).sources.append(u)
    lanes = list(by_targets.values())
    for lane in lanes:
        rows = [ys[v] for v in lane.sources + lane.targets]
        lane.top, lane.bottom = min(rows), max(rows) + 1
    arriving: dict[int, list[int]] = {}
    for li, lane in enumerate(lanes):
        for t in lane.targets:
            arriving.setdefault(ys[t], []).append(li)
    columns = _assign_columns(lanes, _left_of(lanes, arriving, ys))
    jogs = {
        s
        for li, lane in enumerate(lanes)
        for s in lane.sources
        if any(lanes[h].column < lane.column for h in arriving.get(ys[s], ()) if h != li)
    }
    return Channel(lanes, columns, jogs)


def _left_of(lanes: list[Lane], arriving: dict[int, list[int]], ys: list[int]) -> list[list[int]]:
    """For each lane, the lanes that should stand right of it.

    A source's line runs along its own row to its lane; if another lane also ends on that row
    (its target sits there) and stands further left, the two lines would merge. Putting the
    source's lane first avoids that; where it cannot, the source steps down a row instead.
    """
    source_lane = {ys[s]: li for li, lane in enumerate(lanes) for s in lane.sources}
    right: list[list[int]] = [[] for _ in lanes]
    for row, ending in arriving.items():
        li = source_lane.get(row)
        if li is not None:
            right[li].extend(h for h in ending if h != li)
    return right


def _assign_columns(lanes: list[Lane], right: list[list[int]]) -> int:
    """Give each lane the leftmost column free over its rows and right of the lanes it must
    follow. Lanes are taken in an order that respects `right` (topmost first); a cycle in
    `right` is broken where it costs the fewest jogs. Returns the number of columns used."""
    indegree = [0] * len(lanes)
    for hs in right:
        for h in hs:
            indegree[h] += 1
    heap = [(lanes[i].top, i) for i in range(len(lanes)) if indegree[i] == 0]
    heapq.heapify(heap)
    placed = [False] * len(lanes)
    floor = [0] * len(lanes)
    starts: list[list[int]] = []
    ends: list[list[int]] = []
    for _ in range(len(lanes)):
        while heap and placed[heap[0][1]]:
            heapq.heappop(heap)
        if not heap:
            heap.append(_break_tie(lanes, right, indegree, placed))
        _, li = heapq.heappop(heap)
        placed[li] = True
        lane = lanes[li]
        col = floor[li]
        while not _fits(starts, ends, col, lane.top, lane.bottom):
            col += 1
        if col == len(starts):
            starts.append([])
            ends.append([])
        at = bisect.bisect_left(starts[col], lane.top)
        starts[col].insert(at, lane.top)
        ends[col].insert(at, lane.bottom)
        lane.column = col
        for h in right[li]:
            floor[h] = max(floor[h], col + 1)
            indegree[h] -= 1
            if indegree[h] == 0 and not placed[h]:
                heapq.heappush(heap, (lanes[h].top, h))
    return len(starts)


def _break_tie(
    lanes: list[Lane], right: list[list[int]], indegree: list[int], placed: list[bool]
) -> tuple[int, int]:
    """The lane to place next when every lane left waits on another (a cycle of constraints):
    the one that most lanes wait on and that waits on the fewest, as in Eades' heuristic."""
    _, top, li = min(
        (indegree[i] - sum(1 for h in right[i] if not placed[h]), lanes[i].top, i)
        for i in range(len(lanes))
        if not placed[i]
    )
    return top, li


def _fits(starts: list[list[int]], ends: list[list[int]], col: int, top: int, bottom: int) -> bool:
    if col >= len(starts):
        return True
    at = bisect.bisect_left(starts[col], top)
    if at > 0 and ends[col][at - 1] >= top:
        return False
    return at == len(starts[col]) or starts[col][at] > bottom


class Canvas:
    def __init__(self) -> None:
        self.h: list[tuple[int, int, int]] = []  # (row, x from, x to)
        self.v: list[tuple[int, int, int]] = []  # (column, y from, y to)
        self.arrows: list[tuple[int, int]] = []

    def hline(self, y: int, xa: int, xb: int) -> None:
        self.h.append((y, min(xa, xb), max(xa, xb)))

    def vline(self, x: int, ya: int, yb: int) -> None:
        if ya != yb:
            self.v.append((x, min(ya, yb), max(ya, yb)))

    def paint(self, width: int, height: int) -> list[str]:
        grid = [bytearray(width) for _ in range(height)]
        for y, xa, xb in self.h:
            row = grid[y]
            for x in range(xa, xb):
                row[x] |= RIGHT
                row[x + 1] |= LEFT
        for x, ya, yb in self.v:
            for y in range(ya, yb):
                grid[y][x] |= DOWN
                grid[y + 1][x] |= UP
        lines = [row.decode("latin-1").translate(_BOX) for row in grid]  # code point = bits
        for y, x in self.arrows:
            lines[y] = lines[y][:x] + ARROW + lines[y][x + 1 :]
        return lines


def draw_channel(
    canvas: Canvas,
    channel: Channel,
    ys: list[int],
    widths: list[int],
    real: int,
    x_from: int,
    x_jog: int,
    x_to: int,
) -> None:
    """Lines from the sources' right ends (or dummies' full width) to the targets' arrows."""
    for lane in channel.lanes:
        lx = x_jog + 1 + lane.column
        rows = []
        for s in lane.sources:
            y = ys[s]
            start = x_from + widths[s] - 1 if s < real else x_from  # a label's last cell is painted over
            if s in channel.jogs:
                canvas.hline(y, start, x_jog)
                canvas.vline(x_jog, y, y + 1)
                y += 1
                canvas.hline(y, x_jog, lx)
            else:
                canvas.hline(y, start, lx)
            rows.append(y)
        for t in lane.targets:
            y = ys[t]
            canvas.hline(y, lx, x_to - 1 if t < real else x_to)
            if t < real:
                canvas.arrows.append((y, x_to - 1))
            rows.append(y)
        canvas.vline(lx, min(rows), max(rows))
