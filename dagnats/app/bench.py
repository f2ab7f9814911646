"""`dagnats bench`: the engine measured against the raw JetStream ceiling of the same server.

Everything runs through the real paths a user's workflow takes: tasks go through JetStream to
a worker (the built-in `echo`, a no-op), results come back as history events, the engine folds
them. Figures are reported with their ratio to the ceiling measured in the same run, so numbers
from a noisy machine stay comparable.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.js import api

from dagnats.api.client import Client
from dagnats.core.definition import parse_definition
from dagnats.core.events import StepCompleted, StepQueued, encode_event
from dagnats.core.state import RUN_TERMINAL
from dagnats.nats import names
from dagnats.nats.connection import Endpoint, connect
from dagnats.nats.datadir import Credentials
from dagnats.nats.embedded import EmbeddedServer
from dagnats.nats.store import Store

from .stack import Stack, combine

PAYLOAD = b"x" * 256


@dataclass(frozen=True)
class Sizes:
    ceiling_awaited: int
    ceiling_async: int
    w1_runs: int
    w2_runs: int
    fan_out: int
    approvals: int
    recovery_runs: int
    agent_turns: int
    console_runs: int = 2000
    console_rate: float = 200.0
    console_seconds: float = 10.0


FULL = Sizes(2000, 20000, 20, 500, 100, 20, 200, 100, 2000, 200.0, 10.0)
QUICK = Sizes(300, 3000, 4, 100, 100, 5, 40, 30, 500, 200.0, 2.0)
TINY = Sizes(
    50, 200, 1, 10, 10, 1, 5, 5, 20, 50.0, 0.2
)  # what the test suite runs to keep the command working

# The console's own measurement (tui/bench.py), handed in by the CLI: dagnats never imports
# the console itself.
ConsoleMeasure = Callable[..., Awaitable[dict[str, Any]]]


class Bench:
    def __init__(
        self,
        sizes: Sizes,
        fsync: bool,
        nats_url: str | None,
        say: Callable[[str], None],
        console: ConsoleMeasure | None = None,
    ) -> None:
        self.console = console
        self.sizes = sizes
        self.fsync = fsync
        self.nats_url = nats_url
        self.say = say
        self.tmp = Path(tempfile.mkdtemp(prefix="dagnats-bench-"))
        self.server: EmbeddedServer | None = None
        self.endpoint = Endpoint(url=nats_url or "")

    async def run(self) -> dict[str, Any]:
        self._start_server()
        try:
            result: dict[str, Any] = {"fsync": self.fsync, "sizes": self.sizes.__dict__}
            result["ceiling"] = await self._ceiling()
            result.update(await self._engine_figures())
            result["recovery"] = await self._recovery()
            result["ratios"] = _ratios(result)
            return result
        finally:
            if self.server is not None:
                self.server.stop()

    def _start_server(self) -> None:
        if self.nats_url:
            self.endpoint = Endpoint(
                url=self.nats_url,
                user=os.environ.get("DAGNATS_NATS_USER"),
                password=os.environ.get("DAGNATS_NATS_PASSWORD"),
                token=os.environ.get("DAGNATS_NATS_TOKEN"),
            )
            return
        creds = Credentials.generate()
        port = _free_port()
        self.server = EmbeddedServer(self.tmp, port, creds, sync_always=self.fsync)
        self.server.start()
        self.endpoint = Endpoint(url=self.server.url, user="operator", password=creds.operator)

    # --- the ceiling ---------------------------------------------------------------------------

    async def _ceiling(self) -> dict[str, float]:
        self.say("ceiling: raw JetStream publishes")
        nc = await connect(self.endpoint)
        js = nc.jetstream()
        stream = f"BENCH_CEILING_{os.getpid()}"
        await js.add_stream(name=stream, subjects=[f"bench.{os.getpid()}.>"], storage=api.StorageType.FILE)
        try:
            n = self.sizes.ceiling_awaited
            t0 = time.perf_counter()
            for _ in range(n):
                await js.publish(f"bench.{os.getpid()}.a", PAYLOAD)
            awaited = time.perf_counter() - t0
            n_async = self.sizes.ceiling_async
            t0 = time.perf_counter()
            for _ in range(n_async):
                await js.publish_async(f"bench.{os.getpid()}.b", PAYLOAD)
            await js.publish_async_completed()
            pipelined = time.perf_counter() - t0
        finally:
            await js.delete_stream(stream)
            await nc.close()
        return {
            "awaited_msgs_per_s": round(n / awaited),
            "awaited_us": round(awaited / n * 1e6, 1),
            "async_msgs_per_s": round(n_async / pipelined),
        }

    # --- the engine, in this process -----------------------------------------------------------

    async def _engine_figures(self) -> dict[str, Any]:
        stop = asyncio.Event()
        nc = await connect(self.endpoint, long_lived=True)
        store = Store(nc)
        await store.ensure()
        workers = combine("bench", self.tmp / "workspaces")
        tasks = Stack(store, Store(nc, source=names.SOURCE_WORKER), workers, concurrency=64).start(stop)
        client = Client(await connect(self.endpoint))
        try:
            out: dict[str, Any] = {}
            out["w1"] = await self._w1(client)
            out["w2"] = await self._w2(client)
            out["memory"] = {"peak_rss_mb": _peak_rss_mb()}
            out["w3"] = await self._w3(client)
            out["approval"] = await self._approval(client)
            out["agent_history"] = await self._agent_history(client)
            out["console"] = await self._console(client)
            return out
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await client.close()
            await nc.close()

    async def _console(self, client: Client) -> dict[str, Any]:
        """The console (headless, in this process, like `dagnats tui` with its embedded engine)
        over many runs while signals finish them: see tui/bench.py."""
        if self.console is None:
            return {"ms_p50": None, "ms_p99": None, "note": "console not measured"}
        s = self.sizes
        return await self.console(
            client, runs=s.console_runs, rate=s.console_rate, seconds=s.console_seconds, say=self.say
        )

    async def _w1(self, client: Client) -> dict[str, float]:
        self.say(f"w1: {self.sizes.w1_runs} runs of a 20-step chain, one after another")
        await _register(
            client, "bench-chain", [_echo(f"s{i}", [f"s{i - 1}"] if i else []) for i in range(20)]
        )
        gaps: list[float] = []
        await _run_and_wait(client, "bench-chain")  # warm-up
        for _ in range(self.sizes.w1_runs):
            run_id = await _run_and_wait(client, "bench-chain")
            events = [e for _, e in await client.events(run_id)]
            done = [e.at for e in events if isinstance(e, StepCompleted)]
            start = events[0].at
            gaps += [b - a for a, b in zip([start, *done], done)]
        return {"step_ms_p50": _ms(statistics.median(gaps)), "step_ms_p99": _ms(_pct(gaps, 0.99))}

    async def _w2(self, client: Client) -> dict[str, float]:
        n = self.sizes.w2_runs
        self.say(f"w2: {n} runs of 3 steps started at once")
        await _register(client, "bench-three", [_echo("a", []), _echo("b", ["a"]), _echo("c", ["b"])])
        async with _Ends(client) as ends:
            t0 = time.perf_counter()
            run_ids = await asyncio.gather(*(client.start("bench-three", i) for i in range(n)))
            await ends.wait(run_ids)
        elapsed = time.perf_counter() - t0
        return {"steps_per_s": round(3 * n / elapsed), "runs_per_s": round(n / elapsed, 1)}

    async def _w3(self, client: Client) -> dict[str, float]:
        k = self.sizes.fan_out
        self.say(f"w3: 1 step, {k} parallel steps, 1 join")
        steps = [_echo("start", [])] + [_echo(f"p{i}", ["start"]) for i in range(k)]
        steps.append(_echo("join", [f"p{i}" for i in range(k)]))
        await _register(client, "bench-fan", steps)
        t0 = time.perf_counter()
        await _run_and_wait(client, "bench-fan")
        return {"wall_ms": _ms(time.perf_counter() - t0)}

    async def _approval(self, client: Client) -> dict[str, float]:
        self.say(f"approval: {self.sizes.approvals} approvals until the next step is dispatched")
        await _register(
            client,
            "bench-approval",
            [{"id": "ok", "type": "approval", "config": {"prompt": "go?"}}, _echo("next", ["ok"])],
        )
        samples = []
        for _ in range(self.sizes.approvals):
            run_id = await client.start("bench-approval")
            while not (await client.run(run_id)).pending_approvals():
                await asyncio.sleep(0.005)
            queued = asyncio.create_task(
                _first(client, run_id, lambda e: isinstance(e, StepQueued) and e.step_id == "next")
            )
            t0 = time.time()
            await client.decide(run_id, "ok", approved=True)
            samples.append((await queued) - t0)
            await client.wait(run_id)
        return {"ms_p50": _ms(statistics.median(samples))}

    async def _agent_history(self, client: Client) -> dict[str, float]:
        turns = self.sizes.agent_turns
        self.say(f"agent history: a {turns}-turn scripted loop whose messages grow")
        script = [
            {"text": "note " + "x" * (20 * i), "tool_calls": [{"name": "list_files", "arguments": {}}]}
            for i in range(turns - 1)
        ]
        script.append({"text": "done"})
        await _register(
            client,
            "bench-agent",
            [
                {
                    "id": "agent",
                    "type": "agent_loop",
                    "config": {
                        "provider": "scripted",
                        "script": script,
                        "tools": ["list_files"],
                        "max_turns": turns + 1,
                    },
                }
            ],
        )
        run_id = await _run_and_wait(client, "bench-agent", timeout=300)
        state = await client.run(run_id)
        stored = sum(
            len(encode_event(e))
            for _, e in await client.events(run_id)
            if type(e).__name__ in ("AgentTurnRecorded", "ToolResultRecorded")
        )
        new = 0
        for t in state.steps["agent"].turns:
            new += len(t.text.encode()) + len(str(t.tool_calls).encode())
            new += sum(len(r.result.encode()) for r in t.results.values())
        return {"ratio": round(stored / max(new, 1), 2), "stored_bytes": stored, "new_bytes": new}

    # --- recovery: the engine killed, then the whole machine -----------------------------------

    async def _recovery(self) -> dict[str, Any]:
        """Two crashes of runs in flight. `engine`: the engine process alone is SIGKILLed while
        the tasks run on in a worker process of their own (a task running when its worker dies
        runs again, at-least-once, which is not what this part is about). `machine`: the
        engine, the worker and nats-server are SIGKILLed together and started again, as after
        a power cut; only the tasks in flight at that moment may run again. Either way a
        duplicate is a task that ran after its result was recorded: the target is 0."""
        result = await self._crash("engine")
        if self.server is None:  # an external NATS (--nats): not ours to kill
            self.say("recovery: the whole-machine crash needs the bench's own server (no --nats)")
            result.update(machine_first_progress_s=None, machine_all_done_s=None, machine_duplicates=None)
        else:
            machine = await self._crash("machine")
            result.update({f"machine_{k}": v for k, v in machine.items()})
            result["engine_duplicates"] = result["duplicates"]
            result["duplicates"] += machine["duplicates"]  # the figure covers both crashes
        return result

    async def _crash(self, what: str) -> dict[str, Any]:
        n = self.sizes.recovery_runs
        killed = "the engine process" if what == "engine" else "engine, worker and nats-server together"
        self.say(f"recovery: {n} runs in flight, {killed} SIGKILLed and started again")
        marks = self.tmp / f"marks-{what}"
        marks.mkdir()
        workflow = f"bench-recovery-{what}"
        steps = [
            {
                "id": f"s{i}",
                "task": "shell",
                "depends_on": [f"s{i - 1}"] if i else [],
                "config": {"command": f"date +%s.%N >> {marks}/${{run.id}}.s{i}"},
            }
            for i in range(5)
        ]
        client = Client(await connect(self.endpoint))
        try:
            await _register(client, workflow, steps)
            workers = self._process("worker", "dagnats.worker.builtins:builtin", "--concurrency", "16")
            engine = self._engine_process()
            async with _Ends(client) as before:
                run_ids = list(await asyncio.gather(*(client.start(workflow, i) for i in range(n))))
                while len(list(marks.iterdir())) < n:  # wait until work is well under way
                    await asyncio.sleep(0.01)
                ended_before = set(before.ended)
            doomed: list[subprocess.Popen[Any]] = [engine] if what == "engine" else [engine, workers]
            if what == "machine":
                assert self.server is not None and self.server.proc is not None
                doomed.append(self.server.proc)
            for proc in doomed:
                proc.send_signal(signal.SIGKILL)
            for proc in doomed:
                proc.wait()
            crashed_at = time.time()
            t0 = time.perf_counter()
            if what == "machine":
                await client.close()
                assert self.server is not None
                self.server.start()
                client = Client(await connect(self.endpoint))
            async with _Ends(client) as ends:
                seen = await _engine_events(client)
                engine = self._engine_process()
                if what == "machine":
                    workers = self._process(
                        "worker", "dagnats.worker.builtins:builtin", "--concurrency", "16"
                    )
                while seen["count"] == 0:
                    await asyncio.sleep(0.005)
                first = time.perf_counter() - t0
                await ends.wait(run_ids, timeout=300, already=ended_before)
                done = time.perf_counter() - t0
            for proc in (engine, workers):
                proc.send_signal(signal.SIGTERM)
            for proc in (engine, workers):
                proc.wait(30)
            duplicates, reran = await _repeats(client, run_ids, marks, crashed_at)
        finally:
            await client.close()
        return {
            "first_progress_s": round(first, 3),
            "all_done_s": round(done, 2),
            "duplicates": duplicates,
            "reran_in_flight": reran,
        }

    def _engine_process(self) -> subprocess.Popen[bytes]:
        """The engine and timers alone: the tasks run in a worker process of their own, which
        goes on working (and reporting) while the engine is dead."""
        return self._process("serve", "--no-workers", "--data-dir", str(self.tmp / "engine"))

    def _process(self, *args: str) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "DAGNATS_NATS_USER": self.endpoint.user or "",
            "DAGNATS_NATS_PASSWORD": self.endpoint.password or "",
            "DAGNATS_TASK_ACK_WAIT": "2",
        }
        if self.endpoint.token:
            env["DAGNATS_NATS_TOKEN"] = self.endpoint.token
        return subprocess.Popen(
            [sys.executable, "-m", "dagnats", *args, "--nats", self.endpoint.url],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


# --- helpers -----------------------------------------------------------------------------------


def _echo(sid: str, deps: list[str]) -> dict[str, Any]:
    return {"id": sid, "task": "echo", "depends_on": deps}


async def _register(client: Client, name: str, steps: list[dict[str, Any]]) -> None:
    await client.register(parse_definition({"name": name, "steps": steps}))


async def _run_and_wait(client: Client, workflow: str, timeout: float = 120) -> str:
    """Start a run and wait until its history says it ended. (Not `client.wait`, which folds
    every event in this process, taking CPU from the engine being measured.)"""
    async with _Ends(client) as ends:
        run_id = await client.start(workflow)
        await ends.wait([run_id], timeout)
    state = await client.run(run_id)
    if state.status != "completed":
        raise RuntimeError(f"bench run {run_id} of {workflow} ended {state.status}: {state.error}")
    return run_id


class _Ends:
    """The runs that end, heard from the history with one subscription opened before they
    start (no per-run reads that would cost the engine in this process its CPU)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.ended: set[str] = set()
        self.changed = asyncio.Event()
        self.sub: Any = None

    async def __aenter__(self) -> _Ends:
        async def on_event(msg: Any) -> None:
            if b'"run.completed"' in msg.data or b'"run.failed"' in msg.data:
                self.ended.add(names.run_of_history_subject(msg.subject))
                self.changed.set()

        self.sub = await self.client.nc.subscribe(f"{names.HISTORY_PREFIX}.>", cb=on_event)
        await self.client.nc.flush()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.sub.unsubscribe()

    async def wait(
        self, run_ids: list[str], timeout: float = 300, already: frozenset[str] | set[str] = frozenset()
    ) -> None:
        self.ended |= already

        async def all_ended() -> None:
            while not self.ended.issuperset(run_ids):
                self.changed.clear()
                try:
                    await asyncio.wait_for(self.changed.wait(), 2.0)
                except TimeoutError:  # an end published as a server died may never reach us
                    for run_id in set(run_ids) - self.ended:
                        if (await self.client.run(run_id)).status in RUN_TERMINAL:
                            self.ended.add(run_id)

        await asyncio.wait_for(all_ended(), timeout)


