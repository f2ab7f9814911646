"""Engine semantics end to end against a real nats-server: retries, timeouts, engine-run step types."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.js.errors import NotFoundError

from dagnats import NonRetryable, TaskContext, Worker
from dagnats.core.events import StepFailed, StepQueued
from dagnats.errors import UserError
from dagnats.nats import names


async def test_retry_until_success_honours_backoff(stack):
    worker = Worker()
    calls: list[float] = []

    @worker.task("flaky")
    async def flaky(ctx: TaskContext):
        calls.append(time.time())
        if ctx.attempt < 3:
            raise RuntimeError(f"attempt {ctx.attempt} broke")
        return {"attempt": ctx.attempt}

    await stack.start(worker)
    await stack.register(
        {
            "name": "retry",
            "steps": [
                {
                    "id": "f",
                    "task": "flaky",
                    "retry": {"max_attempts": 3, "backoff": "fixed", "initial": "400ms"},
                }
            ],
        }
    )
    state = await stack.run_to_end("retry")
    assert state.status == "completed"
    assert state.steps["f"].attempts == 3
    assert state.output == {"attempt": 3}
    assert len(calls) == 3
    assert calls[1] - calls[0] >= 0.39 and calls[2] - calls[1] >= 0.39
    events = [e for _, e in await stack.client.events(state.run_id)]
    failed = [e for e in events if isinstance(e, StepFailed)]
    requeued = [e for e in events if isinstance(e, StepQueued) and e.attempt > 1]
    assert [e.error for e in failed] == ["RuntimeError: attempt 1 broke", "RuntimeError: attempt 2 broke"]
    assert all(q.at - f.at >= 0.39 for f, q in zip(failed, requeued))


async def test_exponential_backoff_is_capped(stack):
    worker = Worker()
    calls: list[float] = []

    @worker.task("always-fails")
    async def fails(ctx: TaskContext):
        calls.append(time.time())
        raise RuntimeError("no")

    await stack.start(worker)
    await stack.register(
        {
            "name": "expo",
            "steps": [
                {
                    "id": "f",
                    "task": "always-fails",
                    "retry": {
                        "max_attempts": 4,
                        "backoff": "exponential",
                        "initial": "200ms",
                        "multiplier": 3,
                        "max": "700ms",
                    },
                }
            ],
        }
    )
    state = await stack.run_to_end("expo")
    assert state.status == "failed" and state.steps["f"].attempts == 4
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert gaps[0] >= 0.19 and gaps[1] >= 0.59 and gaps[2] >= 0.69  # 200ms, 600ms, min(1800ms, 700ms)
    assert gaps[2] < 1.7
    assert "step f failed: RuntimeError: no" == state.error


async def test_non_retryable_fails_at_once(stack):
    worker = Worker()

    @worker.task("fatal")
    async def fatal(ctx: TaskContext):
        raise NonRetryable("bad input, do not retry")

    await stack.start(worker)
    await stack.register(
        {
            "name": "nr",
            "steps": [
                {"id": "a", "task": "fatal", "retry": {"max_attempts": 5}},
                {"id": "b", "task": "echo", "depends_on": ["a"]},
            ],
        }
    )
    state = await stack.run_to_end("nr")
    assert state.status == "failed"
    assert state.steps["a"].attempts == 1 and state.steps["a"].error == "bad input, do not retry"
    assert state.steps["b"].status == "cancelled"


async def test_step_timeout_fails_attempt_and_retries(stack):
    worker = Worker()

    @worker.task("slow-once")
    async def slow(ctx: TaskContext):
        if ctx.attempt == 1:
            await asyncio.sleep(5)
        return "fast"

    await stack.start(worker)
    await stack.register(
        {
            "name": "to",
            "steps": [
                {
                    "id": "s",
                    "task": "slow-once",
                    "timeout": "300ms",
                    "retry": {"max_attempts": 2, "initial": "10ms"},
                }
            ],
        }
    )
    state = await stack.run_to_end("to")
    assert state.status == "completed" and state.steps["s"].attempts == 2 and state.output == "fast"
    events = [e for _, e in await stack.client.events(state.run_id)]
    assert any(e.__class__.__name__ == "TimerFired" and e.kind == "step_timeout" for e in events)


async def test_run_timeout_fails_the_run(stack):
    await stack.start()
    await stack.register(
        {
            "name": "rt",
            "timeout": "500ms",
            "steps": [{"id": "nap", "type": "sleep", "config": {"duration": "30s"}}],
        }
    )
    state = await stack.run_to_end("rt")
    assert state.status == "failed"
    assert state.error == "run exceeded its timeout of 500ms"
    assert state.steps["nap"].status == "cancelled"


async def test_durable_sleep_step(stack):
    await stack.start()
    await stack.register(
        {
            "name": "nap",
            "steps": [
                {"id": "z", "type": "sleep", "config": {"duration": "600ms"}},
                {"id": "after", "task": "echo", "depends_on": ["z"], "input": "woke"},
            ],
        }
    )
    t0 = time.time()
    state = await stack.run_to_end("nap")
    assert state.status == "completed" and state.output == "woke"
    assert time.time() - t0 >= 0.59


async def test_wait_for_event_receives_signal_data(stack):
    await stack.start()
    await stack.register(
        {
            "name": "gate",
            "steps": [
                {"id": "w", "type": "wait_for_event", "config": {"name": "go", "timeout": "30s"}},
                {"id": "use", "task": "echo", "depends_on": ["w"], "input": "${steps.w.output.colour}"},
            ],
        }
    )
    run_id = await stack.client.start("gate")
    for _ in range(100):
        if (await stack.client.run(run_id)).status == "waiting":
            break
        await asyncio.sleep(0.05)
    assert (await stack.client.run(run_id)).steps["w"].status == "waiting"
    await stack.client.signal(run_id, "go", {"colour": "green"})
    state = await asyncio.wait_for(stack.client.wait(run_id), 10)
    assert state.status == "completed" and state.output == "green"


async def test_wait_for_event_times_out(stack):
    await stack.start()
    await stack.register(
        {
            "name": "gate2",
            "steps": [{"id": "w", "type": "wait_for_event", "config": {"name": "go", "timeout": "300ms"}}],
        }
    )
    state = await stack.run_to_end("gate2")
    assert state.status == "failed"
    assert state.steps["w"].error == "no signal 'go' before the timeout"


async def test_sub_workflow_runs_child_and_returns_its_output(stack):
    await stack.start()
    await stack.register(
        {
            "name": "child",
            "steps": [{"id": "double", "task": "shell", "config": {"command": "echo $((${input.n} * 2))"}}],
        }
    )
    await stack.register(
        {
            "name": "parent",
            "steps": [
                {
                    "id": "call",
                    "type": "sub_workflow",
                    "config": {"workflow": "child"},
                    "input": {"n": "${input.n}"},
                },
                {"id": "out", "task": "echo", "depends_on": ["call"], "input": "${steps.call.output.stdout}"},
            ],
        }
    )
    state = await stack.run_to_end("parent", {"n": 21})
    assert state.status == "completed" and state.output == "42\n"
    child = await stack.client.run(state.steps["call"].child_run_id)
    assert child.status == "completed" and child.parent.run_id == state.run_id
    assert child.root_run_id == state.run_id


async def test_cancel_cascades_to_child_run(stack):
    await stack.start()
    await stack.register(
        {"name": "slow-child", "steps": [{"id": "nap", "type": "sleep", "config": {"duration": "60s"}}]}
    )
    await stack.register(
        {
            "name": "p2",
            "steps": [{"id": "call", "type": "sub_workflow", "config": {"workflow": "slow-child"}}],
        }
    )
    run_id = await stack.client.start("p2")
    child_id = None
    for _ in range(200):
        child_id = (await stack.client.run(run_id)).steps["call"].child_run_id
        if child_id:
            try:
                if (await stack.client.run(child_id)).status == "waiting":
                    break
            except UserError:
                pass
        await asyncio.sleep(0.05)
    await stack.client.cancel(run_id, "operator changed their mind")
    parent = await asyncio.wait_for(stack.client.wait(run_id), 10)
    child = await asyncio.wait_for(stack.client.wait(child_id), 10)
    assert parent.status == "cancelled" and child.status == "cancelled"


async def test_sub_workflow_of_unknown_workflow_fails_step(stack):
    await stack.start()
    await stack.register(
        {"name": "p3", "steps": [{"id": "call", "type": "sub_workflow", "config": {"workflow": "ghost"}}]}
    )
    state = await stack.run_to_end("p3")
    assert state.status == "failed" and "unknown workflow 'ghost'" in state.error


async def test_map_fans_out_and_collects_in_order(stack):
    worker = Worker()
    live = {"now": 0, "peak": 0}

    @worker.task("square")
    async def square(ctx: TaskContext):
        live["now"] += 1
        live["peak"] = max(live["peak"], live["now"])
        await asyncio.sleep(0.05)
        live["now"] -= 1
        return ctx.input * ctx.input

    await stack.start(worker)
    await stack.register(
        {
            "name": "fan",
            "steps": [
                {"id": "nums", "task": "echo", "input": "${input.nums}"},
                {
                    "id": "sq",
                    "type": "map",
                    "depends_on": ["nums"],
                    "config": {"task": "square", "concurrency": 3},
                },
            ],
        }
    )
    state = await stack.run_to_end("fan", {"nums": list(range(10))})
    assert state.status == "completed"
    assert state.output == [n * n for n in range(10)]
    assert live["peak"] <= 3


async def test_map_over_too_many_items_fails(stack):
    await stack.start()
    await stack.register(
        {
            "name": "fan2",
            "steps": [
                {"id": "nums", "task": "echo"},
                {
                    "id": "each",
                    "type": "map",
                    "depends_on": ["nums"],
                    "config": {"task": "echo", "max_items": 3},
                },
            ],
        }
    )
    state = await stack.run_to_end("fan2", [1, 2, 3, 4])
    assert state.status == "failed" and "exceeds max_items 3" in state.error


async def test_checkpoint_reaches_the_next_attempt(stack):
    worker = Worker()
    seen = []

    @worker.task("resumable")
    async def resumable(ctx: TaskContext):
        seen.append(ctx.checkpoint_data)
        if ctx.attempt == 1:
            await ctx.checkpoint({"done": 5})
            raise RuntimeError("crash after checkpoint")
        return ctx.checkpoint_data

    await stack.start(worker)
    await stack.register(
        {
            "name": "cp",
            "steps": [{"id": "r", "task": "resumable", "retry": {"max_attempts": 2, "initial": "10ms"}}],
        }
    )
    state = await stack.run_to_end("cp")
    assert state.status == "completed" and state.output == {"done": 5}
    assert seen == [None, {"done": 5}]


async def test_input_schema_violation_is_rejected(stack):
    await stack.start()
    await stack.register(
        {
            "name": "typed",
            "input_schema": {"type": "object", "required": ["repo"]},
            "steps": [{"id": "a", "task": "echo"}],
        }
    )
    with pytest.raises(UserError, match="missing required field 'repo'"):
        await stack.client.start("typed", {"nope": 1})


async def test_sub_workflow_timeout_cancels_the_child(stack):
    await stack.start()
    await stack.register(
        {"name": "napper", "steps": [{"id": "nap", "type": "sleep", "config": {"duration": "60s"}}]}
    )
    await stack.register(
        {
            "name": "impatient",
            "steps": [
                {"id": "call", "type": "sub_workflow", "config": {"workflow": "napper"}, "timeout": "300ms"}
            ],
        }
    )
    state = await stack.run_to_end("impatient")
    assert state.status == "failed" and state.steps["call"].error == "timed out after 300ms"
    child = await asyncio.wait_for(stack.client.wait(state.steps["call"].child_run_id), 10)
    assert child.status == "cancelled" and child.error == "cancelled: parent step call timed out after 300ms"


async def test_recursive_sub_workflows_stop_at_the_nesting_bound(stack):
    await stack.start()
    await stack.register(
        {
            "name": "forever",
            "steps": [{"id": "again", "type": "sub_workflow", "config": {"workflow": "forever"}}],
        }
    )
    state = await stack.run_to_end("forever", timeout=30)
    assert state.status == "failed"
    depth, run = 0, state
    while run.steps["again"].child_run_id:
        run = await stack.client.run(run.steps["again"].child_run_id)
        depth += 1
    assert depth == 5 and run.depth == 5
    assert run.steps["again"].error == "sub_workflow nesting is bounded at depth 5"


async def test_a_cancelled_run_takes_back_its_queued_task_and_a_worker_skips_a_late_copy(stack):
    ran = []
    late = Worker()

    @late.task("late-task")
    async def late_task(ctx: TaskContext):
        ran.append(ctx.run_id)

    await stack.start()  # nobody serves late-task yet: its task waits in the queue
    await stack.register({"name": "orphan", "steps": [{"id": "t", "task": "late-task"}]})
    run_id = await stack.client.start("orphan")
    js = stack.store.js
    subject = names.task_subject("late-task", run_id)
    queued = None
    for _ in range(100):
        try:
            queued = await js.get_last_msg("DAGNATS_TASKS", subject)
            break
        except NotFoundError:
            await asyncio.sleep(0.05)
    assert queued is not None
    await stack.client.cancel(run_id)
    await asyncio.wait_for(stack.client.wait(run_id), 10)
    for _ in range(100):  # the engine purges the run's tasks as it ends the run
        try:
            await js.get_last_msg("DAGNATS_TASKS", subject)
        except NotFoundError:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the cancelled run's task is still queued")
    # A copy that escaped the purge (say, queued again by an engine redoing a pass) and sat in
    # the queue is checked against the run before it runs.
    copy = await js.publish(subject, queued.data)
    await asyncio.sleep(1.2)
    stop = asyncio.Event()
    serving = asyncio.create_task(late.run(stack.store, stop))
    try:
        info = None
        for _ in range(100):
            await asyncio.sleep(0.05)
            try:
                info = await js.consumer_info("DAGNATS_TASKS", "dagnats_task_late-task")
            except NotFoundError:
                continue  # the worker has not created its consumer yet
            if info.delivered.stream_seq >= copy.seq and info.num_ack_pending == 0:
                break
        assert info is not None and info.delivered.stream_seq >= copy.seq  # handed to the worker
        assert info.num_pending == 0 and info.num_ack_pending == 0  # ... which dropped it
    finally:
        stop.set()
        await serving
    assert ran == []
    events = [type(e).__name__ for _, e in await stack.client.events(run_id)]
    assert "StepStarted" not in events


async def test_oversized_values_go_to_the_object_store_instead_of_breaking_nats(stack):
    worker = Worker()

    @worker.task("big")
    async def big(ctx: TaskContext):
        return "x" * 600_000

    await stack.start(worker)
    await stack.register(
        {
            "name": "huge",
            "steps": [
                {"id": "a", "task": "big"},
                {"id": "b", "task": "big"},
                {"id": "both", "task": "echo", "depends_on": ["a", "b"]},
            ],
        }
    )
    state = await stack.run_to_end("huge")
    # both's step.queued (1.2 MB) refers to its input in the object store (test_big_values.py)
    assert state.status == "completed"
    assert state.steps["both"].output == {"a": "x" * 600_000, "b": "x" * 600_000}
    await stack.register(
        {
            "name": "chain",
            "steps": [  # each output fits; the snapshot of all of them does not
                {"id": "a", "task": "big"},
                {"id": "b", "task": "echo", "depends_on": ["a"]},
                {"id": "c", "task": "echo", "depends_on": ["b"]},
            ],
        }
    )
    chained = await stack.run_to_end("chain")
    assert chained.status == "completed" and len(chained.output) == 600_000
    snap, _rev = await stack.store.load_snapshot(chained.run_id)
    assert snap.state is None and snap.summary.status == "completed"  # summary only, state replayed
    assert [s.status for s in await stack.client.runs(workflow="chain")] == ["completed"]
    big_input = await stack.client.wait(await stack.client.start("chain", "y" * 1_000_000))
    assert big_input.status == "completed" and big_input.input == "y" * 1_000_000


async def test_a_stale_timer_is_not_recorded(stack):
    await stack.start()
    await stack.register(
        {
            "name": "stale",
            "steps": [
                {"id": "a", "task": "echo", "timeout": "300ms"},  # done long before its timeout is due
                {"id": "nap", "type": "sleep", "depends_on": ["a"], "config": {"duration": "800ms"}},
            ],
        }
    )
    state = await stack.run_to_end("stale")
    assert state.status == "completed"
    fired = [e.kind for _, e in await stack.client.events(state.run_id) if type(e).__name__ == "TimerFired"]
    assert fired == ["wake"]  # the step timeout fired too, found nothing to do, and left no event


async def test_a_finished_run_drops_its_pending_timers(stack):
    await stack.start()
    await stack.register(
        {
            "name": "quick-gate",
            "timeout": "1h",
            "steps": [{"id": "w", "type": "wait_for_event", "config": {"name": "go", "timeout": "30m"}}],
        }
    )
    run_id = await stack.client.start("quick-gate")
    subjects = {}
    for _ in range(100):
        info = await stack.store.js.stream_info("DAGNATS_TIMERS", subjects_filter=f"dagnats.timer.{run_id}")
        subjects = info.state.subjects or {}
        if sum(subjects.values()) == 2:  # the run's timeout and the wait's timeout
            break
        await asyncio.sleep(0.05)
    assert sum(subjects.values()) == 2
    await stack.client.signal(run_id, "go", 1)
    assert (await asyncio.wait_for(stack.client.wait(run_id), 10)).status == "completed"
    for _ in range(100):
        info = await stack.store.js.stream_info("DAGNATS_TIMERS", subjects_filter=f"dagnats.timer.{run_id}")
        if not info.state.subjects:
            break
        await asyncio.sleep(0.05)
    assert not info.state.subjects


async def test_child_input_is_checked_against_the_child_schema(stack):
    await stack.start()
    await stack.register(
        {
            "name": "strict-child",
            "input_schema": {"type": "object", "required": ["n"]},
            "steps": [{"id": "a", "task": "echo"}],
        }
    )
    await stack.register(
        {
            "name": "sloppy-parent",
            "steps": [
                {
                    "id": "call",
                    "type": "sub_workflow",
                    "config": {"workflow": "strict-child"},
                    "input": {"m": 1},
                }
            ],
        }
    )
    state = await stack.run_to_end("sloppy-parent")
    assert state.status == "failed"
    assert (
        "input does not match strict-child's input_schema: input: missing required field 'n'" in state.error
    )


async def test_reads_leave_no_consumers_behind(stack):
    await stack.start()
    await stack.register({"name": "quick", "steps": [{"id": "a", "task": "echo"}]})
    run_id = (await stack.run_to_end("quick")).run_id

    async def consumers(stream: str) -> int:
        return (await stack.store.js.stream_info(stream)).state.consumer_count

    before = {s: await consumers(s) for s in ("DAGNATS_HISTORY", "KV_dagnats_runs", "KV_dagnats_workflows")}
    for _ in range(30):
        await stack.client.workflow("quick")
        await stack.client.workflows()
        await stack.client.runs()
        await stack.client.wait(run_id)  # follows the history with an ordered consumer
    after = {s: await consumers(s) for s in before}
    assert after == before


async def test_a_handler_cancelling_itself_fails_the_attempt(stack):
    worker = Worker()

    @worker.task("self-cancel")
    async def self_cancel(ctx: TaskContext):
        inner = asyncio.create_task(asyncio.sleep(10))
        inner.cancel()
        await inner  # lets CancelledError escape the handler

    await stack.start(worker)
    await stack.register({"name": "sc", "steps": [{"id": "a", "task": "self-cancel"}]})
    state = await stack.run_to_end("sc")
    assert state.status == "failed" and "CancelledError escaped" in state.steps["a"].error


async def test_heartbeats_follow_the_consumers_ack_wait(stack, monkeypatch):
    runs: list[int] = []
    slow = Worker()

    @slow.task("slow-3s")
    async def slow_3s(ctx: TaskContext):
        runs.append(ctx.attempt)
        await asyncio.sleep(3)
        return "done"

    await stack.start()
    monkeypatch.setenv("DAGNATS_TASK_ACK_WAIT", "1")  # an earlier worker made the consumer with 1s
    stop = asyncio.Event()
    first = asyncio.create_task(slow.run(stack.worker_store, stop))
    await asyncio.sleep(0.5)
    stop.set()
    await first
    monkeypatch.setenv("DAGNATS_TASK_ACK_WAIT", "30")  # this one believes 30s
    stop = asyncio.Event()
    second = asyncio.create_task(slow.run(stack.worker_store, stop))
    try:
        await stack.register({"name": "slowly", "steps": [{"id": "s", "task": "slow-3s"}]})
        state = await stack.run_to_end("slowly")
    finally:
        stop.set()
        await second
    assert state.status == "completed" and runs == [1]  # ran once, not once per redelivery


async def test_a_big_run_does_not_hold_back_small_ones(stack):
    await stack.start()
    await stack.register(
        {
            "name": "big",
            "steps": [
                {"id": "items", "task": "echo"},
                {"id": "each", "type": "map", "depends_on": ["items"], "config": {"task": "echo"}},
            ],
        }
    )
    await stack.register({"name": "small", "steps": [{"id": "a", "task": "echo"}]})
    big = await stack.client.start("big", list(range(900)))
    await asyncio.sleep(0.3)  # the map is being fanned out
    small = await asyncio.wait_for(stack.client.wait(await stack.client.start("small", 1)), 20)
    assert small.status == "completed"
    done = await asyncio.wait_for(stack.client.wait(big), 120)
    assert done.status == "completed"
    assert small.finished_at < done.finished_at  # the small run did not wait for the big one


async def test_progress_alone_reaches_the_snapshot_a_moment_later(stack):
    """A status change is saved at once; steps finishing while the status stays `running` are
    saved together within SAVE_DELAY, and listing catches up without any further event."""
    release = asyncio.Event()
    slow = Worker()

    @slow.task("hold")
    async def hold(ctx: TaskContext):
        await release.wait()

    await stack.start(slow)
    await stack.register(
        {
            "name": "halfway",
            "steps": [{"id": "a", "task": "echo"}, {"id": "b", "task": "hold", "depends_on": ["a"]}],
        }
    )
    run_id = await stack.client.start("halfway")
    try:
        last = 0
        for _ in range(100):
            state, last = await stack.store.current(run_id)
            if state is not None and state.steps["b"].status == "running":
                break
            await asyncio.sleep(0.05)
        snap = None
        for _ in range(40):  # nothing else happens to the run; the saved state still catches up
            snap, _rev = await stack.store.load_snapshot(run_id)
            if snap is not None and snap.applied == last:
                break
            await asyncio.sleep(0.05)
        assert snap is not None and snap.applied == last
        assert (snap.summary.status, snap.summary.steps_done, snap.summary.steps_total) == ("running", 1, 2)
    finally:
        release.set()


async def test_data_from_before_tasks_carried_their_run_keeps_working(tmp_path):
    """A task consumer with the old filter, a task queued under the old subject and a runs
    bucket without direct gets: a new worker and engine bring them up to date and run it."""
    from nats.js import api

    from dagnats.nats.connection import Endpoint, connect
    from dagnats.nats.embedded import EmbeddedServer
    from dagnats.nats.store import Store

    from conftest import Stack

    stack = Stack(tmp_path)
    stack.server.start()  # first as an older version left it
    try:
        nc = await connect(Endpoint(url=stack.server.url, user="operator", password=stack.creds.operator))
        js = nc.jetstream()
        await js.add_stream(
            api.StreamConfig(
                name="DAGNATS_TASKS", subjects=["dagnats.task.>"], retention=api.RetentionPolicy.WORK_QUEUE
            )
        )
        await js.add_consumer(
            "DAGNATS_TASKS",
            api.ConsumerConfig(
                durable_name="dagnats_task_echo", filter_subject="dagnats.task.echo", ack_wait=10
            ),
        )
        await js.create_key_value(api.KeyValueConfig(bucket="dagnats_runs", history=1))  # not direct
        await Store(nc).ensure()
        info = await js.stream_info("KV_dagnats_runs")
        assert info.config.allow_direct
        await nc.close()
    finally:
        stack.server.stop()
    stack.server = EmbeddedServer(tmp_path, stack.server.port, stack.creds)  # then this version
    try:
        await stack.start()
        await stack.register({"name": "old", "steps": [{"id": "a", "task": "echo", "input": 5}]})
        state = await stack.run_to_end("old")
        assert state.status == "completed" and state.output == 5
        consumer = await stack.store.js.consumer_info("DAGNATS_TASKS", "dagnats_task_echo")
        assert sorted(consumer.config.filter_subjects or []) == ["dagnats.task.echo", "dagnats.task.echo.*"]
    finally:
        await stack.close()
