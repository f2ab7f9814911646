"""The console's DAG drawing: layout, routing and rendering, checked on the character grid."""

from __future__ import annotations

import random
import time
from collections import deque
from typing import Any

import pytest
from rich.cells import cell_len

from dagnats.core.actions import Action, AppendEvent, StartTimer
from dagnats.core.decide import decide
from dagnats.core.definition import parse_definition
from dagnats.core.events import (
    AgentTurnRecorded,
    Event,
    RunStarted,
    StepCompleted,
    StepFailed,
    StepStarted,
    TimerFired,
)
from dagnats.core.state import RunState
from tui.dag import MAX_LABEL, DagNode, Layout, layout, nodes_of, nodes_of_plan, render
from tui.theme import RUN_GLYPH, STEP_GLYPH, status_text


def node(sid: str, *deps: str, status: str = "completed", note: str = "") -> DagNode:
    return DagNode(id=sid, label=sid, deps=deps, status=status, note=note)


def drawn(nodes: list[DagNode], selected: str | None = None) -> tuple[Layout, list[str]]:
    """Lay out and render, checking what every drawing must satisfy: one width for all lines."""
    lay = layout(nodes)
    lines = render(lay, selected)
    assert len(lines) == lay.height
    assert all(cell_len(t.plain) == lay.width for t in lines)
    return lay, [t.plain for t in lines]


# --- a checker that follows lines on the character grid ---------------------------------------

UP, DOWN, LEFT, RIGHT = (0, -1), (0, 1), (-1, 0), (1, 0)
OPENS = {
    "─": {LEFT, RIGHT},
    "│": {UP, DOWN},
    "┌": {DOWN, RIGHT},
    "┐": {DOWN, LEFT},
    "└": {UP, RIGHT},
    "┘": {UP, LEFT},
    "├": {UP, DOWN, RIGHT},
    "┤": {UP, DOWN, LEFT},
    "┬": {DOWN, LEFT, RIGHT},
    "┴": {UP, LEFT, RIGHT},
    "┼": {UP, DOWN, LEFT, RIGHT},
}


def reached(lay: Layout, lines: list[str], source: str) -> set[str]:
    """Targets whose arrow can be reached from `source`'s right end along connected box cells."""
    x, y = lay.pos[source]
    start = (x + lay.widths[source], y)
    label_at = {(lay.pos[n][0] - 1, lay.pos[n][1]): n for n in lay.pos}
    found: set[str] = set()
    if start[0] >= lay.width or LEFT not in OPENS.get(lines[y][start[0]], set()):
        return found
    seen = {start}
    todo = deque([start])
    while todo:
        cx, cy = todo.popleft()
        for dx, dy in OPENS[lines[cy][cx]]:
            nx, ny = cx + dx, cy + dy
            if not (0 <= ny < len(lines) and 0 <= nx < lay.width) or (nx, ny) in seen:
                continue
            char = lines[ny][nx]
            if char == "►" and (dx, dy) == RIGHT:
                found.add(label_at[(nx, ny)])
            elif (-dx, -dy) in OPENS.get(char, set()):
                seen.add((nx, ny))
                todo.append((nx, ny))
    return found


def assert_every_edge_drawn(nodes: list[DagNode], lay: Layout, lines: list[str]) -> None:
    for n in nodes:
        for dep in n.deps:
            assert n.id in reached(lay, lines, dep), f"{dep} -> {n.id} not drawn:\n" + "\n".join(lines)


def random_dag(seed: int, size: int, density: float) -> list[DagNode]:
    rng = random.Random(seed)
    return [
        node(
            f"n{i}",
            *(f"n{j}" for j in range(i) if rng.random() < density),
            status=rng.choice(list(STEP_GLYPH)),
        )
        for i in range(size)
    ]


def fan(width: int) -> list[DagNode]:
    """1 -> width parallel -> 1, plus a few: what a map-like run looks like."""
    items = [f"item-{i}" for i in range(width)]
    return [
        node("start"),
        node("prep", "start"),
        *(node(i, "prep", status="running") for i in items),
        node("join", *items, status="pending"),
        node("report", "join", status="pending"),
        node("notify", "report", "prep", status="pending"),
        node("audit", "start"),
    ]


# --- shapes -----------------------------------------------------------------------------------


