"""The shared steps table (core/steps.py) and the tally of steps (core/tally.py): a fold that
uses them makes the same states as one that copies and scans, and a big map is folded
without counting or copying its whole table per event."""

from __future__ import annotations

from typing import Any

import pytest
from test_replay_property import SEEDS, World

import dagnats.core.steps as steps_module
import dagnats.core.tally as tally_module
from dagnats.core.actions import AppendEvent, DispatchTask
from dagnats.core.decide import decide, replay
from dagnats.core.definition import parse_definition
from dagnats.core.events import Event, RunStarted, StepCompleted, StepFailed, TimerFired
from dagnats.core.state import BUSY, SLOT_PHASES, RunState, StepState, StepStatus, item_id, step_phase
from dagnats.core.steps import Steps, plain, with_step
from dagnats.core.tally import Tally, tally


def counts(t: Tally) -> Any:
    maps = {
        sid: (m.count, m.completed, m.active, sorted(m.failed), sorted(m.pending), list(m.pending_in_order()))
        for sid, m in t.maps.items()
    }
    return t.busy, t.waiting, maps


def scanned(state: RunState) -> Any:
    """What `counts` must say, by a scan of every step (the way the core worked before)."""
    steps = state.steps
    busy = sum(1 for s in steps.values() if s.status in BUSY)
    waiting = sum(1 for s in steps.values() if s.status == StepStatus.WAITING)
    maps = {}
    for sid, step in steps.items():
        if step.items is None:
            continue
        items = [steps[item_id(sid, i)] for i in range(step.items)]
        pending = [i for i, item in enumerate(items) if item.status == StepStatus.PENDING]
        maps[sid] = (
            step.items,
            sum(1 for item in items if item.status == StepStatus.COMPLETED),
            sum(1 for item in items if step_phase(item) in SLOT_PHASES),
            [i for i, item in enumerate(items) if item.status == StepStatus.FAILED],
            pending,
            pending,
        )
    return busy, waiting, maps


class Checked(World):
    """The property test's world, checking after every event that the tally carried along
    equals a scan of the table, and so does a fresh count."""

    def apply(self, event: Event) -> RunState:
        new = super().apply(event)
        assert counts(tally(new.steps)) == scanned(new)
        assert counts(Tally(plain(new.steps))) == scanned(new)
        return new


def _play(world: World) -> World:
    while not world.st.terminal and world.step():
        pass
    return world


@pytest.mark.parametrize("seed", SEEDS)
def test_every_table_shared_gives_the_states_of_plain_dicts(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain_world = _play(World(seed))
    monkeypatch.setattr(steps_module, "SHARED_FROM", 0)  # every table shared,
    monkeypatch.setattr(steps_module, "_MIN_OVER", 1)  # merged into a new base often
    shared = _play(Checked(seed))
    assert shared.recorded == plain_world.recorded
    for a, b in zip(shared.states, plain_world.states, strict=True):
        assert a == b
        assert list(a.steps) == list(b.steps)  # the same order too
    assert replay(shared.recorded) == shared.st


def test_a_shared_table_reads_as_the_dict_it_stands_for() -> None:
    base = {f"s{i}": StepState() for i in range(600)}
    done = StepState(status=StepStatus.COMPLETED)
    table = with_step(base, "s5", done)
    assert isinstance(table, Steps)
    assert base["s5"] == StepState()  # the input is left as it was
    for i in range(300):  # enough to merge the changes into a new base several times
        table = with_step(table, f"new{i}", done)
    table = with_step(table, "s7", done)
    expected = dict(base, s5=done, s7=done, **{f"new{i}": done for i in range(300)})
    assert table == expected and dict(table) == expected
    assert list(table) == list(expected)
    assert len(table) == 900 and "new299" in table and "nope" not in table
    assert table.get("nope") is None and table["s7"] == done
    assert plain(table) == expected and type(plain(table)) is dict


def _big_map_run(items: int, concurrency: int = 0) -> RunState:
    wf = parse_definition(
        {
            "name": "big",
            "steps": [
                {
                    "id": "each",
                    "type": "map",
                    "input": "${input}",
                    "config": {"task": "echo", "max_items": items, "concurrency": concurrency},
                    "retry": {"max_attempts": 2, "backoff": "fixed", "initial": "1s"},
                }
            ],
        }
    )
    start = RunStarted(at=1.0, run_id="r", workflow="big", version=1, definition=wf, input=list(range(items)))
    state, actions = decide(None, start, first_only=True)
    queue = [a.event for a in actions if isinstance(a, AppendEvent)]
    tasks: list[DispatchTask] = []
    while not state.terminal:
        if queue:
            event: Event = queue.pop(0)
        else:  # the engine has nothing to record: a worker answers the oldest task
            task = tasks.pop(0)
            if task.input == items // 2 and task.attempt == 1:
                event = StepFailed(at=2.0, step_id=task.step_id, attempt=1, error="once", retryable=True)
            else:
                event = StepCompleted(at=2.0, step_id=task.step_id, attempt=task.attempt, output=task.input)
        state, actions = decide(state, event, first_only=True)
        queue = [a.event for a in actions if isinstance(a, AppendEvent)]
        tasks += [a for a in actions if isinstance(a, DispatchTask)]
        if not queue and not tasks and not state.terminal:  # a retry is due: its timer fires
            retry = state.steps[f"each[{items // 2}]"]
            assert retry.retry_at is not None
            queue = [TimerFired(at=3.0, kind="retry", step_id=f"each[{items // 2}]", attempt=1)]
    return state


def test_a_big_map_is_counted_once_not_per_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a timing: the number of full counts of the table and of whole-table copies, which
    made every event of a map cost O(items)."""
    made = []
    real = tally_module.Tally.__init__

    def counting(self: Tally, steps: Any) -> None:
        if len(steps) > 100:
            made.append(len(steps))
        real(self, steps)

    monkeypatch.setattr(tally_module.Tally, "__init__", counting)
    copies = []
    merge = Steps.replaced

    def replaced(self: Steps, sid: str, step: StepState) -> Steps:
        out = merge(self, sid, step)
        if out._base is not self._base:
            copies.append(sid)
        return out

    monkeypatch.setattr(Steps, "replaced", replaced)
    for concurrency in (0, 7):
        made.clear()
        copies.clear()
        state = _big_map_run(2000, concurrency)
        assert state.status == "completed"
        assert state.output == list(range(2000))
        assert len(made) <= 2, made  # at the expansion (and the retried item's branch, if any)
        events = state.events
        assert len(copies) <= events // 40, (len(copies), events)  # merged every ~sqrt(2000) changes
        assert state.steps["each[1000]"].attempts == 2
