"""`MemoryStore`: every interface of `dagnats.ports` in memory, for tests that need no server.

It keeps the promises the NATS store keeps, checked by one contract suite run against both
(tests/test_memory_store.py): one sequence over all runs' histories, optimistic appends against
a run's last sequence, message ids absorbed, atomic batches, snapshots compared and set by
revision, workflow versions, work queues per task, timers. Messages carry the subjects the NATS
store gives them, so code that reads a run or a source from a subject works on both.

Several processes of one deployment (the engine, a worker, the client) each hold their own
store, writing under their own source: `with_source` gives another view of the same data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from dagnats.core.actions import DispatchTask, StartTimer
from dagnats.core.definition import NAME_RE, WorkflowDef
from dagnats.core.events import Event, decode_event, encode_event
from dagnats.core.state import RunState
from dagnats.errors import NotFound
from dagnats.ports import (
    MAX_EVENT_BYTES,
    ActiveRun,
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

from .queue import Consumer, ConsumerFeed, Stream

# The NATS store's subjects (dagnats.nats.names), which this layer may not import.
HISTORY_PREFIX = "dagnats.history"
TASK_PREFIX = "dagnats.task"
TIMER_PREFIX = "dagnats.timer"
ENGINE_ACK_WAIT = 15.0  # as the NATS store's consumers (dagnats.nats.feed)
TIMER_ACK_WAIT = 30.0

_enc = msgspec.json.Encoder()
_snap_dec = msgspec.json.Decoder(Snapshot)


def _run_of(subject: str) -> str:
    """The run a history, task or timer subject belongs to."""
    parts = subject.split(".")
    return parts[3] if parts[1] == "task" else parts[2]


@dataclass
class _Data:
    """What every view of one in-memory deployment shares."""

    history: Stream = field(default_factory=Stream)
    tasks: Stream = field(default_factory=lambda: Stream(work_queue=True))
    timers: Stream = field(default_factory=lambda: Stream(work_queue=True))
    run_seqs: dict[str, list[int]] = field(default_factory=dict)  # each run's history sequences
    snapshots: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # run -> (snapshot, revision)
    snapshot_revision: int = 0  # one sequence over all keys, as a KV bucket's stream has
    active: dict[str, ActiveRun] = field(default_factory=dict)  # the index of unfinished runs
    workflows: dict[str, list[WorkflowVersion]] = field(default_factory=dict)  # versions 1..n
    consumers: dict[str, Consumer] = field(default_factory=dict)
    beats: dict[str, tuple[Heartbeat, Callable[[], int]]] = field(default_factory=dict)
    live: list[tuple[str, str, bytes]] = field(default_factory=list)  # (run, step, chunk)
    values: dict[str, bytes] = field(default_factory=dict)  # values too big for an event, by name


class MemoryStore:
    """A `dagnats.ports.Store` (and `Presence`) in memory; pure asyncio."""

    atomic_batches = True
    reconnects = 0  # a connection that never drops

    def __init__(self, source: str = "e", *, _data: _Data | None = None) -> None:
        self.source = source  # the history subject token this store writes under
        self._data = _data or _Data()

    def with_source(self, source: str) -> MemoryStore:
        """Another process's store on the same data (a worker: "w", an operator: "o")."""
        return MemoryStore(source, _data=self._data)

    async def ensure(self) -> None:
        """Nothing to create: the store exists as soon as it is made."""

    async def require(self) -> None:
        """Always there."""

    # --- history -----------------------------------------------------------------------------

    async def append(
        self, run_id: str, event: Event, *, expected_last: int | None = None, msg_id: str | None = None
    ) -> int:
        data = _checked(event)
        self._check_last(run_id, expected_last)  # as JetStream: before a repeated id is absorbed
        return self._add(run_id, data, msg_id)

    async def append_batch(self, run_id: str, events: list[Event], *, expected_last: int) -> list[int]:
        datas = [_checked(e) for e in events]
        self._check_last(run_id, expected_last)
        return [self._add(run_id, data) for data in datas]  # no await in between: all or nothing

    def _check_last(self, run_id: str, expected_last: int | None) -> None:
        seqs = self._data.run_seqs.get(run_id)
        if expected_last is not None and (seqs[-1] if seqs else 0) != expected_last:
            raise Conflict(run_id)

    def _add(self, run_id: str, data: bytes, msg_id: str | None = None) -> int:
        history = self._data.history
        before = history.last_seq
        seq = history.add(f"{HISTORY_PREFIX}.{run_id}.{self.source}", data, msg_id)
        if seq > before:  # not a repeated id
            self._data.run_seqs.setdefault(run_id, []).append(seq)
        return seq

    async def read_history(self, run_id: str, after: int = 0) -> list[tuple[int, Event]]:
        messages = self._data.history.messages
        out = []
        for seq in self._data.run_seqs.get(run_id, []):
            if seq > after:
                message = messages[seq]
                event = decode_event(message.data)
                source = message.subject.rsplit(".", 1)[1]
                out.append((seq, msgspec.structs.replace(event, source=source)))
        return out

    async def last_sequence(self, run_id: str) -> int:
        seqs = self._data.run_seqs.get(run_id)
        return seqs[-1] if seqs else 0

    async def leader_last_sequence(self, run_id: str) -> int:
        return await self.last_sequence(run_id)  # one copy: never behind

    async def engine_feed(self) -> Feed:
        return ConsumerFeed(self._consumer("engine", self._data.history, lambda s: True, ENGINE_ACK_WAIT))

    def _consumer(
        self, name: str, stream: Stream, matches: Callable[[str], bool], ack_wait: float
    ) -> Consumer:
        """The durable consumer `name`, made on first use (later ones keep its ack wait)."""
        if name not in self._data.consumers:
            self._data.consumers[name] = stream.consumer(matches, ack_wait)
        return self._data.consumers[name]

    # --- snapshots ---------------------------------------------------------------------------

    async def put_value(self, name: str, data: bytes) -> None:
        self._data.values.setdefault(name, bytes(data))

    async def get_value(self, name: str) -> bytes:
        found = self._data.values.get(name)
        if found is None:
            raise NotFound(f"value {name} is not stored")
        return found

    async def load_snapshot(self, run_id: str) -> tuple[Snapshot | None, int]:
        found = self._data.snapshots.get(run_id)
        return (None, 0) if found is None else (_snap_dec.decode(found[0]), found[1])

    async def save_snapshot(self, applied: int, state: RunState, revision: int) -> int | None:
        found = self._data.snapshots.get(state.run_id)
        if (found[1] if found else 0) != revision:
            return None
        summary = RunSummary.of(state)
        data = _enc.encode(Snapshot(applied=applied, summary=summary, state=state))
        if len(data) > MAX_EVENT_BYTES:
            data = _enc.encode(Snapshot(applied=applied, summary=summary))
        self._data.snapshot_revision += 1
        self._data.snapshots[state.run_id] = (data, self._data.snapshot_revision)
        return self._data.snapshot_revision

    async def all_snapshots(self) -> list[Snapshot]:
        return [_snap_dec.decode(data) for data, _ in self._data.snapshots.values()]

    async def newest_runs(self, limit: int | None, keep: Callable[[RunSummary], bool]) -> Listing:
        summaries = [s.summary for s in await self.all_snapshots()]
        ordered = sorted(filter(keep, summaries), key=lambda s: (-s.created_at, s.run_id))
        chosen = ordered[:limit] if limit else ordered
        return Listing(chosen, older=len(chosen) < len(ordered), position=self._data.snapshot_revision)

    async def active_runs(self) -> list[ActiveRun] | None:
        return list(self._data.active.values())

    async def save_active(self, entry: ActiveRun) -> None:
        self._data.active[entry.summary.run_id] = entry

    async def drop_active(self, run_id: str) -> None:
        self._data.active.pop(run_id, None)

    async def current(self, run_id: str) -> tuple[RunState | None, int]:
        return await current_of(self, self, run_id)

    async def current_state(self, run_id: str) -> RunState | None:
        return (await self.current(run_id))[0]

    # --- workflows ---------------------------------------------------------------------------

    async def register_workflow(self, wf: WorkflowDef, now: float) -> tuple[int, bool]:
        versions = self._data.workflows.setdefault(wf.name, [])
        if versions and _enc.encode(versions[-1].definition) == _enc.encode(wf):
            return versions[-1].version, False
        versions.append(
            WorkflowVersion(name=wf.name, version=len(versions) + 1, registered_at=now, definition=wf)
        )
        return len(versions), True

    async def get_workflow(self, name: str, version: int | None = None) -> WorkflowVersion:
        if not NAME_RE.match(name):
            raise NotFound(f"unknown workflow {name!r}: workflow names are letters, digits, '-' and '_'")
        versions = self._data.workflows.get(name, [])
        if version is None:
            if not versions:
                raise NotFound(
                    f"unknown workflow {name!r}: register it with `dagnats workflow register FILE`"
                )
            return versions[-1]
        if not 1 <= version <= len(versions):
            raise NotFound(f"workflow {name!r} has no version {version}")
        return versions[version - 1]

    async def latest_workflow(self, name: str) -> WorkflowVersion | None:
        versions = self._data.workflows.get(name)
        return versions[-1] if versions else None

    async def workflow_versions(self, name: str) -> list[int]:
        return list(range(1, len(self._data.workflows.get(name, [])) + 1))

    async def all_workflows(self) -> list[WorkflowVersion]:
        return [v for versions in self._data.workflows.values() for v in versions]

    # --- tasks and timers --------------------------------------------------------------------

    async def dispatch(self, action: DispatchTask) -> None:
        subject = f"{TASK_PREFIX}.{action.task}.{action.run_id}"
        self._data.tasks.add(subject, _enc.encode(action), action.msg_id)

    async def drop_tasks(self, run_id: str) -> None:
        self._data.tasks.purge(lambda subject: _run_of(subject) == run_id)

    async def task_feed(self, task: str, ack_wait: float) -> tuple[Feed, float]:
        matches = lambda subject: subject.split(".")[2] == task  # noqa: E731
        consumer = self._consumer(f"task:{task}", self._data.tasks, matches, ack_wait)
        return ConsumerFeed(consumer), consumer.ack_wait

    async def start_timer(self, action: StartTimer) -> None:
        self._data.timers.add(f"{TIMER_PREFIX}.{action.run_id}", _enc.encode(action), action.msg_id)

    async def cancel_timers(self, run_id: str) -> None:
        self._data.timers.purge(lambda subject: _run_of(subject) == run_id)

    async def timer_feed(self) -> Feed:
        return ConsumerFeed(self._consumer("timers", self._data.timers, lambda s: True, TIMER_ACK_WAIT))

    # --- heartbeats and live output ----------------------------------------------------------

    def beat(self, kind: str, name: str, tasks: list[str], in_flight: Callable[[], int]) -> MemoryBeat:
        return MemoryBeat(self._data, kind, name, tasks, in_flight)

    async def heartbeats(self) -> list[Heartbeat] | None:
        now = time.time()
        beats = [
            msgspec.structs.replace(beat, in_flight=in_flight(), last_seen=now)
            for beat, in_flight in self._data.beats.values()
        ]
        return sorted(beats, key=lambda b: (b.kind != "engine", b.host, b.pid, b.id))

    async def publish_live(self, run_id: str, step_id: str, chunk: bytes) -> None:
        self._data.live.append((run_id, step_id, chunk))

    def queued(self, run_id: str | None = None) -> list[DispatchTask]:
        """The tasks in the queue (of one run, or all), acked ones gone: for assertions."""
        dec = msgspec.json.Decoder(DispatchTask)
        messages = self._data.tasks.messages.values()
        return [dec.decode(m.data) for m in messages if run_id is None or _run_of(m.subject) == run_id]


class MemoryBeat:
    """A heartbeat that is simply present from `start` to `stop` (nothing expires in memory)."""

    def __init__(
        self, data: _Data, kind: str, name: str, tasks: list[str], in_flight: Callable[[], int]
    ) -> None:
        self._data = data
        self.in_flight = in_flight
        self.record = Heartbeat.of_this_process(kind, name, tasks)

    def start(self) -> MemoryBeat:
        self._data.beats[self.record.id] = (self.record, self.in_flight)
        return self

    async def stop(self) -> None:
        self._data.beats.pop(self.record.id, None)


def _checked(event: Event) -> bytes:
    data = encode_event(event)
    if len(data) > MAX_EVENT_BYTES:
        raise TooLarge(len(data))
    return data
