"""The agent providers, through the real anthropic and openai SDKs against a loopback fake, and scripted."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from dagnats.agent.providers import Message, ModelTurn, ProviderError, ToolCall, ToolSpec, Usage, complete

from conftest import ROOT
from fake_llm import FakeLLM, use_fake

SYSTEM = "You fix bugs. Use the tools."
TOOLS = [
    ToolSpec("read_file", "Read a file", {"type": "object", "properties": {"path": {"type": "string"}}}),
    ToolSpec(
        "run_command",
        "Run a shell command",
        {"type": "object", "properties": {"command": {"type": "string"}}},
    ),
]
# Three turns: one tool call, then two at once, then the final answer.
TURNS = [
    {
        "text": "Let me read the file.",
        "tool_calls": [{"name": "read_file", "arguments": {"path": "a.py"}}],
        "usage": {"input_tokens": 100, "output_tokens": 20},
    },
    {
        "tool_calls": [
            {"name": "run_command", "arguments": {"command": "pytest -q"}},
            {"name": "read_file", "arguments": {"path": "b.py"}},
        ],
        "usage": {"input_tokens": 150, "output_tokens": 30},
    },
    {"text": "Fixed: the test passes now.", "usage": {"input_tokens": 200, "output_tokens": 12}},
]
CONFIG = {"model": "model-test", "max_output_tokens": 1000, "max_retries": 0, "max_turns": 9}
OPENAI_CONFIG = CONFIG | {
    "temperature": 0.2
}  # anthropic refuses temperature: see test_anthropic_refuses_temperature


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        use_fake(monkeypatch, server, tmp_path)
        yield server


def _queue(fake: FakeLLM, provider: str) -> list[dict[str, Any]]:
    return fake.anthropic_turns if provider == "anthropic" else fake.openai_turns


async def _converse(provider: str, streaming: bool) -> tuple[list[ModelTurn], list[str]]:
    """Drive three turns the way the runtime does: append each answer and the tool results, call again."""
    chunks: list[str] = []

    async def on_text(chunk: str) -> None:
        chunks.append(chunk)

    messages = [Message("user", "Fix the bug in a.py")]
    results = iter([("print('hi')", False), ("1 failed", True), ("x = 1", False)])
    turns = []
    for turn in range(3):
        answer = await complete(
            provider,
            OPENAI_CONFIG if provider == "openai" else CONFIG,
            SYSTEM,
            list(messages),
            TOOLS,
            turn=turn,
            on_text=on_text if streaming else None,
        )
        turns.append(answer)
        messages.append(Message("assistant", answer.text, answer.tool_calls))
        for call in answer.tool_calls:
            text, is_error = next(results)
            messages.append(Message("tool", text, tool_call_id=call.id, is_error=is_error))
    return turns, chunks


def _check_streamed(chunks: list[str], streaming: bool) -> None:
    if streaming:
        assert "".join(chunks) == TURNS[0]["text"] + TURNS[2]["text"]
        assert len(chunks) > 2  # really streamed, not handed over whole
    else:
        assert chunks == []


def _expected_turns(id_prefix: str, tool_stop: str, end_stop: str) -> list[ModelTurn]:
    return [
        ModelTurn(
            "Let me read the file.",
            [ToolCall(f"{id_prefix}01", "read_file", {"path": "a.py"})],
            Usage(100, 20),
            tool_stop,
        ),
        ModelTurn(
            "",
            [
                ToolCall(f"{id_prefix}02", "run_command", {"command": "pytest -q"}),
                ToolCall(f"{id_prefix}03", "read_file", {"path": "b.py"}),
            ],
            Usage(150, 30),
            tool_stop,
        ),
        ModelTurn("Fixed: the test passes now.", [], Usage(200, 12), end_stop),
    ]


def _tool_use(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": call_id, "name": name, "input": arguments}


def _tool_result(call_id: str, content: str, is_error: bool) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": call_id, "content": content, "is_error": is_error}


def _openai_call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


# The conversation as the third request carries it, in each API's shape.
ANTHROPIC_HISTORY = [
    {"role": "user", "content": "Fix the bug in a.py"},
    {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Let me read the file."},
            _tool_use("toolu_fake_01", "read_file", {"path": "a.py"}),
        ],
    },
    {"role": "user", "content": [_tool_result("toolu_fake_01", "print('hi')", False)]},
    {
        "role": "assistant",
        "content": [
            _tool_use("toolu_fake_02", "run_command", {"command": "pytest -q"}),
            _tool_use("toolu_fake_03", "read_file", {"path": "b.py"}),
        ],
    },
    {
        "role": "user",  # both results of the turn in one user message
        "content": [
            _tool_result("toolu_fake_02", "1 failed", True),
            _tool_result("toolu_fake_03", "x = 1", False),
        ],
    },
]
OPENAI_HISTORY = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Fix the bug in a.py"},
    {
        "role": "assistant",
        "content": "Let me read the file.",
        "tool_calls": [_openai_call("call_fake_01", "read_file", {"path": "a.py"})],
    },
    {"role": "tool", "tool_call_id": "call_fake_01", "content": "print('hi')"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            _openai_call("call_fake_02", "run_command", {"command": "pytest -q"}),
            _openai_call("call_fake_03", "read_file", {"path": "b.py"}),
        ],
    },
    {"role": "tool", "tool_call_id": "call_fake_02", "content": "1 failed"},
    {"role": "tool", "tool_call_id": "call_fake_03", "content": "x = 1"},
]


@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "stream"])
async def test_anthropic_conversation(fake: FakeLLM, streaming: bool) -> None:
    fake.anthropic_turns[:] = [dict(t) for t in TURNS]
    turns, chunks = await _converse("anthropic", streaming)

    assert turns == _expected_turns("toolu_fake_", "tool_use", "end_turn")
    _check_streamed(chunks, streaming)
    bodies = fake.bodies("/v1/messages")
    assert len(bodies) == 3 and [b["messages"] for b in bodies] == [
        ANTHROPIC_HISTORY[:1],
        ANTHROPIC_HISTORY[:3],
        ANTHROPIC_HISTORY,
    ]
    assert bodies[2] == {
        "model": "model-test",
        "max_tokens": 1000,
        "system": SYSTEM,
        "tools": [
            {"name": t.name, "description": t.description, "input_schema": t.parameters} for t in TOOLS
        ],
        "messages": ANTHROPIC_HISTORY,
    } | ({"stream": True} if streaming else {})
    headers = fake.requests[-1].headers
    assert headers["authorization"] == "Bearer test-key" and "anthropic-version" in headers


@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "stream"])
async def test_openai_conversation(fake: FakeLLM, streaming: bool) -> None:
    fake.openai_turns[:] = [dict(t) for t in TURNS]
    turns, chunks = await _converse("openai", streaming)

    assert turns == _expected_turns("call_fake_", "tool_calls", "stop")
    _check_streamed(chunks, streaming)
    bodies = fake.bodies("/v1/chat/completions")
    assert len(bodies) == 3 and [b["messages"] for b in bodies] == [
        OPENAI_HISTORY[:2],
        OPENAI_HISTORY[:4],
        OPENAI_HISTORY,
    ]
    stream_keys = {"stream": True, "stream_options": {"include_usage": True}} if streaming else {}
    assert (
        bodies[2]
        == {
            "model": "model-test",
            "temperature": 0.2,
            "max_completion_tokens": 1000,
            "tools": [
                {
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
                }
                for t in TOOLS
            ],
            "messages": OPENAI_HISTORY,
        }
        | stream_keys
    )
    assert fake.requests[-1].headers["authorization"] == "Bearer test-key"


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
async def test_defaults_and_optional_fields_are_left_out(fake: FakeLLM, provider: str) -> None:
    _queue(fake, provider).append({"text": "hi"})
    turn = await complete(provider, {"model": "m"}, "", [Message("user", "hello")], [], turn=0)
    assert turn.text == "hi"
    body = fake.requests[-1].body
    assert "temperature" not in body and "tools" not in body and "system" not in body
    if provider == "anthropic":
        assert body["max_tokens"] == 4096 and body["messages"] == [{"role": "user", "content": "hello"}]
    else:
        assert body["max_completion_tokens"] == 4096 and body["messages"] == [
            {"role": "user", "content": "hello"}
        ]


async def test_openai_arguments_that_are_not_json_are_kept_raw(fake: FakeLLM) -> None:
    fake.openai_turns.append(
        {"tool_calls": [{"name": "read_file", "arguments": {}, "raw_arguments": "{path: a"}]}
    )
    turn = await complete("openai", CONFIG, SYSTEM, [Message("user", "go")], TOOLS, turn=0)
    assert turn.tool_calls == [ToolCall("call_fake_01", "read_file", {"_raw": "{path: a"})]


# --- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(
    "status,retryable", [(429, True), (500, True), (529, True), (400, False), (401, False)]
)
@pytest.mark.parametrize("provider", ["anthropic", "openai"])
async def test_http_errors_map_to_retryable_or_not(
    fake: FakeLLM, provider: str, status: int, retryable: bool, streaming: bool
) -> None:
    _queue(fake, provider).append({"error": status, "message": "the fake says no"})

    async def on_text(chunk: str) -> None:
        raise AssertionError("no text expected")

    with pytest.raises(ProviderError) as err:
        await complete(
            provider,
            CONFIG,
            SYSTEM,
            [Message("user", "x")],
            TOOLS,
            turn=0,
            on_text=on_text if streaming else None,
        )
    assert err.value.retryable is retryable
    assert str(err.value) == f"{provider}: HTTP {status}: the fake says no"
    assert len(fake.requests) == 1  # max_retries=0: the SDK did not retry on its own


async def test_openai_exhausted_quota_is_not_retryable(fake: FakeLLM) -> None:
    fake.openai_turns.append(
        {"error": 429, "code": "insufficient_quota", "message": "You exceeded your quota"}
    )
    with pytest.raises(ProviderError) as err:
        await complete("openai", CONFIG, SYSTEM, [Message("user", "x")], TOOLS, turn=0)
    assert err.value.retryable is False and "quota" in str(err.value)


@pytest.mark.parametrize(
    "provider,failure",
    [
        ("anthropic", {"stream_error": "overloaded_error"}),
        ("openai", {"stream_error": "server_error"}),
        ("anthropic", {"truncate": True}),
        ("anthropic", {"truncate": 0}),
        ("openai", {"truncate": True}),
    ],
)
async def test_broken_streams_are_retryable(fake: FakeLLM, provider: str, failure: dict[str, Any]) -> None:
    _queue(fake, provider).append({"text": "partial answer here", **failure})

    async def on_text(chunk: str) -> None:
        pass

    with pytest.raises(ProviderError) as err:
        await complete(provider, CONFIG, SYSTEM, [Message("user", "x")], TOOLS, turn=0, on_text=on_text)
    assert err.value.retryable is True and str(err.value).startswith(f"{provider}: ")


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
async def test_timeouts_and_refused_connections_are_retryable(
    fake: FakeLLM, monkeypatch: pytest.MonkeyPatch, provider: str
) -> None:
    _queue(fake, provider).append({"text": "late", "delay": 0.5})
    with pytest.raises(ProviderError) as err:
        await complete(provider, CONFIG | {"timeout": 0.1}, SYSTEM, [Message("user", "x")], [], turn=0)
    assert err.value.retryable is True and str(err.value) == f"{provider}: no answer within 0.1s"

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("ANTHROPIC_BASE_URL", dead)
    monkeypatch.setenv("OPENAI_BASE_URL", dead + "/v1")
    with pytest.raises(ProviderError) as err:
        await complete(provider, CONFIG, SYSTEM, [Message("user", "x")], [], turn=0)
    assert err.value.retryable is True and str(err.value).startswith(f"{provider}: connection failed")


@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("provider,env", [("anthropic", "ANTHROPIC_API_KEY"), ("openai", "OPENAI_API_KEY")])
async def test_missing_api_key_is_a_clear_permanent_error(
    fake: FakeLLM, monkeypatch: pytest.MonkeyPatch, provider: str, env: str, streaming: bool
) -> None:
    monkeypatch.delenv(env)

    async def on_text(chunk: str) -> None:
        pass

    with pytest.raises(ProviderError) as err:
        await complete(
            provider,
            CONFIG,
            SYSTEM,
            [Message("user", "x")],
            [],
            turn=0,
            on_text=on_text if streaming else None,
        )
    assert err.value.retryable is False
    assert str(err.value) == f"{provider}: no API key: set {env}"
    assert fake.requests == []


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
async def test_an_on_text_failure_is_not_disguised_as_a_provider_error(fake: FakeLLM, provider: str) -> None:
    _queue(fake, provider).append({"text": "some words"})

    async def on_text(chunk: str) -> None:
        raise KeyError("the runtime's own bug")

    with pytest.raises(KeyError):
        await complete(provider, CONFIG, "", [Message("user", "x")], [], turn=0, on_text=on_text)


async def test_bad_provider_and_config_are_permanent_errors() -> None:
    cases = [
        ("gemini", {"model": "m"}, "unknown provider 'gemini': expected one of anthropic, openai, scripted"),
        ("anthropic", {}, "anthropic: config.model is required"),
        ("openai", {"model": "m", "max_output_tokens": "lots"}, "`config.max_output_tokens`"),
        ("openai", {"model": "m", "max_retries": -1}, "`config.max_retries`"),
    ]
    for provider, config, expected in cases:
        with pytest.raises(ProviderError) as err:
            await complete(provider, config, "", [Message("user", "x")], [], turn=0)
        assert err.value.retryable is False and expected in str(err.value), str(err.value)


# --- scripted ---------------------------------------------------------------------------------------

SCRIPT = [
    {"text": "Reading.", "tool_calls": [{"name": "read_file", "arguments": {"path": "a.py"}}]},
    {"tool_calls": [{"name": "run_command", "arguments": {"command": "ls"}}, {"name": "noop"}]},
    {"text": "Done, all good."},
]


async def test_scripted_turns() -> None:
    config = {"script": SCRIPT}
    messages = [Message("user", "x" * 40)]
    streamed: list[str] = []

    async def on_text(chunk: str) -> None:
        streamed.append(chunk)

    first = await complete("scripted", config, SYSTEM, messages, TOOLS, turn=0, on_text=on_text)
    assert first == ModelTurn(
        "Reading.", [ToolCall("call_0_0", "read_file", {"path": "a.py"})], Usage(10, 3), "tool_use"
    )
    assert streamed == ["Reading."]
    messages += [
        Message("assistant", "Reading.", first.tool_calls),
        Message("tool", "y" * 20, tool_call_id="call_0_0"),
    ]
    second = await complete("scripted", config, SYSTEM, messages, TOOLS, turn=1)
    assert second == ModelTurn(
        "",
        [ToolCall("call_1_0", "run_command", {"command": "ls"}), ToolCall("call_1_1", "noop", {})],
        Usage((40 + 8 + 20) // 4, 1),
        "tool_use",
    )
    third = await complete("scripted", config, SYSTEM, messages, TOOLS, turn=2)
    assert (third.text, third.tool_calls, third.stop_reason) == ("Done, all good.", [], "end_turn")

    with pytest.raises(ProviderError) as err:
        await complete("scripted", config, SYSTEM, messages, TOOLS, turn=3)
    assert err.value.retryable is False and str(err.value) == "scripted: the script has only 3 turns"


@pytest.mark.parametrize(
    "script,expected",
    [
        (None, "scripted: bad script: Expected `array`, got `null`"),
        ([{"text": 3}], "scripted: bad script: Expected `str`, got `int` - at `script[0].text`"),
        (
            [{}, {"tool_calls": [{"arguments": {}}]}],
            "Object missing required field `name` - at `script[1].tool_calls[0]`",
        ),
        (
            [{"tool_calls": [{"name": "t", "arguments": [1]}]}],
            "got `array` - at `script[0].tool_calls[0].arguments`",
        ),
        ([{"txt": "typo"}], "Object contains unknown field `txt` - at `script[0]`"),
    ],
)
async def test_malformed_script_is_a_permanent_error(script: Any, expected: str) -> None:
    with pytest.raises(ProviderError) as err:
        await complete("scripted", {"script": script}, "", [], [], turn=0)
    assert err.value.retryable is False and expected in str(err.value), str(err.value)


def test_turns_and_messages_round_trip_as_event_payloads() -> None:
    turn = ModelTurn("t", [ToolCall("c1", "f", {"a": [1]})], Usage(3, 4), "tool_use")
    assert msgspec.json.decode(msgspec.json.encode(turn), type=ModelTurn) == turn
    assert msgspec.json.encode(ModelTurn()) == b"{}"
    tool = Message("tool", "out", tool_call_id="c1", is_error=True)
    assert msgspec.json.decode(msgspec.json.encode(tool), type=Message) == tool


async def test_anthropic_refuses_temperature(fake: FakeLLM) -> None:
    with pytest.raises(ProviderError) as err:
        await complete("anthropic", CONFIG | {"temperature": 0.2}, "", [Message("user", "x")], [], turn=0)
    assert err.value.retryable is False and "config.temperature" in str(err.value)
    assert fake.requests == []


def test_importing_providers_does_not_import_the_sdks() -> None:
    code = (
        "import sys, dagnats.agent.providers; "
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('anthropic', 'openai', 'httpx2'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == ""
