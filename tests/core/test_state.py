"""Run state values: enums that decode from plain strings, the retry phase, attempt currency."""

from __future__ import annotations

import msgspec

from dagnats.core.definition import StepKind, parse_definition
from dagnats.core.state import (
    RunState,
    RunStatus,
    StepPhase,
    StepState,
    StepStatus,
    attempt_superseded,
    fork_keeps,
    public_status,
    step_phase,
)

WF = {
    "name": "wf",
    "steps": [{"id": "a", "task": "t"}, {"id": "b", "type": "sleep", "config": {"duration": 5}}],
}


def test_a_snapshot_written_with_plain_strings_decodes_to_enums():
    snapshot = (
        b'{"run_id":"r1","workflow":"wf","version":1,'
        b'"definition":{"name":"wf","steps":[{"id":"a","task":"t"},'
        b'{"id":"b","type":"sleep","config":{"duration":5}}]},'
        b'"status":"waiting","steps":{"a":{"status":"waiting","attempts":1,"retry_at":12.5},'
        b'"b":{"status":"completed"}}}'
    )
    state = msgspec.json.decode(snapshot, type=RunState)
    assert state.status is RunStatus.WAITING and state.status == "waiting"
    assert state.steps["a"].status is StepStatus.WAITING
    assert state.steps["b"].status == "completed"
    assert state.definition.steps[1].type is StepKind.SLEEP and state.definition.steps[0].type == "task"
    # Written before the retry phase existed (status waiting, retry_at set): it waits for its retry.
    assert step_phase(state.steps["a"]) is StepPhase.RETRY_WAIT
    assert public_status(step_phase(state.steps["a"])) is StepStatus.WAITING
    again = msgspec.json.encode(state)
    assert b'"status":"waiting"' in again and b'"type":"sleep"' in again
    assert msgspec.json.decode(again, type=RunState) == state


def _state(**steps: StepState) -> RunState:
    wf = parse_definition(WF)
    return RunState(run_id="r", workflow="wf", version=1, definition=wf, steps=steps)


def test_attempt_superseded():
    running = StepState(status=StepStatus.RUNNING, attempts=2)
    assert not attempt_superseded(_state(a=running), "a", 2)
    assert attempt_superseded(_state(a=running), "a", 1)  # a later attempt exists
    assert not attempt_superseded(_state(a=running), "unknown", 1)
    done = StepState(status=StepStatus.COMPLETED, attempts=2)
    assert attempt_superseded(_state(a=done), "a", 2)
    retrying = StepState(status=StepStatus.WAITING, attempts=2, retry_at=5.0)
    assert attempt_superseded(_state(a=retrying), "a", 2)
    ended = msgspec.structs.replace(_state(a=running), status=RunStatus.CANCELLED)
    assert attempt_superseded(ended, "a", 2)


def test_fork_keeps_what_is_upstream():
    wf = parse_definition(
        {
            "name": "wf",
            "steps": [
                {"id": "a", "task": "t"},
                {"id": "s", "task": "t"},
                {"id": "c", "task": "t", "depends_on": ["a"]},
            ],
        }
    )
    state = RunState(
        run_id="r",
        workflow="wf",
        version=1,
        definition=wf,
        steps={
            "a": StepState(status=StepStatus.COMPLETED, output=1),
            "s": StepState(status=StepStatus.SKIPPED),
            "c": StepState(status=StepStatus.COMPLETED, output=2),
        },
    )
    assert fork_keeps(state, "c") == ({"a": 1}, ["s"])
    assert fork_keeps(state, "a") == ({}, ["s"])
