"""A run's DAG drawn left to right in a terminal: pure layout and rendering, no Textual.

Layers are columns (a step's layer is its longest path from a root), so a wide fan-out grows
downwards and scrolls vertically, which an 80-column terminal handles far better than width.
The steps (the classic Sugiyama recipe, kept small):

1. break cycles (the engine rejects them, but a drawing must never hang on bad input);
2. layer by longest path; edges spanning several layers go through one dummy per layer, shared
   by all long edges of the same source, drawn as a horizontal line;
3. order each layer by barycenter sweeps, keeping the order with the fewest crossings;
4. put each node on the row of its topmost predecessor when free, so chains stay straight,
   and long edges on the row they end up on;
5. route every channel between two layers: each set of sources that share exactly the same
   targets gets one vertical lane, so a line never suggests an edge that does not exist; lanes
   whose rows never meet share a column, so a hundred parallel edges do not take a hundred
   columns.

Cells hold direction bits (up, down, left, right) and the box character is chosen from the
bits at the end, so crossings and junctions come out right whatever was drawn first.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import msgspec
from rich.cells import get_character_cell_size
from rich.style import Style
from rich.text import Text

from dagnats.core.definition import StepDef
from dagnats.core.state import RunState, StepState, item_ids, planner_of
from tui.theme import STEP_STYLE, glyph

Direction = Literal["up", "down", "left", "right"]

MAX_LABEL = 22  # cells, brackets included: a label wider than this is cut with "…"
MAX_NOTE = 8
ROW_GAP = 2  # a node every other row: one blank line between the nodes of a layer
SWEEPS = 4  # barycenter passes (down, up, down, up): enough for a readable order, cheap for 1000 nodes
ARROW = "►"
EDGE_STYLE = "dim"

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


class DagNode(msgspec.Struct, frozen=True):
    id: str
    label: str
    deps: tuple[str, ...]
    status: str
    note: str = ""  # a short suffix such as "2/5" or "×3"


# --- nodes from a run or a plan ---------------------------------------------------------------


def nodes_of(state: RunState, unserved: Collection[str] = ()) -> list[DagNode]:
    """The steps of a run as nodes: the definition's in order, then what planners added;
    `unserved` steps (queued, no live worker serves their task) are noted so.

    Planned steps come last so that the definition's own chain keeps the top row.
    """
    steps = [*state.definition.steps, *state.dynamic.values()]
    known = {s.id for s in steps}
    return [
        DagNode(
            id=step.id,
            label=step.id,
            deps=_deps_of(state, step, known),
            status=state.steps.get(step.id, _NOT_STARTED).status,
            note="unserved" if step.id in unserved else _note_of(state, step),
        )
        for step in steps
    ]


_NOT_STARTED = StepState()


def _deps_of(state: RunState, step: StepDef, known: set[str]) -> tuple[str, ...]:
    deps: Iterable[str] = step.depends_on
    planner = planner_of(step.id) if step.id in state.dynamic else None
    if planner is not None and not step.depends_on:
        deps = (planner,)  # a plan's roots start when the planner has planned: draw that
    return tuple(dict.fromkeys(d for d in deps if d in known and d != step.id))


def _note_of(state: RunState, step: StepDef) -> str:
    st = state.steps.get(step.id, _NOT_STARTED)
    parts = []
    if step.type == "map" and st.items is not None:
        done = sum(
            1 for iid in item_ids(state, step.id) if state.steps.get(iid, _NOT_STARTED).status == "completed"
        )
        parts.append(f"{done}/{st.items}")
    if st.attempts > 1:
        parts.append(f"×{st.attempts}")
    if step.type == "agent_loop" and st.turns:
        parts.append(f"{len(st.turns)} turn{'s' if len(st.turns) != 1 else ''}")
    return " ".join(parts)


def nodes_of_plan(plan: Any) -> list[DagNode]:
    """A planner's proposed plan as pending nodes, before the engine has checked it.

    The plan comes from a model, so anything may arrive: entries that make no sense are left
    out rather than failing the view that wants to show the operator what was proposed.
    """
    entries: list[tuple[str, str, list[str]]] = []
    seen: set[str] = set()
    for raw in _plan_entries(plan):
        if not isinstance(raw, dict):
            continue
        sid = raw.get("id")
        if not isinstance(sid, str) or not sid or sid in seen:
            continue
        seen.add(sid)
        task = raw.get("task") or raw.get("type")
        label = f"{sid} {task}" if isinstance(task, str) and task else sid
        deps = raw.get("depends_on")
        deps = [deps] if isinstance(deps, str) else deps if isinstance(deps, list) else []
        entries.append((sid, label, [d for d in deps if isinstance(d, str)]))
    return [
        DagNode(
            id=sid,
            label=label,
            deps=tuple(dict.fromkeys(d for d in deps if d in seen and d != sid)),
            status="pending",
        )
        for sid, label, deps in entries
    ]


def _plan_entries(plan: Any) -> list[Any]:
    if isinstance(plan, (str, bytes)):
        try:
            plan = msgspec.json.decode(plan)
        except (msgspec.DecodeError, UnicodeDecodeError):
            return []
    if isinstance(plan, dict):
        plan = plan.get("steps")
    return plan if isinstance(plan, list) else []


# --- layout -----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Layout:
    """Where everything goes, in character cells; `render` only paints it."""

    width: int
    height: int
    pos: dict[str, tuple[int, int]]  # node id -> (x, y) of its label's first cell
    layers: list[list[str]]  # real node ids per layer (column), top to bottom
    widths: dict[str, int] = field(default_factory=dict)  # node id -> label width in cells
    nodes: dict[str, DagNode] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list, repr=False)  # the plain drawing, one per row
    labels: list[list[tuple[int, int, str]]] = field(default_factory=list, repr=False)  # per row
    links: dict[str, frozenset[str]] = field(default_factory=dict, repr=False)  # drawn edges, both ways
    where: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)  # id -> (layer, index)

    def neighbor(self, node_id: str, direction: Direction) -> str | None:
        """Where a cursor on `node_id` goes: the next node up or down its column, or the
        nearest-row node in the column to the left or right (preferring one it is linked to)."""
        if node_id not in self.where:
            return None
        li, idx = self.where[node_id]
        if direction in ("up", "down"):
            j = idx - 1 if direction == "up" else idx + 1
            column = self.layers[li]
            return column[j] if 0 <= j < len(column) else None
        if direction not in ("left", "right"):
            return None
        lj = li - 1 if direction == "left" else li + 1
        if not 0 <= lj < len(self.layers):
            return None
        pool = [n for n in self.layers[lj] if n in self.links.get(node_id, ())] or self.layers[lj]
        y0 = self.pos[node_id][1]
        return min(pool, key=lambda n: (abs(self.pos[n][1] - y0), self.pos[n][1]))

    def node_at(self, x: int, y: int) -> str | None:
        """The node whose label covers cell (x, y): for mouse clicks."""
        if not 0 <= y < len(self.labels):
            return None
        return next((nid for x0, x1, nid in self.labels[y] if x0 <= x < x1), None)


@dataclass
class _Graph:
    """Real nodes are 0..real-1 (input order); dummies follow. Edges join adjacent layers only."""

    real: int
    layer: list[int]
    key: list[tuple[int, ...]]  # tie-break: input order, real nodes before dummies
    preds: list[list[int]]
    succs: list[list[int]]

    def add_node(self, layer: int, key: tuple[int, ...]) -> int:
        self.layer.append(layer)
        self.key.append(key)
        self.preds.append([])
        self.succs.append([])
        return len(self.layer) - 1

    def add_edge(self, a: int, b: int) -> None:
        self.succs[a].append(b)
        self.preds[b].append(a)


def layout(nodes: Sequence[DagNode]) -> Layout:
    """Place `nodes` and route their edges. Deterministic: the same nodes, in the same order,
    always get the same drawing, so a live view does not jump about as statuses change."""
    unique: list[DagNode] = []
    index: dict[str, int] = {}
    for node in nodes:
        if node.id not in index:  # the first of each id wins
            index[node.id] = len(unique)
            unique.append(node)
    succs: list[list[int]] = [[] for _ in unique]
    for i, node in enumerate(unique):
        for dep in dict.fromkeys(node.deps):
            if dep in index and index[dep] != i:
                succs[index[dep]].append(i)
    succs = _break_cycles(succs)
    graph = _with_dummies(succs, _longest_path_layers(succs))
    order = _order(graph)
    ys = _place(graph, order)
    _lower_dummies(graph, order, ys)
    labels = [_label_text(n) for n in unique]
    widths = [len(t) for t in labels] + [0] * (len(graph.layer) - graph.real)
    return _draw(unique, labels, graph, order, ys, widths)


def _break_cycles(succs: list[list[int]]) -> list[list[int]]:
    """The edges minus those closing a cycle (back edges of an iterative DFS, in input order)."""
    state = [0] * len(succs)  # 0 unseen, 1 on the stack, 2 finished
    kept: list[list[int]] = [[] for _ in succs]
    for root in range(len(succs)):
        if state[root]:
            continue
        state[root] = 1
        stack = [(root, iter(succs[root]))]
        while stack:
            v, todo = stack[-1]
            for w in todo:
                if state[w] == 1:
                    continue
                kept[v].append(w)
                if state[w] == 0:
                    state[w] = 1
                    stack.append((w, iter(succs[w])))
                    break
            else:
                state[v] = 2
                stack.pop()
    return kept


def _longest_path_layers(succs: list[list[int]]) -> list[int]:
    indegree = [0] * len(succs)
    for outs in succs:
        for w in outs:
            indegree[w] += 1
    layer = [0] * len(succs)
    ready = [v for v in range(len(succs)) if indegree[v] == 0]
    while ready:
        v = ready.pop()
        for w in succs[v]:
            layer[w] = max(layer[w], layer[v] + 1)
            indegree[w] -= 1
            if indegree[w] == 0:
                ready.append(w)
    return layer


def _with_dummies(succs: list[list[int]], layer: list[int]) -> _Graph:
    """Adjacent-layer edges only: a long edge runs through one dummy per layer it crosses.

    All long edges of one source share its dummies, so they read as one line that branches off
    where each target is, instead of a bundle of parallel lines.
    """
    n = len(succs)
    graph = _Graph(n, list(layer), [(0, i) for i in range(n)], [[] for _ in range(n)], [[] for _ in range(n)])
    for u in range(n):
        far = [w for w in succs[u] if layer[w] > layer[u] + 1]
        chain: dict[int, int] = {layer[u]: u}
        for lay in range(layer[u] + 1, max((layer[w] for w in far), default=0)):
            chain[lay] = graph.add_node(lay, (1, u, lay))
            graph.add_edge(chain[lay - 1], chain[lay])
        for w in succs[u]:
            graph.add_edge(chain[layer[w] - 1], w)
    return graph


def _order(graph: _Graph) -> list[list[int]]:
    """Each layer's top-to-bottom order: barycenter sweeps, keeping the fewest crossings."""
    depth = max(graph.layer, default=-1) + 1
    order: list[list[int]] = [[] for _ in range(depth)]
    for v in sorted(range(len(graph.layer)), key=graph.key.__getitem__):
        order[graph.layer[v]].append(v)
    pos = [0] * len(graph.layer)
    _index_positions(order, pos)
    best, fewest = [list(col) for col in order], _crossings(order, graph.succs, pos)
    for sweep in range(SWEEPS):
        if fewest == 0:
            break
        down = sweep % 2 == 0
        near = graph.preds if down else graph.succs
        for lay in range(1, depth) if down else range(depth - 2, -1, -1):
            _sort_column(order[lay], near, pos, graph.key)
        crossings = _crossings(order, graph.succs, pos)
        if crossings < fewest:
            best, fewest = [list(col) for col in order], crossings
    return best


