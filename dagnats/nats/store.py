"""JetStream persistence: run histories, run snapshots, workflow versions, tasks and timers.

The history stream is the source of truth. Snapshots in KV are a cache that records the last
history sequence they include; anything can be rebuilt from the history alone.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import replace
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.js import api
from nats.js.errors import (
    APIError,
    BadRequestError,
    BucketNotFoundError,
    KeyNotFoundError,
    NotFoundError,
)

from dagnats.core.actions import DispatchTask, StartTimer
from dagnats.core.decide import fold
from dagnats.core.definition import NAME_RE, WorkflowDef
from dagnats.core.events import Event, decode_event, encode_event
from dagnats.core.state import RunState
from dagnats.errors import NotFound, UserError

from . import names
from .replies import Replies

WRONG_LAST_SEQUENCE = 10071
MAX_EVENT_BYTES = 900_000


class Conflict(Exception):
    """Someone else appended to the run's history first (optimistic concurrency)."""


class BatchUnsupported(Exception):
    """The server or stream cannot append a batch atomically; append one event at a time."""


class TooLarge(UserError):
    """An event does not fit in one NATS message."""

    def __init__(self, size: int) -> None:
        super().__init__(f"event of {size} bytes exceeds the {MAX_EVENT_BYTES}-byte limit")
        self.size = size


class RunSummary(msgspec.Struct, frozen=True, omit_defaults=True):
    """What listing a run needs, small whatever the run's outputs are."""

    run_id: str
    workflow: str
    version: int
    status: str
    created_at: float
    steps_done: int
    steps_total: int
    finished_at: float | None = None
    error: str | None = None
    parent_run_id: str | None = None
    approvals: int = 0  # pending: the run waits for an operator
    forked_from: str | None = None
    continued_from: str | None = None

    @classmethod
    def of(cls, state: RunState) -> RunSummary:
        done, total = state.progress()
        return cls(
            run_id=state.run_id,
            workflow=state.workflow,
            version=state.version,
            status=state.status,
            created_at=state.created_at,
            steps_done=done,
            steps_total=total,
            finished_at=state.finished_at,
            error=state.error,
            parent_run_id=state.parent.run_id if state.parent else None,
            approvals=len(state.pending_approvals()),
            forked_from=state.forked_from,
            continued_from=state.continued_from,
        )


class Snapshot(msgspec.Struct, frozen=True, omit_defaults=True):
    """A run's cached state as of history sequence `applied`. `state` is left out when it would
    not fit in one message; readers then replay the whole history (the summary still lists)."""

    applied: int
    summary: RunSummary
    state: RunState | None = None


class WorkflowVersion(msgspec.Struct, frozen=True):
    name: str
    version: int
    registered_at: float
    definition: WorkflowDef


_snap_dec = msgspec.json.Decoder(Snapshot)
# Tasks and timers travel as the core actions that asked for them.
_task_dec = msgspec.json.Decoder(DispatchTask)
_timer_dec = msgspec.json.Decoder(StartTimer)
_wfv_dec = msgspec.json.Decoder(WorkflowVersion)
_enc = msgspec.json.Encoder()


