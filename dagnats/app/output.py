"""Status lines of long-running processes, which a closed pipe must never turn into a crash.

`dagnats worker … | tee`, with the tee gone, must still stop on Ctrl-C: no print on the way
to signalling the stop may raise.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO


def say(text: str, *, err: bool = False) -> None:
    """Print one line and flush it, or, when the stream is gone, print nothing from now on."""
    stream = sys.stderr if err else sys.stdout
    try:
        print(text, file=stream, flush=True)
    except (OSError, ValueError):  # EPIPE, EIO; ValueError: the stream was closed
        silence(stream)


def silence(stream: TextIO) -> None:
    """Point a broken stream at /dev/null, so what it still buffers cannot fail again (at exit,
    Python would report the lost bytes on the same broken stream)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def silence_broken() -> None:
    """After a BrokenPipeError: silence whichever of stdout and stderr it came from."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            silence(stream)


STOP_DEADLINE = 4.5  # seconds from a stop signal to the exit, whatever still hangs


def exit_by_deadline(what: str, seconds: float = STOP_DEADLINE) -> None:
    """Make sure the process ends within `seconds` of a stop signal: a drain waiting on a server
    that went away must not keep it running (unacknowledged tasks are handed out again)."""
    import asyncio

    def leave() -> None:
        say(f"{what}: did not stop within {seconds:g}s; leaving now", err=True)
        os._exit(1)

    asyncio.get_running_loop().call_later(seconds, leave)
