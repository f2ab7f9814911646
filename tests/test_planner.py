"""Planner steps: a plan from a task or a model runs namespaced in the same run, checked first."""

from __future__ import annotations

import asyncio

import pytest

from dagnats import TaskContext, Worker
from dagnats.core.state import approval_digest
from dagnats.errors import UserError

GOOD_PLAN = {
    "steps": [
        {"id": "greet", "task": "echo", "input": "hello"},
        {
            "id": "shout",
            "task": "shell",
            "depends_on": ["greet"],
            "config": {"command": "echo ${steps.greet.output} | tr a-z A-Z"},
        },
        {"id": "side", "task": "echo"},
    ]
}


def planner_worker(plan) -> Worker:
    worker = Worker()

    @worker.task("make-plan")
    async def make_plan(ctx: TaskContext):
        return plan

    return worker


def flow(planner_config: dict) -> dict:
    return {
        "name": "planned",
        "steps": [
            {"id": "plan", "type": "planner", "input": {"goal": "${input.goal}"}, "config": planner_config},
            {"id": "after", "task": "echo", "depends_on": ["plan"]},
        ],
    }


async def test_a_task_planner_runs_its_plan_namespaced(stack):
    await stack.start(planner_worker(GOOD_PLAN))
    await stack.register(flow({"task": "make-plan", "allowed_tasks": ["echo", "shell"]}))
    state = await stack.run_to_end("planned", {"goal": "greet"})
    assert state.status == "completed", state.error
    assert state.steps["plan"].plan_steps == ["plan.greet", "plan.shout", "plan.side"]
    assert state.steps["plan.shout"].output["stdout"] == "HELLO\n"
    assert state.steps["plan.side"].input == {"goal": "greet"}  # a plan's first steps get the planner's input
    expected = {"shout": state.steps["plan.shout"].output, "side": {"goal": "greet"}}
    assert state.steps["plan"].output == expected and state.output == expected


async def test_a_model_writes_the_plan_through_a_tool(stack):
    script = [{"text": "Here is the plan.", "tool_calls": [{"name": "submit_plan", "arguments": GOOD_PLAN}]}]
    await stack.start()
    await stack.register(flow({"provider": "scripted", "script": script, "allowed_tasks": ["echo", "shell"]}))
    state = await stack.run_to_end("planned", {"goal": "greet"})
    assert state.status == "completed", state.error
    assert state.steps["plan.shout"].output["stdout"] == "HELLO\n"


@pytest.mark.parametrize(
    ("plan", "reason"),
    [
        (
            {
                "steps": [
                    {"id": "a", "task": "echo", "depends_on": ["b"]},
                    {"id": "b", "task": "echo", "depends_on": ["a"]},
                ]
            },
            "invalid plan: steps[0]: dependency cycle a -> b -> a",
        ),
        (
            {"steps": [{"id": "a", "task": "rm-everything"}]},
            "invalid plan: steps[0].task: 'rm-everything' is not allowed",
        ),
        (
            {"steps": [{"id": f"s{i}", "task": "echo"} for i in range(4)]},
            "the plan has 4 steps, more than max_steps (3)",
        ),
        (
            {"steps": [{"id": "a", "task": "echo", "depends_on": ["outside"]}]},
            "invalid plan: steps[0].depends_on[0]: unknown step 'outside'",
        ),
        (
            {"steps": [{"id": "z", "type": "sleep", "config": {"duration": "1s"}}]},
            "a plan may only contain task steps",
        ),
        ({"oops": []}, 'a plan must be an object {"steps": [...]}'),
    ],
)
async def test_invalid_plans_fail_the_planner_with_the_reason(stack, plan, reason):
    await stack.start(planner_worker(plan))
    await stack.register(flow({"task": "make-plan", "allowed_tasks": ["echo"], "max_steps": 3}))
    state = await stack.run_to_end("planned", {"goal": "x"})
    assert state.status == "failed"
    assert reason in state.steps["plan"].error
    assert state.steps["after"].status == "cancelled" and not state.dynamic


async def test_a_reviewed_plan_waits_for_an_operator(stack):
    await stack.start(planner_worker(GOOD_PLAN))
    await stack.register(flow({"task": "make-plan", "review": True}))
    run_id = await stack.client.start("planned", {"goal": "g"})
    for _ in range(200):
        pending = await stack.client.approvals()
        if pending:
            break
        await asyncio.sleep(0.05)
    (item,) = pending
    assert item.approval.kind == "plan" and item.approval.details == GOOD_PLAN
    state = await stack.client.run(run_id)
    assert state.status == "waiting" and not state.dynamic  # nothing of the plan exists yet
    other = approval_digest("plan", item.approval.prompt, {"steps": GOOD_PLAN["steps"][:1]})
    with pytest.raises(
        UserError, match=r"approval plan\.plan\.1 changed since you saw it: it now asks 'plan of 3 steps'"
    ):
        await stack.client.decide(run_id, "plan", approved=True, digest=other)  # a review of another plan
    await stack.client.decide(run_id, "plan", approved=True, comment="looks right", digest=item.digest)
    state = await asyncio.wait_for(stack.client.wait(run_id), 10)
    assert state.status == "completed" and state.steps["plan.shout"].status == "completed"


async def test_a_denied_plan_fails_the_planner(stack):
    await stack.start(planner_worker(GOOD_PLAN))
    await stack.register(flow({"task": "make-plan", "review": True}))
    run_id = await stack.client.start("planned", {"goal": "g"})
    for _ in range(200):
        if await stack.client.approvals():
            break
        await asyncio.sleep(0.05)
    await stack.client.decide(run_id, "plan", approved=False, comment="too risky")
    state = await asyncio.wait_for(stack.client.wait(run_id), 10)
    assert state.status == "failed" and state.steps["plan"].error.endswith(": too risky")
    assert state.steps["plan"].error.startswith("plan denied by ") and not state.dynamic
