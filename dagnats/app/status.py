"""`dagnats status`: what is alive. The NATS server or cluster, every stream and bucket, the
engines and workers heard from lately, and per task how much is queued and who serves it."""

from __future__ import annotations

import datetime as dt
import textwrap
import time
from typing import Any

from dagnats.api import views
from dagnats.api.client import Client
from dagnats.errors import UserError
from dagnats.nats import heartbeat, names
from dagnats.nats.store import NO_DATA, UNAVAILABLE_ERRORS, Store, Unavailable
from dagnats.ports import Heartbeat

# The streams dagnats owns: its own, and those behind its KV buckets and object stores.
PREFIXES = ("DAGNATS_", "KV_dagnats_", "OBJ_dagnats_")


async def collect(client: Client) -> dict[str, Any]:
    try:
        return await _collect(client)
    except UNAVAILABLE_ERRORS:  # the cluster's meta leader, or a stream's leader, is gone
        raise Unavailable() from None


async def _collect(client: Client) -> dict[str, Any]:
    store = client.store
    server = store.server()
    # A lone server leads every stream; a cluster names each stream's leader.
    lone = None if server["cluster"] else server["name"] or server["id"]
    streams = await _streams(store, lone)
    if not any(s["name"] == names.TASKS_STREAM for s in streams):
        raise UserError(NO_DATA)
    beats = await store.heartbeats()
    return {
        "server": _server(server, streams),
        "streams": streams,
        "heartbeats": beats is not None,  # false: a serve from before heartbeats made this data
        "engines": [_beat_doc(b) for b in beats or [] if b.kind == "engine"],
        "workers": [_beat_doc(b) for b in beats or [] if b.kind == "worker"],
        "tasks": await _tasks(store, beats or []),
    }


async def _streams(store: Store, lone: str | None) -> list[dict[str, Any]]:
    out = []
    for info in await store.streams():
        name = info.config.name or ""
        if not name.startswith(PREFIXES):
            continue
        kind, _, bucket = name.partition("_") if not name.startswith("DAGNATS_") else ("stream", "", name)
        cluster = info.cluster
        followers = (cluster.replicas or []) if cluster else []
        out.append(
            {
                "name": bucket,
                "kind": {"KV": "kv", "OBJ": "object store"}.get(kind, kind),
                "replicas": info.config.num_replicas or 1,
                "leader": (cluster.leader if cluster else None) or lone,
                "peers": [r.name for r in followers],
                # each copy but the leader's: caught up (`current`), how far behind, offline
                "followers": [
                    {
                        "name": r.name,
                        "current": bool(r.current),
                        "lag": r.lag or 0,
                        "offline": bool(r.offline),
                    }
                    for r in followers
                ],
                "messages": info.state.messages,
                "bytes": info.state.bytes,
                "consumers": info.state.consumer_count,
            }
        )
    return sorted(out, key=lambda s: (s["kind"] != "stream", s["name"]))


def _server(server: dict[str, Any], streams: list[dict[str, Any]]) -> dict[str, Any]:
    """`name` is the node this client talks to; `nodes` every node a stream lives on (and that
    one); `urls` the client URLs of the nodes up now, as the server advertises them."""
    nodes = {server["name"] or server["id"]}
    for s in streams:
        nodes.update(n for n in (s["leader"], *s["peers"]) if n)
    return {
        "url": server["url"],
        "name": server["name"],
        "version": server["version"],
        "cluster": server["cluster"],
        "nodes": sorted(n for n in nodes if n),
        "urls": server.get("urls") or [],
    }


def _beat_doc(b: Heartbeat) -> dict[str, Any]:
    return {
        "id": b.id,
        "name": b.name,
        "host": b.host,
        "pid": b.pid,
        "tasks": b.tasks,
        "in_flight": b.in_flight,
        "last_seen": views.iso(b.last_seen),
    }


