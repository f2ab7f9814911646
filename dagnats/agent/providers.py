"""One model turn of an `agent_loop` step, against Anthropic, OpenAI or a scripted stand-in."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import msgspec

# The SDKs are imported inside the provider functions only: `import anthropic` alone costs about a
# second, and nothing but an agent step that actually calls a model should pay it.

PROVIDERS = ("anthropic", "openai", "scripted")

CONNECT_TIMEOUT = 10.0  # seconds

OnText = Callable[[str], Awaitable[None]]


class ToolCall(msgspec.Struct, frozen=True):
    """A tool the model asked for; `id` is the provider's tool-call id, echoed back with the result."""

    id: str
    name: str
    arguments: dict[str, Any]


class Usage(msgspec.Struct, frozen=True, omit_defaults=True):
    input_tokens: int = 0
    output_tokens: int = 0


class ModelTurn(msgspec.Struct, frozen=True, omit_defaults=True):
    """What the model answered in one turn."""

    text: str = ""
    tool_calls: list[ToolCall] = []
    usage: Usage = Usage()
    stop_reason: str = ""


class Message(msgspec.Struct, frozen=True, omit_defaults=True):
    """Provider-neutral conversation item."""

    role: Literal["user", "assistant", "tool"]
    text: str = ""  # user text, assistant text, or the tool result content
    tool_calls: list[ToolCall] = []  # assistant only
    tool_call_id: str = ""  # tool only
    is_error: bool = False  # tool only


class ToolSpec(msgspec.Struct, frozen=True):
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments


