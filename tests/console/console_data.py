"""Deterministic console data: runs built by playing fixed events through the engine's own
`decide`, with fixed ids and times, so snapshots show the same screen on every machine."""

from __future__ import annotations

from typing import Any

from dagnats.api.client import PendingApproval
from dagnats.core.actions import AppendEvent
from dagnats.core.decide import decide
from dagnats.core.definition import parse_definition
from dagnats.core.events import (
    AgentTurnRecorded,
    ApprovalRequested,
    Event,
    RunStarted,
    StepCompleted,
    StepFailed,
    StepLog,
    StepStarted,
    ToolResultRecorded,
)
from dagnats.core.state import RunState
from dagnats.nats.store import RunSummary

T0 = 1_790_000_000.0  # 2026-09-21, a fixed "now" for every age on screen
NOW = T0 + 600


class Sim:
    """Plays the engine: records an event, then whatever `decide` appends after it."""

    def __init__(self, definition: dict[str, Any], run_id: str, input: Any = None, at: float = T0) -> None:
        wf = parse_definition(definition)
        self.state: RunState | None = None
        self.events: list[tuple[int, Event]] = []
        self.now = at
        self.send(RunStarted(at=at, run_id=run_id, workflow=wf.name, version=1, definition=wf, input=input))

    def send(self, event: Event) -> Sim:
        pending = [event]
        while pending:
            ev = pending.pop(0)
            self.state, actions = decide(self.state, ev)
            self.events.append((len(self.events) + 1, ev))
            appends = [a.event for a in actions if isinstance(a, AppendEvent)]
            pending = appends[:1] + pending
        return self

    def tick(self, seconds: float = 1.0) -> float:
        self.now += seconds
        return self.now

    @property
    def st(self) -> RunState:
        assert self.state is not None
        return self.state

    def start(self, sid: str) -> Sim:
        return self.send(StepStarted(at=self.tick(), step_id=sid, attempt=self.st.steps[sid].attempts))

    def done(self, sid: str, output: Any = None) -> Sim:
        self.start(sid)
        return self.send(
            StepCompleted(at=self.tick(3), step_id=sid, attempt=self.st.steps[sid].attempts, output=output)
        )

    def fail(self, sid: str, error: str, retryable: bool = True) -> Sim:
        self.start(sid)
        attempt = self.st.steps[sid].attempts
        return self.send(
            StepFailed(at=self.tick(2), step_id=sid, attempt=attempt, error=error, retryable=retryable)
        )


RELEASE = {
    "name": "release",
    "description": "test, build and publish a release",
    "steps": [
        {"id": "checkout", "task": "shell", "config": {"command": "git clone repo"}},
        {"id": "lint", "task": "shell", "depends_on": ["checkout"], "config": {"command": "make check"}},
        {"id": "unit", "task": "shell", "depends_on": ["checkout"], "config": {"command": "make check"}},
        {
            "id": "integration",
            "task": "shell",
            "depends_on": ["checkout"],
            "config": {"command": "make integration"},
            "retry": {"max_attempts": 3, "backoff": "fixed", "initial": "30s"},
        },
        {
            "id": "build",
            "task": "shell",
            "depends_on": ["lint", "unit", "integration"],
            "config": {"command": "make"},
        },
        {"id": "package", "task": "shell", "depends_on": ["build"], "config": {"command": "make dist"}},
        {"id": "docs", "task": "shell", "depends_on": ["build"], "config": {"command": "make dist"}},
        {
            "id": "publish",
            "type": "approval",
            "depends_on": ["package", "docs"],
            "config": {"prompt": "Publish?"},
        },
        {"id": "announce", "task": "echo", "depends_on": ["publish"]},
    ],
}


def release_run() -> Sim:
    """Mid-flight: lint done, unit running, integration failed once and waits to retry."""
    sim = Sim(RELEASE, "0190a1b2c3d4e5f6release", input={"version": "2.4.0"})
    sim.done("checkout", {"sha": "9f1c2e7", "branch": "main"})
    sim.done("lint", {"warnings": 0})
    sim.start("unit")
    sim.send(StepLog(at=sim.tick(), step_id="unit", attempt=1, message="collected 412 tests"))
    sim.fail("integration", "exit 1: connection refused (db not ready)")
    return sim


CODING = {
    "name": "coding",
    "description": "plan a fix, let an agent edit the repository, test, ship",
    "steps": [
        {"id": "setup", "task": "shell", "config": {"command": "git init"}},
        {
            "id": "fix",
            "type": "agent_loop",
            "depends_on": ["setup"],
            "config": {
                "provider": "scripted",
                "prompt": "Fix: add() subtracts",
                "tools": ["read_file", "write_file", "run_command"],
                "approve_tools": ["run_command"],
                "script": [{"text": "done"}],
            },
        },
        {"id": "test", "task": "shell", "depends_on": ["fix"], "config": {"command": "make test"}},
        {"id": "ship", "type": "approval", "depends_on": ["test"], "config": {"prompt": "Ship it?"}},
    ],
}


