"""`dagnats tui` for real: in a tmux terminal against a live `dagnats serve`, an operator
approves a pending approval from the keyboard; the screen and the client both show it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from tui.model import LOOK_AGAIN

from conftest import ROOT, dagnats, dagnats_json, wait_until

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs the tmux binary")


class Tmux:
    def __init__(self, command: str, width: int = 100, height: int = 30) -> None:
        self.name = f"dagnats-{uuid.uuid4().hex[:8]}"
        subprocess.run(
            ["tmux", "new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height), command],
            check=True,
            cwd=ROOT,
        )

    def screen(self) -> str:
        out = subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True)
        return out.stdout

    def keys(self, *keys: str) -> None:
        for key in keys:
            subprocess.run(["tmux", "send-keys", "-t", self.name, key], check=True)
            time.sleep(0.15)

    def wait_for(self, text: str, timeout: float = 20.0) -> str:
        return wait_until(lambda: text in (s := self.screen()) and s, timeout, what=f"{text!r} on screen")

    def kill(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def test_approve_from_the_keyboard_in_a_real_terminal(serve, data_dir, tmp_path):
    wf = tmp_path / "ship.json"
    wf.write_text(
        json.dumps(
            {
                "name": "ship",
                "steps": [
                    {"id": "build", "task": "echo", "input": "v7"},
                    {
                        "id": "ship",
                        "type": "approval",
                        "depends_on": ["build"],
                        "config": {"prompt": "Ship build v7?"},
                    },
                ],
            }
        )
    )
    assert dagnats("workflow", "register", str(wf), data_dir=data_dir).returncode == 0
    run_id = dagnats_json("run", "start", "ship", "--json", data_dir=data_dir)["run_id"]
    wait_until(lambda: dagnats_json("approval", "list", "--json", data_dir=data_dir), what="the approval")

    env = f"env DAGNATS_DATA_DIR={data_dir} PYTHONPATH={ROOT}"
    term = Tmux(f"{env} {sys.executable} -m dagnats tui; echo TUI-EXIT=$?; sleep 5")
    try:
        term.wait_for(run_id[:12])
        screen = term.wait_for("1 waiting for you")
        assert "ship" in screen and "waiting" in screen
        term.keys("a")
        screen = term.wait_for("Ship build v7?")
        assert "step" in screen and "ship/ship" in screen
        term.keys("y")  # at once: the item has only just been drawn, so the key is refused
        term.wait_for("look again")
        time.sleep(LOOK_AGAIN)  # the rule is about time: the item must have been shown 1 s
        term.keys("y")
        term.wait_for("nothing waits for you")
        state = dagnats_json("run", "show", run_id, "--json", data_dir=data_dir)
        assert state["status"] == "completed"
        events = dagnats_json("run", "events", run_id, "--json", data_dir=data_dir)
        decided = [e for e in events if e["type"] == "approval.decided"]
        assert decided and decided[0]["approved"] is True and decided[0]["by"]
        term.keys("Escape")
        try:
            term.wait_for("completed")
        except AssertionError:
            raise AssertionError(term.screen()) from None
        term.keys("q")
        assert "TUI-EXIT=0" in term.wait_for("TUI-EXIT=")
    finally:
        term.kill()


def test_dagnats_demo_opens_the_console_on_runs_of_every_kind(tmp_path):
    """The README's first command: runs offline, shows runs waiting for the operator, quits
    cleanly and stops its server."""
    data = tmp_path / "demo"
    term = Tmux(
        f"env PYTHONPATH={ROOT} {sys.executable} -m dagnats demo --data-dir {data}; echo DEMO-EXIT=$?; sleep 30"
    )
    try:
        term.wait_for("waiting for you", timeout=40)
        screen = term.wait_for("assistant", timeout=20)
        for workflow in ("release", "coding", "triage", "countdown", "listener"):
            assert workflow in screen, workflow
        term.keys("a")
        term.wait_for("tool_call")
        term.keys("q")
        screen = term.wait_for("DEMO-EXIT=", timeout=30)
        assert "DEMO-EXIT=0" in screen
        assert not (data / "server.json").exists()  # the embedded server was stopped
    finally:
        term.kill()
