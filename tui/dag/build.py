"""The graph of a run or a plan, as DagNodes: what to draw, before any layout."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

import msgspec

from dagnats.core.definition import StepDef
from dagnats.core.state import RunState, StepState, item_ids, planner_of


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
