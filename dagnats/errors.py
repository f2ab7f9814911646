"""Errors meant for the user: one line saying what is wrong and what to do."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or setup. The CLI prints it and exits with code 1."""


class NotFound(UserError):
    """A named workflow, run or step does not exist."""
