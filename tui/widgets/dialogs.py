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


class Dialog(ModalScreen[Any]):
    """A dialog's shared parts: its centred frame, ctrl+s / escape, Submit and Cancel buttons,
    and an error line that shows what `validate` finds wrong instead of closing."""

    BINDINGS = bindings("dialog")
    CSS_PATH = "dialogs.tcss"

    def validate(self) -> tuple[Any, str | None]:
        """What the dialog returns, and what is wrong with the form (None if nothing)."""
        raise NotImplementedError

    def buttons(self, submit: str) -> ComposeResult:
        yield Static("", classes="error", id="error")
        yield Label(f"ctrl+s: {submit.lower()}   escape: cancel", classes="hint")
        with Horizontal(classes="buttons"):
            yield Button(submit, id="submit", variant="primary")
            yield Button("Cancel", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "submit":
            self.action_submit()
        else:
            self.dismiss(None)

    def action_submit(self) -> None:
        result, problem = self.validate()
        if problem:
            self.query_one("#error", Static).update(problem)
            return
        self.dismiss(result)

    def action_dismiss_dialog(self) -> None:
        self.dismiss(None)


def _parse_json(text: str) -> tuple[Any, str | None]:
    """The value typed, or what is wrong with it."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, f"input is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"


def _json_text(value: Any) -> str:
    if value is None or value is msgspec.UNSET:
        return "null"
    return json.dumps(msgspec.to_builtins(value), indent=2, ensure_ascii=False)


class Confirm(ModalScreen[bool]):
    BINDINGS = [*bindings("dialog"), ("y", "submit", "Yes"), ("n", "dismiss_dialog", "No")]
    CSS_PATH = "dialogs.tcss"

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


class Reason(Dialog):
    """Deny with a reason: the reason is what the model or the run's history will show."""

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

    def validate(self) -> tuple[str, str | None]:
        reason = self.query_one("#reason", Input).value.strip()
        return reason, None if reason else "a denial needs a reason"


class ForkRequest(msgspec.Struct, frozen=True):
    step_id: str
    input: Any = msgspec.UNSET  # UNSET: keep the step's recorded input
    turn: int | None = None


class Fork(Dialog):
    """Fork from a step: its input is shown as JSON and may be edited; for an agent loop, the
    turn to resume from may be picked."""

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
            yield from self.buttons("Fork")

    def validate(self) -> tuple[ForkRequest | None, str | None]:
        text = self.query_one("#input", TextArea).text
        new_input: Any = msgspec.UNSET
        if text.strip() != self.original.strip():
            new_input, problem = _parse_json(text)
            if problem:
                return None, problem
        turn: int | None = None
        if self.turns is not None:
            raw = self.query_one("#turn", Input).value.strip()
            if raw:
                if not raw.isdigit() or not 0 <= int(raw) <= self.turns:
                    return None, f"turn must be a number from 0 to {self.turns}"
                turn = int(raw)
        return ForkRequest(step_id=self.step_id, input=new_input, turn=turn), None


class StartRequest(msgspec.Struct, frozen=True):
    workflow: str
    input: Any = None


class Start(Dialog):
    """Start a run of a registered workflow, with an input typed as JSON."""

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
            yield from self.buttons("Start")

    def validate(self) -> tuple[StartRequest | None, str | None]:
        choice = self.query_one("#workflow", Select).value
        if not isinstance(choice, str):
            return None, "pick a workflow"
        value, problem = _parse_json(self.query_one("#input", TextArea).text or "null")
        return (None, problem) if problem else (StartRequest(workflow=choice, input=value), None)