def test_a_chain_is_one_row_joined_by_arrows() -> None:
    lay, lines = drawn([node("a"), node("b", "a"), node("c", "b", status="running")])
    assert lines == ["[✓ a]───►[✓ b]───►[● c]"]
    assert lay.layers == [["a"], ["b"], ["c"]]
    assert lay.pos == {"a": (0, 0), "b": (9, 0), "c": (18, 0)}


def test_a_diamond_puts_both_branches_in_one_layer() -> None:
    nodes = [node("a"), node("b", "a"), node("c", "a"), node("d", "b", "c")]
    lay, lines = drawn(nodes)
    assert lay.layers == [["a"], ["b", "c"], ["d"]]
    assert lines == [
        "[✓ a]─┬─►[✓ b]─┬─►[✓ d]",
        "      │        │       ",
        "      └─►[✓ c]─┘       ",
    ]
    assert_every_edge_drawn(nodes, lay, lines)


def test_a_long_edge_runs_through_the_layers_it_skips() -> None:
    nodes = [node("a"), node("b", "a"), node("c", "b"), node("d", "c", "a", "b")]
    lay, lines = drawn(nodes)
    assert lay.layers == [["a"], ["b"], ["c"], ["d"]]
    assert lines == [
        "[✓ a]─┬─►[✓ b]─┬─►[✓ c]─┬─►[✓ d]",
        "      │        │        │       ",
        "      │        └────────┤       ",
        "      │                 │       ",
        "      └─────────────────┘       ",
    ]
    assert_every_edge_drawn(nodes, lay, lines)


def test_lanes_keep_sources_with_different_targets_apart() -> None:
    nodes = [node("s1"), node("s2"), node("t1", "s1", "s2"), node("t2", "s1"), node("t3", "s2")]
    lay, lines = drawn(nodes)
    assert lines == [
        "[✓ s1]──┬─►[✓ t2]",
        "        │        ",
        "[✓ s2]─┬┴─►[✓ t1]",
        "       │         ",
        "       └──►[✓ t3]",
    ]
    assert_every_edge_drawn(nodes, lay, lines)


def test_a_source_steps_down_a_row_rather_than_merge_into_another_line() -> None:
    nodes = [node("a"), node("b"), node("c", "a", "b"), node("d", "b"), node("e", "a", "b")]
    lay, lines = drawn(nodes)
    assert lines == [
        "[✓ a]─┬┬─►[✓ c]",
        "      ││       ",
        "[✓ b]┐└┼─►[✓ e]",
        "     └─┤       ",
        "       └─►[✓ d]",
    ]
    assert_every_edge_drawn(nodes, lay, lines)


@pytest.mark.parametrize("seed", range(40))
def test_every_edge_of_a_random_dag_is_drawn(seed: int) -> None:
    rng = random.Random(seed)
    nodes = random_dag(seed, rng.randint(2, 25), rng.uniform(0.05, 0.5))
    lay, lines = drawn(nodes)
    assert_every_edge_drawn(nodes, lay, lines)
    assert sorted(n for layer in lay.layers for n in layer) == sorted(n.id for n in nodes)
    for n in nodes:  # layers go left to right along every edge
        for dep in n.deps:
            assert lay.pos[dep][0] < lay.pos[n.id][0]


def test_a_fan_out_of_100_grows_down_and_stays_narrow() -> None:
    nodes = fan(100)
    lay, lines = drawn(nodes)
    assert lay.layers[2] == [f"item-{i}" for i in range(100)]
    rows = [lay.pos[f"item-{i}"][1] for i in range(100)]
    assert rows == sorted(rows) and len(set(rows)) == 100
    assert all(b - a >= 2 for a, b in zip(rows, rows[1:]))  # a blank line between nodes
    assert lay.width <= 80
    assert lay.pos["join"][1] == 0  # level with the first branch, on the first screen
    assert_every_edge_drawn(nodes, lay, lines)


def test_120_nodes_take_well_under_50ms_and_1000_still_finish() -> None:
    nodes = fan(114)
    assert len(nodes) == 120
    best = min(_timed(nodes) for _ in range(3))
    assert best < 0.05, f"{best * 1000:.1f} ms"
    assert _timed(fan(994)) < 1.0
    rng = random.Random(7)
    tangled = [
        node(f"n{i}", *(f"n{j}" for j in rng.sample(range(max(0, i - 30), i), min(i, rng.randint(0, 3)))))
        for i in range(1000)
    ]
    assert _timed(tangled) < 3.0  # a pathological shape: must finish, need not be quick


def _timed(nodes: list[DagNode]) -> float:
    start = time.perf_counter()
    render(layout(nodes), nodes[0].id)
    return time.perf_counter() - start