async def _first(client: Client, run_id: str, match: Callable[[Any], bool]) -> float:
    async for _seq, event in client.follow(run_id):
        if match(event):
            return time.time()
    raise RuntimeError("run ended first")


async def _repeats(client: Client, run_ids: list[str], marks: Path, crashed_at: float) -> tuple[int, int]:
    """(executions begun after their step's result was recorded, other executions beyond the
    first: tasks in flight at the crash, at-least-once). Marks hold one start time per line."""
    duplicates = reran = 0
    for run_id in run_ids:
        recorded = {e.step_id: e.at for _, e in await client.events(run_id) if isinstance(e, StepCompleted)}
        for sid, at in recorded.items():
            path = marks / f"{run_id}.{sid}"
            began = [float(t) for t in path.read_text().split()] if path.exists() else []
            late = sum(1 for t in began if t > at + 0.002)
            duplicates += late
            reran += max(0, len(began) - 1 - late)
    return duplicates, reran


async def _engine_events(client: Client) -> dict[str, int]:
    seen = {"count": 0}

    async def on_event(_msg: Any) -> None:
        seen["count"] += 1

    # the engine's own events: the workers, alive all along, keep recording theirs
    await client.nc.subscribe(names.history_subject("*", names.SOURCE_ENGINE), cb=on_event)
    await client.nc.flush()
    return seen


