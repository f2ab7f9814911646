"""Built-in tasks that need no user code: echo, shell, sleep. Served by `dagnats serve`."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import msgspec

from .core.definition import ShellConfig, TaskSleepConfig
from .core.durations import format_duration, parse_duration
from .server import die_with_parent, in_process_group
from .worker import NonRetryable, TaskContext, TaskFailed, Worker

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
    try:
        proc = await asyncio.create_subprocess_exec(
            *in_process_group(argv),
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    except OSError as exc:
        raise NonRetryable(f"shell: cannot start {argv[0]}: {exc.strerror}") from None
    limit = parse_duration(cfg.timeout) if cfg.timeout is not None else None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    except (TimeoutError, asyncio.CancelledError) as exc:
        _kill_group(proc.pid)
        await proc.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise TaskFailed(f"command timed out after {format_duration(limit or 0)}") from None
    stdout, stderr = _tail(out), _tail(err)
    code = proc.returncode
    if code != 0:
        last = stderr.strip().splitlines()[-5:] or stdout.strip().splitlines()[-5:]
        raise TaskFailed(f"exit code {code}: " + " | ".join(last)[-1000:])
    return {"exit_code": code, "stdout": stdout, "stderr": stderr}


def _tail(data: bytes) -> str:
    return data[-TAIL_BYTES:].decode("utf-8", errors="replace")


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
