"""`dagnats demo`'s content: the seeded runs reach the states the console is meant to show."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from dagnats.app.demo import demo_workflows, seed
from dagnats.core.definition import parse_definition

PACE = 0.05
STEP_TYPES = {
    "task",
    "sleep",
    "wait_for_event",
    "sub_workflow",
    "map",
    "approval",
    "agent_loop",
    "planner",
    "continue_as_new",
}


async def poll(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


def test_demo_workflows_validate_and_use_every_step_type(tmp_path: Path) -> None:
    workflows = demo_workflows(tmp_path)
    names = [wf.name for wf in workflows]
    assert len(names) == len(set(names))
    for wf in workflows:  # each survives a round trip through the strict parser
        assert parse_definition(msgspec.to_builtins(wf)) == wf
    assert {step.type for wf in workflows for step in wf.steps} == STEP_TYPES
    assert {step.task for wf in workflows for step in wf.steps} >= {"echo", "shell"}
    release = next(wf for wf in workflows if wf.name == "release")
    assert len(release.steps) >= 8
    slow, fast = demo_workflows(tmp_path), demo_workflows(tmp_path, pace=0.5)
    assert slow != fast  # pace scales the sleeps


async def test_seeded_runs_reach_the_states_the_console_shows(stack, tmp_path: Path) -> None:
    await stack.start()
    client = stack.client
    workdir = tmp_path / "demo"
    workdir.mkdir()
    run_ids = await seed(client, workdir, pace=PACE)
    assert 10 <= len(run_ids) <= 15
    registered = {w.name for w in await client.workflows()}
    assert registered == {wf.name for wf in demo_workflows(workdir)}

    runs: dict[str, list[str]] = {}
    for run_id in run_ids:
        runs.setdefault((await client.run(run_id)).workflow, []).append(run_id)
    (coding,), (assistant,), (triage,), (deploy,) = (
        runs["coding"],
        runs["assistant"],
        runs["triage"],
        runs["deploy"],
    )

    # One inbox with every kind of approval.
    async def pending() -> dict[tuple[str, str], Any]:
        found = {(p.workflow, p.approval.kind): p for p in await client.approvals()}
        wanted = {("deploy", "step"), ("coding", "step"), ("assistant", "tool_call"), ("triage", "plan")}
        return found if wanted <= found.keys() else {}

    try:
        inbox = await poll(pending, "the approvals of kinds step, tool_call and plan")
    except AssertionError as exc:  # say where each of the four runs is
        where = {}
        for rid in (coding, assistant, triage, deploy):
            st = await client.run(rid)
            where[st.workflow] = (st.status, {k: v.status for k, v in st.steps.items()}, st.error)
        raise AssertionError(f"{exc}: {where}") from None
    tool_call = inbox["assistant", "tool_call"].approval
    assert tool_call.details["name"] == "run_command"
    assert tool_call.details["arguments"]["command"].startswith("wc -l README.md TODO.md")
    plan = inbox["triage", "plan"].approval
    assert [s["id"] for s in plan.details["steps"]] == ["logs", "metrics", "wait", "summary"]
    assert inbox["coding", "step"].approval.step_id == "ship"
    assert "add() returned a - b" in inbox["coding", "step"].approval.prompt
    assert inbox["deploy", "step"].approval.prompt == "Promote 2.4.0 to production? The canary looks healthy."
    for run_id in (coding, assistant, triage, deploy):
        assert (await client.run(run_id)).status == "waiting"

    # The coding run's planner ran its plan and the agent fixed the bug before asking to ship.
    state = await client.run(coding)
    assert state.steps["plan"].status == "completed"
    assert state.steps["plan.inspect"].output["stdout"] == "def add(a, b):\n    return a - b\n"
    assert state.steps["test"].status == "completed"
    assert (workdir / "calc-repo" / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"

    # The wait_for_event run waits for its signal.
    (listener,) = runs["listener"]
    state = await poll(
        lambda: _with_status(client, listener, "waiting"), "the listener to wait for its signal"
    )
    assert state.steps["window"].status == "waiting"

    # The failing run fails with its error, after its retry.
    (backup,) = runs["backup"]
    state = await poll(lambda: _ended(client, backup), "the backup run to fail")
    assert state.status == "failed"
    assert state.error == "step upload failed: exit code 3: upload failed: bucket is read-only"
    assert state.steps["upload"].attempts == 2

    # The quick and the long runs complete.
    for name in ("hello", "release", "fanout", "nightly"):
        for run_id in runs[name]:
            state = await poll(lambda r=run_id: _ended(client, r), f"the {name} run to end")
            assert state.status == "completed", (name, state.error)
    (fanout,) = runs["fanout"]
    state = await client.run(fanout)
    assert state.output["stdout"] == "10\n"
    assert {sid for sid in state.steps if sid.startswith("process[")} == {f"process[{i}]" for i in range(10)}
    (nightly,) = runs["nightly"]
    assert (await client.run(nightly)).output == {"greeting": "HELLO, NIGHTLY\n", "shards": "10\n"}
    release = await client.run(runs["release"][0])
    assert release.output["published"] == "published 2.4.0\n"

    # continue_as_new: 3 -> 2 -> 1 -> 0, two runs continued and the last one lifted off.
    async def chain() -> list[Any]:
        states = [await client.run(s.run_id) for s in await client.runs(workflow="countdown")]
        return states if sorted(s.status for s in states) == ["completed", "continued", "continued"] else []

    states = sorted(await poll(chain, "the countdown chain"), key=lambda s: s.generation)
    assert [s.generation for s in states] == [1, 2, 3]
    assert states[0].run_id == runs["countdown"][0]
    assert states[1].continued_from == states[0].run_id and states[0].continued_to == states[1].run_id
    assert states[2].output == {"again": None, "liftoff": "liftoff"}

    # An operator approves the exact tool call: the agent runs it and finishes.
    await client.decide(assistant, "agent", approved=True, comment="fine")
    state = await poll(lambda: _ended(client, assistant), "the assistant to finish")
    assert state.status == "completed", state.error
    assert state.output["text"] == "Done: TODO.md lists 3 open items next to the README."
    results = [r.result for turn in state.steps["agent"].turns for r in turn.results.values()]
    assert results[-1].startswith("exit code 0\n") and results[-1].rstrip().endswith("3")
    assert (workdir / "assistant" / "TODO.md").exists()

    # The other waiting runs finish once an operator acts.
    await client.decide(triage, "plan", approved=True)
    await client.decide(coding, "ship", approved=True, comment="ship it")
    await client.decide(deploy, "approve", approved=True)
    await client.signal(listener, "deploy-window", {"slot": "now"})
    for run_id in (triage, coding, deploy, listener):
        state = await poll(lambda r=run_id: _ended(client, r), f"run {run_id} to end")
        assert state.status == "completed", (state.workflow, state.error)
    assert (await client.run(triage)).output["findings"]["metrics"].startswith("p99 412ms")
    assert "fix: add() subtracts" in (await client.run(coding)).output["stdout"]


async def _with_status(client: Any, run_id: str, status: str) -> Any:
    state = await client.run(run_id)
    return state if state.status == status else None


async def _ended(client: Any, run_id: str) -> Any:
    state = await client.run(run_id)
    return state if state.terminal else None
