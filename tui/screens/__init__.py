"""The console's screens: runs, one run, the approvals inbox, help. Each reads the console's
state and posts what the operator asks for (tui.messages) up to the app."""

from __future__ import annotations

from tui.screens.approvals import ApprovalsScreen
from tui.screens.base import Base
from tui.screens.help import HelpScreen
from tui.screens.run import WORKERS_EVERY, RunScreen
from tui.screens.runs import RunsScreen

__all__ = ["WORKERS_EVERY", "ApprovalsScreen", "Base", "HelpScreen", "RunScreen", "RunsScreen"]
