"""Agent transcripts over the NATS payload limit go to the object store (issue 13).

An `agent.turn` whose text (or a tool call's arguments) and an `agent.tool_result` whose
result would not fit in a message carry references, the objects written first; the fold keeps
the references; the agent's next turn, `Client.run` and `run show --json` see the real text.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgspec

from dagnats.agent import tools
from dagnats.core.decide import replay
from dagnats.core.events import AgentTurnRecorded, ToolResultRecorded, encode_event
from dagnats.core.values import is_ref, ref_of
from dagnats.ports import MAX_EVENT_BYTES, resolve_state

from conftest import cli_env, dagnats_json

BIG_FILE = 2_000_000
BIG_TEXT = 1_500_000


def _flow(workdir: Path) -> dict:
    script = [
        {"text": "Reading it.", "tool_calls": [{"name": "read_file", "arguments": {"path": "big.txt"}}]},
        # parks for an operator: the next activation rebuilds the conversation from the history
        {
            "text": "Noting it.",
            "tool_calls": [{"name": "write_file", "arguments": {"path": "o", "content": "k"}}],
        },
        {"text": "y", "repeat": BIG_TEXT},  # a 1.5 MB answer: the last turn
    ]
    cfg = {
        "provider": "scripted",
        "script": script,
        "tools": ["read_file", "write_file"],
        "approve_tools": ["write_file"],
        "workdir": str(workdir),
    }
    return {"name": "reader", "steps": [{"id": "agent", "type": "agent_loop", "config": cfg}]}


async def test_a_2mb_tool_result_and_a_1_5mb_turn_go_to_the_object_store(stack, tmp_path, monkeypatch):
    monkeypatch.setattr(tools, "OUTPUT_CAP", 4 * BIG_FILE)  # let the model read a big file
    work = tmp_path / "work"
    work.mkdir()
    (work / "big.txt").write_text("x" * BIG_FILE)
    await stack.start()
    await stack.register(_flow(work))
    run_id = await stack.client.start("reader", "read big.txt")
    for _ in range(600):
        if await stack.client.approvals():
            break
        await asyncio.sleep(0.05)
    await stack.client.decide(run_id, "agent", approved=True)
    state = await asyncio.wait_for(stack.client.wait(run_id), 60)
    assert state.status == "completed", state.error
    # Client.run reads the transcript back
    turns = state.steps["agent"].turns
    assert turns[0].results["call_0_0"].result == "x" * BIG_FILE
    assert turns[2].text == "y" * BIG_TEXT
    assert state.output["text"] == "y" * BIG_TEXT  # the step's output, itself offloaded
    # the last turn, in a new activation, saw the whole result: the scripted provider counts 4 characters a token
    assert turns[2].usage["input_tokens"] >= BIG_FILE // 4
    # the history holds references, each under the message limit, and folds to the same state
    history = [e for _, e in await stack.store.read_history(state.run_id)]
    result = next(e for e in history if isinstance(e, ToolResultRecorded))
    turn = [e for e in history if isinstance(e, AgentTurnRecorded)][2]
    assert result.result == ref_of(msgspec.json.encode("x" * BIG_FILE))
    assert turn.text == ref_of(msgspec.json.encode("y" * BIG_TEXT))
    assert all(len(encode_event(e)) <= MAX_EVENT_BYTES for e in history)
    folded = replay(history)
    assert folded is not None and is_ref(folded.steps["agent"].turns[2].text)
    assert await resolve_state(stack.store, folded) == await resolve_state(stack.store, state)
    # the client's events read the values back too
    events = [e for _, e in await stack.client.events(state.run_id)]
    assert next(e for e in events if isinstance(e, ToolResultRecorded)).result == "x" * BIG_FILE
    # run show --json shows the real text (the step's output: it does not list turns)
    env = cli_env(DAGNATS_NATS_USER="operator", DAGNATS_NATS_PASSWORD=stack.creds.operator)
    args = ("run", "show", state.run_id, "--nats", stack.server.url)
    shown = await asyncio.to_thread(dagnats_json, *args, env=env)
    assert shown["steps"]["agent"]["output"]["text"] == "y" * BIG_TEXT  # (it lists no turns)


def test_an_old_transcript_folds_the_same():
    """A history written before references (plain strings) folds as it always did."""
    from dagnats.core.definition import parse_definition
    from dagnats.core.events import RunStarted, StepQueued, StepStarted

    wf = parse_definition(_flow(Path("/tmp/w")))
    call = {"id": "c0", "name": "read_file", "arguments": {"path": "a"}}
    history = [
        RunStarted(at=1.0, run_id="r", workflow="reader", version=1, definition=wf, input="go"),
        StepQueued(at=1.0, step_id="agent", attempt=1),
        StepStarted(at=1.0, step_id="agent", attempt=1),
        AgentTurnRecorded(at=2.0, step_id="agent", attempt=1, turn=0, text="hi", tool_calls=[call]),
        ToolResultRecorded(
            at=3.0, step_id="agent", attempt=1, turn=0, call_id="c0", name="read_file", result="ok"
        ),
    ]
    raw = [json.loads(encode_event(e)) for e in history]
    decoded = [msgspec.convert(r, type(e)) for r, e in zip(raw, history)]
    state = replay(decoded)
    assert state is not None
    turn = state.steps["agent"].turns[0]
    assert turn.text == "hi" and turn.results["c0"].result == "ok" and turn.tool_calls == [call]
