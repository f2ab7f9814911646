"""agent_loop steps: the scripted provider, tools, approvals of tool calls, bounds, forks, crashes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from dagnats import Worker
from dagnats.core.events import AgentTurnRecorded, ToolResultRecorded

from fake_llm import FakeLLM, use_fake

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


PROVIDER_TURNS = [
    {
        "text": "Writing.",
        "tool_calls": [{"name": "write_file", "arguments": {"path": "a.txt", "content": "A"}}],
        "usage": {"input_tokens": 10, "output_tokens": 5},
    },
    {
        "text": "Listing.",
        "tool_calls": [{"name": "list_files", "arguments": {}}],
        "usage": {"input_tokens": 20, "output_tokens": 5},
    },
    {"text": "All done.", "usage": {"input_tokens": 30, "output_tokens": 3}},
]


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
async def test_real_sdks_drive_a_three_turn_tool_loop(stack, tmp_path, monkeypatch, provider):
    with FakeLLM() as fake:
        use_fake(monkeypatch, fake, tmp_path)
        getattr(fake, f"{provider}_turns").extend(PROVIDER_TURNS)
        await stack.start()
        step = agent_step(tmp_path / "w", provider=provider, model="m-1", system="Be brief.", max_retries=0)
        step["config"].pop("script")
        await stack.register({"name": f"real-{provider}", "steps": [step]})
        state = await stack.run_to_end(f"real-{provider}", "make a.txt")
    assert state.status == "completed", state.error
    assert state.output == {
        "text": "All done.",
        "turns": 3,
        "usage": {"input_tokens": 60, "output_tokens": 13},
    }
    assert (tmp_path / "w" / "a.txt").read_text() == "A"
    events = [e for _, e in await stack.client.events(state.run_id)]
    turns = [e for e in events if isinstance(e, AgentTurnRecorded)]
    assert [(t.text, [c["name"] for c in t.tool_calls]) for t in turns] == [
        ("Writing.", ["write_file"]),
        ("Listing.", ["list_files"]),
        ("All done.", []),
    ]
    results = [(r.turn, r.name, r.result) for r in events if isinstance(r, ToolResultRecorded)]
    assert results == [(0, "write_file", "wrote 1 bytes to a.txt"), (1, "list_files", "a.txt")]
    path = "/v1/messages" if provider == "anthropic" else "/v1/chat/completions"
    bodies = fake.bodies(path)
    assert len(bodies) == 3 and all(b["model"] == "m-1" for b in bodies)
    last = bodies[-1]["messages"]
    if provider == "anthropic":
        assert bodies[0]["system"] == "Be brief."
        assert last[0] == {"role": "user", "content": "make a.txt"}
        assert (
            last[-1]["content"][0]["type"] == "tool_result" and last[-1]["content"][0]["content"] == "a.txt"
        )
    else:
        assert last[0] == {"role": "system", "content": "Be brief."}
        assert last[-1]["role"] == "tool" and last[-1]["content"] == "a.txt"
        assert last[-1]["tool_call_id"] == turns[1].tool_calls[0]["id"]


async def test_a_denied_call_reaches_the_next_model_request(stack, tmp_path, monkeypatch):
    turns = [
        {"text": "", "tool_calls": [{"name": "run_command", "arguments": {"command": "make deploy"}}]},
        {"text": "Understood, not deploying."},
    ]
    with FakeLLM() as fake:
        use_fake(monkeypatch, fake, tmp_path)
        fake.openai_turns.extend(turns)
        await stack.start()
        step = agent_step(
            tmp_path / "w", provider="openai", model="m", approve_tools=["run_command"], max_retries=0
        )
        step["config"].pop("script")
        await stack.register({"name": "deny-me", "steps": [step]})
        run_id = await stack.client.start("deny-me", "deploy it")
        await _wait_status(stack.client, run_id, "waiting")
        await stack.client.decide(run_id, "agent", approved=False, comment="freeze week")
        state = await asyncio.wait_for(stack.client.wait(run_id), 10)
        second = fake.bodies("/v1/chat/completions")[1]["messages"]
    assert state.status == "completed" and state.output["text"] == "Understood, not deploying."
    tool_message = second[-1]
    assert tool_message["role"] == "tool" and tool_message["content"].endswith(": freeze week")
    assert tool_message["content"].startswith("denied by ")


async def test_fork_of_an_agent_loop_keeps_the_first_turns(stack, tmp_path):
    calls = tmp_path / "w" / "calls"
    script = [
        {"text": "one", "tool_calls": [{"name": "run_command", "arguments": {"command": "echo 1 >> calls"}}]},
        {"text": "two", "tool_calls": [{"name": "run_command", "arguments": {"command": "echo 2 >> calls"}}]},
        {"text": "three"},
    ]
    await stack.start()
    await stack.register({"name": "forkable", "steps": [agent_step(tmp_path / "w", script=script)]})
    original = await stack.run_to_end("forkable", "go")
    assert original.status == "completed" and calls.read_text() == "1\n2\n"
    fork_id = await stack.client.fork(original.run_id, "agent", turn=1)
    forked = await asyncio.wait_for(stack.client.wait(fork_id), 10)
    assert forked.status == "completed" and forked.output["turns"] == 3
    assert calls.read_text() == "1\n2\n2\n"  # turn 0's tool call was kept, not run again
    assert [t.text for t in forked.steps["agent"].turns] == ["one", "two", "three"]
    assert forked.forked_from == original.run_id


async def test_continue_as_new_after_turns_hands_the_loop_to_a_new_run(stack, tmp_path):
    calls: list[str] = []
    before = Worker()

    @before.task("prepare")
    async def prepare(ctx):
        calls.append(ctx.run_id)
        return "prepared"

    script = [
        {"text": f"step {i}", "tool_calls": [{"name": "list_files", "arguments": {}}]} for i in range(2)
    ]
    script.append({"text": "finished"})
    await stack.start(before)
    step = agent_step(tmp_path / "w", script=script, continue_as_new_after_turns=2)
    step["depends_on"] = ["prep"]
    step["config"]["prompt"] = "goal: ${input.goal}"
    await stack.register({"name": "long-agent", "steps": [{"id": "prep", "task": "prepare"}, step]})
    first_id = await stack.client.start("long-agent", {"goal": "tidy"})
    first = await asyncio.wait_for(stack.client.wait(first_id), 10)
    assert first.status == "continued" and len(first.steps["agent"].turns) == 2
    carry = first.steps["agent"].carry
    assert carry == {"summary": "step 1", "transcript": {"run_id": first_id, "step_id": "agent", "turns": 2}}
    second = await asyncio.wait_for(stack.client.wait(first.continued_to), 10)
    assert second.input == {"goal": "tidy"} and second.continued_from == first_id and second.generation == 2
    assert second.steps["prep"].output == "prepared" and calls == [first_id]  # upstream kept, not run again
    assert second.steps["agent"].input == {"carry": carry, "input": "prepared"}
    assert second.forked_from is None
    # (the scripted provider replays its script from the start in each new run, so it keeps handing over)


async def test_history_grows_with_new_content_only(stack, tmp_path):
    script = [{"text": "x" * 200, "tool_calls": [{"name": "list_files", "arguments": {}}]} for _ in range(30)]
    script.append({"text": "done"})
    await stack.start()
    await stack.register(
        {"name": "chatty", "steps": [agent_step(tmp_path / "w", script=script, max_turns=40)]}
    )
    state = await stack.run_to_end("chatty", "go", timeout=30)
    assert state.status == "completed" and state.output["turns"] == 31
    from dagnats.core.events import encode_event

    sizes = [
        len(encode_event(e))
        for _, e in await stack.client.events(state.run_id)
        if isinstance(e, AgentTurnRecorded)
    ]
    assert max(sizes[:30]) - min(sizes[:30]) < 40  # turn 29 costs what turn 0 cost


async def test_duration_and_token_bounds_fail_the_step_naming_them(stack, tmp_path):
    slow = [
        {"text": "", "tool_calls": [{"name": "run_command", "arguments": {"command": "sleep 0.3"}}]},
        {"text": "ok"},
    ]
    wordy = [{"text": "w" * 400, "tool_calls": [{"name": "list_files", "arguments": {}}]}] * 3 + [
        {"text": "ok"}
    ]
    await stack.start()
    await stack.register(
        {"name": "slow", "steps": [agent_step(tmp_path / "a", script=slow, max_duration="100ms")]}
    )
    await stack.register(
        {"name": "wordy", "steps": [agent_step(tmp_path / "b", script=wordy, max_total_tokens=150)]}
    )
    slow_state = await stack.run_to_end("slow", "go")
    assert slow_state.steps["agent"].error == "agent_loop exceeded max_duration (100ms)"
    wordy_state = await stack.run_to_end("wordy", "go")
    assert wordy_state.status == "failed"
    assert wordy_state.steps["agent"].error.endswith("tokens, reaching max_total_tokens (150)")
    assert len(wordy_state.steps["agent"].turns) == 2


async def test_model_text_is_streamed_live_for_the_console(stack, tmp_path):
    await stack.start()
    await stack.register({"name": "live", "steps": [agent_step(tmp_path / "w")]})
    chunks: list[str] = []

    async def collect(msg):
        chunks.append(msg.data.decode())

    sub = await stack.client.nc.subscribe("dagnats.live.*.agent", cb=collect)
    try:
        state = await stack.run_to_end("live", "go")
    finally:
        await sub.unsubscribe()
    assert state.status == "completed"
    assert chunks == [s["text"] for s in SCRIPT]
