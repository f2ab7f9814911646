"""Atomic batch appends: all of a run's events land, in order and contiguous, or none do."""

from __future__ import annotations

import pytest

from dagnats.core.definition import parse_definition
from dagnats.core.events import RunStarted, SignalReceived
from dagnats.nats.store import Conflict


async def test_a_batch_lands_whole_or_not_at_all(stack):
    await stack.start(engines=0)  # nobody else appends to r1
    store = stack.store
    wf = parse_definition({"name": "w", "steps": [{"id": "a", "task": "echo"}]})
    first = await store.append(
        "r1", RunStarted(at=1.0, run_id="r1", workflow="w", version=1, definition=wf), expected_last=0
    )
    await store.append("other", SignalReceived(at=1.0, name="noise"))  # another subject in between
    signals = [SignalReceived(at=2.0 + i, name=f"s{i}") for i in range(5)]
    seqs = await store.append_batch("r1", signals, expected_last=first)
    history = await store.read_history("r1")
    assert [seq for seq, _ in history] == [first, *seqs]
    assert [e.name for _, e in history[1:]] == [f"s{i}" for i in range(5)]

    with pytest.raises(Conflict):  # stale: the run moved on since `first`
        await store.append_batch("r1", [SignalReceived(at=9.0, name="late"), signals[0]], expected_last=first)
    assert len(await store.read_history("r1")) == 6  # nothing of the refused batch landed
