"""How runs, steps and events look to users: the JSON shapes of DESIGN §6 and text tables."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import msgspec

from dagnats.core.events import Event
from dagnats.core.state import Approval, RunState
from dagnats.nats.store import RunSummary, WorkflowVersion


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def run_doc(state: RunState, unserved: dict[str, str] | None = None) -> dict[str, Any]:
    """`unserved`: queued steps whose task no live worker serves ({step: task}), marked
    `no_worker: true`."""
    lineage: dict[str, Any] = {
        "root_run_id": state.root_run_id,
        "generation": state.generation,
        "continued_from": state.continued_from,
        "continued_to": state.continued_to,
        "forked_from": state.forked_from,
        "fork_step": state.fork_step,
    }
    if state.parent is not None:
        lineage["parent_run_id"] = state.parent.run_id
        lineage["parent_step_id"] = state.parent.step_id
    children = {sid: s.child_run_id for sid, s in state.steps.items() if s.child_run_id}
    if children:
        lineage["children"] = children
    return {
        "run_id": state.run_id,
        "workflow": state.workflow,
        "version": state.version,
        "status": state.status,
        "input": state.input,
        "output": state.output,
        "error": state.error,
        "created_at": iso(state.created_at),
        "finished_at": iso(state.finished_at),
        "steps": {sid: step_doc(state, sid, sid in (unserved or {})) for sid in state.steps},
        "lineage": lineage,
    }


def step_doc(state: RunState, sid: str, no_worker: bool = False) -> dict[str, Any]:
    s = state.steps[sid]
    doc: dict[str, Any] = {
        "status": s.status,
        "attempts": s.attempts,
        "output": s.output,
        "error": s.error,
        "input": s.input,
        "queued_at": iso(s.queued_at),
        "started_at": iso(s.started_at),
        "finished_at": iso(s.finished_at),
    }
    if s.retry_at is not None:
        doc["retry_at"] = iso(s.retry_at)
    if s.waiting_signal is not None:
        doc["waiting_for_signal"] = s.waiting_signal
    if s.child_run_id:
        doc["child_run_id"] = s.child_run_id
    if no_worker:
        doc["no_worker"] = True
    return doc


def no_worker_text(task: str) -> str:
    """What a queued step shows when no live worker serves its task."""
    return f"queued — no worker serves {task!r}"


def no_worker_warning(step_id: str, task: str) -> str:
    return (
        f"warning: step {step_id} is queued but no worker serves {task!r}; "
        "start one with dagnats worker MODULE:ATTR"
    )


def summary_doc(summary: RunSummary) -> dict[str, Any]:
    return {
        "run_id": summary.run_id,
        "workflow": summary.workflow,
        "version": summary.version,
        "status": summary.status,
        "created_at": iso(summary.created_at),
        "finished_at": iso(summary.finished_at),
        "steps_done": summary.steps_done,
        "steps_total": summary.steps_total,
        "error": summary.error,
        "parent_run_id": summary.parent_run_id,
        "approvals_pending": summary.approvals,
    }


def event_doc(seq: int, event: Event) -> dict[str, Any]:
    body = msgspec.to_builtins(event)
    body["at"] = iso(event.at)
    return {"seq": seq, **body}


def event_line(seq: int, event: Event) -> str:
    body = msgspec.to_builtins(event)
    kind = body.pop("type")
    at = body.pop("at")
    body.pop("definition", None)
    body.pop("run_id", None)
    body.pop("source", None)
    stamp = dt.datetime.fromtimestamp(at).strftime("%H:%M:%S.%f")[:-3]
    detail = " ".join(f"{k}={_short(v)}" for k, v in body.items())
    return f"{seq:>8}  {stamp}  {kind:<22} {detail}".rstrip()


def progress_line(event: Event) -> str | None:
    """A short line for `run start --wait` to show while a run goes on, or None."""
    body = msgspec.to_builtins(event)
    kind, sid = body["type"], body.get("step_id", "")
    if kind == "step.completed":
        return f"  {sid}: completed"
    if kind == "step.failed":
        return f"  {sid}: attempt {body['attempt']} failed: {body['error']}"
    if kind == "step.skipped":
        return f"  {sid}: skipped ({body.get('reason', '')})"
    if kind == "step.waiting":
        return f"  {sid}: waiting" + (f" for signal {body['signal']!r}" if body.get("signal") else "")
    if kind == "map.expanded":
        return f"  {sid}: {len(body['items'])} items"
    return None


def approval_doc(run_id: str, workflow: str, a: Approval) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "workflow": workflow,
        "step_id": a.step_id,
        "approval_id": a.approval_id,
        "kind": a.kind,
        "prompt": a.prompt,
        "details": a.details,
        "digest": a.digest,
        "requested_at": iso(a.requested_at),
        "expires_at": iso(a.expires_at),
    }


def approval_summary(a: Approval) -> str:
    """One line saying what is asked."""
    if a.kind == "tool_call" and isinstance(a.details, dict):
        return f"{a.details.get('name')}({_short(a.details.get('arguments'), 50)})"
    if a.kind == "plan" and isinstance(a.details, dict):
        return f"plan of {len(a.details.get('steps', []))} steps"
    return a.prompt


def workflow_doc(wfv: WorkflowVersion, versions: list[int] | None = None) -> dict[str, Any]:
    doc = {
        "name": wfv.name,
        "version": wfv.version,
        "registered_at": iso(wfv.registered_at),
        "description": wfv.definition.description,
        "steps": len(wfv.definition.steps),
        "definition": msgspec.to_builtins(wfv.definition),
    }
    if versions is not None:
        doc["versions"] = versions
    return doc


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def _short(value: Any, limit: int = 80) -> str:
    text = value.replace("\n", "\\n") if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def age(ts: float, now: float) -> str:
    seconds = max(0, int(now - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
