"""The checks STYLE.md asks of every commit, run by CI too: ruff lint (with the C901 complexity limit)
and format, mypy over dagnats and tui (strict on the core)."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


def test_ruff_lint_is_clean():
    proc = _run("ruff", "check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format_is_applied():
    proc = _run("ruff", "format", "--check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_package_and_console_are_typed():
    proc = _run("mypy", "dagnats", "tui")
    assert proc.returncode == 0, proc.stdout + proc.stderr
