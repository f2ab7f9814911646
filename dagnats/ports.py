"""What the engine, the workers and the client need from a store: four narrow interfaces.

- `EventLog`: run histories, appended optimistically, read back, and delivered to engines;
- `Snapshots`: each run's cached state (a cache: the history alone rebuilds it);
- `Registry`: workflow versions;
- `TaskQueue`: tasks for workers and timers for the timer service.

`dagnats.nats.store.Store` implements all four on JetStream; `dagnats.testing.MemoryStore`
implements them in memory for tests that need no server. A queue hands out `Delivery`s, which
stay unacknowledged (and come back, `attempts` higher) until acked.

The data that crosses these interfaces (snapshots, summaries, workflow versions) and the
errors they raise live here too, so that neither implementation imports the other.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import msgspec

from dagnats.core.actions import DispatchTask, StartTimer
from dagnats.core.decide import fold
from dagnats.core.definition import WorkflowDef
from dagnats.core.events import Event, encode_event
from dagnats.core.state import RUN_TERMINAL, Approval, RunState, StepState, Turn
from dagnats.core.values import (
    MAX_VALUE_BYTES,
    MAX_VALUE_TEXT,
    REF_KEY,
    is_ref,
    ref_of,
    refs_in,
    replace_refs,
)
from dagnats.errors import UserError

_enc = msgspec.json.Encoder()
MAX_EVENT_BYTES = 900_000  # an encoded event, at most (one NATS message, with room for headers)


class Conflict(Exception):
    """Someone else appended to the run's history first (optimistic concurrency)."""


class BatchUnsupported(Exception):
    """The store cannot append a batch atomically; append one event at a time."""


class TooLarge(UserError):
    """An event does not fit in one message."""

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


class ActiveRun(msgspec.Struct, frozen=True, omit_defaults=True):
    """An unfinished run as the index of unfinished runs holds it: its summary and what it asks
    of an operator, as of history sequence `applied`. A cache of the history like a snapshot:
    the engine writes it with every snapshot of an unfinished run and removes it once the run's
    final snapshot is saved. `approvals_left_out`: they did not fit; read the run instead."""

    applied: int
    summary: RunSummary
    approvals: list[Approval] = []
    approvals_left_out: bool = False

    @classmethod
    def of(cls, applied: int, state: RunState) -> ActiveRun:
        return cls(applied=applied, summary=RunSummary.of(state), approvals=state.pending_approvals())

    @property
    def finished(self) -> bool:
        return self.summary.status in RUN_TERMINAL

    def same_listing(self, other: ActiveRun | None) -> bool:
        """Whether both list the same (the sequence they were taken at aside)."""
        return other is not None and (self.summary, self.approvals) == (other.summary, other.approvals)


class Listing(msgspec.Struct, frozen=True):
    """The newest runs that matched, newest first; `older`: older runs that may match exist
    and are not in it (it stopped at the limit); `position`: where the snapshots' changes
    stood when it was read (a watch carries on after it)."""

    summaries: list[RunSummary]
    older: bool
    position: int = 0


class WorkflowVersion(msgspec.Struct, frozen=True):
    name: str
    version: int
    registered_at: float
    definition: WorkflowDef


class Heartbeat(msgspec.Struct, frozen=True):
    """An engine or worker saying it is alive (`dagnats status`, the no-worker warnings)."""

    id: str
    kind: str  # "engine" | "worker"
    host: str
    pid: int
    tasks: list[str]
    in_flight: int
    last_seen: float
    name: str = ""  # a worker's name, as recorded in step.started

    @classmethod
    def of_this_process(cls, kind: str, name: str, tasks: list[str]) -> Heartbeat:
        """This process's record, before its first beat."""
        return cls(
            id=process_id(name),
            kind=kind,
            host=socket.gethostname(),
            pid=os.getpid(),
            tasks=sorted(tasks),
            in_flight=0,
            last_seen=0.0,
            name=name,
        )


