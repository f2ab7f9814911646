"""Approval steps through the CLI: list, approve, deny, timeout, double decisions, who decided,
and decisions that quote a digest of what was shown."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import time

from dagnats.core.events import ApprovalDecided
from dagnats.core.state import approval_digest

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


def _careful(tmp_path, data_dir) -> None:
    """An agent that asks twice on the same step: `echo one`, then `echo two`."""
    calls = [{"name": "run_command", "arguments": {"command": f"echo {n} >> log"}} for n in ("one", "two")]
    script = [{"text": "", "tool_calls": [c]} for c in calls] + [{"text": "finished"}]
    agent = {
        "provider": "scripted",
        "script": script,
        "tools": ["run_command"],
        "approve_tools": ["run_command"],
        "workdir": str(tmp_path / "w"),
    }
    wf = tmp_path / "careful.json"
    wf.write_text(
        json.dumps({"name": "careful", "steps": [{"id": "fix", "type": "agent_loop", "config": agent}]})
    )
    assert dagnats("workflow", "register", str(wf), data_dir=data_dir).returncode == 0


def _pending_of(run_id, data_dir) -> list:
    return [a for a in dagnats_json("approval", "list", data_dir=data_dir) if a["run_id"] == run_id]


def test_a_digest_of_an_old_request_is_refused(serve, data_dir, tmp_path):
    _careful(tmp_path, data_dir)
    run_id = dagnats_json("run", "start", "careful", data_dir=data_dir)["run_id"]
    (first,) = wait_until(lambda: _pending_of(run_id, data_dir), what="the first tool call")
    assert first["digest"] == approval_digest(first["kind"], first["prompt"], first["details"])
    assert len(first["digest"]) == 64 and int(first["digest"], 16) >= 0
    ok = dagnats("approval", "approve", run_id, "fix", "--digest", first["digest"], data_dir=data_dir)
    assert ok.returncode == 0, ok.stderr
    # the same step asks again: what the operator saw is gone, its digest must not decide the new call
    (second,) = wait_until(
        lambda: [a for a in _pending_of(run_id, data_dir) if a["approval_id"] != first["approval_id"]],
        what="the second tool call",
    )
    assert second["digest"] != first["digest"]
    for verb, extra in (("approve", []), ("deny", ["--reason", "no"])):
        stale = dagnats(
            "approval", verb, run_id, "fix", *extra, "--digest", first["digest"], data_dir=data_dir
        )
        assert stale.returncode == 1, stale.stderr
        assert stale.stderr.startswith(
            f"error: approval {second['approval_id']} changed since you saw it: it now asks "
        ), stale.stderr
        assert "echo two" in stale.stderr and second["digest"] in stale.stderr
        assert "Traceback" not in stale.stderr
    wrong = dagnats("approval", "approve", run_id, "fix", "--digest", "WRONG", data_dir=data_dir)
    assert wrong.returncode == 1 and "changed since you saw it" in wrong.stderr
    assert _pending_of(run_id, data_dir) == [second]  # nothing was decided
    assert (tmp_path / "w" / "log").read_text() == "one\n"
    ok = dagnats("approval", "approve", run_id, "fix", "--digest", second["digest"], data_dir=data_dir)
    assert ok.returncode == 0, ok.stderr
    wait_until(
        lambda: dagnats_json("run", "show", run_id, data_dir=data_dir)["status"] == "completed", what="done"
    )
    assert (tmp_path / "w" / "log").read_text() == "one\ntwo\n"
    decided = [
        e for e in dagnats_json("run", "events", run_id, data_dir=data_dir) if e["type"] == "approval.decided"
    ]
    assert [(e["approval_id"], e["digest"]) for e in decided] == [
        (first["approval_id"], first["digest"]),
        (second["approval_id"], second["digest"]),
    ]


async def test_a_stale_decision_that_was_appended_anyway_does_not_apply(stack):
    """The client checks first, but the engine must not take a stale decision either: the fold
    ignores a decision whose digest is not the pending request's."""
    await stack.start()
    await stack.register(
        {"name": "gate", "steps": [{"id": "gate", "type": "approval", "config": {"prompt": "Ship?"}}]}
    )
    run_id = await stack.client.start("gate")
    for _ in range(200):
        if pending := await stack.client.approvals_of(run_id):
            break
        await asyncio.sleep(0.05)
    (item,) = pending
    stale = ApprovalDecided(
        at=time.time(),
        approval_id=item.approval.approval_id,
        step_id="gate",
        approved=True,
        by="someone who saw something else",
        digest=approval_digest("step", "Ship v0?", None),
    )
    await stack.store.append(run_id, stale)
    state = await stack.client.run(run_id)
    assert (state.status, state.approvals["gate.1"].status) == ("waiting", "pending")
    await stack.client.decide(run_id, "gate", approved=True, comment="seen", digest=item.digest)
    state = await asyncio.wait_for(stack.client.wait(run_id), 10)
    assert state.status == "completed"
    assert state.steps["gate"].output["comment"] == "seen"
    assert state.steps["gate"].output["by"] != "someone who saw something else"
