"""Values over the NATS payload limit go to the JetStream object store (DESIGN §10, issue 13).

A value whose event would pass the 900 kB message limit is written to the object store
`dagnats_values` (named by its sha256) before the event that carries a reference to it; the
core folds references as opaque values; workers, the client and the CLI read them back.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
from pathlib import Path
from typing import Any

import msgspec
from big_worker import blob

from dagnats import TaskContext, Worker
from dagnats.api.client import Client
from dagnats.core.decide import replay
from dagnats.core.definition import parse_definition
from dagnats.core.events import RunStarted, StepCompleted, StepQueued, encode_event
from dagnats.core.values import MAX_VALUE_BYTES, is_ref, ref_of
from dagnats.ports import MAX_EVENT_BYTES, resolve_state
from dagnats.testing.store import MemoryStore

from conftest import ServeProcess, cli_env, dagnats, dagnats_json, wait_until

WORKER = ("--worker", "tests.big_worker:worker")


def _register(tmp: Path, data_dir: Path, name: str, steps: list[dict[str, Any]]) -> None:
    wf = tmp / f"{name}.json"
    wf.write_text(json.dumps({"name": name, "steps": steps}))
    proc = dagnats("workflow", "register", str(wf), data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr


def _raw_history(data_dir: Path, run_id: str) -> list[Any]:
    async def read() -> list[Any]:
        async with await Client.connect(data_dir=str(data_dir)) as client:
            return [e for _, e in await client.store.read_history(run_id)]

    return asyncio.run(read())


def _snapshot_state(data_dir: Path, run_id: str) -> Any:
    async def read() -> Any:
        async with await Client.connect(data_dir=str(data_dir)) as client:
            snap, _ = await client.store.load_snapshot(run_id)
            return snap

    return asyncio.run(read())


PIPE = [
    {"id": "make", "task": "big-make", "config": {"bytes": 5_000_000}},
    {"id": "relay", "task": "big-relay", "depends_on": ["make"], "input": "${steps.make.output}"},
]


def test_a_5mb_output_flows_to_the_next_step_and_run_output_prints_it(tmp_path, data_dir):
    serve = ServeProcess(data_dir, args=WORKER).start()
    try:
        _register(tmp_path, data_dir, "pipe", PIPE)
        started = dagnats_json("run", "start", "pipe", "--wait", data_dir=data_dir, timeout=120)
        run_id = started["run_id"]
        out = dagnats("run", "output", run_id, data_dir=data_dir)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == blob(5_000_000)  # relay got the value, not its reference
        history = _raw_history(data_dir, run_id)
        snap = _snapshot_state(data_dir, run_id)
    finally:
        serve.stop()
    made = next(e for e in history if isinstance(e, StepCompleted) and e.step_id == "make")
    expected = ref_of(msgspec.json.encode(blob(5_000_000)))
    assert made.output == expected  # the history holds the reference
    queued = next(e for e in history if isinstance(e, StepQueued) and e.step_id == "relay")
    assert queued.input == expected  # passed on whole: the same object, not a copy
    assert max(len(encode_event(e)) for e in history) < MAX_EVENT_BYTES
    assert snap.state is not None, "the snapshot holds references, so the whole state fits"
    assert snap.state.steps["make"].output == expected and snap.state.output == expected


def test_a_2mb_run_input_is_shown_by_run_show_json(tmp_path, data_dir):
    value = blob(2_000_000)
    given = tmp_path / "input.json"
    given.write_text(json.dumps(value))
    serve = ServeProcess(data_dir, args=WORKER).start()
    try:
        _register(tmp_path, data_dir, "measured", [{"id": "m", "task": "big-measure", "input": "${input}"}])
        run_id = dagnats_json(
            "run", "start", "measured", "--input-file", str(given), "--wait", data_dir=data_dir, timeout=120
        )["run_id"]
        shown = dagnats_json("run", "show", run_id, data_dir=data_dir)
        history = _raw_history(data_dir, run_id)
    finally:
        serve.stop()
    assert shown["status"] == "completed"
    assert shown["input"] == value
    data = msgspec.json.encode(value)
    assert shown["output"] == {
        "bytes": len(json.dumps(value).encode()),
        "sha256": hashlib.sha256(json.dumps(value).encode()).hexdigest(),
    }
    assert len(data) > MAX_EVENT_BYTES
    started = history[0]
    assert isinstance(started, RunStarted) and started.input == ref_of(data)


async def test_an_output_over_64mb_fails_its_step_in_one_line(stack):
    worker = Worker()

    @worker.task("huge")
    async def huge(ctx: TaskContext) -> str:
        return "y" * (MAX_VALUE_BYTES + 1_000_000)

    await stack.start(worker)
    await stack.register({"name": "huge", "steps": [{"id": "h", "task": "huge"}]})
    state = await stack.run_to_end("huge", timeout=60)
    assert state.status == "failed"
    error = state.steps["h"].error or ""
    assert "\n" not in error
    assert f"step h: output of {MAX_VALUE_BYTES + 1_000_002} bytes exceeds the 64 MB" in error
    assert state.steps["h"].attempts == 1  # not retried: it would fail the same way


async def test_the_engine_offloads_an_input_too_big_for_its_step_queued(stack):
    worker = Worker()

    @worker.task("part")
    async def part(ctx: TaskContext) -> dict[str, Any]:
        return blob(600_000)  # fits in its step.completed; two of them do not fit in one event

    @worker.task("sizes")
    async def sizes(ctx: TaskContext) -> dict[str, int]:
        return {k: v["size"] for k, v in ctx.input.items()}

    await stack.start(worker)
    await stack.register(
        {
            "name": "both",
            "steps": [
                {"id": "a", "task": "part"},
                {"id": "b", "task": "part"},
                {
                    "id": "both",
                    "task": "sizes",
                    "depends_on": ["a", "b"],
                    "input": {"a": "${steps.a.output}", "b": "${steps.b.output}"},
                },
            ],
        }
    )
    state = await stack.run_to_end("both", timeout=60)
    assert state.status == "completed", state.steps["both"].error
    assert state.output == {"a": 600_000, "b": 600_000}
    assert state.steps["both"].input == {"a": blob(600_000), "b": blob(600_000)}  # read back
    events = [e for _, e in await stack.client.store.read_history(state.run_id)]
    queued = next(e for e in events if isinstance(e, StepQueued) and e.step_id == "both")
    assert is_ref(queued.input)  # the engine wrote it to the object store, then the event
    raw = await stack.client.run(state.run_id, values=False)
    assert is_ref(raw.steps["both"].input)
    followed = [e async for _, e in stack.client.follow(state.run_id)]  # what the console folds
    queued = next(e for e in followed if isinstance(e, StepQueued) and e.step_id == "both")
    assert queued.input == {"a": blob(600_000), "b": blob(600_000)}
    await stack.register(
        {"name": "leaves", "steps": [{"id": "a", "task": "part"}, {"id": "b", "task": "part"}]}
    )
    leaves = await stack.run_to_end("leaves", timeout=60)  # run.completed of two 600 kB leaves
    assert leaves.status == "completed" and leaves.output == {"a": blob(600_000), "b": blob(600_000)}
    assert is_ref((await stack.client.run(leaves.run_id, values=False)).output)


async def test_a_template_cannot_read_into_a_referenced_value(stack):
    worker = Worker()

    @worker.task("make")
    async def make(ctx: TaskContext) -> dict[str, Any]:
        return blob(1_000_000)

    await stack.start(worker)
    await stack.register(
        {
            "name": "into",
            "steps": [
                {"id": "a", "task": "make"},
                {"id": "b", "task": "echo", "depends_on": ["a"], "input": "${steps.a.output.size}"},
            ],
        }
    )
    state = await stack.run_to_end("into", timeout=60)
    assert state.status == "failed"
    assert "kept in the object store; a template can pass it on whole, not read into it" in (
        state.steps["b"].error or ""
    )


async def test_a_history_without_references_reads_and_folds_as_before():
    store = MemoryStore()
    looks_like = {"$ref": "#/definitions/x", "size": 3}  # user data, not a reference
    history = [
        RunStarted(
            at=1.0,
            run_id="r1",
            workflow="w",
            version=1,
            definition=parse_definition({"name": "w", "steps": [{"id": "a", "task": "t"}]}),
            input={"schema": looks_like},
        ),
        StepQueued(at=2.0, step_id="a", attempt=1, input=[1, 2]),
        StepCompleted(at=3.0, step_id="a", attempt=1, output={"x": looks_like}),
    ]
    state = replay(history)
    assert state is not None
    assert state.steps["a"].output == {"x": looks_like} and state.input == {"schema": looks_like}
    assert await resolve_state(store, state) is state  # nothing to read back: the very same state


def test_sigkill_between_the_value_write_and_its_event_leaves_a_consistent_run(tmp_path, data_dir):
    marks = tmp_path / "marks"
    marks.mkdir()
    killed = tmp_path / "killed"
    env = cli_env(
        data_dir,
        DAGNATS_TASK_ACK_WAIT="2",
        DAGNATS_TEST_MARKS=str(marks),
        DAGNATS_TEST_KILL_AFTER_VALUE=str(killed),
    )
    serve = ServeProcess(data_dir, args=WORKER, env=env).start()
    try:
        _register(tmp_path, data_dir, "pipe", PIPE)
        run_id = dagnats_json("run", "start", "pipe", data_dir=data_dir)["run_id"]
        assert serve.proc is not None
        wait_until(lambda: serve.proc.poll() is not None, 60, what="serve to die after writing the value")
    finally:
        serve.kill()
    assert serve.proc.returncode == -signal.SIGKILL and killed.exists()
    restarted = ServeProcess(data_dir, port=serve.port, args=WORKER, env=env).start()
    try:
        wait_until(
            lambda: dagnats_json("run", "show", run_id, data_dir=data_dir)["status"] == "completed",
            90,
            what="the run to complete after the restart",
        )
        out = dagnats("run", "output", run_id, data_dir=data_dir)
        history = _raw_history(data_dir, run_id)
    finally:
        restarted.stop()
    assert json.loads(out.stdout) == blob(5_000_000)
    made = (marks / f"{run_id}.make").read_text().split()
    assert len(made) == 2  # killed after its value was stored, before its result: run once more
    assert len((marks / f"{run_id}.relay").read_text().split()) == 1
    completions = [e for e in history if isinstance(e, StepCompleted) and e.step_id == "make"]
    assert len(completions) == 1 and completions[0].output == ref_of(msgspec.json.encode(blob(5_000_000)))
    assert killed.read_text() == completions[0].output["$ref"]  # the redo wrote the same object
