"""A scriptable loopback fake of the Anthropic Messages and OpenAI Chat Completions APIs, for real SDK calls."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

import pytest

# Every variable through which either SDK picks up credentials, an endpoint, extra headers or a proxy:
# use_fake() clears them all, so a developer's own setup cannot leak into a test.
SDK_ENV_VARS = (
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_PROFILE",
    "ANTHROPIC_CONFIG_DIR",
    "ANTHROPIC_CUSTOM_HEADERS",
    "ANTHROPIC_IDENTITY_TOKEN",
    "ANTHROPIC_IDENTITY_TOKEN_FILE",
    "ANTHROPIC_FEDERATION_RULE_ID",
    "ANTHROPIC_ORGANIZATION_ID",
    "OPENAI_API_KEY",
    "OPENAI_ADMIN_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
    "OPENAI_CUSTOM_HEADERS",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)

ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
}


class Recorded(NamedTuple):
    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any


class FakeLLM:
    """Answers each API from its own queue of provider-neutral turns, in order.

    A turn is {"text": str, "tool_calls": [{"name", "arguments", "id"?, "raw_arguments"?}],
    "usage": {"input_tokens", "output_tokens"}, "stop_reason"?}; or {"error": status, "code"?, "message"?}
    for an HTTP error with the provider's body; or {"stream_error": type} for an error event after the
    stream began; "truncate": true (or a number of events to keep) cuts a stream before its end;
    "delay": seconds to wait before answering. An empty queue answers 400.
    """

    def __init__(self) -> None:
        self.anthropic_turns: list[dict[str, Any]] = []
        self.openai_turns: list[dict[str, Any]] = []
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._ids = 0
        self._httpd = _Server(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def env(self, api_key: str = "test-key") -> dict[str, str]:
        """The variables that point both SDKs here (the openai base URL must include /v1)."""
        return {
            "ANTHROPIC_BASE_URL": self.url,
            "ANTHROPIC_API_KEY": api_key,
            "OPENAI_BASE_URL": self.url + "/v1",
            "OPENAI_API_KEY": api_key,
        }

    def bodies(self, path: str) -> list[Any]:
        return [r.body for r in self.requests if r.path == path]

    def __enter__(self) -> FakeLLM:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def next_turn(self, queue: list[dict[str, Any]]) -> dict[str, Any]:
        with self._lock:
            return queue.pop(0) if queue else {"error": 400, "message": "fake: no scripted turn left"}

    def call_ids(self, prefix: str, turn: dict[str, Any]) -> list[str]:
        """The tool-call ids of a turn: given ones are kept, others numbered across the server's life."""
        ids = []
        with self._lock:
            for call in turn.get("tool_calls", []):
                self._ids += 1
                ids.append(call.get("id") or f"{prefix}{self._ids:02d}")
        return ids


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a test of timeouts) is expected; anything else is a bug in the fake.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def use_fake(monkeypatch: pytest.MonkeyPatch, fake: FakeLLM | None, home: Path) -> None:
    """Point both SDKs at `fake` (or nowhere, if None) with every other credential source hidden."""
    for name in SDK_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))  # anthropic reads a profile from ~/.config/anthropic
    for name, value in (fake.env() if fake else {}).items():
        monkeypatch.setenv(name, value)


def _handler(fake: FakeLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs' pooled clients expect

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"null")
            headers = {k.lower(): v for k, v in self.headers.items()}
            fake.requests.append(Recorded(self.path, headers, body))
            if self.path == "/v1/messages":
                _answer(self, "anthropic", fake.next_turn(fake.anthropic_turns), body, fake)
            elif self.path == "/v1/chat/completions":
                _answer(self, "openai", fake.next_turn(fake.openai_turns), body, fake)
            else:
                _send_json(self, 404, {"error": {"message": f"fake: no route {self.path}"}})

    return Handler


def _answer(
    h: BaseHTTPRequestHandler, api: str, turn: dict[str, Any], body: dict[str, Any], fake: FakeLLM
) -> None:
    time.sleep(turn.get("delay", 0))
    if "error" in turn:
        builder = _anthropic_error if api == "anthropic" else _openai_error
        return _send_json(h, turn["error"], builder(turn["error"], turn))
    ids = fake.call_ids("toolu_fake_" if api == "anthropic" else "call_fake_", turn)
    if api == "anthropic":
        message = _anthropic_message(turn, ids, body)
        if body.get("stream"):
            return _send_sse(h, _anthropic_events(message, turn), turn.get("truncate", False))
        return _send_json(h, 200, message)
    completion = _openai_completion(turn, ids, body)
    if body.get("stream"):
        usage = (body.get("stream_options") or {}).get("include_usage", False)
        return _send_sse(h, _openai_chunks(completion, turn, usage), turn.get("truncate", False))
    _send_json(h, 200, completion)


def _send_json(h: BaseHTTPRequestHandler, code: int, obj: Any) -> None:
    data = json.dumps(obj).encode()
    h.send_response(code)
    h.send_header("content-type", "application/json")
    h.send_header("content-length", str(len(data)))
    h.send_header("request-id", "req_fake")
    h.end_headers()
    h.wfile.write(data)


