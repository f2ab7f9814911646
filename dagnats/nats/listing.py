"""Reads whose cost does not grow with the number of finished runs: the newest snapshots, read
from the tail of the runs bucket's stream in windows, and the index of unfinished runs.

Both use batched direct gets (one request, many messages, no consumer). The runs bucket keeps
one message per run (history 1), so the messages from sequence S on are the current snapshots
of every run written since S; a run not among them was last written before S, hence created
before S was stored. Reading back until `limit` matching runs were created after the earliest
message read gives the `limit` newest runs without looking further.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import APIError

from dagnats.ports import ActiveRun, Listing, RunSummary

FIRST_WINDOW = 256  # snapshots read first; each further window is twice the one before
INDEX_BATCH = 4096  # index entries per request
DELETED = ("DEL", "PURGE")
TIMEOUT = 5.0  # seconds for one batch to arrive


class _Listed(msgspec.Struct, frozen=True):
    """A snapshot read for its summary only (the decoder skips the state)."""

    summary: RunSummary


_listed_dec = msgspec.json.Decoder(_Listed)
_active_dec = msgspec.json.Decoder(ActiveRun)


async def direct_batch(nc: NATS, stream: str, subject: str, seq: int, batch: int) -> tuple[list[Msg], int]:
    """Up to `batch` messages of `stream` on `subject` from sequence `seq` on, and how many more
    there are after them (one batched direct get, its replies gathered by a callback: awaiting
    each with `next_msg` costs more than the message)."""
    out: list[Msg] = []
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def take(msg: Msg) -> None:
        headers = msg.headers or {}
        status = headers.get("Status")
        if not status:
            out.append(msg)
        elif done.done():
            return
        elif status == "204":  # end of the batch
            done.set_result(int(headers.get("Nats-Num-Pending", "0") or 0))
        elif status == "404":  # nothing from `seq` on
            done.set_result(0)
        else:
            done.set_exception(APIError(code=int(status), description=headers.get("Description", "")))

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=take)
    try:
        req = json.dumps({"seq": seq, "next_by_subj": subject, "batch": batch}).encode()
        await nc.publish(f"$JS.API.DIRECT.GET.{stream}", req, reply=inbox)
        pending = await asyncio.wait_for(done, TIMEOUT)
    finally:
        await sub.unsubscribe()
    return out, pending


def stamp(text: str) -> float:
    """A JetStream timestamp (RFC 3339, UTC, nanoseconds) as unix seconds."""
    whole, _, frac = text.rstrip("Z").partition(".")
    base = datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp()
    return base + float("0." + frac[:9]) if frac else base


async def newest(
    nc: NATS,
    stream: str,
    subject: str,
    span: tuple[int, int],
    limit: int | None,
    keep: Callable[[RunSummary], bool],
) -> Listing:
    """The `limit` newest summaries `keep` accepts among the snapshots in `span` (first, last
    sequence of the bucket's stream), read from the last back in growing windows."""
    first, last = span
    found: dict[str, RunSummary] = {}
    end, size = last, FIRST_WINDOW
    floor = float("inf")  # every run not read yet was created before this (server clock)
    while end >= max(first, 1):
        start = max(first, end - size + 1, 1)
        msgs, _ = await direct_batch(nc, stream, subject, start, end - start + 1)
        floor = min(floor, _take(msgs, end, keep, found))
        end, size = start - 1, size * 2
        if limit and sum(1 for s in found.values() if s.created_at >= floor) >= limit:
            break
    ordered = sorted(found.values(), key=lambda s: (-s.created_at, s.run_id))
    chosen = ordered[:limit] if limit else ordered
    return Listing(chosen, older=end >= max(first, 1) or len(ordered) > len(chosen), position=last)


def _take(
    msgs: list[Msg], end: int, keep: Callable[[RunSummary], bool], found: dict[str, RunSummary]
) -> float:
    """Add the window's summaries that `keep` accepts; the time its first message was stored."""
    floor = float("inf")
    for msg in msgs:
        headers = msg.headers or {}
        if int(headers["Nats-Sequence"]) > end:  # past a gap: read in an earlier window
            break
        if floor == float("inf"):
            floor = stamp(headers["Nats-Time-Stamp"])
        if headers.get("KV-Operation") in DELETED or not msg.data:
            continue
        summary = _listed_dec.decode(msg.data).summary
        if keep(summary):
            found.setdefault(summary.run_id, summary)
    return floor


async def index_entries(nc: NATS, stream: str, subject: str) -> list[ActiveRun]:
    """Every entry of the index of unfinished runs (one message per run)."""
    out: list[ActiveRun] = []
    seq = 1
    while True:
        msgs, pending = await direct_batch(nc, stream, subject, seq, INDEX_BATCH)
        for msg in msgs:
            if msg.data:
                out.append(_active_dec.decode(msg.data))
        if not msgs or pending == 0:
            return out
        seq = int((msgs[-1].headers or {})["Nats-Sequence"]) + 1
