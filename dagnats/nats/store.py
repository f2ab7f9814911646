"""JetStream persistence: run histories, run snapshots, workflow versions, tasks and timers.

The history stream is the source of truth. Snapshots in KV are a cache that records the last
history sequence they include; anything can be rebuilt from the history alone.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import api
from nats.js.errors import (
    APIError,
    BadRequestError,
    BucketNotFoundError,
    KeyNotFoundError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)

from dagnats.core.actions import DispatchTask, StartTimer
from dagnats.core.definition import NAME_RE, WorkflowDef
from dagnats.core.events import Event, decode_event, encode_event
from dagnats.core.state import RunState
from dagnats.errors import NotFound, UserError
from dagnats.ports import (  # re-exported: callers import them from here too
    MAX_EVENT_BYTES,
    ActiveRun,
    BatchUnsupported,
    Conflict,
    Feed,
    Heartbeat,
    Listing,
    RunSummary,
    Snapshot,
    TooLarge,
    WorkflowVersion,
    current_of,
)

from . import feed, listing, names, objects, upgrade
from .heartbeat import ALIVE, Beat
from .objects import ObjectValues
from .replies import Replies

__all__ = [
    "MAX_EVENT_BYTES",
    "BatchUnsupported",
    "Conflict",
    "RunSummary",
    "Snapshot",
    "Store",
    "TooLarge",
    "WorkflowVersion",
    "decode_recorded",
    "decode_task",
    "decode_timer",
    "drop_consumer",
]

WRONG_LAST_SEQUENCE = 10071
NO_MESSAGE = 10057  # JetStream: "no message found" (a delete of a message already gone)

_snap_dec = msgspec.json.Decoder(Snapshot)
# Tasks and timers travel as the core actions that asked for them.
_task_dec = msgspec.json.Decoder(DispatchTask)
_timer_dec = msgspec.json.Decoder(StartTimer)
_wfv_dec = msgspec.json.Decoder(WorkflowVersion)
_beat_dec = msgspec.json.Decoder(Heartbeat)
_enc = msgspec.json.Encoder()


class Store:
    """The `dagnats.ports` store interfaces (and `Presence`) on JetStream, over one connection."""

    def __init__(self, nc: NATS, source: str = names.SOURCE_ENGINE, *, replicas: int = 1) -> None:
        self.nc = nc
        self.source = source  # the history subject token this store writes under
        # How many copies of every stream, bucket and object store `ensure` creates or raises
        # existing ones to (`serve --replicas`): the one place the replica count is set.
        self.replicas = replicas
        self.js = nc.jetstream()
        self.replies = Replies(nc)  # the hot path's publishes and reads
        self.values = ObjectValues(nc, self.replies)  # values too big for an event
        self._runs: Any = None
        self._workflows: Any = None
        self._wf_cache: dict[tuple[str, int], WorkflowVersion] = {}

    # --- setup -------------------------------------------------------------------------------

    async def ensure(self) -> None:
        """Create every stream and bucket if missing, with `self.replicas` replicas, and bring
        older ones up to date, fewer replicas included (idempotent; safe with several engines)."""
        check_replicas(self.nc, self.replicas)
        try:
            for stream in _STREAMS:
                await _create_stream(self.js, replace(stream, num_replicas=self.replicas))
            for bucket in _BUCKETS:
                await _create_bucket(self.js, replace(bucket, replicas=self.replicas))
            await objects.ensure_bucket(self.js, replicas=self.replicas)  # values too big for an event
        except APIError as exc:
            raise replicas_refused(self.nc, self.replicas, exc) from None
        await upgrade.run(self)
        await self._buckets()

    @property
    def atomic_batches(self) -> bool:
        """Whether the server can append several messages atomically (nats-server 2.12+)."""
        version = str(self.nc._server_info.get("version", "0.0.0"))
        try:
            major, minor = (int(x) for x in version.split(".")[:2])
        except ValueError:
            return False
        return (major, minor) >= (2, 12)

    async def require(self) -> None:
        """Check that dagnats' streams and buckets exist (for workers, which may not create them)."""
        try:
            await self.js.stream_info(names.TASKS_STREAM)
        except NotFoundError:
            raise UserError(NO_DATA) from None
        except UNAVAILABLE_ERRORS:
            raise Unavailable(names.TASKS_STREAM) from None
        await self._buckets()

    async def _buckets(self) -> None:
        if self._runs is not None:
            return
        try:
            workflows = await self.js.key_value(names.WORKFLOWS_BUCKET)
            runs = await self.js.key_value(names.RUNS_BUCKET)
        except UNAVAILABLE_ERRORS:  # there, but without a leader (a cluster short of quorum)
            raise Unavailable(f"KV_{names.WORKFLOWS_BUCKET}") from None
        except Exception:  # missing, or not readable with these permissions
            raise UserError(NO_DATA) from None
        await self._has_leader(f"KV_{names.RUNS_BUCKET}")
        self._workflows, self._runs = workflows, runs

    async def _has_leader(self, stream: str, wait: float | None = None) -> None:
        """Return once `stream` has a leader; raise Unavailable after `wait` seconds without.
        A replica without quorum still answers reads (maybe stale) and stream infos, so a
        clustered stream with no leader is reported, not read from. Just after `serve` raised
        its replicas, or a node died, the election takes a moment: this waits for it."""
        deadline = time.monotonic() + (LEADER_WAIT if wait is None else wait)
        while True:
            try:
                cluster = (await self.js.stream_info(stream)).cluster
                if cluster is None or not cluster.name or cluster.leader:
                    return  # a lone server's stream, or a led one
            except UNAVAILABLE_ERRORS:
                pass
            if time.monotonic() >= deadline:
                raise Unavailable(stream)
            await asyncio.sleep(0.25)

    # --- history -----------------------------------------------------------------------------

    async def append(
        self, run_id: str, event: Event, *, expected_last: int | None = None, msg_id: str | None = None
    ) -> int:
        """Append one event; return its stream sequence. Raise Conflict if `expected_last` is stale."""
        data = encode_event(event)
        if len(data) > MAX_EVENT_BYTES:
            raise TooLarge(len(data))
        headers = {}
        if expected_last is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(expected_last)
            headers["Nats-Expected-Last-Subject-Sequence-Subject"] = names.history_filter(run_id)
        if msg_id is not None:
            headers["Nats-Msg-Id"] = msg_id
        try:
            subject = names.history_subject(run_id, self.source)
            ack = await self.replies.publish(subject, data, headers or None)
        except APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise Conflict(run_id) from None
            raise
        return ack.seq

    async def append_batch(self, run_id: str, events: list[Event], *, expected_last: int) -> list[int]:
        """Append several events of one run all-or-nothing (a JetStream atomic batch), the first
        checked against `expected_last` as `append` does; return their stream sequences.
        Raise Conflict if the run moved on, BatchUnsupported if the stream cannot do batches."""
        datas = [encode_event(e) for e in events]
        for data in datas:
            if len(data) > MAX_EVENT_BYTES:
                raise TooLarge(len(data))
        subject = names.history_subject(run_id, self.source)
        batch = secrets.token_hex(16)
        last = len(datas)
        for i, data in enumerate(datas, 1):
            headers = {"Nats-Batch-Id": batch, "Nats-Batch-Sequence": str(i)}
            if i == 1:
                headers["Nats-Expected-Last-Subject-Sequence"] = str(expected_last)
                headers["Nats-Expected-Last-Subject-Sequence-Subject"] = names.history_filter(run_id)
            if i < last:
                await self.nc.publish(subject, data, headers=headers)
                continue
            headers["Nats-Batch-Commit"] = "1"
            try:
                ack = await self.replies.publish(subject, data, headers)
            except APIError as exc:
                if exc.err_code == WRONG_LAST_SEQUENCE:
                    raise Conflict(run_id) from None
                if "atomic" in (exc.description or "").lower() or "batch" in (exc.description or "").lower():
                    raise BatchUnsupported(exc.description or str(exc)) from None
                raise
        if ack.count != last:
            raise BatchUnsupported(f"the server did not commit the batch as one ({ack})")
        return list(range(ack.seq - last + 1, ack.seq + 1))

    async def read_history(self, run_id: str, after: int = 0) -> list[tuple[int, Event]]:
        """Every event of a run with sequence > `after`, in order (batched direct get)."""
        subject = names.history_filter(run_id)
        out: list[tuple[int, Event]] = []
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        try:
            seq = after + 1
            while True:
                req = json.dumps({"seq": seq, "next_by_subj": subject, "batch": 512}).encode()
                await self.nc.publish(f"$JS.API.DIRECT.GET.{names.HISTORY_STREAM}", req, reply=inbox)
                got, pending = 0, 0
                while True:
                    msg = await sub.next_msg(timeout=5)
                    headers = msg.headers or {}
                    status = headers.get("Status")
                    if status:
                        pending = int(headers.get("Nats-Num-Pending", "0") or 0) if status == "204" else 0
                        break
                    got += 1
                    seq = int(headers["Nats-Sequence"])
                    out.append((seq, decode_recorded(headers["Nats-Subject"], msg.data)))
                    seq += 1
                if got == 0 or pending == 0:
                    return out
        finally:
            await sub.unsubscribe()

    async def leader_last_sequence(self, run_id: str) -> int:
        """The run's last history sequence (0 if none) as the stream's leader knows it: a
        STREAM.MSG.GET, answered by the leader only, where a direct get may come from a
        replica that lags it (a cluster). One request with the event in it; for checks."""
        try:
            msg = await self.js.get_msg(names.HISTORY_STREAM, subject=names.history_filter(run_id))
        except NotFoundError:
            return 0
        return int(msg.seq or 0)

    async def last_sequence(self, run_id: str) -> int:
        req = _enc.encode({"last_by_subj": names.history_filter(run_id)})
        msg = await self.replies.request(f"$JS.API.DIRECT.GET.{names.HISTORY_STREAM}", req)
        headers = msg.headers or {}
        status = headers.get("Status")
        if status:
            if status != "404":
                raise APIError(code=int(status), description=headers.get("Description", ""))
            return 0
        return int(headers["Nats-Sequence"])

    # --- values too big for an event (nats/objects.py) ----------------------------------------

    async def put_value(self, name: str, data: bytes) -> None:
        await self.values.put_value(name, data)

    async def get_value(self, name: str) -> bytes:
        return await self.values.get_value(name)

    # --- snapshots ---------------------------------------------------------------------------

    async def load_snapshot(self, run_id: str) -> tuple[Snapshot | None, int]:
        """The run's snapshot and its KV revision (0 when there is none)."""
        found = await self._kv_get(names.RUNS_BUCKET, run_id)
        if found is None:
            return None, 0
        return _snap_dec.decode(found[0]), found[1]

    async def _kv_get(self, bucket: str, key: str) -> tuple[bytes, int] | None:
        """A key's value and revision, or None: one direct get through `replies`."""
        await self._buckets()
        msg = await self.replies.request(f"$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.{key}", b"")
        headers = msg.headers or {}
        status = headers.get("Status")
        if status:
            if status != "404":
                raise APIError(code=int(status), description=headers.get("Description", ""))
            return None
        if headers.get("KV-Operation") in ("DEL", "PURGE"):
            return None
        return msg.data, int(headers["Nats-Sequence"])

    async def save_snapshot(self, applied: int, state: RunState, revision: int) -> int | None:
        """Compare-and-set; return the new revision, or None if someone else saved first."""
        summary = RunSummary.of(state)
        data = _enc.encode(Snapshot(applied=applied, summary=summary, state=state))
        if len(data) > MAX_EVENT_BYTES:
            data = _enc.encode(Snapshot(applied=applied, summary=summary))
        try:
            ack = await self.replies.publish(
                f"$KV.{names.RUNS_BUCKET}.{state.run_id}",
                data,
                {"Nats-Expected-Last-Subject-Sequence": str(revision)},
            )
            return ack.seq
        except APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                return None
            raise

    async def current_state(self, run_id: str) -> RunState | None:
        """The run's state now: its snapshot plus a replay of the newer history (None if no run)."""
        return (await self.current(run_id))[0]

    async def current(self, run_id: str) -> tuple[RunState | None, int]:
        """The run's state now and the last history sequence it includes."""
        return await current_of(self, self, run_id)

    async def all_snapshots(self) -> list[Snapshot]:
        """Every run's snapshot (the basis of `run list`)."""
        await self._buckets()
        return [_snap_dec.decode(e.value) for e in await _dump(self._runs, ">") if e.value]

    async def newest_runs(self, limit: int | None, keep: Callable[[RunSummary], bool]) -> Listing:
        """The newest matching run summaries, read from the runs bucket's tail (listing.py)."""
        await self._buckets()
        stream = f"KV_{names.RUNS_BUCKET}"
        state = (await self.js.stream_info(stream)).state
        span = (state.first_seq, state.last_seq)
        return await listing.newest(self.nc, stream, f"$KV.{names.RUNS_BUCKET}.>", span, limit, keep)

    # --- the index of unfinished runs (a stream keeping one message per run) ----------------

    async def active_runs(self) -> list[ActiveRun] | None:
        """Every unfinished run's index entry; None if the index was never built here (a
        server from before it, with no `dagnats serve` of this version started since)."""
        try:
            built = await self._last_of(names.ACTIVE_STREAM, names.ACTIVE_BUILT)
        except NoRespondersError:  # no such stream
            return None
        if built is None:
            return None
        return await listing.index_entries(self.nc, names.ACTIVE_STREAM, names.active_filter())

    async def save_active(self, entry: ActiveRun) -> None:
        data = _enc.encode(entry)
        if len(data) > MAX_EVENT_BYTES:
            data = _enc.encode(msgspec.structs.replace(entry, approvals=[], approvals_left_out=True))
        await self.replies.publish(names.active_subject(entry.summary.run_id), data)

    async def drop_active(self, run_id: str) -> None:
        """Delete the run's entry message itself (a KV delete would leave a marker per run)."""
        found = await self._last_of(names.ACTIVE_STREAM, names.active_subject(run_id))
        if found is None:
            return
        req = _enc.encode({"seq": found[1], "no_erase": True})
        msg = await self.replies.request(f"$JS.API.STREAM.MSG.DELETE.{names.ACTIVE_STREAM}", req)
        reply = json.loads(msg.data or b"{}")
        error = reply.get("error") or {}
        if error and error.get("err_code") != NO_MESSAGE:  # gone already: replaced, or deleted
            raise APIError(code=error.get("code"), description=error.get("description", ""))

    async def mark_active_built(self) -> None:
        await self.replies.publish(names.ACTIVE_BUILT, b"1")

    async def _last_of(self, stream: str, subject: str) -> tuple[bytes, int] | None:
        """The last message on a subject and its sequence, or None: one direct get."""
        msg = await self.replies.request(f"$JS.API.DIRECT.GET.{stream}.{subject}", b"")
        headers = msg.headers or {}
        status = headers.get("Status")
        if status == "503":
            raise NoRespondersError
        if status:
            if status != "404":
                raise APIError(code=int(status), description=headers.get("Description", ""))
            return None
        return msg.data, int(headers["Nats-Sequence"])

    # --- workflows ---------------------------------------------------------------------------

    async def register_workflow(self, wf: WorkflowDef, now: float) -> tuple[int, bool]:
        """Store a new version unless identical to the latest; return (version, created).

        Versions live at `<name>.<n>` and never change; `<name>.latest` points at the newest, so
        looking a workflow up takes two direct reads and no consumer.
        """
        await self._buckets()
        for _ in range(20):
            latest = await self.latest_workflow(wf.name)
            if latest is not None and _enc.encode(latest.definition) == _enc.encode(wf):
                return latest.version, False
            version = 1 if latest is None else latest.version + 1
            record = WorkflowVersion(name=wf.name, version=version, registered_at=now, definition=wf)
            try:
                await self._workflows.create(names.workflow_key(wf.name, version), _enc.encode(record))
            except Exception:
                # Someone registered this version first (or crashed before moving the pointer).
                await self._advance_latest(wf.name, version)
                continue
            await self._advance_latest(wf.name, version)
            return version, True
        raise UserError(f"could not register {wf.name}: too many concurrent registrations")

    async def _workflow_keys(self) -> list[str]:
        """Every key of the workflows bucket (versions and `latest` pointers)."""
        await self._buckets()
        return [e.key for e in await _dump(self._workflows, ">", meta_only=True)]

    async def _advance_latest(self, name: str, version: int) -> None:
        key = names.workflow_latest_key(name)
        for _ in range(20):
            try:
                entry = await self._workflows.get(key)
                current, revision = int(entry.value), entry.revision
            except KeyNotFoundError:
                current, revision = 0, 0
            if current >= version:
                return
            try:
                await self._workflows.update(key, str(version).encode(), last=revision)
                return
            except Exception:
                continue  # raced with another register; look again

    async def workflow_versions(self, name: str) -> list[int]:
        latest = await self.latest_workflow(name)
        return list(range(1, latest.version + 1)) if latest else []

    async def get_workflow(self, name: str, version: int | None = None) -> WorkflowVersion:
        if not NAME_RE.match(name):
            raise NotFound(f"unknown workflow {name!r}: workflow names are letters, digits, '-' and '_'")
        if version is None:
            latest = await self.latest_workflow(name)
            if latest is None:
                raise NotFound(
                    f"unknown workflow {name!r}: register it with `dagnats workflow register FILE`"
                )
            return latest
        found = await self._version(name, version)
        if found is None:
            raise NotFound(f"workflow {name!r} has no version {version}")
        return found

    async def latest_workflow(self, name: str) -> WorkflowVersion | None:
        found = await self._kv_get(names.WORKFLOWS_BUCKET, names.workflow_latest_key(name))
        if found is None:
            return None
        return await self._version(name, int(found[0]))

    async def _version(self, name: str, version: int) -> WorkflowVersion | None:
        """One version of a workflow; versions never change, so they are cached."""
        cached = self._wf_cache.get((name, version))
        if cached is not None:
            return cached
        found = await self._kv_get(names.WORKFLOWS_BUCKET, names.workflow_key(name, version))
        if found is None:
            return None
        record = _wfv_dec.decode(found[0])
        self._wf_cache[(name, version)] = record
        return record

    async def all_workflows(self) -> list[WorkflowVersion]:
        await self._buckets()
        entries = await _dump(self._workflows, ">")
        return [_wfv_dec.decode(e.value) for e in entries if e.value and not e.key.endswith(".latest")]

    # --- tasks and timers --------------------------------------------------------------------

    async def dispatch(self, action: DispatchTask) -> None:
        await self.replies.publish(
            names.task_subject(action.task, action.run_id),
            _enc.encode(action),
            {"Nats-Msg-Id": action.msg_id},
        )

    async def drop_tasks(self, run_id: str) -> None:
        """Take a run's queued tasks off the queue (the run ended; nobody should start them)."""
        await self.js.purge_stream(names.TASKS_STREAM, subject=names.run_tasks_filter(run_id))

    async def cancel_timers(self, run_id: str) -> None:
        await self.js.purge_stream(names.TIMERS_STREAM, subject=names.timer_subject(run_id))

    async def start_timer(self, action: StartTimer) -> None:
        await self.replies.publish(
            names.timer_subject(action.run_id), _enc.encode(action), {"Nats-Msg-Id": action.msg_id}
        )

    # --- feeds: the durable consumers, set up in feed.py (each returns a dagnats.ports.Feed) --

    async def engine_feed(self) -> Feed:
        return await feed.engine_feed(self.nc, self.js)

    async def task_feed(self, task: str, ack_wait: float) -> tuple[Feed, float]:
        return await feed.task_feed(self.nc, self.js, task, ack_wait)

    async def timer_feed(self) -> Feed:
        return await feed.timer_feed(self.nc, self.js)

    @property
    def reconnects(self) -> int:
        """How many times the connection to the server was made again after a loss."""
        return int(self.nc.stats["reconnects"])

    # --- heartbeats --------------------------------------------------------------------------

    def beat(self, kind: str, name: str, tasks: list[str], in_flight: Callable[[], int]) -> Beat:
        """This process's heartbeat (start it, stop it when leaving)."""
        return Beat(self.js, kind, name, tasks, in_flight)

    async def heartbeats(self, now: float | None = None, within: float = ALIVE) -> list[Heartbeat] | None:
        """Engines and workers heard from in the last `within` seconds, engines first; None when
        this NATS has no heartbeat bucket (a serve from before heartbeats): nobody can tell."""
        try:
            kv = await self.js.key_value(names.HEARTBEATS_BUCKET)
        except (BucketNotFoundError, NotFoundError):
            return None
        now = time.time() if now is None else now
        out = []
        for entry in await _dump(kv, ">"):
            try:
                beat = _beat_dec.decode(entry.value)
            except msgspec.DecodeError:
                continue
            if now - beat.last_seen <= within:
                out.append(beat)
        return sorted(out, key=lambda b: (b.kind != "engine", b.host, b.pid, b.id))

    # --- live output and tools (core NATS, nothing stored) -----------------------------------

    async def publish_live(self, run_id: str, step_id: str, chunk: bytes) -> None:
        """Model text as it streams, for whoever watches (`Client.live_text`); nothing waits."""
        await self.nc.publish(names.live_subject(run_id, step_id), chunk)

    @property
    def tools(self) -> ToolRequests:
        """Requests to the workers that serve user tools."""
        return ToolRequests(self.nc)

    # --- what `dagnats status` shows ---------------------------------------------------------

    def server(self) -> dict[str, Any]:
        """The server this store talks to: url, name, id, version and cluster (None if lone)."""
        info = self.nc._server_info
        url = self.nc.connected_url
        return {
            "url": str(url.geturl()) if url else None,
            "name": info.get("server_name"),
            "id": info.get("server_id"),
            "version": info.get("version"),
            "cluster": info.get("cluster"),
            "urls": sorted(set(info.get("connect_urls") or [])),  # a cluster's nodes up now
        }

    async def streams(self) -> list[api.StreamInfo]:
        """Every stream on the server (dagnats' own, its buckets', and any other)."""
        return list(await self.js.streams_info())

    async def task_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """Per task: the messages in its queue, and those handed out and not yet acknowledged."""
        info = await self.js.stream_info(names.TASKS_STREAM, subjects_filter=f"{names.TASK_PREFIX}.>")
        total: dict[str, int] = {}
        for subject, count in (info.state.subjects or {}).items():
            task = subject.split(".")[2]
            total[task] = total.get(task, 0) + count
        running: dict[str, int] = {}
        for consumer in await self.js.consumers_info(names.TASKS_STREAM):
            filters = consumer.config.filter_subjects or [consumer.config.filter_subject or ""]
            for task in {f.split(".")[2] for f in filters if f.startswith(names.TASK_PREFIX + ".")}:
                running[task] = running.get(task, 0) + (consumer.num_ack_pending or 0)
        return total, running


