"""Several engines against one NATS: every run completes, every step exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter

from dagnats.api.client import Client
from dagnats.core.decide import replay
from dagnats.core.definition import parse_definition
from dagnats.nats.connection import Endpoint
from dagnats.nats.datadir import Credentials
from dagnats.nats.embedded import EmbeddedServer

from conftest import ServeProcess, cli_env, free_port

RUNS = 200


async def test_two_serves_share_one_nats_and_run_everything_once(tmp_path):
    nats = EmbeddedServer(tmp_path, free_port(), Credentials(operator="shared-secret", worker="w"))
    nats.start()
    env = cli_env(DAGNATS_NATS_USER="operator", DAGNATS_NATS_PASSWORD="shared-secret")
    engines = [
        ServeProcess(tmp_path / f"engine{i}", args=("--nats", nats.url), env=env).start() for i in range(2)
    ]
    client = await Client.connect(endpoint=Endpoint(url=nats.url, user="operator", password="shared-secret"))
    try:
        marks = tmp_path / "marks"
        marks.mkdir()
        side = {"command": f"printf x >> {marks}/${{run.id}}"}
        await client.register(
            parse_definition(
                {
                    "name": "pair",
                    "steps": [
                        {"id": "a", "task": "echo"},
                        {"id": "side", "task": "shell", "depends_on": ["a"], "config": side},
                        {
                            "id": "b",
                            "task": "echo",
                            "depends_on": ["a", "side"],
                            "input": {"got": "${steps.a.output}"},
                        },
                    ],
                }
            )
        )
        run_ids = [await client.start("pair", i) for i in range(RUNS)]
        states = await asyncio.wait_for(asyncio.gather(*(client.wait(r) for r in run_ids)), 120)
        assert [s.status for s in states] == ["completed"] * RUNS
        assert [s.output for s in states] == [{"got": i} for i in range(RUNS)]
        workers_seen: Counter[str] = Counter()
        for run_id in run_ids:
            events = [e for _, e in await client.events(run_id)]
            kinds = Counter((type(e).__name__, getattr(e, "step_id", "")) for e in events)
            assert kinds[("StepQueued", "a")] == 1 and kinds[("StepQueued", "b")] == 1, run_id
            assert kinds[("StepCompleted", "a")] == 1 and kinds[("StepCompleted", "b")] == 1, run_id
            assert kinds[("RunCompleted", "")] == 1, run_id
            # who ran a step: its step.started, or for a short task its result
            workers_seen.update(
                e.worker for e in events if type(e).__name__ in ("StepStarted", "StepCompleted") and e.worker
            )
        assert len(workers_seen) == 2  # both serve processes did work
        effects = {p.name: p.read_text() for p in marks.iterdir()}
        assert effects == dict.fromkeys(run_ids, "x")  # every side effect happened exactly once
        assert all("Traceback" not in e.log() for e in engines)
    finally:
        await client.close()
        for e in engines:
            e.stop()
        nats.stop()


FAN = 6


async def test_two_engines_in_one_process_never_fold_a_run_with_an_event_missing(stack):
    """Each engine trusts the events delivered to it as a run's whole tail only while it sees
    every delivery; sharing the consumer, neither does, so both read. Every snapshot must
    equal a replay of the history it claims to cover."""
    await stack.start(engines=2)
    steps = [{"id": f"p{i}", "task": "echo", "input": i} for i in range(FAN)]
    steps.append(
        {
            "id": "join",
            "task": "echo",
            "depends_on": [f"p{i}" for i in range(FAN)],
            "input": [f"${{steps.p{i}.output}}" for i in range(FAN)],
        }
    )
    await stack.register({"name": "fan", "steps": steps})
    run_ids = [await stack.client.start("fan") for _ in range(40)]
    states = await asyncio.wait_for(asyncio.gather(*(stack.client.wait(r) for r in run_ids)), 60)
    assert [s.status for s in states] == ["completed"] * len(run_ids)
    assert all(s.output == list(range(FAN)) for s in states)
    for run_id in run_ids:
        snap, _ = await stack.store.load_snapshot(run_id)
        assert snap is not None and snap.state is not None
        history = [e for seq, e in await stack.client.events(run_id) if seq <= snap.applied]
        assert replay(history) == snap.state, run_id