def process_id(name: str) -> str:
    """A key-safe id: the process's name (worker names hold '@' and ':') plus a random part."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name) + "-" + secrets.token_hex(3)


class Delivery(Protocol):
    """One message handed out by a durable queue: a recorded event to an engine, a task to a
    worker, a timer to the timer service."""

    @property
    def subject(self) -> str: ...
    @property
    def data(self) -> bytes: ...
    @property
    def seq(self) -> int:
        """Its sequence in its stream (for a history event: the one sequence over every run's
        history, as `EventLog.append` returns it)."""

    @property
    def delivery(self) -> int:
        """Its sequence among this queue's deliveries: consecutive while no one else takes any."""

    @property
    def attempts(self) -> int:
        """How many times it has been handed out (1: the first time)."""

    @property
    def pending(self) -> int:
        """How many more messages the queue held for this consumer when it was handed out."""

    @property
    def queued_at(self) -> float:
        """When it was queued (unix seconds)."""

    async def ack(self) -> None: ...
    async def nak(self, delay: float | None = None) -> None: ...
    async def term(self) -> None: ...
    async def in_progress(self) -> None: ...


class Feed(Protocol):
    """A durable consumer's deliveries, fetched in batches."""

    async def fetch(self, batch: int, timeout: float, *, no_wait: bool = False) -> list[Delivery]:
        """Up to `batch` deliveries: those waiting, else the first within `timeout` ([] if none)."""

    async def stop(self) -> None: ...


class EventLog(Protocol):
    @property
    def atomic_batches(self) -> bool:
        """Whether `append_batch` may be used."""

    async def append(
        self, run_id: str, event: Event, *, expected_last: int | None = None, msg_id: str | None = None
    ) -> int:
        """Append one event; return its sequence. Conflict if `expected_last` is not the run's
        last sequence (0: the run has none); an event with a `msg_id` seen recently is not
        appended again (its first sequence is returned; `expected_last` is checked first)."""

    async def append_batch(self, run_id: str, events: list[Event], *, expected_last: int) -> list[int]:
        """Append several events of one run all-or-nothing, checked as `append` checks."""

    async def read_history(self, run_id: str, after: int = 0) -> list[tuple[int, Event]]:
        """Every event of the run with sequence > `after`, in order."""

    async def last_sequence(self, run_id: str) -> int:
        """The sequence of the run's last event (0: it has none): one read, whatever its length."""

    async def leader_last_sequence(self, run_id: str) -> int:
        """`last_sequence` as the history's leader has it: other reads may be answered by a
        replica behind its leader (a cluster), which may not have a result just recorded."""

    async def engine_feed(self) -> Feed:
        """Every recorded event of every run, in order, shared among all engines."""


class Snapshots(Protocol):
    async def load_snapshot(self, run_id: str) -> tuple[Snapshot | None, int]:
        """The run's snapshot and its revision (0 when there is none)."""

    async def save_snapshot(self, applied: int, state: RunState, revision: int) -> int | None:
        """Compare-and-set; the new revision, or None if someone else saved first."""

    async def all_snapshots(self) -> list[Snapshot]:
        """Every run's snapshot: a read that grows with every run ever stored (upgrades only)."""

    async def newest_runs(self, limit: int | None, keep: Callable[[RunSummary], bool]) -> Listing:
        """The `limit` newest (by `created_at`) run summaries that `keep` accepts, newest first,
        read from the newest snapshots back, only as far as it takes (all of them if None)."""

    async def active_runs(self) -> list[ActiveRun] | None:
        """Every entry of the index of unfinished runs (None: no index was built here yet)."""

    async def save_active(self, entry: ActiveRun) -> None:
        """Put a run's entry in the index of unfinished runs."""

    async def drop_active(self, run_id: str) -> None:
        """Take a run out of the index (it finished), leaving no marker behind."""

    async def current(self, run_id: str) -> tuple[RunState | None, int]:
        """The run's state now (snapshot plus newer history) and the last sequence it includes."""

    async def current_state(self, run_id: str) -> RunState | None: ...


class Registry(Protocol):
    async def register_workflow(self, wf: WorkflowDef, now: float) -> tuple[int, bool]:
        """Register a definition; (its version, whether that version is new)."""

    async def get_workflow(self, name: str, version: int | None = None) -> WorkflowVersion:
        """A version (the latest if None); NotFound if there is none."""

    async def latest_workflow(self, name: str) -> WorkflowVersion | None: ...
    async def workflow_versions(self, name: str) -> list[int]: ...
    async def all_workflows(self) -> list[WorkflowVersion]: ...