def test_cycles_do_not_hang_and_every_node_is_still_drawn() -> None:
    nodes = [node("a", "c"), node("b", "a"), node("c", "b"), node("d", "d", "c"), node("e", "e")]
    lay, lines = drawn(nodes)
    assert sorted(n for layer in lay.layers for n in layer) == ["a", "b", "c", "d", "e"]
    assert "b" in reached(lay, lines, "a") and "c" in reached(lay, lines, "b")


def test_unknown_deps_and_duplicate_ids_are_ignored() -> None:
    lay, lines = drawn([node("a", "ghost"), node("b", "a"), node("a", "b")])
    assert lay.layers == [["a"], ["b"]]
    assert lines == ["[✓ a]───►[✓ b]"]


def test_empty_graph() -> None:
    lay = layout([])
    assert (lay.width, lay.height, lay.layers) == (0, 0, [])
    assert render(lay) == []


def test_labels_are_cut_to_a_fixed_width_keeping_the_note() -> None:
    long = "a-very-long-step-identifier-indeed"
    lay, lines = drawn([node(long, note="12/100"), node("wide\u4e2d\u0301\x07", long)])
    assert lay.widths[long] == MAX_LABEL
    assert lines[0].startswith("[✓ a-very-lon… 12/100]")
    assert "[✓ wide?]" in lines[0]  # wide characters take one cell as "?", invisible ones go


# --- cursor and selection ---------------------------------------------------------------------


def test_neighbor_moves_along_layers_and_edges() -> None:
    lay = layout([node("a"), node("b", "a"), node("c", "a"), node("d", "b", "c"), node("x", "c")])
    assert lay.layers == [["a"], ["b", "c"], ["d", "x"]]
    assert lay.neighbor("a", "right") == "b"
    assert lay.neighbor("b", "down") == "c"
    assert lay.neighbor("c", "down") is None
    assert lay.neighbor("c", "up") == "b"
    assert lay.neighbor("b", "up") is None
    assert lay.neighbor("c", "right") == "x"  # its own successor on the nearest row
    assert lay.neighbor("x", "left") == "c"
    assert lay.neighbor("d", "left") == "b"
    assert lay.neighbor("a", "left") is None
    assert lay.neighbor("d", "right") is None
    assert lay.neighbor("ghost", "right") is None
    x, y = lay.pos["c"]
    assert lay.node_at(x + 2, y) == "c" and lay.node_at(x - 1, y) is None


def test_the_selected_node_is_reversed_in_its_status_style() -> None:
    nodes = [node("a"), node("b", "a", status="failed")]
    lay = layout(nodes)
    line = render(lay, selected="b")[0]
    styles = {line.plain[s.start : s.end]: s.style for s in line.spans}
    assert styles["[✗ b]"].reverse and styles["[✗ b]"].color.name == "red"
    assert not styles["[✓ a]"].reverse and styles["[✓ a]"].color.name == "green"
    assert line.style == "dim"  # the edges
    assert not any(s.style.reverse for s in render(lay, selected=None)[0].spans)


# --- nodes of a run and of a plan -------------------------------------------------------------


class Driver:
    """Plays the engine: folds each event and appends what `decide` derives, depth first."""

    def __init__(self, definition: dict[str, Any]) -> None:
        wf = parse_definition(definition)
        self.state: RunState | None = None
        self.effects: list[Action] = []
        self.send(RunStarted(at=1.0, run_id="r1", workflow=wf.name, version=1, definition=wf))

    def send(self, event: Event) -> None:
        self.state, actions = decide(self.state, event)
        for action in actions:
            if isinstance(action, AppendEvent):
                self.send(action.event)
            else:
                self.effects.append(action)

    @property
    def st(self) -> RunState:
        assert self.state is not None
        return self.state


