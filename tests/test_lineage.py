"""continue_as_new chains and forks: lineage, bounds, and what runs again."""

from __future__ import annotations

import asyncio
from collections import Counter

from dagnats import TaskContext, Worker

from conftest import dagnats, dagnats_json, wait_until

COUNTDOWN = {
    "name": "countdown",
    "steps": [
        {"id": "dec", "task": "dec"},
        {
            "id": "again",
            "type": "continue_as_new",
            "depends_on": ["dec"],
            "when": {"ref": "steps.dec.output.n", "op": ">", "value": 0},
            "config": {"input": "${steps.dec.output}", "max_generations": 5},
        },
    ],
}


def _dec_worker(calls: list[int]) -> Worker:
    worker = Worker()

    @worker.task("dec")
    async def dec(ctx: TaskContext):
        calls.append(ctx.input["n"])
        return {"n": ctx.input["n"] - 1}

    return worker


async def _follow_chain(client, run_id: str) -> list:
    chain = [await asyncio.wait_for(client.wait(run_id), 10)]
    while chain[-1].continued_to:
        chain.append(await asyncio.wait_for(client.wait(chain[-1].continued_to), 10))
    return chain


async def test_continue_as_new_chain_carries_state_and_lineage(stack):
    calls: list[int] = []
    await stack.start(_dec_worker(calls))
    await stack.register(COUNTDOWN)
    first = await stack.client.start("countdown", {"n": 3})
    chain = await _follow_chain(stack.client, first)
    assert [s.status for s in chain] == ["continued", "continued", "completed"]
    assert [s.input for s in chain] == [{"n": 3}, {"n": 2}, {"n": 1}]
    assert calls == [3, 2, 1]
    assert [s.generation for s in chain] == [1, 2, 3]
    assert chain[0].continued_from is None and chain[1].continued_from == first
    assert chain[0].continued_to == chain[1].run_id and chain[2].continued_to is None
    assert {s.root_run_id for s in chain} == {first}
    assert chain[0].steps["again"].output == {"continued_to": chain[1].run_id}
    assert chain[2].steps["again"].status == "skipped" and chain[2].steps["dec"].output == {"n": 0}


async def test_max_generations_bounds_the_chain(stack):
    calls: list[int] = []
    await stack.start(_dec_worker(calls))
    await stack.register(COUNTDOWN)
    chain = await _follow_chain(stack.client, await stack.client.start("countdown", {"n": 50}))
    assert len(chain) == 5 and [s.status for s in chain[:4]] == ["continued"] * 4
    assert chain[-1].status == "failed"
    assert chain[-1].error == "step again failed: continue_as_new reached max_generations (5)"


async def test_continue_as_new_into_another_workflow_checks_its_input(stack):
    await stack.start()
    await stack.register(
        {
            "name": "strict",
            "input_schema": {"type": "object", "required": ["x"]},
            "steps": [{"id": "a", "task": "echo"}],
        }
    )
    await stack.register(
        {
            "name": "hand-over",
            "steps": [
                {
                    "id": "go",
                    "type": "continue_as_new",
                    "config": {"workflow": "strict", "input": {"x": "${input.x}"}},
                }
            ],
        }
    )
    chain = await _follow_chain(stack.client, await stack.client.start("hand-over", {"x": 7}))
    assert [(s.workflow, s.status) for s in chain] == [("hand-over", "continued"), ("strict", "completed")]
    assert chain[1].output == {"x": 7}
    await stack.register(
        {
            "name": "bad-hand-over",
            "steps": [
                {"id": "go", "type": "continue_as_new", "config": {"workflow": "strict", "input": {"y": 1}}}
            ],
        }
    )
    bad = await stack.run_to_end("bad-hand-over")
    assert bad.status == "failed" and "missing required field 'x'" in bad.error and bad.continued_to is None


