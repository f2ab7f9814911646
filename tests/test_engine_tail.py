"""When the engine may fold the messages it was handed instead of reading the run's tail."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dagnats.engine.loop import _delivered_tail


def msg(seq: int) -> SimpleNamespace:
    return SimpleNamespace(metadata=SimpleNamespace(sequence=SimpleNamespace(stream=seq)))


@pytest.mark.parametrize(
    ("applied", "seqs", "usable"),
    [
        (10, [11], True),  # the very next message of the whole stream
        (10, [12, 11, 13], True),  # contiguous, in any order
        (10, [12], False),  # stream message 11 may belong to this run
        (10, [11, 13], False),  # a gap inside
        (0, [1], False),  # nothing folded yet: read the history
        (10, [], False),
    ],
)
def test_delivered_messages_are_used_only_without_gaps(applied, seqs, usable):
    result = _delivered_tail([msg(s) for s in seqs], applied)
    if usable:
        assert [m.metadata.sequence.stream for m in result] == sorted(seqs)
    else:
        assert result is None
