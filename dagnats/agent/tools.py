"""Tools an agent may call: built-ins confined to a working directory, and user tools over NATS.

Every failure (a path outside the workdir, a command over its timeout, output over the cap, an
unknown or unreachable tool) becomes an error result for the model; nothing here raises into
the loop.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nats.errors import NoRespondersError

from dagnats.core.definition import BUILTIN_TOOLS
from dagnats.nats import names
from dagnats.nats.store import ToolRequests
from dagnats.processes import CommandTimedOut, run_command

from .providers import ToolSpec

OUTPUT_CAP = 16 * 1024  # bytes of tool output handed back to the model
MAX_COMMAND_SECONDS = 3600.0
USER_TOOL_TIMEOUT = 300.0

BUILTIN_SPECS = {
    "read_file": ToolSpec(
        name="read_file",
        description="Read a text file in the working directory.",
        parameters={"type": "object", "required": ["path"], "properties": {"path": {"type": "string"}}},
    ),
    "write_file": ToolSpec(
        name="write_file",
        description="Create or replace a text file in the working directory.",
        parameters={
            "type": "object",
            "required": ["path", "content"],
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
        },
    ),
    "list_files": ToolSpec(
        name="list_files",
        description="List the files under a directory of the working directory.",
        parameters={"type": "object", "properties": {"path": {"type": "string"}}},
    ),
    "run_command": ToolSpec(
        name="run_command",
        description="Run a shell command in the working directory; returns its exit code and output.",
        parameters={
            "type": "object",
            "required": ["command"],
            "properties": {"command": {"type": "string"}, "timeout": {"type": "number"}},
        },
    ),
}


class ToolError(Exception):
    """A tool call that failed: its message goes back to the model as an error result."""


class Toolbox:
    def __init__(self, tools: list[str], workdir: Path, nc: ToolRequests, command_timeout: float) -> None:
        self.tools = tools
        self.workdir = workdir.resolve()
        self.nc = nc
        self.command_timeout = command_timeout

    async def specs(self) -> list[ToolSpec]:
        """The tools' descriptions for the model; a user tool that does not answer is left out."""
        out = []
        for name in self.tools:
            if name in BUILTIN_SPECS:
                out.append(BUILTIN_SPECS[name])
                continue
            try:
                reply = await self.nc.request(names.tool_subject(name), b'{"op": "spec"}', timeout=5)
                spec = json.loads(reply.data)
                out.append(
                    ToolSpec(
                        name=name, description=spec.get("description", ""), parameters=spec["parameters"]
                    )
                )
            except Exception:
                continue  # no worker serves it now; a call to it will report that
        return out

    async def call(self, name: str, arguments: dict[str, Any], context: dict[str, Any]) -> tuple[str, bool]:
        """(result text, is_error)."""
        if name not in self.tools:
            return f"error: no tool named {name!r} (available: {', '.join(self.tools)})", True
        try:
            if name in BUILTIN_TOOLS:
                text = await getattr(self, f"_{name}")(**_arguments(name, arguments))
            else:
                text = await self._user_tool(name, arguments, context)
        except ToolError as exc:
            return f"error: {exc}", True
        except TypeError as exc:
            return f"error: bad arguments for {name}: {exc}", True
        if len(text.encode()) > OUTPUT_CAP:
            return f"error: output of {len(text.encode())} bytes exceeds the {OUTPUT_CAP}-byte cap", True
        return text, False

    def _path(self, path: str) -> Path:
        target = (self.workdir / path).resolve()
        if target != self.workdir and not target.is_relative_to(self.workdir):
            raise ToolError(f"path {path!r} is outside the working directory")
        return target

    async def _read_file(self, path: str) -> str:
        target = self._path(path)
        try:
            data = target.read_bytes()
        except OSError as exc:
            raise ToolError(f"cannot read {path}: {exc.strerror}") from None
        if len(data) > OUTPUT_CAP:
            raise ToolError(f"{path} has {len(data)} bytes, over the {OUTPUT_CAP}-byte cap")
        return data.decode("utf-8", errors="replace")

    async def _write_file(self, path: str, content: str) -> str:
        target = self._path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        except OSError as exc:
            raise ToolError(f"cannot write {path}: {exc.strerror}") from None
        return f"wrote {len(content.encode())} bytes to {path}"

    async def _list_files(self, path: str = ".") -> str:
        root = self._path(path)
        if not root.is_dir():
            raise ToolError(f"{path} is not a directory")
        found = sorted(
            str(p.relative_to(self.workdir)) + ("/" if p.is_dir() else "")
            for p in root.rglob("*")
            if ".git" not in p.relative_to(self.workdir).parts
        )
        return "\n".join(found) if found else "(empty)"

    async def _run_command(self, command: str, timeout: float | None = None) -> str:
        limit = min(float(timeout or self.command_timeout), MAX_COMMAND_SECONDS)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGNATS_", "NATS_"))}
        try:
            code, out, _ = await run_command(
                ["/bin/sh", "-c", command], cwd=self.workdir, env=env, timeout=limit, merge_stderr=True
            )
        except CommandTimedOut:
            raise ToolError(f"command timed out after {limit:g}s") from None
        text = out.decode("utf-8", errors="replace")
        if code != 0:
            raise ToolError(f"exit code {code}\n{text}")
        return f"exit code 0\n{text}"

    async def _user_tool(self, name: str, arguments: dict[str, Any], context: dict[str, Any]) -> str:
        request = json.dumps({"op": "call", "arguments": arguments, **context}).encode()
        try:
            reply = await self.nc.request(names.tool_subject(name), request, timeout=USER_TOOL_TIMEOUT)
        except NoRespondersError:
            raise ToolError(f"tool {name} is not served by any worker right now") from None
        except Exception:
            raise ToolError(f"tool {name} did not answer within {USER_TOOL_TIMEOUT:g}s") from None
        answer = json.loads(reply.data)
        if answer.get("is_error"):
            raise ToolError(str(answer.get("result", "")))
        result = answer.get("result", "")
        return result if isinstance(result, str) else json.dumps(result)


def _arguments(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    allowed = set(BUILTIN_SPECS[name].parameters.get("properties", {}))
    unknown = set(arguments) - allowed
    if unknown:
        raise ToolError(f"unknown argument(s) for {name}: {', '.join(sorted(unknown))}")
    return arguments
