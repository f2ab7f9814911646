"""Data from older dagnats versions, brought up to date in place when `dagnats serve` starts.

`Store.ensure` creates what is missing (a data dir from before heartbeats gets their bucket
that way); what exists with an older configuration or layout is changed here, and only here,
so the hot paths never check for it. Every step is idempotent and safe with several engines
starting at once.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from dagnats.core.state import RUN_TERMINAL
from dagnats.ports import ActiveRun, Snapshot

from . import names

if TYPE_CHECKING:
    from .store import Store


async def run(store: Store) -> None:
    """Every upgrade, in order: stream settings first, then the layouts that read through them."""
    await replicas(store)
    await atomic_history(store)
    await direct_buckets(store)
    await workflow_pointers(store)
    await active_index(store)


# dagnats' streams: its own, and those behind its KV buckets and object stores.
OWN_PREFIXES = ("DAGNATS_", "KV_dagnats_", "OBJ_dagnats_")


async def replicas(store: Store) -> None:
    """Streams, buckets and object stores with fewer replicas than `store.replicas` (made by an
    earlier `serve`, or before `--replicas` existed): raise them. Never lowered: a `serve`
    started without `--replicas` on a replicated cluster leaves the copies as they are."""
    from .store import UNAVAILABLE_ERRORS, Unavailable, replicas_refused

    if store.replicas <= 1:
        return
    try:
        infos = [i for i in await store.js.streams_info() if (i.config.name or "").startswith(OWN_PREFIXES)]
    except UNAVAILABLE_ERRORS:
        raise Unavailable() from None
    for info in infos:
        if (info.config.num_replicas or 1) >= store.replicas:
            continue
        try:
            await store.js.update_stream(replace(info.config, num_replicas=store.replicas))
        except Exception as exc:  # noqa: BLE001 - the server's reason goes into the message
            raise replicas_refused(store.nc, store.replicas, exc, info.config.name) from None
        # The raised stream elects a leader of its new group: wait for it before the rest of
        # the start-up reads and writes it.
        await store._has_leader(info.config.name or "", wait=30.0)


async def atomic_history(store: Store) -> None:
    """A history stream from before atomic batches: turn them on (a compatible change), when the
    server can do them."""
    if not store.atomic_batches:
        return
    info = await store.js.stream_info(names.HISTORY_STREAM)
    if not info.config.allow_atomic:
        await store.js.update_stream(replace(info.config, allow_atomic=True))


async def direct_buckets(store: Store) -> None:
    """Buckets from before direct reads: turn them on (reads are one raw request then)."""
    for bucket in (names.RUNS_BUCKET, names.WORKFLOWS_BUCKET):
        info = await store.js.stream_info(f"KV_{bucket}")
        if not info.config.allow_direct:
            await store.js.update_stream(replace(info.config, allow_direct=True))


async def workflow_pointers(store: Store) -> None:
    """Workflows registered before the `<name>.latest` pointer existed: point at their newest
    version (a pointer that exists is left to `register_workflow`)."""
    newest: dict[str, int] = {}
    pointed: set[str] = set()
    for key in await store._workflow_keys():
        name, _, last = key.rpartition(".")
        if key == names.workflow_latest_key(name):
            pointed.add(name)
        elif last.isdigit():
            newest[name] = max(newest.get(name, 0), int(last))
    for name in sorted(newest.keys() - pointed):
        await store._advance_latest(name, newest[name])


async def active_index(store: Store) -> None:
    """A data dir from before the index of unfinished runs: build it from the snapshots, once
    (the last time every snapshot is read); then mark it built. A crash before the mark builds
    it again; entries an engine changed meanwhile are checked by the start-up sweep that follows."""
    if await store._last_of(names.ACTIVE_STREAM, names.ACTIVE_BUILT) is not None:
        return
    for snap in await store.all_snapshots():
        if snap.summary.status not in RUN_TERMINAL:
            await store.save_active(_entry_of(snap))
    await store.mark_active_built()


def _entry_of(snap: Snapshot) -> ActiveRun:
    if snap.state is None:  # too big to hold its state: readers read the run for its approvals
        return ActiveRun(snap.applied, snap.summary, approvals_left_out=snap.summary.approvals > 0)
    return ActiveRun.of(snap.applied, snap.state)