class ToolRequests:
    """Calls to user tools: request/reply to the worker serving each (`names.tool_subject`)."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc

    async def request(self, subject: str, payload: bytes = b"", timeout: float = 0.5) -> Msg:
        """One request, its reply; raises as nats-py does (NoRespondersError, a timeout)."""
        return await self._nc.request(subject, payload, timeout=timeout)

    async def serve(self, name: str, answer: Callable[[bytes], Awaitable[bytes]]) -> Subscription:
        """Answer the calls to tool `name` (shared with every worker serving it); unsubscribe
        the returned subscription to stop."""

        async def respond(msg: Msg) -> None:
            await msg.respond(await answer(msg.data))

        return await self._nc.subscribe(names.tool_subject(name), queue=f"tool-{name}", cb=respond)


NO_DATA = "this NATS has no dagnats data yet: start `dagnats serve` against it first"
LEADER_WAIT = 5.0  # seconds a command waits for a stream without a leader before it says so

# What nats-py raises when a stream exists but cannot answer: JetStream's 503 (10008 "JetStream
# system temporarily unavailable": the meta leader or the stream's leader is gone), no
# responders to a publish (the stream has no leader to store it), and a request nobody
# answered in time (a leader being elected). `NotFoundError` alone means "does not exist".
UNAVAILABLE_ERRORS = (ServiceUnavailableError, NoStreamResponseError, NoRespondersError, NatsTimeout)


class Unavailable(UserError):
    """A dagnats stream exists but has no leader right now: never reported as "no data"."""

    def __init__(self, stream: str = "") -> None:
        what = f"stream {stream}" if stream else "a dagnats stream"
        super().__init__(
            f"{what} is unavailable: it has no leader (NATS cluster nodes are down, too few for a "
            "quorum, or a leader is being elected); serve and workers wait and retry on their own: "
            "try again shortly, and check that the cluster's nodes are up"
        )


def cluster_size(nc: NATS) -> int:
    """How many nodes the server says its cluster has up (1 when not clustered): the client
    URLs it advertises, which list the nodes it is routed to now."""
    info = nc._server_info
    if not info.get("cluster"):
        return 1
    return max(1, len(set(info.get("connect_urls") or [])))


NO_PEERS = 10005  # JetStream: "no suitable peers for placement" (fewer nodes up than replicas)


def check_replicas(nc: NATS, replicas: int) -> None:
    """`--replicas N` the server can never hold, refused in one line before anything is made.
    A cluster with nodes down is left to the server: what already has N copies keeps them."""
    if replicas < 1:
        raise UserError(f"--replicas {replicas}: give 1 or more")
    if replicas > 1 and not nc._server_info.get("cluster"):
        raise UserError(
            f"--replicas {replicas}: the NATS at {_url(nc)} is a single server, not a cluster; "
            "give --nats the URLs of a JetStream cluster, or drop --replicas"
        )


def replicas_refused(nc: NATS, replicas: int, exc: Exception, stream: str | None = None) -> UserError:
    """Creating the streams (or raising `stream`) with `replicas` copies, refused by the
    server: one line that says why and what to do."""
    why = (getattr(exc, "description", None) or str(exc) or type(exc).__name__).strip()
    if getattr(exc, "err_code", None) == NO_PEERS:
        up = cluster_size(nc)
        return UserError(
            f"--replicas {replicas}: the NATS cluster at {_url(nc)} has {up} node{'s' if up != 1 else ''} up "
            f"({why}); give --replicas {up} at most, or start the missing nodes"
        )
    if stream is None:
        return UserError(
            f"NATS at {_url(nc)} refused to create the dagnats streams with {replicas} replicas ({why})"
        )
    return UserError(
        f"NATS at {_url(nc)} refused to raise stream {stream} to {replicas} replicas ({why}); do it by "
        f"hand with `nats stream edit {stream} --replicas {replicas}` (natscli) once the cluster is "
        "healthy, then start serve again"
    )


def _url(nc: NATS) -> str:
    url = nc.connected_url
    return str(url.geturl()) if url else "?"


_STREAMS = [
    api.StreamConfig(
        name=names.HISTORY_STREAM,
        subjects=[f"{names.HISTORY_PREFIX}.>"],
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        duplicate_window=names.HISTORY_DEDUP_SECONDS,
        allow_direct=True,
        allow_atomic=True,  # several events of one run appended all-or-nothing
    ),
    api.StreamConfig(
        name=names.ACTIVE_STREAM,
        subjects=[f"{names.ACTIVE_PREFIX}.>"],
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        max_msgs_per_subject=1,
        allow_direct=True,
    ),
    api.StreamConfig(
        name=names.TASKS_STREAM,
        subjects=[f"{names.TASK_PREFIX}.>"],
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.WORK_QUEUE,
        duplicate_window=names.TASKS_DEDUP_SECONDS,
    ),
    api.StreamConfig(
        name=names.TIMERS_STREAM,
        subjects=[f"{names.TIMER_PREFIX}.>"],
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.WORK_QUEUE,
        duplicate_window=names.TIMERS_DEDUP_SECONDS,
    ),
]

_BUCKETS = [
    # direct: a read is one request answered with the raw entry, not a JSON API call with
    # base64 inside (a fifth of a worker's CPU per task, profiled)
    api.KeyValueConfig(bucket=names.RUNS_BUCKET, history=1, storage=api.StorageType.FILE, direct=True),
    api.KeyValueConfig(bucket=names.WORKFLOWS_BUCKET, history=1, storage=api.StorageType.FILE, direct=True),
    # where engines and workers say they are alive; entries expire on their own
    api.KeyValueConfig(
        bucket=names.HEARTBEATS_BUCKET,
        history=1,
        ttl=names.HEARTBEAT_TTL_SECONDS,
        storage=api.StorageType.FILE,
    ),
]


async def _create_stream(js: Any, config: api.StreamConfig) -> None:
    """Create a stream unless it exists (an existing one is left as it is: see `upgrade`)."""
    assert config.name is not None
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
        except BadRequestError:
            if not await _exists(js, config.name):  # refused (too few nodes for the replicas)
                raise
            # else another process created it meanwhile


async def _create_bucket(js: Any, config: api.KeyValueConfig) -> None:
    """Create a KV bucket unless it exists (an existing one is left as it is: see `upgrade`)."""
    try:
        await js.key_value(config.bucket)
    except (BucketNotFoundError, NotFoundError):
        try:
            await js.create_key_value(config)
        except BadRequestError:
            if not await _exists(js, f"KV_{config.bucket}"):
                raise


async def _exists(js: Any, stream: str) -> bool:
    try:
        await js.stream_info(stream)
    except NotFoundError:
        return False
    return True


async def _dump(kv: Any, keys: str, meta_only: bool = False) -> list[Any]:
    """Current entries of a bucket matching `keys`, read through one ephemeral pull consumer.

    (nats-py's KV watcher can report "no more entries" before delivering any when they are
    already in flight, so listing does not use it.)
    """
    js, stream = kv._js, kv._stream
    prefix = f"$KV.{kv._name}."
    psub = await js.pull_subscribe(
        prefix + keys,
        stream=stream,
        config=api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
            ack_policy=api.AckPolicy.NONE,
            headers_only=meta_only,
            inactive_threshold=30.0,
        ),
    )
    out: list[Any] = []
    try:
        remaining = (await psub.consumer_info()).num_pending
        while remaining > 0:
            for msg in await psub.fetch(min(remaining, 1024), timeout=5):
                op = (msg.headers or {}).get("KV-Operation")
                remaining = msg.metadata.num_pending
                if op in ("DEL", "PURGE"):
                    continue
                out.append(_KVEntry(key=msg.subject[len(prefix) :], value=msg.data))
    finally:
        await drop_consumer(js, stream, psub)
    return out


async def drop_consumer(js: Any, stream: str, sub: Any) -> None:
    """Unsubscribe and delete the consumer now: the server caps consumers per stream, and an
    unsubscribed one would otherwise linger until its inactivity threshold."""
    try:
        name = (await sub.consumer_info()).name
        await sub.unsubscribe()
        await js.delete_consumer(stream, name)
    except Exception:
        pass  # gone already, or the connection is; the inactivity threshold cleans up


class _KVEntry(msgspec.Struct, frozen=True):
    key: str
    value: bytes


def decode_recorded(subject: str, data: bytes) -> Event:
    """An event as read back from the history, stamped with the source its subject proves."""
    event = decode_event(data)
    return msgspec.structs.replace(event, source=names.source_of_history_subject(subject))


def decode_task(data: bytes) -> DispatchTask:
    return _task_dec.decode(data)


def decode_timer(data: bytes) -> StartTimer:
    return _timer_dec.decode(data)