def _sort_column(
    column: list[int], near: list[list[int]], pos: list[int], key: list[tuple[int, ...]]
) -> None:
    column.sort(key=lambda v: (_barycenter(v, near[v], pos), key[v]))
    _index_positions([column], pos)


def _index_positions(columns: list[list[int]], pos: list[int]) -> None:
    for column in columns:
        for i, v in enumerate(column):
            pos[v] = i


def _barycenter(v: int, near: list[int], pos: list[int]) -> float:
    return sum(pos[w] for w in near) / len(near) if near else float(pos[v])


def _crossings(order: list[list[int]], succs: list[list[int]], pos: list[int]) -> int:
    """Edge crossings between adjacent layers: inversions counted with a Fenwick tree."""
    total = 0
    for lay in range(len(order) - 1):
        ends = [pw for _, pw in sorted((pos[u], pos[w]) for u in order[lay] for w in succs[u])]
        size = len(order[lay + 1])
        tree = [0] * (size + 1)
        for seen, x in enumerate(ends):
            i, at_most = x + 1, 0
            while i > 0:
                at_most += tree[i]
                i -= i & -i
            total += seen - at_most
            i = x + 1
            while i <= size:
                tree[i] += 1
                i += i & -i
    return total


def _place(graph: _Graph, order: list[list[int]]) -> list[int]:
    """Rows: each node on its topmost predecessor's row if free, else as high as it fits.

    This keeps chains straight and puts a join level with the first branch, near the top where
    the operator looks first, instead of centring it halfway down a hundred-row fan-out.
    """
    ys = [0] * len(graph.layer)
    for column in order:
        prev = -ROW_GAP
        for v in column:
            want = min((ys[p] for p in graph.preds[v]), default=0)
            ys[v] = max(want, prev + ROW_GAP)
            prev = ys[v]
    return ys


