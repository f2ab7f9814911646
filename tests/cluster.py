"""A real three-node JetStream cluster for tests: the wheel's nats-server on loopback ports.

    with Cluster(tmp_path) as cluster:            # or the `cluster` fixture in conftest.py
        env = cluster.env()                       # DAGNATS_NATS_USER/PASSWORD for `dagnats ...`
        serve = ServeProcess(dir, args=("--nats", cluster.urls_from(1)), env=env)
        leader = cluster.stream_leader("DAGNATS_HISTORY")   # a node name, e.g. "n1"
        cluster.node(leader).kill()               # SIGKILL
        cluster.node(leader).start()              # same ports, same store: it rejoins

Every node listens on 127.0.0.1 only (clients, routes and monitoring). Users are the embedded
server's: `operator` (may do anything) and `worker` (the embedded server's permissions), so a
`dagnats worker` can be tested against the cluster as against `serve`. Inspection goes through
each node's HTTP monitoring port (`/jsz`), so it works from sync and async tests alike.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dagnats.nats.datadir import Credentials
from dagnats.nats.embedded import _users, find_binary
from dagnats.processes import die_with_parent

CLUSTER_NAME = "dagnats-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Node:
    """One nats-server of the cluster: fixed ports and store, so a restart is the same node."""

    def __init__(self, cluster: Cluster, index: int) -> None:
        self.cluster = cluster
        self.index = index
        self.name = f"n{index}"
        self.port = _free_port()
        self.route_port = _free_port()
        self.monitor_port = _free_port()
        self.dir = cluster.tmp / self.name
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def config(self) -> str:
        routes = ", ".join(f'"nats://127.0.0.1:{n.route_port}"' for n in self.cluster.nodes if n is not self)
        return (
            f'server_name: "{self.name}"\n'
            f'listen: "127.0.0.1:{self.port}"\n'
            f'http: "127.0.0.1:{self.monitor_port}"\n'
            f'jetstream {{ store_dir: "{self.dir / "store"}" }}\n'
            f'cluster {{\n  name: "{CLUSTER_NAME}"\n  listen: "127.0.0.1:{self.route_port}"\n'
            f"  routes: [{routes}]\n}}\n"
            f"authorization {{\n{_users(self.cluster.creds)}}}\n"
            "max_payload: 1MB\n"
        )

    def start(self) -> Node:
        """Start (or restart) this node; returns once it accepts clients."""
        assert not self.alive, f"{self.name} is already running"
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "nats-server.conf"
        conf.write_text(self.config())
        self.starts += 1
        log = open(self.dir / f"server-{self.starts}.log", "wb")
        self.proc = subprocess.Popen(
            [find_binary(), "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # a killed pytest leaves no server behind
        )
        log.close()
        _until(lambda: self._accepting() or not self.alive, 15, f"{self.name} to listen")
        assert self.alive, f"{self.name} exited at start: {self.log()[-2000:]}"
        return self

    def _accepting(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """SIGKILL by default: no flush, no leadership hand-over, as when a machine dies."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def log(self) -> str:
        path = self.dir / f"server-{self.starts}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def monitor(self, path: str) -> Any:
        """GET a monitoring endpoint of this node (e.g. "jsz?streams=true"), decoded."""
        url = f"http://127.0.0.1:{self.monitor_port}/{path}"
        with urllib.request.urlopen(url, timeout=2) as resp:
            return json.loads(resp.read())