def _ratios(result: dict[str, Any]) -> dict[str, float]:
    ceiling = result["ceiling"]
    return {
        "w1_step_in_awaited_publishes": round(result["w1"]["step_ms_p50"] * 1000 / ceiling["awaited_us"], 1),
        "w2_steps_vs_async_publishes": round(result["w2"]["steps_per_s"] / ceiling["async_msgs_per_s"], 4),
        "w2_steps_vs_awaited_publishes": round(
            result["w2"]["steps_per_s"] / ceiling["awaited_msgs_per_s"], 3
        ),
    }


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Check = Callable[[float, bool], bool]
"""Whether a figure meets its target, given the figure and whether the run fsyncs."""

TARGETS: list[tuple[str, str, str, Check | None]] = [
    ("w1", "step_ms_p50", "≤ 1.0 ms (fsync ≤ 1.5)", lambda v, f: v <= (1.5 if f else 1.0)),
    ("w1", "step_ms_p99", "≤ 5 ms", lambda v, f: v <= 5),
    ("w2", "steps_per_s", "≥ 2500 (fsync ≥ 1000)", lambda v, f: v >= (1000 if f else 2500)),
    ("w2", "runs_per_s", "", None),
    ("w3", "wall_ms", "≤ 50 ms", lambda v, f: v <= 50),
    ("approval", "ms_p50", "≤ 10 ms", lambda v, f: v <= 10),
    ("recovery", "first_progress_s", "≤ 1 s", lambda v, f: v <= 1),
    ("recovery", "all_done_s", "", None),
    ("recovery", "duplicates", "0", lambda v, f: v == 0),
    ("recovery", "machine_first_progress_s", "", None),
    ("recovery", "machine_all_done_s", "", None),
    ("recovery", "machine_duplicates", "0", lambda v, f: v == 0),
    ("recovery", "machine_reran_in_flight", "", None),
    ("agent_history", "ratio", "≤ 1.5", lambda v, f: v <= 1.5),
    ("memory", "peak_rss_mb", "≤ 150 MB", lambda v, f: v <= 150),
    ("console", "ms_p50", "≤ 100 ms", lambda v, f: v <= 100),
    ("console", "ms_p99", "≤ 250 ms", lambda v, f: v <= 250),
    ("console", "key_ms_p50", "", None),
    ("console", "key_ms_p99", "", None),
]