def _lower_dummies(graph: _Graph, order: list[list[int]], ys: list[int]) -> None:
    """Move a long edge's dummies down towards where the edge is going, into free rows.

    Placement pulls every node up towards its predecessors, so a long edge would otherwise take
    the first free row of each layer it passes and step down only at its end, across the lines
    of the nodes it passed. Stepping down early, right after its source, keeps it clear of them.
    """
    for lay in range(len(order) - 2, 0, -1):
        column = order[lay]
        below = float("inf")
        for v in reversed(column):
            if v >= graph.real:
                want = min(ys[w] for w in graph.succs[v])
                ys[v] = max(ys[v], int(min(want, below - ROW_GAP)))
            below = ys[v]


# --- routing ----------------------------------------------------------------------------------


@dataclass
class _Lane:
    """Sources that have exactly the same targets: one vertical line serves them all truthfully."""

    sources: list[int]
    targets: list[int]
    top: int = 0
    bottom: int = 0  # one past the lowest row, for a source that has to step down a row (a jog)
    column: int = 0


@dataclass
class _Channel:
    lanes: list[_Lane]
    columns: int
    jogs: set[int]  # sources whose line leaves on the row below their label


def _route(column: list[int], succs: list[list[int]], ys: list[int]) -> _Channel:
    by_targets: dict[tuple[int, ...], _Lane] = {}
    for u in column:
        if succs[u]:
            targets = tuple(sorted(set(succs[u]), key=ys.__getitem__))
            by_targets.setdefault(targets, _Lane([], list(targets))).sources.append(u)
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
    return _Channel(lanes, columns, jogs)