class Store:
    def __init__(self, nc: NATS, source: str = names.SOURCE_ENGINE) -> None:
        self.nc = nc
        self.source = source  # the history subject token this store writes under
        self.js = nc.jetstream()
        self.replies = Replies(nc)  # the hot path's publishes and reads
        self._runs: Any = None
        self._workflows: Any = None
        self._wf_cache: dict[tuple[str, int], WorkflowVersion] = {}

    # --- setup -------------------------------------------------------------------------------

    async def ensure(self) -> None:
        """Create every stream and bucket if missing (idempotent; safe with several engines)."""
        streams = [
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
        for cfg in streams:
            assert cfg.name is not None
            try:
                info = await self.js.stream_info(cfg.name)
            except NotFoundError:
                try:
                    await self.js.add_stream(cfg)
                except BadRequestError:
                    pass  # another process created it meanwhile
                continue
            if cfg.allow_atomic and not info.config.allow_atomic and self.atomic_batches:
                # a history stream from before atomic batches: turn them on (a compatible change)
                await self.js.update_stream(replace(info.config, allow_atomic=True))
        await self._buckets(create=True)
        await self._heartbeats_bucket()

    async def _heartbeats_bucket(self) -> None:
        """Where engines and workers say they are alive; entries expire on their own. Data dirs
        from before heartbeats get it at the next start."""
        try:
            await self.js.key_value(names.HEARTBEATS_BUCKET)
        except BucketNotFoundError:
            config = api.KeyValueConfig(
                bucket=names.HEARTBEATS_BUCKET,
                history=1,
                ttl=names.HEARTBEAT_TTL_SECONDS,
                storage=api.StorageType.FILE,
            )
            try:
                await self.js.create_key_value(config)
            except BadRequestError:
                pass  # another process created it meanwhile

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
            raise UserError(
                "this NATS has no dagnats data yet: start `dagnats serve` against it first"
            ) from None
        await self._buckets()

    async def _buckets(self, create: bool = False) -> None:
        if self._runs is not None:
            return
        for bucket in (names.RUNS_BUCKET, names.WORKFLOWS_BUCKET):
            try:
                kv = await self.js.key_value(bucket)
            except Exception:
                if not create:
                    raise UserError(
                        "this NATS has no dagnats data yet: start `dagnats serve` against it first"
                    ) from None
                kv = await self.js.create_key_value(
                    # direct: a read is one request answered with the raw entry, not a JSON API
                    # call with base64 inside (a fifth of a worker's CPU per task, profiled)
                    api.KeyValueConfig(bucket=bucket, history=1, storage=api.StorageType.FILE, direct=True)
                )
            else:
                if create and not kv._direct:  # a bucket from before: turn direct reads on
                    info = await self.js.stream_info(f"KV_{bucket}")
                    await self.js.update_stream(replace(info.config, allow_direct=True))
                    kv = await self.js.key_value(bucket)
            if bucket == names.RUNS_BUCKET:
                self._runs = kv
            else:
                self._workflows = kv

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
        snap, _ = await self.load_snapshot(run_id)
        state, last = (snap.state, snap.applied) if snap and snap.state else (None, 0)
        for seq, event in await self.read_history(run_id, after=last):
            state, last = fold(state, event), seq
        return state, last

    async def all_snapshots(self) -> list[Snapshot]:
        """Every run's snapshot (the basis of `run list`)."""
        await self._buckets()
        return [_snap_dec.decode(e.value) for e in await _dump(self._runs, ">") if e.value]

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
            return await self._adopt_versions(name)
        return await self._version(name, int(found[0]))

    async def _adopt_versions(self, name: str) -> WorkflowVersion | None:
        """Versions stored before the `latest` pointer existed: point at the newest of them."""
        keys = [e.key for e in await _dump(self._workflows, f"{name}.*", meta_only=True)]
        versions = sorted(int(k.rsplit(".", 1)[1]) for k in keys if k.rsplit(".", 1)[1].isdigit())
        if not versions:
            return None
        await self._advance_latest(name, versions[-1])
        return await self._version(name, versions[-1])

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

    async def engine_feed(self) -> Any:
        from .feed import engine_feed

        return await engine_feed(self.nc, self.js)

    async def task_feed(self, task: str, ack_wait: float) -> tuple[Any, float]:
        from .feed import task_feed

        return await task_feed(self.nc, self.js, task, ack_wait)

    async def timer_feed(self) -> Any:
        from .feed import timer_feed

        return await timer_feed(self.nc, self.js)

    @property
    def reconnects(self) -> int:
        """How many times the connection to the server was made again after a loss."""
        return int(self.nc.stats["reconnects"])


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