class TaskQueue(Protocol):
    async def dispatch(self, action: DispatchTask) -> None:
        """Queue a task for workers of `action.task` (de-duplicated on `action.msg_id`)."""

    async def drop_tasks(self, run_id: str) -> None:
        """Take every queued task of the run off the queue."""

    async def task_feed(self, task: str, ack_wait: float) -> tuple[Feed, float]:
        """The queue of tasks named `task`, and the ack wait it actually uses (an existing
        queue keeps the one it was made with)."""

    async def start_timer(self, action: StartTimer) -> None: ...
    async def cancel_timers(self, run_id: str) -> None: ...
    async def timer_feed(self) -> Feed: ...


class Values(Protocol):
    """Values too big for an event, kept by content (`core/values.py`): the JetStream object
    store on NATS. Nothing here deletes one (retention of values is not done yet)."""

    async def put_value(self, name: str, data: bytes) -> None:
        """Store `data` under `name` (its sha256, `ref_of`) and return once it is stored; a
        name already stored is not written again (a redo after a crash writes nothing new)."""

    async def get_value(self, name: str) -> bytes:
        """The stored bytes; NotFound if there is no such value."""


class Store(EventLog, Snapshots, Registry, TaskQueue, Values, Protocol):
    """All of them, as one object: what `dagnats serve` and the client hold."""


async def current_of(log: EventLog, snapshots: Snapshots, run_id: str) -> tuple[RunState | None, int]:
    """`Snapshots.current` for any store: the snapshot, then the history after it folded in."""
    snap, _ = await snapshots.load_snapshot(run_id)
    state, last = (snap.state, snap.applied) if snap and snap.state else (None, 0)
    for seq, event in await log.read_history(run_id, after=last):
        state, last = fold(state, event), seq
    return state, last


class ValueTooLarge(UserError):
    """A value over MAX_VALUE_BYTES: too big even for the object store."""

    def __init__(self, what: str, size: int) -> None:
        super().__init__(
            f"{what} of {size} bytes exceeds the {MAX_VALUE_TEXT} ({MAX_VALUE_BYTES}-byte) limit of a value"
        )
        self.size = size


OFFLOADED = ("input", "output")  # the step and run fields a value is offloaded from
# the event fields: those, an agent turn's text and a tool's result; a turn's tool calls
# have each call's "arguments" offloaded (the core reads a call's id and name only)
EVENT_FIELDS = (*OFFLOADED, "text", "result")
_OFFLOAD_FROM = 1024  # a field smaller than this stays in its event whatever the event's size


_E = TypeVar("_E", bound=Event)


async def _offloaded(values: Values, value: Any, what: str) -> Any:
    """A reference to `value`, written to `values` first; None when it stays where it is."""
    if value is None or is_ref(value):
        return None
    data = _enc.encode(value)
    if len(data) < _OFFLOAD_FROM:
        return None
    if len(data) > MAX_VALUE_BYTES:
        raise ValueTooLarge(what, len(data))
    ref = ref_of(data)
    await values.put_value(ref[REF_KEY], data)
    return ref


async def _offloaded_calls(
    values: Values, calls: list[dict[str, Any]], what: str
) -> list[dict[str, Any]] | None:
    """The tool calls with their large arguments referenced; None when none is large."""
    out, changed = [], False
    for call in calls:
        ref = await _offloaded(values, call.get("arguments"), f"{what}: arguments of {call.get('name')}")
        out.append(call if ref is None else {**call, "arguments": ref})
        changed = changed or ref is not None
    return out if changed else None


async def offload_event(values: Values, event: _E, what: str = "") -> _E:
    """`event` with its large `input`/`output` (an agent turn's `text` and tool calls'
    arguments, a tool's `result`) written to `values` first (awaited: §9, a reference never
    names a value not stored) and referenced: for an event too big for one message. `what`
    names the event in a ValueTooLarge (raised when a field is over 64 MB)."""
    changes: dict[str, Any] = {}
    for field in EVENT_FIELDS:
        ref = await _offloaded(values, getattr(event, field, None), what or field)
        if ref is not None:
            changes[field] = ref
    calls = getattr(event, "tool_calls", None)
    if calls:
        offloaded = await _offloaded_calls(values, calls, what or "tool_calls")
        if offloaded is not None:
            changes["tool_calls"] = offloaded
    return msgspec.structs.replace(event, **changes) if changes else event