def _send_sse(h: BaseHTTPRequestHandler, events: list[str], truncate: bool | int) -> None:
    """Stream `events`; `truncate` cuts the stream: True after half the events, a number after that many."""
    if truncate is True:
        events = events[: len(events) // 2]
    elif truncate is not False:
        events = events[:truncate]
    h.send_response(200)
    h.send_header("content-type", "text/event-stream")
    h.send_header("connection", "close")  # the end of the body is the end of the connection
    h.end_headers()
    for event in events:
        h.wfile.write(event.encode())
    h.wfile.flush()
    h.close_connection = True


def _usage(turn: dict[str, Any]) -> tuple[int, int]:
    usage = turn.get("usage", {})
    return usage.get("input_tokens", 10), usage.get("output_tokens", 5)


def _pieces(text: str) -> list[str]:
    """Split text in a few chunks the way a model streams it: word by word, spaces kept."""
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]] if text else []


# --- anthropic --------------------------------------------------------------------------------------


def _anthropic_error(status: int, turn: dict[str, Any]) -> dict[str, Any]:
    kind = ANTHROPIC_ERROR_TYPES.get(status, "api_error")
    message = turn.get("message", f"fake {status}")
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_fake"}


def _anthropic_message(turn: dict[str, Any], ids: list[str], request: dict[str, Any]) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": turn["text"]}] if turn.get("text") else []
    for call_id, call in zip(ids, turn.get("tool_calls", [])):
        content.append({"type": "tool_use", "id": call_id, "name": call["name"], "input": call["arguments"]})
    stop = turn.get("stop_reason") or ("tool_use" if ids else "end_turn")
    input_tokens, output_tokens = _usage(turn)
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": request.get("model", ""),
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }


def _anthropic_events(message: dict[str, Any], turn: dict[str, Any]) -> list[str]:
    """The Messages streaming sequence: message_start, a start/deltas/stop per block, message_delta, stop."""
    start = dict(message, content=[], stop_reason=None, usage=dict(message["usage"], output_tokens=1))
    events = [("message_start", {"type": "message_start", "message": start})]
    for i, block in enumerate(message["content"]):
        events += list(_anthropic_block_events(i, block))
        if i == 0:
            events.append(("ping", {"type": "ping"}))  # the real API pings after the first block starts
    if "stream_error" in turn:
        events.append(
            ("error", {"type": "error", "error": {"type": turn["stream_error"], "message": "fake"}})
        )
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    usage = {"output_tokens": message["usage"]["output_tokens"]}
    events.append(("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
    events.append(("message_stop", {"type": "message_stop"}))
    return [f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events]


def _anthropic_block_events(i: int, block: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    if block["type"] == "text":
        yield (
            "content_block_start",
            {"type": "content_block_start", "index": i, "content_block": dict(block, text="")},
        )
        deltas = [{"type": "text_delta", "text": piece} for piece in _pieces(block["text"])]
    else:
        yield (
            "content_block_start",
            {"type": "content_block_start", "index": i, "content_block": dict(block, input={})},
        )
        raw = json.dumps(block["input"])
        cut = len(raw) // 2  # the input arrives as partial JSON in several deltas
        deltas = [{"type": "input_json_delta", "partial_json": part} for part in ("", raw[:cut], raw[cut:])]
    for delta in deltas:
        yield "content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta}
    yield "content_block_stop", {"type": "content_block_stop", "index": i}


# --- openai -----------------------------------------------------------------------------------------


def _openai_error(status: int, turn: dict[str, Any]) -> dict[str, Any]:
    kind = "requests" if status == 429 else OPENAI_ERROR_TYPES.get(status, "server_error")
    code = turn.get("code", "rate_limit_exceeded" if status == 429 else None)
    return {
        "error": {"message": turn.get("message", f"fake {status}"), "type": kind, "param": None, "code": code}
    }


def _openai_completion(turn: dict[str, Any], ids: list[str], request: dict[str, Any]) -> dict[str, Any]:
    calls = [
        {
            "id": call_id,
            "type": "function",
            "function": {
                "name": call["name"],
                "arguments": call.get("raw_arguments", json.dumps(call["arguments"])),
            },
        }
        for call_id, call in zip(ids, turn.get("tool_calls", []))
    ]
    message: dict[str, Any] = {"role": "assistant", "content": turn.get("text") or None, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    prompt, completion = _usage(turn)
    finish = turn.get("stop_reason") or ("tool_calls" if calls else "stop")
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1767225600,
        "model": request.get("model", ""),
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


def _openai_chunks(completion: dict[str, Any], turn: dict[str, Any], include_usage: bool) -> list[str]:
    """The streamed form: role, content deltas, per call a head then argument fragments, finish, usage."""
    choice, message = completion["choices"][0], completion["choices"][0]["message"]
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    deltas += [{"content": piece} for piece in _pieces(message["content"] or "")]
    for i, call in enumerate(message.get("tool_calls", [])):
        head = {
            "index": i,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["function"]["name"]},
        }
        args = call["function"]["arguments"]
        cut = len(args) // 2
        deltas.append({"tool_calls": [dict(head, function=dict(head["function"], arguments=""))]})
        deltas += [
            {"tool_calls": [{"index": i, "function": {"arguments": part}}]}
            for part in (args[:cut], args[cut:])
        ]
    base = {k: completion[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    extra = {"usage": None} if include_usage else {}
    chunks = [dict(base, choices=[{"index": 0, "delta": d, "finish_reason": None}], **extra) for d in deltas]
    if "stream_error" in turn:
        chunks.append(
            {"error": {"message": "fake", "type": turn["stream_error"], "param": None, "code": None}}
        )
    chunks.append(
        dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}], **extra)
    )
    if include_usage:
        chunks.append(dict(base, choices=[], usage=completion["usage"]))
    return [f"data: {json.dumps(c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"]
