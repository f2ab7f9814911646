"""Modal dialogs: confirm, a reason for a denial, fork from a step, start a run. Each returns
what the operator asked for (or None) and leaves acting on it to the screen that opened it."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static, TextArea

from tui.bindings import bindings

DIALOG_CSS = """
DIALOG { align: center middle; }
#dialog {
    width: 76; max-width: 96%; height: auto; max-height: 100%;
    border: thick $accent; background: $surface; padding: 0 1;
}
#dialog > * { width: 100%; }
#dialog Label.title { text-style: bold; width: 100%; }
#dialog .error { color: $error; height: auto; }
#dialog TextArea { height: 8; }
#dialog .buttons { height: 3; align-horizontal: right; }
#dialog Button { margin-left: 1; }
#dialog .hint { color: $text-muted; }
"""


def _json_text(value: Any) -> str:
    if value is None or value is msgspec.UNSET:
        return "null"
    return json.dumps(msgspec.to_builtins(value), indent=2, ensure_ascii=False)


class Confirm(ModalScreen[bool]):
    BINDINGS = [*bindings("dialog"), ("y", "submit", "Yes"), ("n", "dismiss_dialog", "No")]
    DEFAULT_CSS = DIALOG_CSS.replace("DIALOG", "Confirm")

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.question, classes="title")
            yield Label("y: yes   n / escape: no", classes="hint")
            with Horizontal(classes="buttons"):
                yield Button("Yes", id="yes", variant="error")
                yield Button("No", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_submit(self) -> None:
        self.dismiss(True)

    def action_dismiss_dialog(self) -> None:
        self.dismiss(False)


class Reason(ModalScreen[str | None]):
    """Deny with a reason: the reason is what the model or the run's history will show."""

    BINDINGS = bindings("dialog")
    DEFAULT_CSS = DIALOG_CSS.replace("DIALOG", "Reason")

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(f"Deny {self.what}", classes="title")
            yield Input(placeholder="reason (required)", id="reason")
            yield Static("", classes="error", id="error")
            yield Label("enter: deny   escape: cancel", classes="hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_submit()

    def action_submit(self) -> None:
        reason = self.query_one("#reason", Input).value.strip()
        if not reason:
            self.query_one("#error", Static).update("a denial needs a reason")
            return
        self.dismiss(reason)

    def action_dismiss_dialog(self) -> None:
        self.dismiss(None)


class ForkRequest(msgspec.Struct, frozen=True):
    step_id: str
    input: Any = msgspec.UNSET  # UNSET: keep the step's recorded input
    turn: int | None = None


class Fork(ModalScreen[ForkRequest | None]):
    """Fork from a step: its input is shown as JSON and may be edited; for an agent loop, the
    turn to resume from may be picked."""

    BINDINGS = bindings("dialog")
    DEFAULT_CSS = DIALOG_CSS.replace("DIALOG", "Fork")

    def __init__(self, run_id: str, step_id: str, step_input: Any, turns: int | None) -> None:
        super().__init__()
        self.run_id = run_id
        self.step_id = step_id
        self.original = _json_text(step_input)
        self.turns = turns

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(f"Fork run {self.run_id} from step {self.step_id}", classes="title")
            yield Label(
                "the new run keeps what is upstream; this step and what follows run again", classes="hint"
            )
            yield Label("input of the step (JSON):")
            yield TextArea(self.original, language=None, id="input", soft_wrap=True)
            if self.turns is not None:
                yield Label(f"resume the agent after turn (0-{self.turns}, empty = all {self.turns}):")
                yield Input(placeholder=str(self.turns), id="turn")
            yield Static("", classes="error", id="error")
            yield Label("ctrl+s: fork   escape: cancel", classes="hint")
            with Horizontal(classes="buttons"):
                yield Button("Fork", id="fork", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "fork":
            self.action_submit()
        else:
            self.dismiss(None)

    def validate(self) -> ForkRequest | str:
        """The request, or what is wrong with the form."""
        text = self.query_one("#input", TextArea).text
        new_input: Any = msgspec.UNSET
        if text.strip() != self.original.strip():
            try:
                new_input = json.loads(text)
            except json.JSONDecodeError as exc:
                return f"input is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        turn: int | None = None
        if self.turns is not None:
            raw = self.query_one("#turn", Input).value.strip()
            if raw:
                if not raw.isdigit() or not 0 <= int(raw) <= self.turns:
                    return f"turn must be a number from 0 to {self.turns}"
                turn = int(raw)
        return ForkRequest(step_id=self.step_id, input=new_input, turn=turn)

    def action_submit(self) -> None:
        result = self.validate()
        if isinstance(result, str):
            self.query_one("#error", Static).update(result)
            return
        self.dismiss(result)

    def action_dismiss_dialog(self) -> None:
        self.dismiss(None)


class StartRequest(msgspec.Struct, frozen=True):
    workflow: str
    input: Any = None


class Start(ModalScreen[StartRequest | None]):
    """Start a run of a registered workflow, with an input typed as JSON."""

    BINDINGS = bindings("dialog")
    DEFAULT_CSS = DIALOG_CSS.replace("DIALOG", "Start")

    def __init__(self, workflows: list[tuple[str, str]]) -> None:
        """`workflows`: (name, description)."""
        super().__init__()
        self.workflows = workflows

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("Start a run", classes="title")
            if not self.workflows:
                yield Label("no workflows registered: use `dagnats workflow register FILE`")
            options = [(f"{name}  {desc}"[:70], name) for name, desc in self.workflows]
            yield Select(options, prompt="workflow", id="workflow", allow_blank=True)
            yield Label("input (JSON):")
            yield TextArea("{}", language=None, id="input", soft_wrap=True)
            yield Static("", classes="error", id="error")
            yield Label("ctrl+s: start   escape: cancel", classes="hint")
            with Horizontal(classes="buttons"):
                yield Button("Start", id="start", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "start":
            self.action_submit()
        else:
            self.dismiss(None)

    def validate(self) -> StartRequest | str:
        choice = self.query_one("#workflow", Select).value
        if not isinstance(choice, str):
            return "pick a workflow"
        try:
            value = json.loads(self.query_one("#input", TextArea).text or "null")
        except json.JSONDecodeError as exc:
            return f"input is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        return StartRequest(workflow=choice, input=value)

    def action_submit(self) -> None:
        result = self.validate()
        if isinstance(result, str):
            self.query_one("#error", Static).update(result)
            return
        self.dismiss(result)

    def action_dismiss_dialog(self) -> None:
        self.dismiss(None)
