"""The console's plain model: which approval a screen shows, and whether a key may decide it."""

from __future__ import annotations

import msgspec
from console_data import pending_approvals

from tui.model import LOOK_AGAIN, Shown


def test_a_key_may_decide_only_what_has_been_shown_a_moment() -> None:
    first, second, *_ = pending_approvals()
    shown = Shown()
    assert shown.item is None
    shown.show(first, 10.0)
    assert not shown.settled(10.0 + LOOK_AGAIN - 0.01)
    shown.show(first, 10.5)  # redrawn unchanged: still the same item, seen since 10.0
    assert shown.settled(10.0 + LOOK_AGAIN)
    shown.show(second, 11.2)  # another item took its row
    assert shown.item == second and not shown.settled(11.5) and shown.settled(11.2 + LOOK_AGAIN)


def test_the_same_approval_asking_something_else_counts_as_new() -> None:
    item = pending_approvals()[0]
    changed = msgspec.structs.replace(
        item, approval=msgspec.structs.replace(item.approval, prompt="Something else?", details={})
    )
    assert changed.digest != item.digest
    shown = Shown()
    shown.show(item, 0.0)
    shown.show(changed, 5.0)
    assert not shown.settled(5.5) and shown.settled(5.0 + LOOK_AGAIN)
