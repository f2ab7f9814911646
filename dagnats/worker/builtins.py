"""Built-in tasks that need no user code: echo, shell, sleep. Served by `dagnats serve`."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import msgspec

from dagnats.core.definition import ShellConfig, TaskSleepConfig
from dagnats.core.durations import format_duration, parse_duration
from dagnats.processes import CommandTimedOut, run_command

from .sdk import NonRetryable, TaskContext, TaskFailed, Worker

TAIL_BYTES = 16 * 1024
builtin = Worker(name="builtin")


@builtin.task("echo")
async def echo(ctx: TaskContext) -> Any:
    return ctx.input


@builtin.task("sleep")
async def sleep(ctx: TaskContext) -> dict[str, float]:
    cfg = msgspec.convert(ctx.config, TaskSleepConfig)
    seconds = parse_duration(cfg.duration)
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@builtin.task("shell")
async def shell(ctx: TaskContext) -> dict[str, Any]:
    try:
        cfg = msgspec.convert(ctx.config, ShellConfig)
    except msgspec.ValidationError as exc:
        raise NonRetryable(f"shell config: {exc}") from None
    env = {
        **os.environ,
        **cfg.env,
        "DAGNATS_RUN_ID": ctx.run_id,
        "DAGNATS_STEP_ID": ctx.step_id,
        "DAGNATS_ATTEMPT": str(ctx.attempt),
    }
    if isinstance(cfg.command, str):
        argv = ["/bin/sh", "-c", cfg.command]
    else:
        argv = list(cfg.command)
    cwd = os.path.expanduser(cfg.cwd) if cfg.cwd else None
    if cwd and not os.path.isdir(cwd):
        raise NonRetryable(f"shell: working directory {cwd} does not exist")
    limit = parse_duration(cfg.timeout) if cfg.timeout is not None else None
    try:
        code, out, err = await run_command(argv, cwd=cwd, env=env, timeout=limit)
    except OSError as exc:
        raise NonRetryable(f"shell: cannot start {argv[0]}: {exc.strerror}") from None
    except CommandTimedOut:
        raise TaskFailed(f"command timed out after {format_duration(limit or 0)}") from None
    stdout, stderr = _tail(out), _tail(err)
    if code != 0:
        last = stderr.strip().splitlines()[-5:] or stdout.strip().splitlines()[-5:]
        raise TaskFailed(f"exit code {code}: " + " | ".join(last)[-1000:])
    return {"exit_code": code, "stdout": stdout, "stderr": stderr}


def _tail(data: bytes) -> str:
    return data[-TAIL_BYTES:].decode("utf-8", errors="replace")
