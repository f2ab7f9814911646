"""Approval steps through the CLI: list, approve, deny, timeout, double decisions, who decided."""

from __future__ import annotations

import getpass
import json
import os

from conftest import cli_env, dagnats, dagnats_json, wait_until


def _register(tmp_path, data_dir, timeout: str | None = None) -> None:
    cfg = {"prompt": "Ship ${steps.build.output}?"}
    if timeout:
        cfg["timeout"] = timeout
    wf = tmp_path / "ship.json"
    wf.write_text(
        json.dumps(
            {
                "name": "ship",
                "steps": [
                    {"id": "build", "task": "echo", "input": "v1"},
                    {"id": "ship", "type": "approval", "depends_on": ["build"], "config": cfg},
                    {"id": "done", "task": "echo", "depends_on": ["ship"], "input": "${steps.ship.output}"},
                ],
            }
        )
    )
    assert dagnats("workflow", "register", str(wf), data_dir=data_dir).returncode == 0


def _start_and_wait_for_approval(data_dir) -> str:
    run_id = dagnats_json("run", "start", "ship", data_dir=data_dir)["run_id"]
    wait_until(
        lambda: any(a["run_id"] == run_id for a in dagnats_json("approval", "list", data_dir=data_dir)),
        what="the approval to be pending",
    )
    return run_id


def test_approve_records_who_and_continues(serve, data_dir, tmp_path):
    _register(tmp_path, data_dir)
    run_id = _start_and_wait_for_approval(data_dir)
    listed = [a for a in dagnats_json("approval", "list", data_dir=data_dir) if a["run_id"] == run_id]
    assert len(listed) == 1
    item = listed[0]
    assert (item["step_id"], item["kind"], item["prompt"], item["workflow"]) == (
        "ship",
        "step",
        "Ship v1?",
        "ship",
    )
    assert item["requested_at"] and item["approval_id"] == "ship.1"
    assert dagnats_json("run", "show", run_id, data_dir=data_dir)["status"] == "waiting"
    text = dagnats("approval", "list", data_dir=data_dir).stdout
    assert "Ship v1?" in text and run_id in text

    over_ssh = cli_env(data_dir, SSH_CLIENT="10.1.2.3 50022 22", USER=getpass.getuser())
    proc = dagnats("approval", "approve", run_id, "ship", "--comment", "lgtm", env=over_ssh)
    assert proc.returncode == 0, proc.stderr
    wait_until(
        lambda: dagnats_json("run", "show", run_id, data_dir=data_dir)["status"] == "completed", what="done"
    )
    who = f"{os.environ.get('USER') or getpass.getuser()}@10.1.2.3"
    shown = dagnats_json("run", "show", run_id, data_dir=data_dir)
    assert shown["steps"]["ship"]["output"] == {"approved": True, "by": who, "comment": "lgtm"}
    assert shown["output"] == {"approved": True, "by": who, "comment": "lgtm"}
    decided = [
        e for e in dagnats_json("run", "events", run_id, data_dir=data_dir) if e["type"] == "approval.decided"
    ]
    assert len(decided) == 1 and decided[0]["by"] == who and decided[0]["at"] and decided[0]["source"] == "o"

    again = dagnats("approval", "approve", run_id, "ship", data_dir=data_dir)
    assert again.returncode == 1 and "is completed; there is nothing to decide" in again.stderr
    assert dagnats_json("approval", "list", data_dir=data_dir) == []


def test_deny_fails_the_step_and_double_decisions_are_refused(serve, data_dir, tmp_path):
    _register(tmp_path, data_dir)
    run_id = _start_and_wait_for_approval(data_dir)
    no_reason = dagnats("approval", "deny", run_id, "ship", data_dir=data_dir)
    assert no_reason.returncode == 2  # --reason is required
    wrong_step = dagnats("approval", "approve", run_id, "build", data_dir=data_dir)
    assert (
        wrong_step.returncode == 1
        and "step build of run" in wrong_step.stderr
        and "not waiting" in wrong_step.stderr
    )
    assert (
        dagnats("approval", "deny", run_id, "ship", "--reason", "not today", data_dir=data_dir).returncode
        == 0
    )
    wait_until(
        lambda: dagnats_json("run", "show", run_id, data_dir=data_dir)["status"] == "failed", what="failure"
    )
    shown = dagnats_json("run", "show", run_id, data_dir=data_dir)
    assert shown["steps"]["ship"]["status"] == "failed" and shown["steps"]["ship"]["attempts"] == 1
    assert shown["steps"]["ship"]["error"].startswith("denied by ") and shown["steps"]["ship"][
        "error"
    ].endswith(": not today")
    assert shown["steps"]["done"]["status"] == "cancelled"
    late = dagnats("approval", "approve", run_id, "ship", data_dir=data_dir)
    assert late.returncode == 1 and "failed; there is nothing to decide" in late.stderr
    unknown = dagnats("approval", "approve", "nope", "ship", data_dir=data_dir)
    assert unknown.returncode == 1 and "unknown run 'nope'" in unknown.stderr


def test_double_approval_while_running_is_refused(serve, data_dir, tmp_path):
    wf = tmp_path / "two.json"
    wf.write_text(
        json.dumps(
            {
                "name": "two",
                "steps": [
                    {"id": "first", "type": "approval", "config": {"prompt": "one?"}},
                    {
                        "id": "second",
                        "type": "approval",
                        "depends_on": ["first"],
                        "config": {"prompt": "two?"},
                    },
                ],
            }
        )
    )
    assert dagnats("workflow", "register", str(wf), data_dir=data_dir).returncode == 0
    run_id = dagnats_json("run", "start", "two", data_dir=data_dir)["run_id"]
    wait_until(lambda: dagnats_json("approval", "list", data_dir=data_dir), what="first approval")
    assert dagnats("approval", "approve", run_id, "first", data_dir=data_dir).returncode == 0
    twice = dagnats("approval", "approve", run_id, "first", data_dir=data_dir)
    assert twice.returncode == 1 and "approval first.1 of step first is already approved by" in twice.stderr
    wait_until(
        lambda: [a["step_id"] for a in dagnats_json("approval", "list", data_dir=data_dir)] == ["second"],
        what="second approval",
    )


def test_approval_timeout_fails_the_step(serve, data_dir, tmp_path):
    _register(tmp_path, data_dir, timeout="700ms")
    run_id = dagnats_json("run", "start", "ship", data_dir=data_dir)["run_id"]
    wait_until(
        lambda: dagnats_json("run", "show", run_id, data_dir=data_dir)["status"] == "failed", what="expiry"
    )
    shown = dagnats_json("run", "show", run_id, data_dir=data_dir)
    assert shown["steps"]["ship"]["error"] == "no decision within 700ms"
    assert dagnats_json("approval", "list", data_dir=data_dir) == []
    late = dagnats("approval", "approve", run_id, "ship", data_dir=data_dir)
    assert late.returncode == 1