async def fit_event(values: Values, event: _E, what: str) -> _E:
    """`event` as it can be appended: itself if it fits in one message, else `offload_event`
    of it. TooLarge if even that does not fit, ValueTooLarge for a value over 64 MB."""
    if len(encode_event(event)) <= MAX_EVENT_BYTES:
        return event
    smaller = await offload_event(values, event, what)
    size = len(encode_event(smaller))
    if size > MAX_EVENT_BYTES:
        raise TooLarge(size)
    return smaller


async def load_values(values: Values, value: Any, cache: dict[str, Any] | None = None) -> Any:
    """`value` with every reference inside it read back from `values` (unchanged if none)."""
    refs = refs_in(value)
    if not refs:
        return value
    found = {} if cache is None else cache
    for ref in refs:
        name = ref[REF_KEY]
        if name not in found:
            found[name] = msgspec.json.decode(await values.get_value(name))
    return replace_refs(value, found)


async def resolve_event(values: Values, event: _E, cache: dict[str, Any] | None = None) -> _E:
    """The event as it was before its values were offloaded."""
    changes: dict[str, Any] = {}
    for field in (*EVENT_FIELDS, "tool_calls"):
        value = getattr(event, field, None)
        loaded = await load_values(values, value, cache)
        if loaded is not value:
            changes[field] = loaded
    return msgspec.structs.replace(event, **changes) if changes else event


async def resolve_turns(values: Values, turns: list[Turn], cache: dict[str, Any] | None = None) -> list[Turn]:
    """An agent's transcript with its referenced texts, arguments and results read back
    (`turns` itself when it holds no reference)."""
    if not refs_in(msgspec.to_builtins(turns)):
        return turns
    found = {} if cache is None else cache
    out = []
    for turn in turns:
        results = {
            cid: msgspec.structs.replace(r, result=await load_values(values, r.result, found))
            for cid, r in turn.results.items()
        }
        text = await load_values(values, turn.text, found)
        calls = await load_values(values, turn.tool_calls, found)
        out.append(msgspec.structs.replace(turn, text=text, tool_calls=calls, results=results))
    return out


async def _loaded_fields(values: Values, holder: Any, cache: dict[str, Any]) -> dict[str, Any]:
    """The OFFLOADED fields of a step or a run whose referenced values were read back."""
    changes = {}
    for field in OFFLOADED:
        value = getattr(holder, field)
        loaded = await load_values(values, value, cache)
        if loaded is not value:
            changes[field] = loaded
    return changes


async def _resolve_step(values: Values, step: StepState, cache: dict[str, Any]) -> StepState:
    changes = await _loaded_fields(values, step, cache)
    turns = await resolve_turns(values, step.turns, cache)
    if turns is not step.turns:
        changes["turns"] = turns
    return msgspec.structs.replace(step, **changes) if changes else step


async def resolve_state(values: Values, state: RunState) -> RunState:
    """The run's state with every referenced value read back: the run's input and output,
    each step's input and output and its agent transcript (what readers show; the core keeps
    the references)."""
    cache: dict[str, Any] = {}
    steps: dict[str, StepState] | None = None
    for sid, step in state.steps.items():
        loaded_step = await _resolve_step(values, step, cache)
        if loaded_step is not step:
            steps = dict(state.steps) if steps is None else steps
            steps[sid] = loaded_step
    run = await _loaded_fields(values, state, cache)
    if steps is not None:
        run["steps"] = steps
    return msgspec.structs.replace(state, **run) if run else state


class Beating(Protocol):
    """One process's heartbeat, kept fresh in the background until stopped."""

    def start(self) -> Beating: ...
    async def stop(self) -> None: ...


class Presence(Protocol):
    """Who is alive: engines and workers say so, readers list them (beside `Store`: a store
    may keep no heartbeats)."""

    def beat(self, kind: str, name: str, tasks: list[str], in_flight: Callable[[], int]) -> Beating:
        """A heartbeat for this process, not started yet."""

    async def heartbeats(self) -> list[Heartbeat] | None:
        """Engines and workers heard from lately, engines first; None if nobody can tell."""