def table(result: dict[str, Any]) -> str:
    c = result["ceiling"]
    lines = [
        f"ceiling: awaited publish {c['awaited_msgs_per_s']} msg/s ({c['awaited_us']} µs each), "
        f"pipelined {c['async_msgs_per_s']} msg/s" + (" [fsync always]" if result["fsync"] else ""),
        "",
        f"{'figure':<34} {'value':>10}  {'target':<24} met",
    ]
    for section, key, target, check in TARGETS:
        value = result[section].get(key)
        met = "" if check is None or value is None else ("yes" if check(value, result["fsync"]) else "NO")
        shown = "n/a" if value is None else str(value)
        lines.append(f"{section + '.' + key:<34} {shown:>10}  {target:<24} {met}")
    lines.append("")
    lines += [f"{k}: {v}" for k, v in result["ratios"].items()]
    return "\n".join(lines)


async def run(
    quick: bool,
    fsync: bool,
    nats_url: str | None,
    tiny: bool = False,
    say: Callable[[str], None] = lambda s: None,
    console: ConsoleMeasure | None = None,
) -> dict[str, Any]:
    sizes = TINY if tiny else QUICK if quick else FULL
    return await Bench(sizes, fsync, nats_url, say, console).run()


__all__ = ["run", "table", "nats"]
