"""What screens ask of the console: each request is a message the screen posts; it bubbles up
to the app, which decides what to do (ask for a confirmation, act through the client, open a
screen). Screens read the console's state through `ConsoleState` and never call the app."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from textual.dom import DOMNode
from textual.message import Message

from dagnats.api.client import Client, PendingApproval
from tui.model import Inbox, RunsModel
from tui.widgets.dialogs import ForkRequest


@runtime_checkable
class ConsoleState(Protocol):
    """What a screen may read of the console it runs in."""

    client: Client | None
    model: RunsModel
    inbox: Inbox
    now: Callable[[], float]
    clock: Callable[[], float]
    redraw_delay: float
    loaded: bool
    connection: str
    where: str


def console_state(node: DOMNode) -> ConsoleState:
    """The state of the console that runs `node`."""
    app = node.app
    if not isinstance(app, ConsoleState):
        raise TypeError(f"{type(app).__name__} is not a dagnats console")
    return app


class OpenRun(Message):
    """Show this run (and select this step in its graph)."""

    def __init__(self, run_id: str, step: str | None = None) -> None:
        super().__init__()
        self.run_id = run_id
        self.step = step


class CancelRun(Message):
    """The operator asked to cancel this run: the app asks them to confirm first."""

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id


class AnswerApproval(Message):
    """y or n on the approval a screen showed when the key was pressed; `settled`: it had been
    shown long enough to have been read."""

    def __init__(self, item: PendingApproval | None, *, approved: bool, settled: bool) -> None:
        super().__init__()
        self.item = item
        self.approved = approved
        self.settled = settled


class ForkRun(Message):
    """Fork this run as the fork dialog asked."""

    def __init__(self, run_id: str, request: ForkRequest) -> None:
        super().__init__()
        self.run_id = run_id
        self.request = request


class RunDrawn(Message):
    """A screen has drawn `what` (a run id): for measuring (the bench)."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what
