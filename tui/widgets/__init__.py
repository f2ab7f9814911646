"""The console's own widgets (the runs table, the DAG view, the status bar) and its dialogs."""

from __future__ import annotations

from tui.widgets.dag_view import DagView
from tui.widgets.runs_table import RunsHeader, RunsTable
from tui.widgets.status import StatusBar

__all__ = ["DagView", "RunsHeader", "RunsTable", "StatusBar"]