def test_nodes_of_a_run_show_statuses_map_progress_attempts_turns_and_planned_steps() -> None:
    run = Driver(
        {
            "name": "flow",
            "steps": [
                {"id": "setup", "task": "work"},
                {"id": "plan", "type": "planner", "depends_on": ["setup"], "config": {"task": "planit"}},
                {"id": "fan", "type": "map", "depends_on": ["setup"], "config": {"task": "work"}},
                {
                    "id": "fix",
                    "type": "agent_loop",
                    "depends_on": ["setup"],
                    "config": {"provider": "scripted", "script": [{"text": "done"}]},
                },
                {"id": "flaky", "task": "work", "depends_on": ["setup"], "retry": {"max_attempts": 3}},
                {"id": "ship", "task": "work", "depends_on": ["plan", "fan", "fix", "flaky"]},
            ],
        }
    )
    run.send(StepCompleted(at=2.0, step_id="setup", attempt=1, output=[1, 2, 3]))
    run.send(StepCompleted(at=3.0, step_id="fan[0]", attempt=1, output=1))
    plan = {"steps": [{"id": "try", "task": "work"}, {"id": "look", "task": "work", "depends_on": ["try"]}]}
    run.send(StepCompleted(at=3.0, step_id="plan", attempt=1, output=plan))
    run.send(StepStarted(at=4.0, step_id="fix", attempt=1))
    run.send(AgentTurnRecorded(at=4.0, step_id="fix", attempt=1, turn=0, text="done"))
    run.send(StepFailed(at=5.0, step_id="flaky", attempt=1, error="boom"))
    retry = next(a for a in run.effects if isinstance(a, StartTimer) and a.step_id == "flaky")
    run.send(TimerFired(at=retry.fire_at, kind=retry.kind, step_id="flaky", attempt=retry.attempt))

    nodes = nodes_of(run.st)
    assert nodes == [
        DagNode("setup", "setup", (), "completed"),
        DagNode("plan", "plan", ("setup",), "running"),
        DagNode("fan", "fan", ("setup",), "running", note="1/3"),
        DagNode("fix", "fix", ("setup",), "running", note="1 turn"),
        DagNode("flaky", "flaky", ("setup",), "queued", note="×2"),
        DagNode("ship", "ship", ("plan", "fan", "fix", "flaky"), "pending"),
        DagNode("plan.try", "plan.try", ("plan",), "queued"),  # a plan's root hangs off its planner
        DagNode("plan.look", "plan.look", ("plan.try",), "pending"),
    ]
    lay, lines = drawn(nodes, selected="fan")
    assert_every_edge_drawn(nodes, lay, lines)
    assert lay.pos["setup"] == (0, 0) and lay.pos["plan"][1] == 0  # the definition keeps the top row
    assert "[● fan 1/3]" in "\n".join(lines)


def test_nodes_of_a_plan_are_pending_and_labelled_with_their_task() -> None:
    plan = {"steps": [{"id": "a", "task": "shell"}, {"id": "b", "task": "shell", "depends_on": ["a"]}]}
    assert nodes_of_plan(plan) == [
        DagNode("a", "a shell", (), "pending"),
        DagNode("b", "b shell", ("a",), "pending"),
    ]
    assert nodes_of_plan('{"steps": [{"id": "a", "type": "task"}]}') == [
        DagNode("a", "a task", (), "pending")
    ]
    _, lines = drawn(nodes_of_plan(plan))
    assert lines == ["[○ a shell]───►[○ b shell]"]


@pytest.mark.parametrize(
    "garbage",
    [
        None,
        5,
        "nope",
        "{",
        b"\xff",
        [],
        {},
        {"steps": 3},
        {"steps": "x"},
        [1, None, "a"],
        {"steps": [{"id": []}]},
    ],
)
def test_nodes_of_a_malformed_plan_is_empty(garbage: Any) -> None:
    assert nodes_of_plan(garbage) == []


def test_nodes_of_a_partly_malformed_plan_keep_what_makes_sense() -> None:
    plan = {
        "steps": [
            1,
            None,
            {"id": 5},
            {"id": ""},
            {"id": "a", "depends_on": "zzz", "task": 7},
            {"id": "a", "task": "dup"},
            {"id": "b", "depends_on": ["a", 7, "missing", "b", "a"], "task": "t"},
            {"id": "c", "depends_on": "a"},
        ]
    }
    assert nodes_of_plan(plan) == [
        DagNode("a", "a", (), "pending"),
        DagNode("b", "b t", ("a",), "pending"),
        DagNode("c", "c", ("a",), "pending"),
    ]


# --- theme ------------------------------------------------------------------------------------


def test_status_glyphs_are_one_cell_and_status_text_is_styled() -> None:
    assert all(cell_len(g) == 1 for g in [*STEP_GLYPH.values(), *RUN_GLYPH.values()])
    text = status_text("completed")
    assert text.plain == "✓ completed" and text.style == "green"
    assert status_text("continued", run=True).plain == "↪ continued"
    assert status_text("whatever").plain == "? whatever"
