"""Child processes that never outlive their parent: the nats-server, shell steps, agent commands."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
from collections.abc import Mapping

# Runs a command in its own process group and kills the whole group when told to stop (or when
# its parent dies, via PDEATHSIG), so no grandchild of a shell step outlives its worker.
GROUP_WRAPPER = 'trap "kill -KILL 0" TERM INT HUP; "$@" & wait $!'


class CommandTimedOut(Exception):
    pass


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a forked child: ask Linux to send `sig` when the spawning thread dies (PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, sig)
    except OSError:
        pass


def in_process_group(argv: list[str]) -> list[str]:
    return ["/bin/sh", "-c", GROUP_WRAPPER, "dagnats-task", *argv]


async def run_command(
    argv: list[str],
    *,
    cwd: str | os.PathLike[str] | None,
    env: Mapping[str, str],
    timeout: float | None,
    merge_stderr: bool = False,
) -> tuple[int, bytes, bytes]:
    """(exit code, stdout, stderr) of `argv` run in its own process group, killed whole on a
    timeout (CommandTimedOut) or on cancellation. Raises OSError if it cannot start."""
    proc = await asyncio.create_subprocess_exec(
        *in_process_group(argv),
        cwd=cwd,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except (TimeoutError, asyncio.CancelledError) as exc:
        _kill_group(proc.pid)
        await proc.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise CommandTimedOut() from None
    return proc.returncode or 0, out or b"", err or b""


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