def _left_of(lanes: list[_Lane], arriving: dict[int, list[int]], ys: list[int]) -> list[list[int]]:
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


def _assign_columns(lanes: list[_Lane], right: list[list[int]]) -> int:
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
    lanes: list[_Lane], right: list[list[int]], indegree: list[int], placed: list[bool]
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


# --- drawing ----------------------------------------------------------------------------------


class _Canvas:
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


def _draw(
    nodes: list[DagNode],
    labels: list[str],
    graph: _Graph,
    order: list[list[int]],
    ys: list[int],
    widths: list[int],
) -> Layout:
    channels = [_route(column, graph.succs, ys) for column in order[:-1]]
    xs: list[int] = []  # where each layer's column starts
    col_width = [max([widths[v] for v in column] + [1]) for column in order]
    x = 0
    for lay, column_width in enumerate(col_width):
        xs.append(x)
        if lay < len(channels):
            x += column_width + channels[lay].columns + 3  # jog cell, lanes, "─►"
    width = x + col_width[-1] if col_width else 0
    canvas = _Canvas()
    for lay, channel in enumerate(channels):
        _draw_channel(canvas, channel, ys, widths, graph.real, xs[lay], xs[lay] + col_width[lay], xs[lay + 1])
    height = max([ys[v] + 1 for v in range(len(ys))] + [y + 1 for y, _, _ in canvas.h] + [0])
    lines = canvas.paint(width, height)
    rows: list[list[tuple[int, int, str]]] = [[] for _ in range(height)]
    pos: dict[str, tuple[int, int]] = {}
    for lay, column in enumerate(order):
        for v in column:
            if v < graph.real:
                y, x0 = ys[v], xs[lay]
                lines[y] = lines[y][:x0] + labels[v] + lines[y][x0 + widths[v] :]
                rows[y].append((x0, x0 + widths[v], nodes[v].id))
                pos[nodes[v].id] = (x0, y)
    layers = [[nodes[v].id for v in column if v < graph.real] for column in order]
    return Layout(
        width=width,
        height=height,
        pos=pos,
        layers=layers,
        widths={n.id: widths[i] for i, n in enumerate(nodes)},
        nodes={n.id: n for n in nodes},
        lines=lines,
        labels=rows,
        links=_links(nodes, graph),
        where={nid: (li, i) for li, layer in enumerate(layers) for i, nid in enumerate(layer)},
    )


