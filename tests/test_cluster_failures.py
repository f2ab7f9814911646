"""dagnats on a real three-node NATS cluster (DESIGN.md §10, and §9's "a NATS node dies" row).

Every process is real: three nats-servers from the wheel (tests/cluster.py), `dagnats serve
--nats URL,URL,URL --replicas 3` processes, `dagnats` commands. Each step is a shell command
that appends the time it began to its own file, so the files count the side effects: a
finished step must never run again, a run must complete once, and a step may run twice only
if a node died while it was in flight.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from cluster import CLUSTER_NAME, Cluster

from dagnats.api.client import Client
from dagnats.app.bench_map import map_workflow
from dagnats.core.decide import replay
from dagnats.core.definition import parse_definition
from dagnats.nats import names
from dagnats.nats.connection import Endpoint

from conftest import ServeProcess, cli_env, dagnats, wait_until

T = TypeVar("T")
ACK_WAIT = "2"  # seconds before a task held by a lost consumer is handed out again
LENGTH = 5  # steps per run, one after another


def _env(cluster: Cluster) -> dict[str, str]:
    return cluster.env(cli_env(), DAGNATS_TASK_ACK_WAIT=ACK_WAIT)


def _serve(cluster: Cluster, tmp: Path, first: int) -> ServeProcess:
    """A serve whose URL list starts at node `first`, creating everything with three replicas."""
    args = ("--nats", cluster.urls_from(first), "--replicas", "3")
    return ServeProcess(tmp / f"engine{first}", args=args, env=_env(cluster)).start(timeout=40)


def _ask(cluster: Cluster, job: Callable[[Client], Awaitable[T]]) -> T:
    """Run `job` with a client of a live node (a fresh connection each time)."""

    async def go() -> T:
        node = cluster.alive()[0]
        endpoint = Endpoint(url=node.url, user="operator", password=cluster.creds.operator)
        async with await Client.connect(endpoint=endpoint) as client:
            return await job(client)

    return asyncio.run(go())


def _register(cluster: Cluster, marks: Path) -> None:
    steps = []
    for i in range(LENGTH):
        command = f"mkdir -p {marks}/${{run.id}} && date +%s.%N >> {marks}/${{run.id}}/s{i}"
        step: dict[str, Any] = {"id": f"s{i}", "task": "shell", "config": {"command": command}}
        if i:
            step["depends_on"] = [f"s{i - 1}"]
        steps.append(step)
    definition = parse_definition({"name": "chain", "steps": steps})

    async def job(client: Client) -> None:
        await client.register(definition)

    _ask(cluster, job)


def _start(cluster: Cluster, count: int) -> list[str]:
    async def job(client: Client) -> list[str]:
        return [await client.start("chain") for _ in range(count)]

    return _ask(cluster, job)


def _progress(marks: Path) -> int:
    return sum(1 for _ in marks.glob("*/*"))


def _completed(cluster: Cluster, run_ids: list[str]) -> bool:
    async def job(client: Client) -> set[str]:
        runs = await client.runs(workflow="chain", limit=10_000)
        return {r.run_id for r in runs if r.status == "completed"}

    try:
        return set(run_ids) <= _ask(cluster, job)
    except Exception:  # a stream without a leader for a moment: ask again
        return False


def _histories(cluster: Cluster, run_ids: list[str]) -> dict[str, list[Any]]:
    async def job(client: Client) -> dict[str, list[Any]]:
        got = await asyncio.gather(*(client.events(r) for r in run_ids))
        return {r: [e for _, e in events] for r, events in zip(run_ids, got)}

    return _ask(cluster, job)


def _check(
    cluster: Cluster, run_ids: list[str], marks: Path, outage: tuple[float, float] | None
) -> Counter[str]:
    """The promise for every step of every run; returns who ran the steps (worker names).

    No execution begins after the step's result was recorded. A step runs twice only if the
    outage (from the kill until every run had finished) came between the two executions."""
    workers: Counter[str] = Counter()
    for run_id, events in _histories(cluster, run_ids).items():
        kinds = Counter(type(e).__name__ for e in events)
        assert kinds["RunCompleted"] == 1, f"{run_id} completed {kinds['RunCompleted']} times"
        done = {e.step_id: e.at for e in events if type(e).__name__ == "StepCompleted"}
        workers.update(e.worker for e in events if type(e).__name__ == "StepCompleted" and e.worker)
        for i in range(LENGTH):
            sid = f"s{i}"
            began = [float(x) for x in (marks / run_id / sid).read_text().split()]
            late = [t for t in began if t > done[sid] + 0.002]  # `at` is the worker's clock, ms
            assert not late, f"{run_id}/{sid} ran again after its result was recorded ({done[sid]}): {began}"
            for first, second in zip(began, began[1:]):
                assert outage and first <= outage[1] and second >= outage[0], (
                    f"{run_id}/{sid} ran twice ({first}, {second}) outside the outage {outage}"
                )
    return workers


def _status(cluster: Cluster) -> dict[str, Any]:
    proc = dagnats("status", "--json", "--nats", cluster.urls_from(0), env=_env(cluster))
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def _no_traceback(*serves: ServeProcess) -> None:
    for serve in serves:
        assert "Traceback" not in serve.log(), serve.log()[-3000:]


def test_two_serves_on_different_nodes_share_the_work_once(cluster, tmp_path):
    marks = tmp_path / "marks"
    serves = [_serve(cluster, tmp_path, 0), _serve(cluster, tmp_path, 1)]
    try:
        _register(cluster, marks)
        for stream in (names.HISTORY_STREAM, names.TASKS_STREAM):
            assert cluster.stream_replicas(stream) == 3
        run_ids = _start(cluster, 40)
        wait_until(lambda: _completed(cluster, run_ids), timeout=90, what="every run to complete")
        workers = _check(cluster, run_ids, marks, outage=None)
        assert len(workers) == 2, workers  # both serves ran steps
        _no_traceback(*serves)
    finally:
        for serve in serves:
            serve.stop()


def test_the_history_leader_dies_runs_finish_then_it_rejoins(cluster, tmp_path):
    marks = tmp_path / "marks"
    serves = [_serve(cluster, tmp_path, 0), _serve(cluster, tmp_path, 1)]
    try:
        _register(cluster, marks)
        run_ids = _start(cluster, 30)
        wait_until(lambda: _progress(marks) >= 0.25 * 30 * LENGTH, timeout=60, what="progress")
        leader = cluster.wait_stream_leader(names.HISTORY_STREAM)
        assert _progress(marks) < 30 * LENGTH, "every step ran before the kill: nothing was in flight"
        cluster.node(leader).kill()  # SIGKILL, with runs in flight
        killed = time.time()

        # Without operator action and without that node: every run finishes, once.
        wait_until(lambda: _completed(cluster, run_ids), timeout=90, what="every run to complete")
        _check(cluster, run_ids, marks, outage=(killed, time.time()))
        assert cluster.wait_stream_leader(names.HISTORY_STREAM) != leader

        # The node comes back, catches up, and later runs complete.
        cluster.node(leader).start()
        wait_until(lambda: cluster.stream_current(names.HISTORY_STREAM, 3), timeout=30, what="catch up")
        later = _start(cluster, 10)
        wait_until(lambda: _completed(cluster, later), timeout=60, what="later runs to complete")
        _check(cluster, later, marks, outage=None)

        doc = _status(cluster)
        assert doc["server"]["cluster"] == CLUSTER_NAME
        assert set(doc["server"]["nodes"]) == {"n1", "n2", "n3"}
        streams = {s["name"]: s for s in doc["streams"]}
        for name in (names.HISTORY_STREAM, names.TASKS_STREAM):
            assert streams[name]["replicas"] == 3, streams[name]
            assert streams[name]["leader"] in {"n1", "n2", "n3"}
            assert len(streams[name]["peers"]) == 2, streams[name]
        assert all(s["replicas"] == 3 for s in doc["streams"]), doc["streams"]
        _no_traceback(*serves)
    finally:
        for serve in serves:
            serve.stop()


def test_two_nodes_down_commands_say_unavailable_and_the_engine_resumes(cluster, tmp_path):
    marks = tmp_path / "marks"
    serve = _serve(cluster, tmp_path, 0)
    try:
        _register(cluster, marks)
        run_ids = _start(cluster, 20)
        wait_until(lambda: _progress(marks) >= 0.25 * 20 * LENGTH, timeout=60, what="progress")
        assert _progress(marks) < 20 * LENGTH, "every step ran before the kill: nothing was in flight"
        down = cluster.nodes[1:]
        for node in down:
            node.kill()
        killed = time.time()

        # The one node left has data but no quorum: unavailable, never "no data". For a moment
        # after the kill it may still think it leads (until it notices it lost its quorum),
        # and answers from what it has; within seconds it says the stream is unavailable.
        only = cluster.nodes[0]
        env = _env(cluster)
        deadline = time.time() + 30
        while True:
            proc = dagnats("run", "list", "--nats", only.url, env=env, timeout=60)
            assert "no dagnats data" not in proc.stderr, proc.stderr
            if proc.returncode != 0 or time.time() > deadline:
                break
            time.sleep(0.5)
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        assert "unavailable" in proc.stderr, proc.stderr
        assert "no dagnats data" not in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert serve.proc is not None and serve.proc.poll() is None, "serve gave up: " + serve.log()[-2000:]

        # Quorum returns: the engine resumes by itself.
        for node in down:
            node.start()
        wait_until(lambda: _completed(cluster, run_ids), timeout=90, what="every run to complete")
        _check(cluster, run_ids, marks, outage=(killed, time.time()))
        assert dagnats("run", "list", "--nats", only.url, env=env).returncode == 0
        _no_traceback(serve)
    finally:
        serve.stop()


def test_a_map_over_replicated_streams_completes_and_its_snapshots_match_its_history(cluster, tmp_path):
    """100 items' results land at once. An engine that folded a tail read from a replica
    behind its leader would save a snapshot missing some of them, and the run would hang
    (seen in `dagnats bench --nats` on a cluster: 67 of 100 items in a snapshot covering all)."""
    serve = _serve(cluster, tmp_path, 0)
    try:
        definition = parse_definition(map_workflow("fan", "echo", 100))

        async def job(client: Client) -> list[tuple[str, Any, list[Any]]]:
            await client.register(definition)
            run_ids = [await client.start("fan", [{"i": i} for i in range(100)]) for _ in range(3)]
            out = []
            for run_id in run_ids:
                state = await asyncio.wait_for(client.wait(run_id), 60)
                snap, _ = await client.store.load_snapshot(run_id)
                assert snap is not None
                history = [e for seq, e in await client.events(run_id) if seq <= snap.applied]
                out.append((state.status, snap.state == replay(history), [run_id]))
            return out

        results = _ask(cluster, job)
        assert [(status, same) for status, same, _ in results] == [("completed", True)] * 3, results
        _no_traceback(serve)
    finally:
        serve.stop()