async def test_fork_from_a_middle_step_reuses_upstream_outputs(stack):
    calls: Counter[str] = Counter()
    worker = Worker()

    @worker.task("count")
    async def count(ctx: TaskContext):
        calls[ctx.step_id] += 1
        return {"step": ctx.step_id, "got": ctx.input}

    await stack.start(worker)
    await stack.register(
        {
            "name": "abc",
            "steps": [
                {"id": "a", "task": "count", "input": "${input.seed}"},
                {"id": "side", "task": "count", "input": "side"},
                {"id": "b", "task": "count", "depends_on": ["a"]},
                {"id": "c", "task": "count", "depends_on": ["b", "side"]},
            ],
        }
    )
    original = await stack.run_to_end("abc", {"seed": 1})
    before = await stack.client.events(original.run_id)
    assert calls == {"a": 1, "side": 1, "b": 1, "c": 1}

    fork_id = await stack.client.fork(original.run_id, "b", input={"patched": True})
    forked = await asyncio.wait_for(stack.client.wait(fork_id), 10)
    assert forked.status == "completed"
    assert calls == {"a": 1, "side": 1, "b": 2, "c": 2}  # upstream kept, b and downstream ran again
    assert forked.steps["a"].output == original.steps["a"].output and forked.steps["a"].attempts == 0
    assert forked.steps["b"].output == {"step": "b", "got": {"patched": True}}
    assert forked.steps["c"].input["b"] == {"step": "b", "got": {"patched": True}}
    assert forked.forked_from == original.run_id and forked.fork_step == "b"
    assert forked.version == original.version and forked.input == original.input
    assert await stack.client.events(original.run_id) == before  # the original is untouched


def test_fork_from_the_cli(serve, data_dir, tmp_path):
    wf = tmp_path / "two.yaml"
    wf.write_text(
        f"name: two\nsteps:\n  - {{id: a, task: shell, config: {{command: 'echo x >> {tmp_path}/a'}}}}\n"
        f"  - {{id: b, task: shell, depends_on: [a], config: {{command: 'echo y >> {tmp_path}/b'}}}}\n"
    )
    assert dagnats("workflow", "register", str(wf), data_dir=data_dir).returncode == 0
    run_id = dagnats_json("run", "start", "two", "--wait", data_dir=data_dir)["run_id"]
    forked = dagnats_json("run", "fork", run_id, "--from", "b", data_dir=data_dir)["run_id"]
    wait_until(
        lambda: dagnats_json("run", "show", forked, data_dir=data_dir)["status"] == "completed", what="fork"
    )
    shown = dagnats_json("run", "show", forked, data_dir=data_dir)
    assert shown["lineage"]["forked_from"] == run_id and shown["lineage"]["fork_step"] == "b"
    assert (tmp_path / "a").read_text() == "x\n" and (tmp_path / "b").read_text() == "y\ny\n"
    bad = dagnats("run", "fork", run_id, "--from", "zzz", data_dir=data_dir)
    assert bad.returncode == 1 and "has no step 'zzz'" in bad.stderr
    turn = dagnats("run", "fork", run_id, "--from", "b", "--turn", "2", data_dir=data_dir)
    assert turn.returncode == 1 and "--turn applies to agent_loop steps" in turn.stderr


async def test_a_parent_hears_from_the_last_run_of_a_childs_chain(stack):
    calls: list[int] = []
    await stack.start(_dec_worker(calls))
    await stack.register(COUNTDOWN)
    await stack.register(
        {
            "name": "parent",
            "steps": [
                {
                    "id": "count",
                    "type": "sub_workflow",
                    "config": {"workflow": "countdown"},
                    "input": {"n": 3},
                }
            ],
        }
    )
    state = await stack.run_to_end("parent", timeout=20)
    assert state.status == "completed", state.error
    assert calls == [3, 2, 1]
    assert (
        state.steps["count"].child_run_id
        == (await stack.client.run(state.steps["count"].child_run_id)).chain_start
    )