async def _tasks(store: Store, beats: list[Heartbeat]) -> dict[str, dict[str, int]]:
    """Per task: messages in the queue not yet handed out, handed out and unacknowledged, and
    the live workers serving it. Tasks appear if queued, consumed once, or served now."""
    total, running = await store.task_counts()
    served: dict[str, int] = {}
    for b in beats:
        if b.kind == "worker":
            for task in b.tasks:
                served[task] = served.get(task, 0) + 1
    out = {}
    for task in sorted({*total, *running, *served}):
        busy = min(running.get(task, 0), total.get(task, 0))
        out[task] = {"queued": total.get(task, 0) - busy, "running": busy, "workers": served.get(task, 0)}
    return out


def text(doc: dict[str, Any], now: float | None = None) -> str:
    """The human form, readable at 80 columns."""
    now = time.time() if now is None else now
    server = doc["server"]
    nodes = server["nodes"]
    cluster = f"cluster {server['cluster']}, " if server["cluster"] else ""
    talking = f"  via {server['name']}" if server["cluster"] and server.get("name") else ""
    lines = [
        f"NATS {server['url']}{talking}  nats-server {server['version']}  "
        f"({cluster}{len(nodes)} node{'s' if len(nodes) != 1 else ''})"
        + ("  fsync on every write" if server.get("fsync") else ""),
        "",
    ]
    rows = [
        [
            s["name"],
            s["kind"],
            str(s["replicas"]),
            _short_node(s["leader"]) if s["leader"] else "none",
            str(s["messages"]),
            _size(s["bytes"]),
            _behind(s.get("followers") or []),
        ]
        for s in doc["streams"]
    ]
    headers = ["stream / bucket", "kind", "replicas", "leader", "messages", "bytes", ""]
    lines += [views.table(rows, headers), ""]
    procs = [("engine", b) for b in doc["engines"]] + [("worker", b) for b in doc["workers"]]
    if not doc["heartbeats"]:
        lines.append("no heartbeats on this NATS: restart `dagnats serve` to create their bucket")
    elif not procs:
        lines.append(
            f"no engine or worker seen in the last {heartbeat.ALIVE:g} s: is `dagnats serve` running?"
        )
    else:
        rows = [
            [
                kind,
                _fit(b["id"], 26),
                _fit(b["host"], 14),
                str(b["pid"]),
                str(b["in_flight"]),
                _ago(b["last_seen"], now),
            ]
            for kind, b in procs
        ]
        headers = ["kind", "id", "host", "pid", "in flight", "seen"]
        used = max(len(line) for line in views.table(rows, headers).splitlines()) + 2
        wrapped = []  # the tasks column wraps onto lines of its own
        for row, (_, b) in zip(rows, procs):
            chunks = textwrap.wrap(", ".join(b["tasks"]), max(16, 80 - used)) or ["-"]
            wrapped.append([*row, chunks[0]])
            wrapped += [[""] * len(row) + [chunk] for chunk in chunks[1:]]
        lines.append(views.table(wrapped, [*headers, "tasks"]))
    lines.append("")
    if doc["tasks"]:
        rows = [
            [task[:30], str(t["queued"]), str(t["running"]), str(t["workers"])]
            + (["no worker serves it"] if t["queued"] and not t["workers"] and doc["heartbeats"] else [""])
            for task, t in doc["tasks"].items()
        ]
        lines.append(views.table(rows, ["task", "queued", "running", "workers", ""]))
    else:
        lines.append("no tasks queued or served")
    return "\n".join(lines)


def _behind(followers: list[dict[str, Any]]) -> str:
    """The copies not caught up with the leader, e.g. `n3 offline, n2 lag 12`."""
    notes = [
        f"{f['name']} offline" if f["offline"] else f"{f['name']} lag {f['lag']}"
        for f in followers
        if f["offline"] or not f["current"]
    ]
    return ", ".join(notes)


def _short_node(name: str | None) -> str:
    return "-" if not name else name if len(name) <= 16 else name[:15] + "…"


def _size(n: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _ago(iso: str | None, now: float) -> str:
    """How long ago, like `run list`'s ages."""
    if iso is None:
        return "-"
    ts = dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    return views.age(ts, now)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
