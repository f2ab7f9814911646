"""agent_loop steps: the scripted provider, tools, approvals of tool calls, bounds, forks, crashes."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dagnats import Worker
from dagnats.core.events import AgentTurnRecorded, ToolResultRecorded

SCRIPT = [
    {
        "text": "I will write the file.",
        "tool_calls": [{"name": "write_file", "arguments": {"path": "hello.txt", "content": "hi"}}],
    },
    {"text": "Now I check it.", "tool_calls": [{"name": "read_file", "arguments": {"path": "hello.txt"}}]},
    {"text": "The file says hi."},
]


def agent_step(workdir: Path | None = None, **config) -> dict:
    cfg = {
        "provider": "scripted",
        "script": SCRIPT,
        "tools": ["read_file", "write_file", "list_files", "run_command"],
    }
    if workdir is not None:
        cfg["workdir"] = str(workdir)
    cfg.update(config)
    return {"id": "agent", "type": "agent_loop", "config": cfg}


async def _wait_status(client, run_id, status, tries=200):
    for _ in range(tries):
        state = await client.run(run_id)
        if state.status == status:
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} never became {status}: {state.status}")


async def test_scripted_agent_uses_tools_and_records_each_turn(stack, tmp_path):
    await stack.start()
    await stack.register({"name": "agent", "steps": [agent_step(tmp_path / "work")]})
    state = await stack.run_to_end("agent", "write hello.txt")
    assert state.status == "completed", state.error
    assert state.output == {"text": "The file says hi.", "turns": 3, "usage": state.output["usage"]}
    assert state.output["usage"]["output_tokens"] > 0
    assert (tmp_path / "work" / "hello.txt").read_text() == "hi"
    events = [e for _, e in await stack.client.events(state.run_id)]
    turns = [e for e in events if isinstance(e, AgentTurnRecorded)]
    results = [e for e in events if isinstance(e, ToolResultRecorded)]
    assert [t.turn for t in turns] == [0, 1, 2] and all(t.source == "w" for t in turns)
    assert [(r.name, r.result, r.is_error) for r in results] == [
        ("write_file", "wrote 2 bytes to hello.txt", False),
        ("read_file", "hi", False),
    ]
    transcript = state.steps["agent"].turns
    assert [t.text for t in transcript] == [s["text"] for s in SCRIPT]


async def test_tool_errors_go_back_to_the_model(stack, tmp_path):
    script = [
        {
            "text": "",
            "tool_calls": [
                {"name": "read_file", "arguments": {"path": "../../etc/passwd"}},
                {"name": "run_command", "arguments": {"command": "sleep 5", "timeout": 0.3}},
                {"name": "run_command", "arguments": {"command": "head -c 20000 /dev/zero | tr '\\\\0' a"}},
                {"name": "nope", "arguments": {}},
            ],
        },
        {"text": "done"},
    ]
    await stack.start()
    await stack.register({"name": "errs", "steps": [agent_step(tmp_path / "w", script=script)]})
    state = await stack.run_to_end("errs", "go")
    assert state.status == "completed", state.error
    results = list(state.steps["agent"].turns[0].results.values())
    assert all(r.is_error for r in results)
    texts = [r.result for r in results]
    assert "outside the working directory" in texts[0]
    assert "timed out after 0.3s" in texts[1]
    assert "exceeds the 16384-byte cap" in texts[2]
    assert "no tool named 'nope'" in texts[3]


async def test_max_turns_fails_the_step_naming_the_bound(stack, tmp_path):
    looping = [{"text": "again", "tool_calls": [{"name": "list_files", "arguments": {}}]}] * 5
    await stack.start()
    await stack.register(
        {"name": "loops", "steps": [agent_step(tmp_path / "w", script=looping, max_turns=3)]}
    )
    state = await stack.run_to_end("loops", "go")
    assert state.status == "failed"
    assert state.steps["agent"].error == "agent_loop reached max_turns (3) without a final answer"
    assert len(state.steps["agent"].turns) == 3


async def test_approved_tool_call_runs_and_denied_one_is_reported_to_the_model(stack, tmp_path):
    script = [
        {"text": "", "tool_calls": [{"name": "run_command", "arguments": {"command": "echo ran >> log"}}]},
        {"text": "", "tool_calls": [{"name": "run_command", "arguments": {"command": "rm -rf /"}}]},
        {"text": "finished"},
    ]
    await stack.start()
    await stack.register(
        {
            "name": "careful",
            "steps": [agent_step(tmp_path / "w", script=script, approve_tools=["run_command"])],
        }
    )
    run_id = await stack.client.start("careful", "go")
    await _wait_status(stack.client, run_id, "waiting")
    pending = await stack.client.approvals()
    assert [
        (p.approval.kind, p.approval.details["name"], p.approval.details["arguments"]) for p in pending
    ] == [("tool_call", "run_command", {"command": "echo ran >> log"})]
    assert not (tmp_path / "w" / "log").exists()  # nothing ran before the approval
    await stack.client.decide(run_id, "agent", approved=True)
    for _ in range(200):
        pending = await stack.client.approvals()
        if pending:
            break
        await asyncio.sleep(0.05)
    assert (tmp_path / "w" / "log").read_text() == "ran\n"
    assert pending[0].approval.details["arguments"] == {"command": "rm -rf /"}
    await stack.client.decide(run_id, "agent", approved=False, comment="never do that")
    state = await asyncio.wait_for(stack.client.wait(run_id), 10)
    assert state.status == "completed" and state.output["text"] == "finished"
    denied = state.steps["agent"].turns[1].results
    (result,) = denied.values()
    assert (
        result.is_error
        and result.result.startswith("denied by ")
        and result.result.endswith(": never do that")
    )


async def test_user_tools_are_served_by_workers(stack, tmp_path):
    tools = Worker()

    @tools.tool("add", {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}})
    def add(arguments):
        """Add two numbers."""
        return arguments["a"] + arguments["b"]

    script = [{"text": "", "tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 40}}]}, {"text": "42"}]
    await stack.start(tools)
    await stack.register(
        {"name": "adder", "steps": [agent_step(tmp_path / "w", script=script, tools=["add"])]}
    )
    state = await stack.run_to_end("adder", "add")
    assert state.status == "completed", state.error
    (result,) = state.steps["agent"].turns[0].results.values()
    assert (result.result, result.is_error) == ("42", False)