class ProviderError(Exception):
    """A model call failed; `retryable` says whether the same call may succeed later."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class _Settings(msgspec.Struct, frozen=True):
    model: str = ""
    temperature: float | None = None
    max_output_tokens: Annotated[int, msgspec.Meta(ge=1)] = 4096
    max_retries: Annotated[int, msgspec.Meta(ge=0)] = 2
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 600.0


class _ScriptCall(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    arguments: dict[str, Any] = {}


class _ScriptTurn(msgspec.Struct, forbid_unknown_fields=True):
    text: str = ""
    tool_calls: list[_ScriptCall] = []
    repeat: Annotated[int, msgspec.Meta(ge=1, le=64_000_000)] = 1  # the text, this many times over


async def complete(
    provider: str,
    config: dict[str, Any],
    system: str,
    messages: list[Message],
    tools: list[ToolSpec],
    *,
    turn: int,
    on_text: OnText | None = None,
) -> ModelTurn:
    """Ask the model for its next turn; streams text to `on_text` when given. Raises only ProviderError."""
    if provider == "scripted":
        return await _scripted(config, messages, turn, on_text)
    if provider == "anthropic":
        return await _anthropic(_settings(provider, config), system, messages, tools, on_text)
    if provider == "openai":
        return await _openai(_settings(provider, config), system, messages, tools, on_text)
    raise ProviderError(
        f"unknown provider {provider!r}: expected one of {', '.join(PROVIDERS)}", retryable=False
    )


def _settings(provider: str, config: dict[str, Any]) -> _Settings:
    # The step config carries other keys too (tools, max_turns, ...): pick only ours.
    known = {k: config[k] for k in _Settings.__struct_fields__ if k in config}
    try:
        settings = msgspec.convert(known, _Settings)
    except msgspec.ValidationError as exc:
        raise ProviderError(f"{provider}: bad config: {_at(exc, 'config')}", retryable=False) from None
    if not settings.model:
        raise ProviderError(f"{provider}: config.model is required", retryable=False)
    return settings


def _timeout(httpx2: Any, settings: _Settings) -> Any:
    # A bare number would also bound the TCP connect by `timeout` (600 s by default): an unreachable
    # endpoint should fail, and be retried, long before a slow answer would.
    return httpx2.Timeout(settings.timeout, connect=min(settings.timeout, CONNECT_TIMEOUT))


def _at(exc: msgspec.ValidationError, root: str) -> str:
    # msgspec names the offending field from `$`; name it from what the user wrote instead.
    return str(exc).replace("`$", f"`{root}")


# --- scripted ---------------------------------------------------------------------------------------


async def _scripted(
    config: dict[str, Any], messages: list[Message], turn: int, on_text: OnText | None
) -> ModelTurn:
    try:
        script = msgspec.convert(config.get("script"), list[_ScriptTurn])
    except msgspec.ValidationError as exc:
        raise ProviderError(f"scripted: bad script: {_at(exc, 'script')}", retryable=False) from None
    if not 0 <= turn < len(script):
        raise ProviderError(f"scripted: the script has only {len(script)} turns", retryable=False)
    entry = script[turn]
    if entry.repeat > 1:  # a long answer without a long script (the definition must fit in a message)
        entry = msgspec.structs.replace(entry, text=entry.text * entry.repeat, repeat=1)
    if on_text is not None and entry.text:
        await on_text(entry.text)
    calls = [ToolCall(f"call_{turn}_{i}", c.name, c.arguments) for i, c in enumerate(entry.tool_calls)]
    # A rough 4-characters-per-token estimate, so token budgets can be exercised without a model.
    usage = Usage(sum(len(m.text) for m in messages) // 4, len(entry.text) // 4 + 1)
    return ModelTurn(entry.text, calls, usage, "tool_use" if calls else "end_turn")


# --- anthropic --------------------------------------------------------------------------------------


async def _anthropic(
    settings: _Settings, system: str, messages: list[Message], tools: list[ToolSpec], on_text: OnText | None
) -> ModelTurn:
    if settings.temperature is not None:
        # SDK 2.x speaks API version 2026-10-21, which rejects sampling parameters (the SDK dropped the
        # argument): failing here beats a 400 on every turn, or a setting silently ignored.
        raise ProviderError(
            "anthropic: config.temperature is not accepted by the Messages API version this SDK speaks "
            "(2026-10-21): remove it",
            retryable=False,
        )
    import anthropic
    import httpx2

    params = _anthropic_params(settings, system, messages, tools)
    try:
        # No base_url/api_key: ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL (a gateway, a test fake) apply.
        async with anthropic.AsyncAnthropic(
            max_retries=settings.max_retries, timeout=_timeout(httpx2, settings)
        ) as client:
            if on_text is None:
                return _anthropic_turn(await client.messages.create(**params))
            async with client.messages.stream(**params) as stream:
                async for chunk in stream.text_stream:
                    if chunk:
                        await on_text(chunk)
                message = await _final_message(stream)
    except (anthropic.AnthropicError, httpx2.TransportError, TypeError) as exc:
        if isinstance(exc, TypeError) and "Could not resolve authentication" not in str(exc):
            raise  # a bug, not a failed call
        raise _sdk_error("anthropic", anthropic, exc, settings.timeout) from exc
    if message.stop_reason is None:  # the connection was cut before message_delta
        raise ProviderError("anthropic: the stream ended before the message was complete", retryable=True)
    return _anthropic_turn(message)


async def _final_message(stream: Any) -> Any:
    try:
        return await stream.get_final_message()
    except AssertionError:  # the SDK asserts that a message_start arrived; an empty 200 stream fails it
        raise ProviderError("anthropic: the stream ended before the message began", retryable=True) from None


def _anthropic_params(
    settings: _Settings, system: str, messages: list[Message], tools: list[ToolSpec]
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "model": settings.model,
        "max_tokens": settings.max_output_tokens,
        "messages": _anthropic_messages(messages),
    }
    if system:  # the API rejects an empty system text
        params["system"] = system
    if tools:
        params["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters} for t in tools
        ]
    return params


def _anthropic_messages(messages: list[Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []  # the API wants all results of one turn in a single user message
    for m in messages:
        if m.role == "tool":
            results.append(
                {
                    "type": "tool_result",
                    "tool_use_id": m.tool_call_id,
                    "content": m.text,
                    "is_error": m.is_error,
                }
            )
            continue
        if results:
            out.append({"role": "user", "content": results})
            results = []
        if m.role == "user":
            out.append({"role": "user", "content": m.text})
        else:
            blocks: list[dict[str, Any]] = [{"type": "text", "text": m.text}] if m.text else []
            blocks += [
                {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments} for c in m.tool_calls
            ]
            out.append({"role": "assistant", "content": blocks})
    if results:
        out.append({"role": "user", "content": results})
    return out


def _anthropic_turn(message: Any) -> ModelTurn:
    text = "".join(b.text for b in message.content if b.type == "text")
    calls = [_tool_call(b.id, b.name, b.input) for b in message.content if b.type == "tool_use"]
    u = message.usage
    # Cached prompt tokens are reported apart from input_tokens; a budget must count them all.
    prompt = u.input_tokens + (u.cache_creation_input_tokens or 0) + (u.cache_read_input_tokens or 0)
    return ModelTurn(text, calls, Usage(prompt, u.output_tokens), message.stop_reason or "")


def _tool_call(call_id: str, name: str, arguments: Any) -> ToolCall:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            pass
    # A model can emit arguments that are not a JSON object: keep them for the tool to report on.
    return ToolCall(call_id, name, arguments if isinstance(arguments, dict) else {"_raw": arguments})


# --- openai -----------------------------------------------------------------------------------------


async def _openai(
    settings: _Settings, system: str, messages: list[Message], tools: list[ToolSpec], on_text: OnText | None
) -> ModelTurn:
    import httpx2
    import openai

    params = _openai_params(settings, system, messages, tools)
    try:
        # No base_url/api_key: OPENAI_API_KEY and OPENAI_BASE_URL (a gateway, a test fake) apply.
        async with openai.AsyncOpenAI(
            max_retries=settings.max_retries, timeout=_timeout(httpx2, settings)
        ) as client:
            if on_text is None:
                return _openai_turn(await client.chat.completions.create(**params))
            stream = await client.chat.completions.create(
                **params, stream=True, stream_options={"include_usage": True}
            )
            return await _openai_stream(stream, on_text)
    except (openai.OpenAIError, httpx2.TransportError) as exc:
        raise _sdk_error("openai", openai, exc, settings.timeout) from exc


def _openai_params(
    settings: _Settings, system: str, messages: list[Message], tools: list[ToolSpec]
) -> dict[str, Any]:
    head = [{"role": "system", "content": system}] if system else []
    params: dict[str, Any] = {
        "model": settings.model,
        "messages": head + [_openai_message(m) for m in messages],
        "max_completion_tokens": settings.max_output_tokens,
    }
    if settings.temperature is not None:
        params["temperature"] = settings.temperature
    if tools:  # an empty tools array is rejected by the API
        params["tools"] = [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
            }
            for t in tools
        ]
    return params


def _openai_message(m: Message) -> dict[str, Any]:
    if m.role == "user":
        return {"role": "user", "content": m.text}
    if m.role == "tool":  # chat completions has no error flag: the text itself must say so
        return {"role": "tool", "tool_call_id": m.tool_call_id, "content": m.text}
    out: dict[str, Any] = {"role": "assistant", "content": m.text or None}
    if m.tool_calls:  # an empty tool_calls array is rejected by the API
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
            }
            for c in m.tool_calls
        ]
    return out


def _openai_turn(completion: Any) -> ModelTurn:
    if not completion.choices:  # some gateways answer 200 with nothing in it, e.g. after a content filter
        raise ProviderError("openai: the response has no choices", retryable=False)
    choice = completion.choices[0]
    msg = choice.message
    # Only function calls are asked for; a "custom" tool call would carry no `function`.
    functions = [c for c in msg.tool_calls or [] if getattr(c, "function", None)]
    calls = [_tool_call(c.id, c.function.name, c.function.arguments) for c in functions]
    u = completion.usage
    usage = Usage(u.prompt_tokens or 0, u.completion_tokens or 0) if u else Usage()
    # A refusal comes instead of content; surfacing it beats an unexplained empty answer.
    return ModelTurn(msg.content or msg.refusal or "", calls, usage, choice.finish_reason or "")


async def _openai_stream(stream: Any, on_text: OnText) -> ModelTurn:
    text: list[str] = []
    calls: dict[int, dict[str, str]] = {}
    usage, finish = Usage(), ""
    async for chunk in stream:
        if chunk.usage:  # sent in a last chunk of its own, whose choices are empty
            usage = Usage(chunk.usage.prompt_tokens or 0, chunk.usage.completion_tokens or 0)
        for choice in chunk.choices:
            delta = choice.delta
            for piece in (delta.content, delta.refusal):
                if piece:
                    text.append(piece)
                    await on_text(piece)
            for tc in delta.tool_calls or []:
                _merge_call_delta(calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""}), tc)
            finish = choice.finish_reason or finish
    if not finish:
        raise ProviderError("openai: the stream ended before the message was complete", retryable=True)
    tool_calls = [_tool_call(c["id"], c["name"], c["arguments"]) for _, c in sorted(calls.items())]
    return ModelTurn("".join(text), tool_calls, usage, finish)


def _merge_call_delta(acc: dict[str, str], delta: Any) -> None:
    # id and name arrive whole in the call's first delta; the arguments arrive as JSON fragments.
    if delta.id:
        acc["id"] = delta.id
    if delta.function is not None:
        if delta.function.name:
            acc["name"] = delta.function.name
        acc["arguments"] += delta.function.arguments or ""


# --- errors -----------------------------------------------------------------------------------------


def _sdk_error(provider: str, sdk: Any, exc: Exception, timeout: float) -> ProviderError:
    """Map an exception of the SDK (or of httpx2, which can leak out of a stream) to a ProviderError."""
    import httpx2

    if isinstance(exc, sdk.APIStatusError) and exc.status_code != 200:
        return _status_error(provider, exc.status_code, exc.body, exc.message)
    if isinstance(exc.__cause__ or exc, httpx2.ConnectTimeout):
        return ProviderError(
            f"{provider}: could not connect within {min(timeout, CONNECT_TIMEOUT):g}s", retryable=True
        )
    if isinstance(exc, sdk.APITimeoutError | httpx2.TimeoutException):
        return ProviderError(f"{provider}: no answer within {timeout:g}s", retryable=True)
    if isinstance(exc, sdk.APIConnectionError | httpx2.TransportError):
        return ProviderError(f"{provider}: connection failed: {exc.__cause__ or exc}", retryable=True)
    if isinstance(exc, sdk.APIError) and not isinstance(exc, sdk.APIResponseValidationError):
        # An error event inside a stream that began with 200: the request was accepted, the server failed.
        detail = _detail(exc.body, exc.message)
        return ProviderError(f"{provider}: error in the response stream: {detail}", retryable=True)
    if "Could not resolve authentication" in str(exc) or "Missing credentials" in str(exc):
        env = "ANTHROPIC_API_KEY" if provider == "anthropic" else "OPENAI_API_KEY"
        return ProviderError(f"{provider}: no API key: set {env}", retryable=False)
    return ProviderError(f"{provider}: {_short(str(exc))}", retryable=False)


def _status_error(provider: str, status: int, body: object, fallback: str) -> ProviderError:
    retryable = status in (408, 429) or status >= 500
    if _error_field(body, "code") == "insufficient_quota":
        retryable = False  # OpenAI's 429 for an exhausted balance: waiting will not refill it
    return ProviderError(f"{provider}: HTTP {status}: {_detail(body, fallback)}", retryable=retryable)


def _error_field(body: object, key: str) -> Any:
    # Anthropic bodies are {"type": "error", "error": {...}}; openai hands over the inner object itself.
    err = body.get("error", body) if isinstance(body, dict) else None
    return err.get(key) if isinstance(err, dict) else None


def _detail(body: object, fallback: str) -> str:
    message = _error_field(body, "message")
    return _short(message if isinstance(message, str) and message else fallback)


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