class Cluster:
    """`size` clustered nats-servers with JetStream, started together, inspected by name."""

    def __init__(self, tmp: Path, size: int = 3, creds: Credentials | None = None) -> None:
        self.tmp = tmp
        self.creds = creds or Credentials(operator="cluster-operator", worker="cluster-worker")
        self.nodes = [Node(self, i) for i in range(1, size + 1)]

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- lifetime --------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Cluster:
        for node in self.nodes:
            node.start()
        self.wait_meta_leader(timeout)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.kill(signal.SIGTERM)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def alive(self) -> list[Node]:
        return [n for n in self.nodes if n.alive]

    # -- what clients are given ------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def urls_from(self, first: int = 0) -> str:
        """Every node's URL, comma-separated, starting at node index `first` (0-based)."""
        urls = self.urls
        return ",".join(urls[first:] + urls[:first])

    @property
    def url(self) -> str:
        return self.urls_from(0)

    def env(self, base: dict[str, str] | None = None, role: str = "operator", **extra: str) -> dict[str, str]:
        """Environment for `dagnats ...` child processes: the cluster's credentials for `role`."""
        env = dict(base if base is not None else {k: v for k, v in os.environ.items()})
        env["DAGNATS_NATS_USER"] = role
        env["DAGNATS_NATS_PASSWORD"] = self.creds.operator if role == "operator" else self.creds.worker
        env.update(extra)
        return env

    # -- inspection (monitoring endpoints of live nodes) ----------------------------------

    def _jsz(self, query: str) -> dict[str, dict[str, Any]]:
        """Each live node's answer to /jsz?query, by node name."""
        answers = {}
        for node in self.alive():
            try:
                answers[node.name] = node.monitor(f"jsz?{query}")
            except OSError:
                continue
        return answers

    def _majority(self, claims: list[str | None]) -> str | None:
        """The live node that a majority of the whole cluster names: a node that just restarted
        briefly believes what it knew before it died, so no single answer is trusted."""
        alive = {n.name for n in self.alive()}
        for name, votes in Counter(c for c in claims if c in alive).items():
            if votes > len(self.nodes) // 2:
                return name
        return None

    def meta_leader(self) -> str | None:
        """The JetStream meta leader, as a majority of the cluster sees it; None without one."""
        docs = self._jsz("leader-only=false").values()
        return self._majority([(doc.get("meta_cluster") or {}).get("leader") for doc in docs])

    def wait_meta_leader(self, timeout: float = 30.0) -> str:
        return str(_until(self.meta_leader, timeout, "a JetStream meta leader"))

    def _stream_views(self, name: str) -> dict[str, dict[str, Any]]:
        views = {}
        for node, doc in self._jsz("accounts=true&streams=true&config=true").items():
            for account in doc.get("account_details") or []:
                for stream in account.get("stream_detail") or []:
                    if stream.get("name") == name:
                        views[node] = dict(stream)
        return views

    def stream_leader(self, name: str) -> str | None:
        """The node leading stream `name`, as a majority of the cluster sees it; None while the
        stream has no leader (no quorum, or an election under way)."""
        views = self._stream_views(name).values()
        return self._majority([(v.get("cluster") or {}).get("leader") for v in views])

    def stream(self, name: str) -> dict[str, Any] | None:
        """The stream as its leader reports it ("config", "state", "cluster": leader and
        replicas with `current`), else as any live node last knew it; None if none knows it."""
        views = self._stream_views(name)
        leader = self.stream_leader(name)
        if leader in views:
            return views[leader]
        return next(iter(views.values()), None)

    def wait_stream_leader(self, name: str, timeout: float = 30.0, other_than: str | None = None) -> str:
        def found() -> str | None:
            leader = self.stream_leader(name)
            return leader if leader and leader != other_than else None

        return str(_until(found, timeout, f"a leader of stream {name}"))

    def stream_current(self, name: str, replicas: int | None = None) -> bool:
        """Whether the stream has a live leader and every other replica is caught up with it."""
        views = self._stream_views(name)
        stream = views.get(self.stream_leader(name) or "")
        if stream is None:
            return False
        peers = (stream.get("cluster") or {}).get("replicas") or []
        want = (replicas or self.stream_replicas(name)) - 1
        return len(peers) == want and all(p.get("current") for p in peers)

    def stream_replicas(self, name: str) -> int:
        stream = self.stream(name)
        assert stream is not None, f"no stream {name}"
        return int(stream["config"].get("num_replicas", 1))
