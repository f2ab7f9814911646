"""Turning runs, steps, transcripts and approvals into Rich text. Pure: no widgets, no I/O;
the clock comes in as an argument, so the same data always draws the same way."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import msgspec
from rich.cells import cell_len
from rich.console import Group, RenderableType
from rich.text import Text

from dagnats.api.client import PendingApproval, RunSummary
from dagnats.api.views import age, approval_summary, event_line, no_worker_text
from dagnats.core.events import Event, StepLog
from dagnats.core.state import RunState, StepState, Turn
from tui.theme import RUN_GLYPH, RUN_STYLE, status_text

# Columns of the runs table: (title, width). The workflow column takes what is left.
RUN_COLUMNS = [("", 1), ("RUN", 21), ("WORKFLOW", 0), ("STATUS", 11), ("STEPS", 7), ("AGE", 5)]
WAITING_MARK = "⚑"


def fit(text: str, width: int) -> str:
    """Cut to `width` cells with an ellipsis, or pad to it."""
    if cell_len(text) > width:
        while cell_len(text) > width - 1:
            text = text[:-1]
        text += "…"
    return text + " " * (width - cell_len(text))


def _widths(total: int) -> list[int]:
    fixed = sum(w for _, w in RUN_COLUMNS) + len(RUN_COLUMNS) - 1
    return [w or max(8, total - fixed) for _, w in RUN_COLUMNS]


def runs_header(total: int) -> Text:
    cells = [fit(title, w) for (title, _), w in zip(RUN_COLUMNS, _widths(total))]
    return Text(" ".join(cells), style="bold")


def run_row(s: RunSummary, now: float, total: int) -> Text:
    w = _widths(total)
    text = Text()
    text.append(fit(WAITING_MARK if s.approvals else "", w[0]), style="bold magenta")
    text.append(" ")
    text.append(fit(s.run_id, w[1]))
    text.append(" ")
    text.append(fit(s.workflow, w[2]), style="bold")
    text.append(" ")
    glyph = RUN_GLYPH.get(s.status, "?")
    text.append(fit(f"{glyph} {s.status}", w[3]), style=RUN_STYLE.get(s.status, ""))
    text.append(" ")
    text.append(fit(f"{s.steps_done}/{s.steps_total}", w[4]))
    text.append(" ")
    text.append(fit(age(s.created_at, now), w[5]), style="dim")
    return text


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def pretty(value: Any, limit: int | None = 4000) -> str:
    if value is msgspec.UNSET:
        return "-"
    try:
        text = json.dumps(msgspec.to_builtins(value), indent=2, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    if limit is None or len(text) <= limit:
        return text
    return text[:limit] + f"\n… ({len(text) - limit} more characters)"


def run_header(state: RunState, now: float) -> Text:
    text = Text()
    text.append(f"{state.run_id} ", style="bold")
    text.append(f"{state.workflow}@{state.version}  ")
    text.append_text(status_text(state.status, run=True))
    done, total = state.progress()
    text.append(f"  {done}/{total} steps  started {age(state.created_at, now)} ago", style="dim")
    if state.error:
        text.append(f"\n{state.error}", style="red")
    return text


def step_details(
    state: RunState,
    sid: str | None,
    events: list[tuple[int, Event]],
    now: float,
    no_worker: str | None = None,  # the task, when the step is queued and no live worker serves it
) -> RenderableType:
    if sid is None or sid not in state.steps:
        return Text("no step selected", style="dim")
    step = state.steps[sid]
    sdef = state.step_def(sid)
    kind = sdef.type if sdef.type != "task" else f"task {sdef.task}"
    head = Text()
    head.append(f"{sid}", style="bold")
    head.append(f"  {kind}  ")
    head.append_text(status_text(step.status))
    unserved = no_worker if step.status == "queued" else None
    if unserved:
        head.append(no_worker_text(unserved).removeprefix("queued"), style="bold red")
    head.append(f"  attempt {step.attempts}" if step.attempts else "", style="dim")
    lines: list[RenderableType] = [head, _timings(step, now)]
    if unserved:
        lines.append(Text("start one with: dagnats worker MODULE:ATTR", style="red"))
    if step.error:
        lines.append(Text(f"error: {step.error}", style="red"))
    pending = [a for a in state.pending_approvals() if a.step_id == sid]
    for a in pending:
        lines.append(
            Text(f"{WAITING_MARK} waiting for you ({a.kind}): {approval_summary(a)}", style="magenta")
        )
    if step.child_run_id:
        lines.append(Text(f"child run: {step.child_run_id}", style="cyan"))
    lines.append(Text("input", style="bold underline"))
    lines.append(Text(pretty(step.input)))
    if step.status in ("completed", "skipped") or step.output is not None:
        lines.append(Text("output", style="bold underline"))
        lines.append(Text(pretty(step.output)))
    logs = [e for _, e in events if isinstance(e, StepLog) and e.step_id == sid]
    if logs:
        lines.append(Text("logs", style="bold underline"))
        for e in logs[-50:]:
            lines.append(Text(f"{when(e.at)[11:]} [{e.attempt}] {e.message}"))
    return Group(*lines)


def _timings(step: StepState, now: float) -> Text:
    parts = []
    if step.queued_at:
        parts.append(f"queued {when(step.queued_at)[11:]}")
    if step.started_at:
        parts.append(f"started {when(step.started_at)[11:]}")
    if step.finished_at and step.started_at:
        parts.append(f"took {step.finished_at - step.started_at:.2f}s")
    elif step.started_at:
        parts.append(f"running {age(step.started_at, now)}")
    if step.retry_at:
        parts.append(f"retry at {when(step.retry_at)[11:]}")
    if step.waiting_until:
        parts.append(f"waits until {when(step.waiting_until)[11:]}")
    if step.waiting_signal:
        parts.append(f"waits for signal {step.waiting_signal!r}")
    return Text("  ".join(parts) or "not started", style="dim")


def transcript(state: RunState, sid: str | None, streaming: str = "") -> RenderableType:
    """An agent step's conversation: what the model said, the tools it called with their
    arguments, what they returned, and the tokens each turn used."""
    if sid is None or sid not in state.steps:
        return Text("select an agent_loop step in the graph", style="dim")
    sdef = state.step_def(sid)
    if sdef.type != "agent_loop":
        return Text(f"{sid} is a {sdef.type} step; transcripts belong to agent_loop steps", style="dim")
    step = state.steps[sid]
    parts: list[RenderableType] = []
    prompt = (step.input or {}).get("prompt") if isinstance(step.input, dict) else None
    cfg = sdef.config or {}
    parts.append(Text(f"{sid}: {len(step.turns)} turns, {_tokens(step.turns)}", style="bold"))
    if isinstance(cfg, dict) and cfg.get("prompt"):
        parts.append(Text(f"task: {cfg['prompt']}", style="dim"))
    elif prompt:
        parts.append(Text(f"task: {prompt}", style="dim"))
    approvals = {  # this step's attempt only: call ids repeat across steps and retries
        a.details.get("call_id"): a
        for a in state.approvals.values()
        if isinstance(a.details, dict) and a.step_id == sid and a.attempt == step.attempts
    }
    for i, turn in enumerate(step.turns):
        parts.append(_turn(i, turn, approvals))
    if streaming:
        parts.append(Text(f"turn {len(step.turns)} (streaming)", style="bold cyan"))
        parts.append(Text(streaming, style="italic"))
    elif step.status == "running":
        parts.append(Text(f"turn {len(step.turns)}: waiting for the model…", style="dim"))
    if step.status == "completed" and isinstance(step.output, dict) and "text" in step.output:
        parts.append(Text("final answer", style="bold green"))
        parts.append(Text(str(step.output["text"])))
    if step.error:
        parts.append(Text(f"error: {step.error}", style="red"))
    return Group(*parts)


def _tokens(turns: list[Turn]) -> str:
    used_in = sum(t.usage.get("input_tokens", 0) for t in turns)
    used_out = sum(t.usage.get("output_tokens", 0) for t in turns)
    return f"{used_in} tokens in, {used_out} out"


def _turn(i: int, turn: Turn, approvals: dict[Any, Any]) -> RenderableType:
    head = Text(f"turn {i}", style="bold cyan")
    if turn.usage:
        head.append(
            f"  {turn.usage.get('input_tokens', 0)} in / {turn.usage.get('output_tokens', 0)} out",
            style="dim",
        )
    parts: list[RenderableType] = [head]
    if turn.text:
        parts.append(Text(turn.text))
    for call in turn.tool_calls:
        args = json.dumps(call.get("arguments"), ensure_ascii=False)
        line = Text("  → ", style="yellow")
        line.append(f"{call.get('name')}", style="bold yellow")
        line.append(f"({args if len(args) < 400 else args[:400] + '…'})")
        a = approvals.get(call.get("id"))
        if a is not None and a.status != "approved":
            line.append(f"  [{a.status}{' by ' + a.by if a.by else ''}]", style="magenta")
        parts.append(line)
        result = turn.results.get(call.get("id", ""))
        if result is not None:
            body = result.result if len(result.result) < 600 else result.result[:600] + "…"
            parts.append(Text(f"  ← {body}", style="red" if result.is_error else "green"))
        else:
            parts.append(Text("  ← (no result yet)", style="dim"))
    return Group(*parts)


def approval_line(p: PendingApproval, now: float, width: int) -> Text:
    a = p.approval
    text = Text()
    text.append(fit(a.kind, 9), style="magenta")
    text.append(" ")
    text.append(fit(f"{p.workflow}/{a.step_id}", 24), style="bold")
    text.append(" ")
    text.append(fit(age(a.requested_at, now), 4), style="dim")
    text.append(" ")
    text.append(
        fit(approval_summary(a).replace("\n", " "), max(10, width - 40)),
        style="dim" if a.kind == "step" else "",
    )
    return text


def approval_details(p: PendingApproval) -> RenderableType:
    """Exactly what is asked: the prompt, the tool call with its arguments, or the plan."""
    a = p.approval
    head = Text()
    head.append(f"{p.workflow} ", style="bold")
    head.append(f"run {p.run_id} step {a.step_id} ({a.kind})", style="dim")
    parts: list[RenderableType] = [head]
    if a.expires_at:
        parts.append(Text(f"expires {when(a.expires_at)}", style="dim"))
    if a.kind == "tool_call" and isinstance(a.details, dict):
        parts.append(Text(f"tool {a.details.get('name')} with arguments:", style="bold yellow"))
        parts.append(Text(pretty(a.details.get("arguments"), limit=None)))  # all of it: it is approved
    elif a.kind == "plan" and isinstance(a.details, dict):
        from tui.dag import layout, nodes_of_plan, render

        parts.append(Text(f"proposed plan of {len(a.details.get('steps', []))} steps:", style="bold"))
        parts.append(Text("\n").join(render(layout(nodes_of_plan(a.details)))))
        parts.append(Text(pretty(a.details), style="dim"))
    if a.prompt:
        parts.append(Text(a.prompt))
    return Group(*parts)


def event_text(seq: int, event: Event) -> Text:
    line = event_line(seq, event)
    kind = type(event).__name__
    style = (
        "red"
        if "Failed" in kind
        else "green"
        if "Completed" in kind
        else "magenta"
        if "Approval" in kind
        else ""
    )
    return Text(line, style=style, no_wrap=True)


def lineage(state: RunState, runs: dict[str, RunSummary]) -> list[tuple[str, str]]:
    """Related runs as (label, run_id): parent, children, continue-as-new links, forks."""
    out = _recorded_relatives(state)
    known = {rid for _, rid in out}
    for s in sorted(runs.values(), key=lambda s: s.created_at):
        if s.run_id in known:
            continue
        if s.forked_from == state.run_id:
            out.append(("fork", s.run_id))
        elif s.parent_run_id == state.run_id:
            out.append(("child", s.run_id))
    return out


def _recorded_relatives(state: RunState) -> list[tuple[str, str]]:
    """The related runs the run's own history names (forks and children found later are in
    the run list)."""
    root = state.root_run_id if state.root_run_id != state.run_id and not state.parent else None
    links = [
        (
            f"parent (step {state.parent.step_id})" if state.parent else "",
            state.parent.run_id if state.parent else None,
        ),
        ("continued from", state.continued_from),
        ("continued as", state.continued_to),
        (f"forked from (at step {state.fork_step})", state.forked_from),
        ("root", root),
    ]
    out = [(label, rid) for label, rid in links if rid]
    out += [
        (f"child of step {sid}", step.child_run_id) for sid, step in state.steps.items() if step.child_run_id
    ]
    return out