def coding_run() -> Sim:
    """An agent three turns in, its last tool call waiting for an operator."""
    sim = Sim(CODING, "0190a1b2c3d4e5f6coding", input={"repo": "/srv/calc", "issue": "add() subtracts"})
    sim.done("setup", {"head": "a1b2c3d add calc"})
    sim.start("fix")
    calls = [
        (
            "Let me read the code first.",
            "read_file",
            {"path": "calc.py"},
            "def add(a, b):\n    return a - b\n",
        ),
        (
            "add() subtracts; I will fix it.",
            "write_file",
            {"path": "calc.py", "content": "def add(a, b):\n    return a + b\n"},
            "wrote 32 bytes to calc.py",
        ),
    ]
    for turn, (text, name, args, result) in enumerate(calls):
        call_id = f"call_{turn}"
        sim.send(
            AgentTurnRecorded(
                at=sim.tick(4),
                step_id="fix",
                attempt=1,
                turn=turn,
                text=text,
                tool_calls=[{"id": call_id, "name": name, "arguments": args}],
                usage={"input_tokens": 812 + 300 * turn, "output_tokens": 64 + turn},
                stop_reason="tool_use",
            )
        )
        sim.send(
            ToolResultRecorded(
                at=sim.tick(), step_id="fix", attempt=1, turn=turn, call_id=call_id, name=name, result=result
            )
        )
    call = {"id": "call_2", "name": "run_command", "arguments": {"command": "python3 -m unittest -q"}}
    sim.send(
        AgentTurnRecorded(
            at=sim.tick(4),
            step_id="fix",
            attempt=1,
            turn=2,
            text="Now I run the tests.",
            tool_calls=[call],
            usage={"input_tokens": 1490, "output_tokens": 41},
            stop_reason="tool_use",
        )
    )
    sim.send(
        ApprovalRequested(
            at=sim.tick(),
            approval_id="fix.tool.call_2",
            step_id="fix",
            kind="tool_call",
            prompt="Allow run_command?",
            details={"name": "run_command", "arguments": call["arguments"], "call_id": "call_2"},
        )
    )
    return sim


PLANNED = {
    "name": "triage",
    "description": "a planner proposes the investigation, reviewed by a human",
    "steps": [
        {
            "id": "plan",
            "type": "planner",
            "config": {"task": "make-plan", "allowed_tasks": ["shell"], "max_steps": 6, "review": True},
        },
        {"id": "report", "task": "echo", "depends_on": ["plan"]},
    ],
}


def planner_run() -> Sim:
    sim = Sim(PLANNED, "0190a1b2c3d4e5f6triage", at=T0 + 60)
    plan = {
        "steps": [
            {"id": "reproduce", "task": "shell", "config": {"command": "make test"}},
            {
                "id": "bisect",
                "task": "shell",
                "depends_on": ["reproduce"],
                "config": {"command": "git bisect run make test"},
            },
            {
                "id": "logs",
                "task": "shell",
                "depends_on": ["reproduce"],
                "config": {"command": "tail -50 ci.log"},
            },
            {
                "id": "summarize",
                "task": "shell",
                "depends_on": ["bisect", "logs"],
                "config": {"command": "cat notes"},
            },
        ]
    }
    sim.done("plan", plan)
    return sim


WORKFLOWS = ["release", "coding", "triage", "nightly-etl", "hello", "index-docs"]
STATUSES = ["completed", "running", "failed", "waiting", "completed", "cancelled", "completed", "continued"]


def summaries(count: int = 40) -> list[RunSummary]:
    """A listing with every status; a few runs wait for an operator."""
    out = []
    for i in range(count):
        status = STATUSES[i % len(STATUSES)]
        total = 3 + i % 7
        done = total if status in ("completed", "continued") else (i * 3) % total
        out.append(
            RunSummary(
                run_id=f"0190{i:04d}{(i * 7919) % 65536:04x}abcd",
                workflow=WORKFLOWS[i % len(WORKFLOWS)],
                version=1 + i % 3,
                status=status,
                created_at=NOW - 37 * (i + 1) - (i * i) % 50,
                steps_done=done,
                steps_total=total,
                approvals=0,
                error="exit 2: tests failed" if status == "failed" else None,
            )
        )
    return out


def listing() -> list[RunSummary]:
    """The generated runs plus the four built above, whose approvals the inbox shows."""
    built = [
        RunSummary.of(sim.st)
        for sim in (release_run(), coding_run(), planner_run(), release_done_to_publish())
    ]
    return summaries() + built


def pending_approvals() -> list[PendingApproval]:
    out = []
    for sim in (coding_run(), planner_run(), release_done_to_publish()):
        state = sim.st
        out += [PendingApproval(state.run_id, state.workflow, a) for a in state.pending_approvals()]
    return out


def release_done_to_publish() -> Sim:
    sim = Sim(RELEASE, "0190a1b2c3d4e5f7release", input={"version": "2.3.9"}, at=T0 - 3000)
    for sid in ["checkout", "lint", "unit", "integration", "build", "package", "docs"]:
        sim.done(sid, {"ok": True})
    return sim
