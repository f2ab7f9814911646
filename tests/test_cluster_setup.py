"""dagnats on a real three-node NATS cluster: `serve --replicas`, URL lists, `status`, errors.

Node kills under running work are tests/test_cluster_failover.py's (engineer G's); here the
cluster is shared by the module except where a test takes nodes down.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from cluster import Cluster

from conftest import ROOT, ServeProcess, cli_env, dagnats, free_port, wait_until

OWN = ("DAGNATS_", "KV_dagnats_", "OBJ_dagnats_")
STREAMS = ["DAGNATS_HISTORY", "DAGNATS_TASKS", "DAGNATS_TIMERS", "DAGNATS_ACTIVE"]
BUCKETS = ["dagnats_runs", "dagnats_workflows", "dagnats_heartbeats"]

NOOP_FLOW = """
name: noop
steps:
  - id: a
    task: bench_noop
"""


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


def env_for(c: Cluster, data_dir: Path, role: str = "operator", **extra: str) -> dict[str, str]:
    return c.env(cli_env(data_dir), role=role, **extra)


def own_streams(c: Cluster) -> dict[str, int]:
    """Every dagnats stream on the cluster and its configured replicas, as a node reports it."""

    async def go() -> dict[str, int]:
        nc = await nats.connect(c.urls, user="operator", password=c.creds.operator)
        try:
            infos = await nc.jetstream().streams_info()
            return {i.config.name: i.config.num_replicas for i in infos if i.config.name.startswith(OWN)}
        finally:
            await nc.close()

    return asyncio.run(go())


def wipe(c: Cluster) -> None:
    """Delete every dagnats stream: the next serve starts from an empty cluster."""

    async def go() -> None:
        nc = await nats.connect(c.urls, user="operator", password=c.creds.operator)
        try:
            js = nc.jetstream()
            for info in await js.streams_info():
                if info.config.name.startswith(OWN):
                    await js.delete_stream(info.config.name)
        finally:
            await nc.close()

    asyncio.run(go())


def serve_on(c: Cluster, tmp: Path, *args: str, name: str = "serve") -> ServeProcess:
    data = tmp / name
    return ServeProcess(data, args=("--nats", c.url, *args), env=env_for(c, data)).start(timeout=40)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_replicas_3_creates_every_stream_and_bucket_with_three_copies(
    shared: Cluster, tmp_path: Path
) -> None:
    wipe(shared)
    serve = serve_on(shared, tmp_path, "--replicas", "3", "--no-workers")
    try:
        assert "(3 replicas)" in serve.log()
        found = own_streams(shared)
        assert set(STREAMS) | {f"KV_{b}" for b in BUCKETS} <= set(found)
        assert set(found.values()) == {3}, found
        for name in found:
            assert wait_until(lambda n=name: shared.stream_current(n, 3), 20, what=f"{name} replicated")
    finally:
        serve.stop()


def test_an_r1_data_set_is_raised_to_r3_on_start_and_keeps_its_data(shared: Cluster, tmp_path: Path) -> None:
    wipe(shared)
    flow = tmp_path / "noop.yaml"
    flow.write_text(NOOP_FLOW)
    env = env_for(shared, tmp_path / "cli")
    serve = serve_on(shared, tmp_path, "--no-workers", name="r1")
    try:
        assert set(own_streams(shared).values()) == {1}
        assert dagnats("workflow", "register", str(flow), "--nats", shared.url, env=env).returncode == 0
        started = dagnats("run", "start", "noop", "--json", "--nats", shared.url, env=env)
        assert started.returncode == 0, started.stderr
    finally:
        serve.stop()
    serve = serve_on(shared, tmp_path, "--replicas", "3", "--no-workers", name="r3")
    try:
        found = own_streams(shared)
        assert set(found.values()) == {3}, found
        listed = dagnats("run", "list", "--json", "--nats", shared.url, env=env)
        assert listed.returncode == 0, listed.stderr
        assert [r["workflow"] for r in json.loads(listed.stdout)] == ["noop"]
    finally:
        serve.stop()
    # A serve without --replicas afterwards lowers nothing.
    serve = serve_on(shared, tmp_path, "--no-workers", name="again")
    try:
        assert set(own_streams(shared).values()) == {3}
    finally:
        serve.stop()


def test_more_replicas_than_nodes_is_one_line_and_exit_1(shared: Cluster, tmp_path: Path) -> None:
    env = env_for(shared, tmp_path / "d")
    line = one_line_error(dagnats("serve", "--nats", shared.url, "--replicas", "5", env=env, timeout=60))
    assert "--replicas 5" in line and "3 nodes up" in line and "--replicas 3 at most" in line, line


def test_replicas_on_the_embedded_server_is_one_line_and_exit_1(tmp_path: Path) -> None:
    proc = dagnats("serve", "--data-dir", str(tmp_path / "d"), "--port", str(free_port()), "--replicas", "3")
    line = one_line_error(proc)
    assert "--replicas 3 needs a NATS cluster" in line, line
    assert not (tmp_path / "d" / "server.json").exists()


def test_replicas_on_a_single_external_server_is_refused(tmp_path: Path) -> None:
    from dagnats.nats.datadir import Credentials
    from dagnats.nats.embedded import EmbeddedServer

    lone = EmbeddedServer(tmp_path / "lone", free_port(), Credentials(operator="op", worker="w"))
    lone.start()
    try:
        env = cli_env(tmp_path / "d", DAGNATS_NATS_USER="operator", DAGNATS_NATS_PASSWORD="op")
        line = one_line_error(dagnats("serve", "--nats", lone.url, "--replicas", "2", env=env))
        assert "is a single server, not a cluster" in line, line
    finally:
        lone.stop()


def test_a_url_list_whose_first_node_is_dead_serves_cli_and_worker(shared: Cluster, tmp_path: Path) -> None:
    dead = f"nats://127.0.0.1:{free_port()}"
    urls = ",".join([dead, *shared.urls])
    serve = serve_on(shared, tmp_path, "--replicas", "3", "--no-workers")
    flow = tmp_path / "noop.yaml"
    flow.write_text(NOOP_FLOW)
    env = env_for(shared, tmp_path / "cli")
    worker_log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "dagnats", "worker", "dagnats.app.bench_tasks:worker", "--nats", urls],
        stdout=worker_log,
        stderr=subprocess.STDOUT,
        text=True,
        env=env_for(shared, tmp_path / "w", role="worker"),
        cwd=ROOT,
    )
    try:
        assert dagnats("workflow", "register", str(flow), "--nats", urls, env=env).returncode == 0
        listed = dagnats("run", "list", "--nats", urls, env=env)
        assert listed.returncode == 0, listed.stderr
        wait_until(lambda: "serving bench_noop" in (tmp_path / "worker.log").read_text(), 30, what="worker")
        done = dagnats("run", "start", "noop", "--wait", "--json", "--nats", urls, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["status"] == "completed"
    finally:
        worker.terminate()
        worker.wait(15)
        worker_log.close()
        serve.stop()


def test_status_json_shows_the_cluster_and_each_streams_leader_and_replicas(
    shared: Cluster, tmp_path: Path
) -> None:
    serve = serve_on(shared, tmp_path, "--replicas", "3", "--no-workers")
    try:
        for name in own_streams(shared):
            wait_until(lambda n=name: shared.stream_current(n, 3), 20, what=f"{name} replicated")
        proc = dagnats("status", "--json", "--nats", shared.urls_from(1), env=env_for(shared, tmp_path / "s"))
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        server = doc["server"]
        nodes = {n.name for n in shared.nodes}
        assert server["cluster"] and server["name"] in nodes and set(server["nodes"]) == nodes
        assert len(server["urls"]) == 3
        for s in doc["streams"]:
            assert s["replicas"] == 3, s
            assert s["leader"] in nodes, s
            assert {f["name"] for f in s["followers"]} | {s["leader"]} == nodes, s
            assert all(f["current"] and not f["offline"] for f in s["followers"]), s
        text = dagnats("status", "--nats", shared.url, env=env_for(shared, tmp_path / "s"))
        assert text.returncode == 0 and " via n" in text.stdout.splitlines()[0], text.stdout
    finally:
        serve.stop()


def test_two_of_three_nodes_down_says_unavailable_not_no_data(tmp_path: Path) -> None:
    with Cluster(tmp_path / "cluster") as c:
        serve = serve_on(c, tmp_path, "--replicas", "3", "--no-workers")
        flow = tmp_path / "noop.yaml"
        flow.write_text(NOOP_FLOW)
        env = env_for(c, tmp_path / "cli")
        try:
            assert dagnats("workflow", "register", str(flow), "--nats", c.url, env=env).returncode == 0
            started = dagnats("run", "start", "noop", "--nats", c.url, env=env)
            assert started.returncode == 0, started.stderr
        finally:
            serve.stop()
        survivor, *down = c.nodes
        for node in down:
            node.kill()
        # Without quorum, commands say the stream is unavailable, never "no data".
        run_id = started.stdout.split()[-1]
        commands = [("run", "list"), ("run", "show", run_id), ("run", "start", "noop"), ("workflow", "list")]
        for args in [*commands, ("status",)]:
            line = one_line_error(dagnats(*args, "--nats", survivor.url, env=env, timeout=60))
            assert "no dagnats data" not in line, (args, line)
            assert "is unavailable: it has no leader" in line and "try again" in line, (args, line)
