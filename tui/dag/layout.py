"""Where every node and line of a DAG goes, in character cells (steps 1-4 of the recipe in
tui.dag; routing is in tui.dag.route). Plain strings only: tui.dag.draw styles them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from rich.cells import get_character_cell_size

from tui.dag.build import DagNode
from tui.dag.route import Canvas, draw_channel, route
from tui.theme import glyph

Direction = Literal["up", "down", "left", "right"]

MAX_LABEL = 22  # cells, brackets included: a label wider than this is cut with "…"
MAX_NOTE = 8
ROW_GAP = 2  # a node every other row: one blank line between the nodes of a layer
SWEEPS = 4  # barycenter passes (down, up, down, up): enough for a readable order, cheap for 1000 nodes


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


def _draw(
    nodes: list[DagNode],
    labels: list[str],
    graph: _Graph,
    order: list[list[int]],
    ys: list[int],
    widths: list[int],
) -> Layout:
    channels = [route(column, graph.succs, ys) for column in order[:-1]]
    xs: list[int] = []  # where each layer's column starts
    col_width = [max([widths[v] for v in column] + [1]) for column in order]
    x = 0
    for lay, column_width in enumerate(col_width):
        xs.append(x)
        if lay < len(channels):
            x += column_width + channels[lay].columns + 3  # jog cell, lanes, "─►"
    width = x + col_width[-1] if col_width else 0
    canvas = Canvas()
    for lay, channel in enumerate(channels):
        draw_channel(canvas, channel, ys, widths, graph.real, xs[lay], xs[lay] + col_width[lay], xs[lay + 1])
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
