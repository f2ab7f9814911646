"""The client: what the CLI and the console use to register, start, watch and steer runs.

Reads fold the history through the same `replay` the engine uses, starting from the engine's
snapshot, so a client never shows a state the engine would not agree with.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import NotFoundError

from dagnats.core import schema
from dagnats.core.decide import fold
from dagnats.core.definition import WorkflowDef
from dagnats.core.events import (
    ApprovalDecided,
    Event,
    ForkOf,
    RunCancelRequested,
    RunStarted,
    SignalReceived,
    encode_event,
)
from dagnats.core.state import RUN_TERMINAL, Approval, RunState, fork_keeps
from dagnats.errors import NotFound, UserError
from dagnats.nats import heartbeat, names
from dagnats.nats.connection import Endpoint, connect, resolve_endpoint
from dagnats.nats.ordered import ResumingConsumer
from dagnats.nats.replies import subscribe_direct
from dagnats.nats.store import Conflict, Store, WorkflowVersion, decode_recorded
from dagnats.ports import (
    MAX_EVENT_BYTES,
    ActiveRun,
    Heartbeat,
    Listing,
    offload_event,
    resolve_event,
    resolve_state,
)
from dagnats.ports import RunSummary as RunSummary  # re-exported: the console imports it from here

from . import views


def operator_identity() -> str:
    """Who is acting: the user and, over SSH, the client address."""
    user = os.environ.get("USER") or getpass.getuser()
    ssh = os.environ.get("SSH_CLIENT", "").split()
    return f"{user}@{ssh[0]}" if ssh else user


_T = TypeVar("_T")

RUN_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def check_run_id(run_id: str) -> None:
    """Run ids become subject tokens: anything else is not a run (and must not be a wildcard)."""
    if not RUN_ID_RE.match(run_id):
        raise NotFound(f"unknown run {run_id!r}: see `dagnats run list`")


def new_run_id() -> str:
    # Time-ordered prefix keeps ids roughly sortable; the random part keeps them unique.
    return f"{int(time.time() * 1000):x}{secrets.token_hex(4)}"


class Client:
    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.store = Store(nc, source=names.SOURCE_OPERATOR)

    @classmethod
    async def connect(
        cls,
        nats_url: str | None = None,
        data_dir: str | None = None,
        endpoint: Endpoint | None = None,
        *,
        long_lived: bool = False,
        on_disconnect: Callable[[], Awaitable[None]] | None = None,
        on_reconnect: Callable[[], Awaitable[None]] | None = None,
    ) -> Client:
        """`long_lived` clients (the console) ride out server restarts and report them through
        the callbacks; short ones (the CLI) fail fast."""
        nc = await connect(
            endpoint or resolve_endpoint(nats_url, data_dir),
            name="dagnats-client",
            long_lived=long_lived,
            on_disconnect=on_disconnect,
            on_reconnect=on_reconnect,
        )
        return cls(nc)

    async def close(self) -> None:
        await self.nc.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- workflows ---------------------------------------------------------------------------

    async def register(self, wf: WorkflowDef) -> tuple[int, bool]:
        return await self.store.register_workflow(wf, time.time())

    async def workflows(self) -> list[WorkflowVersion]:
        return await self.store.all_workflows()

    async def workflow(self, name: str, version: int | None = None) -> WorkflowVersion:
        return await self.store.get_workflow(name, version)

    # --- runs --------------------------------------------------------------------------------

    async def start(self, workflow: str, input: Any = None, *, run_id: str | None = None) -> str:
        name, version = parse_workflow_ref(workflow)
        wfv = await self.store.get_workflow(name, version)
        if wfv.definition.input_schema is not None:
            problem = schema.validate(wfv.definition.input_schema, input)
            if problem:
                raise UserError(f"input does not match {name}'s input_schema: {problem}")
        run_id = run_id or new_run_id()
        event: Event = RunStarted(
            at=time.time(),
            run_id=run_id,
            workflow=wfv.name,
            version=wfv.version,
            definition=wfv.definition,
            input=input,
            by=operator_identity(),
        )
        if len(encode_event(event)) > MAX_EVENT_BYTES:  # the input goes to the object store first
            event = await offload_event(self.store, event, "run input")
        try:
            await self.store.append(run_id, event, expected_last=0)
        except Conflict:
            raise UserError(f"run {run_id} already exists") from None
        return run_id

    async def run(self, run_id: str, *, values: bool = True) -> RunState:
        """The run's current state: the engine's snapshot plus a replay of newer events. Values
        kept in the object store are read back (`values=False`: left as references, as the
        core holds them)."""
        check_run_id(run_id)
        state = await self.store.current_state(run_id)
        if state is None:
            state = await self._caught_up(run_id)
        return await resolve_state(self.store, state) if values else state

    async def _caught_up(self, run_id: str) -> RunState:
        """A run no direct get found: unknown, unless the history stream's leader has it (a
        replica behind its leader answered, as on a cluster right after `run start`); then
        read again while that replica catches up."""
        leader_seq = await self.store.leader_last_sequence(run_id)
        for delay in (0.01, 0.05, 0.2, 0.5, 1.0):
            if leader_seq <= await self.store.last_sequence(run_id):
                break  # the reads are not behind: nothing here is a run (or only refused events)
            await asyncio.sleep(delay)
            if (state := await self.store.current_state(run_id)) is not None:
                return state
        else:
            raise UserError(
                f"run {run_id} is recorded, but the server answering has not caught up yet; try again"
            )
        raise NotFound(f"unknown run {run_id!r}: see `dagnats run list`")

    async def heartbeats(self) -> list[Heartbeat] | None:
        """The engines and workers heard from lately (None: this NATS keeps no heartbeats)."""
        return await self.store.heartbeats()

    async def unserved(self, state: RunState) -> dict[str, str]:
        """The run's queued steps whose task no live worker serves, as {step: task}; empty when
        nothing is queued for a worker, or nobody can tell."""
        waiting = heartbeat.queued_tasks(state)
        beats = await self.heartbeats() if waiting else None
        if beats is None:
            return {}
        served = heartbeat.served(beats)
        return {sid: task for sid, task in waiting.items() if task not in served}

    async def runs(
        self, status: str | None = None, workflow: str | None = None, limit: int | None = None
    ) -> list[RunSummary]:
        """Run summaries, newest first (see `listing`)."""
        return (await self.listing(status, workflow, limit)).summaries

    async def listing(
        self, status: str | None = None, workflow: str | None = None, limit: int | None = None
    ) -> Listing:
        """The newest runs, read from the newest snapshots back only as far as `limit` needs
        (an unfinished status is looked up in the index of unfinished runs instead). Unfinished
        runs are brought up to date from their history, since a snapshot may lag a few events."""

        def keep(s: RunSummary) -> bool:
            return (not status or s.status == status) and (not workflow or s.workflow == workflow)

        found: Listing | None = None
        if status and status not in RUN_TERMINAL:
            found = await self._active_listing(keep, workflow, limit)
        if found is None:
            found = await self.store.newest_runs(limit, keep)
        fresh = await asyncio.gather(*(self._fresh(s) for s in found.summaries))
        return msgspec.structs.replace(found, summaries=[s for s in fresh if keep(s)])

    async def _active_listing(
        self, keep: Callable[[RunSummary], bool], workflow: str | None, limit: int | None
    ) -> Listing | None:
        """Unfinished runs from the index, filtered on their status as of their history: an
        entry may lag its run (a change not saved yet, or an older entry that landed last when
        two engines raced), so one whose run has events after it is read again first."""
        active = await self.store.active_runs()
        if active is None:
            return None
        entries = [e for e in active if not e.finished and (not workflow or e.summary.workflow == workflow)]
        lasts = await asyncio.gather(*(self.store.last_sequence(e.summary.run_id) for e in entries))
        summaries = await asyncio.gather(
            *(
                self._fresh(e.summary) if last > e.applied else _ready(e.summary)
                for e, last in zip(entries, lasts, strict=True)
            )
        )
        ordered = sorted((s for s in summaries if keep(s)), key=_newest_first)
        chosen = ordered[:limit] if limit else ordered
        return Listing(chosen, older=len(chosen) < len(ordered))

    async def _fresh(self, summary: RunSummary) -> RunSummary:
        if summary.status in RUN_TERMINAL:
            return summary
        state = await self.store.current_state(summary.run_id)
        return summary if state is None else RunSummary.of(state)

    async def events(self, run_id: str) -> list[tuple[int, Event]]:
        check_run_id(run_id)
        events = await self.store.read_history(run_id)
        if not events:
            raise NotFound(f"unknown run {run_id!r}: see `dagnats run list`")
        cache: dict[str, Any] = {}
        return [(seq, await resolve_event(self.store, event, cache)) for seq, event in events]

    async def follow(
        self, run_id: str, *, until_terminal: bool = True, after: int = 0
    ) -> AsyncIterator[tuple[int, Event]]:
        """Yield the run's events (those after stream sequence `after`), live, until the run ends,
        with their values in the object store read back. A server restart or failover only
        pauses it: it carries on from the last event given."""
        check_run_id(run_id)
        consumer = ResumingConsumer(
            self.nc, names.HISTORY_STREAM, names.history_filter(run_id), after=after, inactive_threshold=5.0
        )
        state: RunState | None = None
        if after and until_terminal:  # the state as of `after`, to know when the run ends
            for seq, event in await self.store.read_history(run_id):
                if seq <= after:
                    state = fold(state, event)
            if state is not None and state.terminal:
                return
        await consumer.open()
        known = False
        try:
            while True:
                msg = await consumer.next(timeout=1.0)
                if msg is None:
                    if not known and self.nc.is_connected:
                        await self.run(run_id, values=False)  # raises NotFound for an unknown run
                        known = True
                    continue
                known = True
                event = decode_recorded(msg.subject, msg.data)
                state = fold(state, event)
                yield msg.metadata.sequence.stream, await resolve_event(self.store, event)
                if until_terminal and state is not None and state.terminal:
                    return
        finally:
            await consumer.close()

    async def watch_runs(self, newest: int = 500) -> AsyncIterator[RunSummary | Listed]:
        """The `newest` runs' summaries and every unfinished run's, then a `Listed` (falsy, so
        `if item` tells summaries from it), then each change as the engine records it, for as
        long as the caller iterates.

        What is stored is read from the newest snapshots back and from the index of unfinished
        runs, so it costs the same however many finished runs there are; the changes come from
        the snapshot bucket's stream, from where that read began, decoding only the summaries.
        """
        await self.store.require()
        found = await self.store.newest_runs(newest, lambda s: True)
        active = await self.store.active_runs()
        listed = {s.run_id for s in found.summaries}
        for summary in found.summaries:
            yield summary
        for entry in active or []:
            if entry.summary.run_id not in listed and not entry.finished:
                yield entry.summary
        pending = await self._pending_of(active) if active is not None else await self.approvals()
        yield Listed(older=found.older, pending=pending)
        prefix = f"$KV.{names.RUNS_BUCKET}."
        consumer = ResumingConsumer(
            self.nc, f"KV_{names.RUNS_BUCKET}", prefix + ">", after=found.position, inactive_threshold=30.0
        )
        await consumer.open()
        try:
            while True:
                msg = await consumer.next(timeout=5.0)
                if msg is not None and (msg.headers or {}).get("KV-Operation") not in ("DEL", "PURGE"):
                    if msg.data:
                        yield _listing_dec.decode(msg.data).summary
        finally:
            await consumer.close()

    async def live_text(self, run_id: str) -> AsyncIterator[tuple[str, str]]:
        """Model text of the run's agent steps as it streams: (step_id, chunk). Not stored:
        what was said before the caller subscribed is in the recorded turns instead."""
        check_run_id(run_id)
        prefix = names.live_subject(run_id, "")
        sub = await self.nc.subscribe(prefix + ">")
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=5.0)
                except (TimeoutError, NatsTimeout):
                    continue
                yield msg.subject[len(prefix) :], msg.data.decode(errors="replace")
        finally:
            await sub.unsubscribe()

    async def approvals_of(self, run_id: str) -> list[PendingApproval]:
        state = await self.run(run_id)
        return [PendingApproval(state.run_id, state.workflow, a) for a in state.pending_approvals()]

    async def wait(self, run_id: str, *, timeout: float | None = None) -> RunState:
        """The run's state once it has ended (at once if it has). It costs no JetStream consumer:
        a core subscription to the run's history says when to read the state again. Raises
        NotFound for an unknown run, WaitTimeout (a TimeoutError) after `timeout` seconds."""
        check_run_id(run_id)
        state = (await _Waiter(self, [run_id], timeout).run(_ending_subjects(run_id)))[run_id]
        return await resolve_state(self.store, state)

    async def wait_many(self, run_ids: Iterable[str], *, timeout: float | None = None) -> dict[str, RunState]:
        """The end states of all the runs, {run_id: state}, once every one has ended. One core
        subscription for the engine's and one for operators' history subjects of every run
        (workers cannot end a run), whatever the number of runs, filtered by the run id in
        the subject; the runs that ended already are found from the last event of each.
        Raises NotFound if any run is unknown, WaitTimeout (a TimeoutError) after `timeout`
        seconds."""
        ids = list(dict.fromkeys(run_ids))
        for run_id in ids:
            check_run_id(run_id)
        if not ids:
            return {}
        done = await _Waiter(self, ids, timeout).run(_ending_subjects(ids[0] if len(ids) == 1 else "*"))
        return {run_id: await resolve_state(self.store, state) for run_id, state in done.items()}

    async def cancel(self, run_id: str, reason: str = "") -> None:
        state = await self.run(run_id, values=False)
        if state.terminal:
            raise UserError(f"run {run_id} is already {state.status}; nothing to cancel")
        await self.store.append(
            run_id, RunCancelRequested(at=time.time(), reason=reason, by=operator_identity())
        )

    async def fork(
        self, run_id: str, from_step: str, *, input: Any = msgspec.UNSET, turn: int | None = None
    ) -> str:
        """A new run of the same definition version that keeps what lies upstream of `from_step`
        and runs `from_step` (with a new input, if given) and everything after it again."""
        state = await self.run(run_id, values=False)  # the fork keeps the references
        wf = state.definition
        if from_step not in state.static_ids():
            raise NotFound(f"run {run_id} has no step {from_step!r} (steps: {', '.join(state.static_ids())})")
        turns: list[Any] = []
        if turn is not None:
            kind = wf.step(from_step).type
            if kind != "agent_loop":
                raise UserError(f"--turn applies to agent_loop steps; {from_step} is a {kind} step")
            recorded = state.steps[from_step].turns
            if not 0 <= turn <= len(recorded):
                raise UserError(
                    f"--turn must be 0..{len(recorded)}: step {from_step} recorded {len(recorded)} turns"
                )
            turns = [msgspec.to_builtins(t) for t in recorded[:turn]]
        kept, skipped = fork_keeps(state, from_step)
        new_id = new_run_id()
        event = RunStarted(
            at=time.time(),
            run_id=new_id,
            workflow=state.workflow,
            version=state.version,
            definition=wf,
            input=state.input,
            by=operator_identity(),
            fork=ForkOf(
                run_id=run_id, step_id=from_step, kept=kept, skipped=skipped, input=input, turns=turns
            ),
        )
        await self.store.append(new_id, event, expected_last=0)
        return new_id

    async def approvals(self) -> list[PendingApproval]:
        """Everything waiting for an operator, across all unfinished runs, oldest first: read
        from the index of unfinished runs, which carries each run's pending approvals as of its
        last snapshot (a cache: `decide` checks the digest against the run's real state)."""
        active = await self.store.active_runs()
        if active is not None:
            return await self._pending_of(active)
        pending = []  # a server from before the index: every snapshot, every unfinished run read
        for snap in await self.store.all_snapshots():
            if snap.summary.status not in RUN_TERMINAL:
                pending += await self.approvals_of(snap.summary.run_id)
        return sorted(pending, key=lambda p: p.approval.requested_at)

    async def _pending_of(self, active: list[ActiveRun]) -> list[PendingApproval]:
        """The entries' pending approvals, as fresh as the history: an entry whose run has
        events after it (a decision or a request the engine has not saved yet) is read again."""
        entries = [e for e in active if not e.finished]
        lasts = await asyncio.gather(*(self.store.last_sequence(e.summary.run_id) for e in entries))
        moved = [
            e for e, last in zip(entries, lasts, strict=True) if last > e.applied or e.approvals_left_out
        ]
        pending = [
            PendingApproval(e.summary.run_id, e.summary.workflow, a)
            for e, last in zip(entries, lasts, strict=True)
            if last <= e.applied and not e.approvals_left_out
            for a in e.approvals
        ]
        for again in await asyncio.gather(*(self._approvals_now(e.summary.run_id) for e in moved)):
            pending += again
        return sorted(pending, key=lambda p: p.approval.requested_at)

    async def _approvals_now(self, run_id: str) -> list[PendingApproval]:
        state = await self.store.current_state(run_id)
        if state is None:
            return []
        return [PendingApproval(state.run_id, state.workflow, a) for a in state.pending_approvals()]

    async def decide(
        self,
        run_id: str,
        step_id: str,
        *,
        approved: bool,
        comment: str = "",
        approval_id: str | None = None,
        digest: str | None = None,
    ) -> Approval:
        """Approve or deny what a step waits for; a clear UserError if it is not pending, or,
        with `digest` (what the operator was shown), if it now asks something else."""
        for _ in range(10):
            check_run_id(run_id)
            state, last = await self.store.current(run_id)
            approval = _pending_approval(run_id, state, step_id, approval_id, digest)
            if digest is not None and digest != approval.digest:
                raise UserError(
                    f"approval {approval.approval_id} changed since you saw it: it now asks "
                    f"{views.approval_summary(approval)!r} (digest {approval.digest}); look again"
                )
            decision = ApprovalDecided(
                at=time.time(),
                approval_id=approval.approval_id,
                step_id=step_id,
                approved=approved,
                by=operator_identity(),
                comment=comment,
                digest=approval.digest,
            )
            try:
                await self.store.append(run_id, decision, expected_last=last)
            except Conflict:
                continue  # the run moved on meanwhile: check again that it is still pending
            return approval
        raise UserError(f"run {run_id} is too busy to decide on right now; try again")

    async def signal(self, run_id: str, name: str, data: Any = None) -> None:
        state = await self.run(run_id, values=False)
        if state.terminal:
            raise UserError(f"run {run_id} is {state.status}; it cannot receive signals")
        await self.store.append(
            run_id, SignalReceived(at=time.time(), name=name, data=data, by=operator_identity())
        )


class WaitTimeout(UserError, TimeoutError):
    """`Client.wait` / `wait_many` gave up: the run (or runs) had not ended within the timeout."""


# The events that end a run, and who records them: `run.completed`, `run.failed`, `run.continued`
# and a run timeout's `timer.fired` by the engine and its timer service (`.e`),
# `run.cancel_requested` by an operator (`.o`). Workers (`.w`) can never end a run.
_ENDING = frozenset({"run.completed", "run.failed", "run.continued", "run.cancel_requested"})
_ENDING_SOURCES = frozenset({names.SOURCE_ENGINE, names.SOURCE_OPERATOR})


async def _ready(summary: RunSummary) -> RunSummary:
    return summary


async def leader_last_event(nc: NATS, run_id: str) -> bytes | None:
    """The run's last event as the history stream's leader has it (None: no such run). A
    direct get may be answered by any replica of a replicated stream, one that has not yet
    stored the run.started a client wrote a moment ago among them; a STREAM.MSG.GET only by
    the leader (docs/cluster.md). Asked only when a direct get found no run."""
    try:
        msg = await nc.jetstream().get_msg(names.HISTORY_STREAM, subject=names.history_filter(run_id))
    except NotFoundError:
        return None
    return msg.data


def _ending_subjects(run: str) -> list[str]:
    """The history subjects of `run` (or `*`) whose writers can end a run: not the workers',
    which carry most of a run's events (a waiter for many runs need not parse them)."""
    return [names.history_subject(run, source) for source in sorted(_ENDING_SOURCES)]


QUIET_SECONDS = 2.0  # nothing heard for this long: look again (a core message may have been lost)
QUIET_MAX_SECONDS = 10.0  # ... doubling while it stays quiet, up to this
_RECHECKS = (0.005, 0.02, 0.1, 0.5)  # after a hint the read did not confirm (stored a moment later)
_TICK = 0.2  # how often a wait looks at the connection's reconnect count
_READS_AT_ONCE = 128


class _Kind(msgspec.Struct):
    """An event read for its type only (msgspec skips the rest)."""

    type: str = ""
    kind: str = ""


_kind_dec = msgspec.json.Decoder(_Kind)


def ends_run(data: bytes) -> bool:
    """Whether a recorded event (its JSON) is one that ends the run it belongs to."""
    try:
        head = _kind_dec.decode(data)
    except msgspec.DecodeError:
        return False
    return head.type in _ENDING or (head.type == "timer.fired" and head.kind == "run_timeout")


class _Waiter:
    """Waits for runs to end over one core NATS subscription (no JetStream consumer).

    The subscription only hints: a core subscriber also sees publishes the stream refused (an
    optimistic append that lost) and misses what is published while it is disconnected. So a
    hint is confirmed by reading the run's state, and the states are read again after a
    reconnect and whenever nothing was heard for a while.
    """

    def __init__(self, client: Client, run_ids: list[str], timeout: float | None) -> None:
        self.client = client
        self.waiting = set(run_ids)
        self.done: dict[str, RunState] = {}
        self.hinted: set[str] = set()
        self.recheck: dict[str, tuple[float, int]] = {}  # run -> (when, how many so far)
        self.woken = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.timeout = timeout
        self.deadline = None if timeout is None else self.loop.time() + timeout
        self.heard = self.loop.time()
        self.quiet = QUIET_SECONDS
        self.reconnects = 0

    def on_msg(self, msg: Any) -> None:
        rest, _, source = msg.subject.rpartition(".")
        run_id = rest.rpartition(".")[2]
        if run_id not in self.waiting:
            return
        self.heard = self.loop.time()
        if source in _ENDING_SOURCES and ends_run(msg.data):
            self.hinted.add(run_id)
            self.woken.set()

    async def run(self, subjects: list[str]) -> dict[str, RunState]:
        subs = [await subscribe_direct(self.client.nc, subject, self.on_msg) for subject in subjects]
        try:
            await self.first_look()
            self.reconnects = self.client.store.reconnects
            while self.waiting:
                await self.sleep()
                await self.step()
        finally:
            if not self.client.nc.is_closed:
                for sub in subs:
                    await sub.unsubscribe()
        return self.done

    async def step(self) -> None:
        nc = self.client.nc
        if nc.is_closed:
            raise UserError(
                f"lost the connection to NATS while waiting for run {min(self.waiting)}; run again"
            )
        if not nc.is_connected:
            return  # reconnecting: read again once back
        if self.client.store.reconnects != self.reconnects:
            self.reconnects = self.client.store.reconnects
            await self.look_again()  # what was published while we were away was not heard
        elif self.loop.time() - self.heard >= self.quiet:
            await self.look_again()
            self.quiet = min(self.quiet * 2, QUIET_MAX_SECONDS)
        else:
            await self.read_due()

    async def first_look(self) -> None:
        """Which runs have ended already, from the last event of each (one direct get per
        run, all at once), reading the whole state only of those whose last event ends them."""
        lasts = await _gather_chunked(self.last_event, sorted(self.waiting))
        if any(data is None for _, data in lasts):  # a replica behind its leader may not have it yet
            lasts = [(r, data) if data is not None else await self.leader_last_event(r) for r, data in lasts]
        unknown = [r for r, data in lasts if data is None]
        if unknown:
            raise NotFound(f"unknown run {unknown[0]!r}: see `dagnats run list`")
        self.hinted.update(r for r, data in lasts if data is not None and ends_run(data))
        await self.read_due()

    async def leader_last_event(self, run_id: str) -> tuple[str, bytes | None]:
        return run_id, await leader_last_event(self.client.nc, run_id)

    async def last_event(self, run_id: str) -> tuple[str, bytes | None]:
        req = json.dumps({"last_by_subj": names.history_filter(run_id)}).encode()
        msg = await self.client.store.replies.request(f"$JS.API.DIRECT.GET.{names.HISTORY_STREAM}", req)
        status = (msg.headers or {}).get("Status")
        if status == "404":
            return run_id, None
        if status:
            raise UserError(f"cannot read run {run_id}: {(msg.headers or {}).get('Description', status)}")
        return run_id, msg.data

    async def sleep(self) -> None:
        """Until a hint, a recheck falls due, the next tick or the deadline (WaitTimeout)."""
        now = self.loop.time()
        if self.deadline is not None and now >= self.deadline:
            missing = sorted(self.waiting)
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise WaitTimeout(
                f"run {missing[0]}{more} had not ended within the {self.timeout:g}s timeout; "
                f"see `dagnats run show {missing[0]}`"
            )
        if self.hinted and self.client.nc.is_connected:  # else wait a tick: let it reconnect
            return
        until = min([now + _TICK, *(when for when, _ in self.recheck.values())])
        if self.deadline is not None:
            until = min(until, self.deadline)
        self.woken.clear()
        handle = self.loop.call_at(until, self.woken.set)
        try:
            await self.woken.wait()
        finally:
            handle.cancel()

    async def read_due(self) -> None:
        now = self.loop.time()
        hinted = (self.hinted | {r for r, (when, _) in self.recheck.items() if when <= now}) & self.waiting
        await self.read(hinted, hinted)

    async def look_again(self) -> None:
        """In case a message was lost: hint every run whose last event ends it, or whose
        snapshot says it ended (a late event may follow the end; the engine saves an ended
        run's snapshot at once). Two direct gets per run, all at once; no history is read."""
        self.heard = self.loop.time()
        ids = sorted(self.waiting)
        lasts = await _gather_chunked(self.last_event, ids)
        self.hinted.update(r for r, data in lasts if data is not None and ends_run(data))
        ended = await _gather_chunked(self.snapshot_ended, ids)
        self.hinted.update(r for r, yes in ended if yes)
        await self.read_due()

    async def snapshot_ended(self, run_id: str) -> tuple[str, bool]:
        """Whether the run's snapshot says it ended (decoding its summary only)."""
        bucket = names.RUNS_BUCKET
        msg = await self.client.store.replies.request(
            f"$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.{run_id}", b""
        )
        headers = msg.headers or {}
        if headers.get("Status") or headers.get("KV-Operation") in ("DEL", "PURGE") or not msg.data:
            return run_id, False
        return run_id, _listing_dec.decode(msg.data).summary.status in RUN_TERMINAL

    async def read(self, run_ids: set[str], hinted: set[str]) -> None:
        """Read the runs' states; keep those that ended. A `hinted` run that has not (yet) is
        read again a little later: the stream may store the event just after we heard it, or
        may have refused it (an append that lost its race is still heard)."""
        self.hinted -= run_ids
        if not run_ids:
            return
        states = await _gather_chunked(self._state, sorted(run_ids))
        now = self.loop.time()
        for run_id, state in states:
            if state is not None and state.terminal:
                self.done[run_id] = state
                self.waiting.discard(run_id)
                self.recheck.pop(run_id, None)
            elif run_id in hinted:
                _, count = self.recheck.pop(run_id, (0.0, 0))
                if count < len(_RECHECKS):
                    self.recheck[run_id] = (now + _RECHECKS[count], count + 1)

    async def _state(self, run_id: str) -> tuple[str, RunState | None]:
        """`Store.current_state`, but a snapshot of an ended run is taken as it is: an ended
        run's state never changes (the fold ignores what follows), so its tail needs no read."""
        store = self.client.store
        snap, _ = await store.load_snapshot(run_id)
        state, last = (snap.state, snap.applied) if snap and snap.state else (None, 0)
        if state is not None and state.terminal:
            return run_id, state
        for subject, data in await _history_after(self.client.nc, run_id, last):
            state = fold(state, decode_recorded(subject, data))
        return run_id, state


async def _history_after(nc: NATS, run_id: str, after: int) -> list[tuple[str, bytes]]:
    """The run's recorded events after stream sequence `after`, as (subject, JSON): batched
    direct gets like `Store.read_history`, but each reply is taken as the connection reads it
    (no `next_msg` per message), which is most of the cost of a short tail."""
    loop = asyncio.get_running_loop()
    out: list[tuple[str, bytes]] = []
    batch: dict[str, Any] = {}

    def on_reply(msg: Any) -> None:
        headers = msg.headers or {}
        status = headers.get("Status")
        if not status:
            batch["seq"] = int(headers["Nats-Sequence"])
            out.append((headers["Nats-Subject"], msg.data))
            return
        pending = int(headers.get("Nats-Num-Pending", "0") or 0) if status == "204" else 0
        if not batch["done"].done():
            batch["done"].set_result(pending)

    inbox = nc.new_inbox()
    sub = await subscribe_direct(nc, inbox, on_reply)
    try:
        seq = after + 1
        while True:
            batch.update(done=loop.create_future(), seq=None)
            req = {"seq": seq, "next_by_subj": names.history_filter(run_id), "batch": 512}
            await nc.publish(
                f"$JS.API.DIRECT.GET.{names.HISTORY_STREAM}", json.dumps(req).encode(), reply=inbox
            )
            pending = await asyncio.wait_for(batch["done"], 5.0)
            if batch["seq"] is None or pending == 0:
                return out
            seq = batch["seq"] + 1
    finally:
        await sub.unsubscribe()


async def _gather_chunked(read: Callable[[str], Awaitable[_T]], run_ids: list[str]) -> list[_T]:
    """`read` of every run, at most `_READS_AT_ONCE` at a time (pipelined on one connection)."""
    out: list[_T] = []
    for i in range(0, len(run_ids), _READS_AT_ONCE):
        out += await asyncio.gather(*(read(r) for r in run_ids[i : i + _READS_AT_ONCE]))
    return out


class _Listing(msgspec.Struct, frozen=True):
    """A snapshot read for its summary only (the decoder skips the state)."""

    summary: RunSummary


_listing_dec = msgspec.json.Decoder(_Listing)


def _newest_first(s: RunSummary) -> tuple[float, str]:
    return (-s.created_at, s.run_id)


class PendingApproval(msgspec.Struct, frozen=True):
    run_id: str
    workflow: str
    approval: Approval

    @property
    def digest(self) -> str:
        """What is asked, for `decide(..., digest=...)`: the decision applies to this only."""
        return self.approval.digest


def _pending_approval(
    run_id: str, state: RunState | None, step_id: str, approval_id: str | None, digest: str | None = None
) -> Approval:
    if state is None:
        raise NotFound(f"unknown run {run_id!r}: see `dagnats run list`")
    if step_id not in state.steps:
        raise NotFound(f"run {run_id} has no step {step_id!r}")
    if state.terminal:
        raise UserError(f"run {run_id} is {state.status}; there is nothing to decide")
    of_step = [a for a in state.approvals.values() if a.step_id == step_id]
    pending = [a for a in of_step if a.status == "pending" and approval_id in (None, a.approval_id)]
    if len(pending) > 1 and digest is not None:
        pending = [a for a in pending if a.digest == digest] or pending
    if len(pending) == 1:
        return pending[0]
    if len(pending) > 1:
        ids = ", ".join(a.approval_id for a in pending)
        raise UserError(f"step {step_id} has several pending approvals ({ids}): pick one with --id")
    decided = [a for a in of_step if approval_id in (None, a.approval_id)]
    if decided:
        last = decided[-1]
        raise UserError(
            f"approval {last.approval_id} of step {step_id} is already {last.status}"
            + (f" by {last.by}" if last.by else "")
        )
    raise UserError(f"step {step_id} of run {run_id} is not waiting for an approval")


def parse_workflow_ref(ref: str) -> tuple[str, int | None]:
    """ "name" or "name@3"."""
    name, _, version = ref.partition("@")
    if not version:
        return name, None
    if not version.isdigit():
        raise UserError(f"bad workflow reference {ref!r}: use NAME or NAME@VERSION")
    return name, int(version)


@dataclass(frozen=True)
class Listed:
    """Where `watch_runs` has given what was stored: whether older runs exist that it left out
    (`dagnats run list` shows them), and what waits for an operator now. Falsy, as the None
    that marked this point before."""

    older: bool
    pending: list[PendingApproval] = field(default_factory=list)

    def __bool__(self) -> bool:
        return False
