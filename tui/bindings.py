"""Every key of the console, in one table. Screens take their BINDINGS from here, the footer
shows them, and the help screen lists them, so the three can never disagree."""

from __future__ import annotations

from textual.binding import Binding, BindingType

# scope -> bindings. "global" keys work on every screen (unless a dialog is open).
KEYS: dict[str, list[Binding]] = {
    "global": [
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("a", "app.approvals", "Approvals"),
        Binding("s", "app.start_run", "Start"),
        Binding("q", "app.quit", "Quit"),
    ],
    "runs": [
        Binding("enter", "open", "Open", show=False),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("1", "tab('all')", "All", show=False),
        Binding("2", "tab('active')", "Active", show=False),
        Binding("3", "tab('needs_you')", "Needs you", show=False),
        Binding("4", "tab('failed')", "Failed", show=False),
        Binding("5", "tab('done')", "Done", show=False),
        Binding("6", "tab('cancelled')", "Cancelled", show=False),
        Binding("c", "cancel", "Cancel"),
    ],
    "run": [
        Binding("escape", "back", "Back"),
        Binding("g", "pane('graph')", "Graph", show=False),
        Binding("t", "pane('transcript')", "Transcript", show=False),
        Binding("e", "pane('events')", "Events", show=False),
        Binding("l", "pane('lineage')", "Lineage", show=False),
        Binding("y", "approve", "Approve"),
        Binding("n", "deny", "Deny"),
        Binding("c", "cancel", "Cancel"),
        Binding("f", "fork", "Fork"),
    ],
    "graph": [
        Binding("up,k", "move('up')", "Step up", show=False),
        Binding("down,j", "move('down')", "Step down", show=False),
        Binding("left,h", "move('left')", "Step left", show=False),
        Binding("right", "move('right')", "Step right", show=False),
    ],
    "approvals": [
        Binding("escape", "back", "Back"),
        Binding("y", "approve", "Approve"),
        Binding("n", "deny", "Deny"),
        Binding("o,enter", "open", "Open run"),
    ],
    "dialog": [
        Binding("escape", "dismiss_dialog", "Close"),
        Binding("ctrl+s", "submit", "Submit"),
    ],
}

SCOPE_TITLES = {
    "global": "Everywhere",
    "runs": "Runs",
    "run": "Run",
    "graph": "Run graph (when it has focus)",
    "approvals": "Approvals inbox",
    "dialog": "Dialogs",
}

# Keys with show=False are on screen elsewhere: the status tabs and the run's pane tabs carry
# their keys in their labels. Keys the tables handle themselves are listed in help too.
BUILT_IN = {
    "runs": [
        ("↑ ↓ PgUp PgDn Home End", "move through runs"),
        ("enter", "open the run"),
        ("1-6", "status tabs"),
    ],
    "run": [("tab", "move focus between graph, details and panes")],
}


def bindings(scope: str) -> list[BindingType]:
    return list(KEYS[scope])


def key_label(binding: Binding) -> str:
    if binding.key_display:
        return binding.key_display
    return " ".join(k.strip() for k in binding.key.split(","))