def _draw_channel(
    canvas: _Canvas,
    channel: _Channel,
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


def _links(nodes: list[DagNode], graph: _Graph) -> dict[str, frozenset[str]]:
    """Drawn edges between real nodes, both ways, looking through dummies."""
    links: dict[str, set[str]] = {n.id: set() for n in nodes}
    for u in range(graph.real):
        todo = list(graph.succs[u])
        while todo:
            w = todo.pop()
            if w >= graph.real:
                todo.extend(graph.succs[w])
            else:
                links[nodes[u].id].add(nodes[w].id)
                links[nodes[w].id].add(nodes[u].id)
    return {k: frozenset(v) for k, v in links.items()}


def _label_text(node: DagNode) -> str:
    """ "[✓ id note]", at most MAX_LABEL cells: the id is cut before the note, which says more."""
    name = _clean(node.label) or "?"
    note = _clean(node.note)[:MAX_NOTE]
    room = MAX_LABEL - 4 - (len(note) + 1 if note else 0)  # brackets, glyph and its space
    if len(name) > room:
        name = name[: room - 1] + "…"
    return f"[{glyph(node.status)} {name}{' ' + note if note else ''}]"


def _clean(text: str) -> str:
    """One character per cell: the drawing is indexed by cell, so wide characters become "?"
    and zero-width ones (controls, combining marks) are dropped."""
    if text.isascii() and text.isprintable():
        return text
    out = []
    for ch in text:
        size = get_character_cell_size(ch)
        if size == 1:
            out.append(ch)
        elif size > 1:
            out.append("?")
    return "".join(out)


# --- rendering --------------------------------------------------------------------------------


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
