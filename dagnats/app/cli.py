"""The `dagnats` command line. Exit codes: 0 ok, 1 user error, 2 usage error, 130 interrupted."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from nats import errors as nats_errors
from nats.js import errors as js_errors

from dagnats.api import views
from dagnats.errors import UserError
from dagnats.nats import names

from .output import exit_by_deadline, say, silence_broken

LOST = (nats_errors.ConnectionClosedError, nats_errors.NoServersError, nats_errors.StaleConnectionError)
# JetStream's 503s: a stream (or the cluster's meta leader) without a leader right now.
UNAVAILABLE = (
    js_errors.ServiceUnavailableError,
    js_errors.NoStreamResponseError,
    nats_errors.NoRespondersError,
)


def _nats_trouble(exc: Exception) -> str:
    """The one line for a NATS failure no command handled itself."""
    if isinstance(exc, LOST):
        return "lost the connection to NATS: is `dagnats serve` still running?"
    if isinstance(exc, UNAVAILABLE):  # a stream with no leader: never "no data"
        from dagnats.nats.store import Unavailable

        return str(Unavailable())
    return (
        "NATS did not answer in time: check that the server is up (on a cluster, that the streams "
        "have a leader: `dagnats status`) and that these credentials may do this (a worker's may not "
        "approve, cancel or start runs)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("nats.js.kv").setLevel(logging.ERROR)  # warns on every filtered watch
    try:
        result = args.handler(args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return int(result or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `dagnats run list | head`: the reader has all it wanted
        silence_broken()
        return 0
    except (*LOST, *UNAVAILABLE, nats_errors.TimeoutError) as exc:
        print(f"error: {_nats_trouble(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:
        if os.environ.get("DAGNATS_DEBUG"):
            traceback.print_exc()
        print(
            f"internal error: {type(exc).__name__}: {exc} (set DAGNATS_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1


def build_parser() -> argparse.ArgumentParser:
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument(
        "--nats",
        metavar="URL[,URL...]",
        help="NATS URL, or several nodes of a cluster comma-separated (default: $DAGNATS_NATS_URL, "
        "else the local server)",
    )
    conn.add_argument(
        "--data-dir",
        metavar="D",
        help="data directory (default: $DAGNATS_DATA_DIR or ~/.local/share/dagnats)",
    )
    js = argparse.ArgumentParser(add_help=False)
    js.add_argument("--json", action="store_true", help="print one JSON document")

    p = argparse.ArgumentParser(prog="dagnats", description="Durable DAG workflows on NATS JetStream.")
    sub = p.add_subparsers(metavar="COMMAND")

    s = sub.add_parser("serve", parents=[conn], help="run NATS, the engine and the built-in workers")
    s.add_argument("--port", type=int, default=4222, help="port of the embedded server (default 4222)")
    s.add_argument(
        "--worker", action="append", default=[], metavar="MODULE:ATTR", help="also serve these tasks"
    )
    s.add_argument("--concurrency", type=int, default=16, help="tasks run at once by the built-in workers")
    s.add_argument(
        "--no-workers",
        dest="builtins",
        action="store_false",
        help="run the engine and timers only; tasks are left to `dagnats worker` processes",
    )
    s.add_argument(
        "--fsync",
        action="store_true",
        help="the embedded server fsyncs every write (sync_interval: always); slower, survives power loss",
    )
    s.add_argument(
        "--replicas",
        type=int,
        default=1,
        metavar="N",
        help="copies of every stream and bucket on a NATS cluster (with --nats; default 1); "
        "existing ones with fewer are raised",
    )
    s.add_argument("-v", "--verbose", action="store_true")
    s.set_defaults(handler=cmd_serve)

    x = sub.add_parser("tui", parents=[conn], help="the operator console (starts a server if none runs)")
    x.add_argument("--port", type=int, default=4222, help="port of the embedded server, if one is started")
    x.set_defaults(handler=cmd_tui)
    x = sub.add_parser("demo", help="a throwaway server with example runs of every step type, in the console")
    x.add_argument("--data-dir", metavar="D", help="keep the demo's data here (default: a new temporary dir)")
    x.add_argument("--no-console", action="store_true", help="seed the runs, print them, keep serving")
    x.set_defaults(handler=cmd_demo)

    w = sub.add_parser("worker", parents=[conn], help="run the tasks of a Python Worker")
    w.add_argument("spec", metavar="MODULE:ATTR")
    w.add_argument("--concurrency", type=int, default=8)
    w.add_argument("-v", "--verbose", action="store_true")
    w.set_defaults(handler=cmd_worker)

    group = sub.add_parser("workflow", help="register, validate, list and show workflows")
    group.set_defaults(handler=_usage(group))
    wf = group.add_subparsers(metavar="ACTION")
    x = wf.add_parser(
        "register", parents=[conn], help="validate and store definitions (new version if changed)"
    )
    x.add_argument("files", nargs="+", metavar="FILE")
    x.add_argument("--json", action="store_true")
    x.set_defaults(handler=cmd_workflow_register)
    x = wf.add_parser("validate", help="check definition files without a server")
    x.add_argument("files", nargs="+", metavar="FILE")
    x.add_argument("--json", action="store_true")
    x.set_defaults(handler=cmd_workflow_validate)
    x = wf.add_parser("list", parents=[conn, js], help="registered workflows (latest versions)")
    x.set_defaults(handler=cmd_workflow_list)
    x = wf.add_parser("show", parents=[conn, js], help="one workflow's definition")
    x.add_argument("name", metavar="NAME[@VERSION]")
    x.set_defaults(handler=cmd_workflow_show)

    group = sub.add_parser("run", help="start, watch and steer runs")
    group.set_defaults(handler=_usage(group))
    r = group.add_subparsers(metavar="ACTION")
    x = r.add_parser("start", parents=[conn, js], help="start a run of a workflow")
    x.add_argument("workflow", metavar="WORKFLOW[@VERSION]")
    given = x.add_mutually_exclusive_group()
    given.add_argument("--input", metavar="JSON", help="run input as JSON")
    given.add_argument("--input-file", metavar="F", help="read the run input from a JSON file")
    x.add_argument("--wait", action="store_true", help="block until the run ends; exit 1 unless it completed")
    x.set_defaults(handler=cmd_run_start)
    x = r.add_parser("list", parents=[conn, js], help="runs, newest first")
    x.add_argument("--status")
    x.add_argument("--workflow")
    x.add_argument("--limit", type=int, default=50)
    x.set_defaults(handler=cmd_run_list)
    x = r.add_parser("show", parents=[conn, js], help="a run's status, steps and lineage")
    x.add_argument("run_id", metavar="RUN_ID")
    x.set_defaults(handler=cmd_run_show)
    x = r.add_parser("events", parents=[conn, js], help="a run's event history")
    x.add_argument("run_id", metavar="RUN_ID")
    x.add_argument("--follow", "-f", action="store_true", help="keep printing new events until the run ends")
    x.set_defaults(handler=cmd_run_events)
    x = r.add_parser("output", parents=[conn], help="print a completed run's output as JSON")
    x.add_argument("run_id", metavar="RUN_ID")
    x.set_defaults(handler=cmd_run_output)
    x = r.add_parser("cancel", parents=[conn], help="cancel a run")
    x.add_argument("run_id", metavar="RUN_ID")
    x.add_argument("--reason", default="")
    x.set_defaults(handler=cmd_run_cancel)
    x = r.add_parser("fork", parents=[conn, js], help="re-run a run from one of its steps, as a new run")
    x.add_argument("run_id", metavar="RUN_ID")
    x.add_argument(
        "--from", dest="from_step", required=True, metavar="STEP", help="the first step to run again"
    )
    x.add_argument("--input", metavar="JSON", help="a new input for that step")
    x.add_argument(
        "--turn", type=int, metavar="N", help="agent_loop: keep the first N turns of its transcript"
    )
    x.set_defaults(handler=cmd_run_fork)
    x = r.add_parser("signal", parents=[conn], help="send a named signal (for wait_for_event steps)")
    x.add_argument("run_id", metavar="RUN_ID")
    x.add_argument("name", metavar="NAME")
    x.add_argument("data", metavar="JSON", nargs="?", default=None)
    x.set_defaults(handler=cmd_run_signal)
    x = sub.add_parser("status", parents=[conn, js], help="what is alive: NATS, streams, engines, workers")
    x.set_defaults(handler=cmd_status)
    x = sub.add_parser("bench", parents=[js], help="measure the engine through the public paths")
    x.add_argument("--quick", action="store_true", help="smaller workloads: under 3 minutes on 2 cores")
    x.add_argument("--fsync", action="store_true", help="run the server with sync_interval: always")
    x.add_argument(
        "--nats",
        metavar="URL[,URL...]",
        help="measure against this NATS (or cluster) instead of a fresh embedded one",
    )
    x.add_argument(
        "--replicas",
        type=int,
        default=1,
        metavar="N",
        help="copies of the streams the bench creates (with --nats on a cluster; default 1)",
    )
    x.add_argument(
        "--engine",
        choices=["process", "inline"],
        default="process",
        help="the engine in a `dagnats serve --no-workers` process (default) or in the bench's own",
    )
    x.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the test suite's smoke run
    x.set_defaults(handler=cmd_bench)
    group = sub.add_parser("approval", help="what waits for an operator: list, approve, deny")
    group.set_defaults(handler=_usage(group))
    a = group.add_subparsers(metavar="ACTION")
    x = a.add_parser("list", parents=[conn, js], help="pending approvals across all runs, oldest first")
    x.set_defaults(handler=cmd_approval_list)
    x = a.add_parser("approve", parents=[conn], help="approve what a step waits for")
    x.add_argument("run_id", metavar="RUN_ID")
    x.add_argument("step_id", metavar="STEP")
    x.add_argument("--id", dest="approval_id", help="which approval, when the step has several")
    x.add_argument("--comment", default="")
    x.add_argument(
        "--digest", help="the digest `approval list --json` showed: refused if the request changed since"
    )
    x.set_defaults(handler=cmd_approval_approve)
    x = a.add_parser("deny", parents=[conn], help="deny what a step waits for")
    x.add_argument("run_id", metavar="RUN_ID")
    x.add_argument("step_id", metavar="STEP")
    x.add_argument("--id", dest="approval_id", help="which approval, when the step has several")
    x.add_argument("--reason", required=True)
    x.add_argument(
        "--digest", help="the digest `approval list --json` showed: refused if the request changed since"
    )
    x.set_defaults(handler=cmd_approval_deny)
    return p


# --- helpers -----------------------------------------------------------------------------------


def _usage(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def show(_args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, default=str))


async def _with_client(args: argparse.Namespace, fn: Callable[[Any], Awaitable[int | None]]) -> int:
    from dagnats.api.client import Client

    client = await Client.connect(args.nats, args.data_dir)
    try:
        return int(await fn(client) or 0)
    except nats_errors.TimeoutError:
        if not client.nc._server_info.get("cluster"):
            raise
        # On a cluster a request nobody answers is, nearly always, one for a stream (or the
        # meta leader) without a leader right now.
        from dagnats.nats.store import Unavailable

        raise Unavailable() from None
    finally:
        await client.close()


# --- commands ----------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> Any:
    from dagnats.api.loader import load_object
    from dagnats.worker import Worker

    from .serve import serve

    if args.fsync and args.nats:
        raise UserError(
            f"--fsync applies to the embedded server only; the sync setting of the NATS at {args.nats} "
            "is its own: set `jetstream { sync_interval: always }` in that server's config, or drop --nats"
        )
    workers = [_as_worker(load_object(spec), spec, Worker) for spec in args.worker]
    return serve(
        data_dir=args.data_dir,
        port=args.port,
        nats_url=args.nats,
        workers=workers,
        concurrency=args.concurrency,
        builtins=args.builtins,
        fsync=args.fsync,
        replicas=args.replicas,
    )


def _console_logging(data_dir: Any) -> None:
    """While the console owns the terminal, log lines would scribble over it: send them to a
    file in the data dir instead."""
    from dagnats.nats.datadir import ensure

    ensure(data_dir)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(logging.FileHandler(data_dir / "console.log"))


async def cmd_tui(args: argparse.Namespace) -> int:
    from dagnats.nats.datadir import resolve
    from tui.app import run_console

    _console_logging(resolve(args.data_dir))
    await run_console(args.nats, args.data_dir, port=args.port)
    return 0


async def cmd_demo(args: argparse.Namespace) -> int:
    import socket
    import tempfile
    from pathlib import Path

    from tui.app import run_console

    from .demo import seed

    path = Path(args.data_dir or tempfile.mkdtemp(prefix="dagnats-demo-")).resolve()
    with socket.socket() as s:  # a free port: the demo must not collide with a real server
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work = path / "demo-work"
    work.mkdir(parents=True, exist_ok=True)

    if args.no_console:
        from dagnats.api.client import Client

        from .serve import LocalStack

        stack = LocalStack(data_dir=path, port=port)
        await stack.start()
        try:
            async with await Client.connect(endpoint=stack.endpoint) as client:
                ids = await seed(client, work)
            say(f"dagnats demo: {len(ids)} runs started; server at {stack.endpoint.url}, data in {path}")
            say(f"  look: DAGNATS_DATA_DIR={path} dagnats run list   (Ctrl-C stops the demo)")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            import signal

            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stack.wait(stop)
        finally:
            await stack.stop()
        return 0

    _console_logging(path)

    async def setup(client: Any) -> None:
        await seed(client, work)

    await run_console(None, None, port=port, setup=setup, embedded_dir=str(path))
    print(f"dagnats demo: data kept in {path}; `DAGNATS_DATA_DIR={path} dagnats tui` reopens it")
    return 0


def _as_worker(obj: Any, spec: str, kind: type) -> Any:
    if not isinstance(obj, kind):
        raise UserError(f"{spec} is a {type(obj).__name__}, not a dagnats Worker")
    return obj


async def cmd_worker(args: argparse.Namespace) -> int:
    import signal

    from dagnats.api.loader import load_object
    from dagnats.nats.connection import close as _close
    from dagnats.nats.connection import connect, resolve_endpoint
    from dagnats.nats.store import Store
    from dagnats.worker import Worker

    worker = _as_worker(load_object(args.spec), args.spec, Worker)
    if not worker.handlers and not worker.tools:
        raise UserError(f"{args.spec} registers no tasks and no tools")
    endpoint = resolve_endpoint(args.nats, args.data_dir, role="worker")
    nc = await connect(endpoint, name="dagnats-worker", long_lived=True)
    store = Store(nc, source=names.SOURCE_WORKER)
    await store.require()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _stop_or_quit(stop))
    serving = sorted(worker.handlers) + [f"tool {t}" for t in sorted(worker.tools)]
    say(f"dagnats worker {worker.name}: serving {', '.join(serving)}")
    await _drained(asyncio.create_task(worker.run(store, stop, concurrency=args.concurrency)), stop)
    await _close(nc)
    return 0


async def _drained(running: asyncio.Task[None], stop: asyncio.Event) -> None:
    """Until `running` ends: once `stop` is set, for at most DRAIN_SECONDS, then the tasks still
    in hand are cancelled (and handed out again), so a stop never waits on a long task."""
    from .serve import DRAIN_SECONDS

    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([running, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    done, _ = await asyncio.wait([running], timeout=DRAIN_SECONDS)
    if done:
        running.result()  # a worker that failed says why
        return
    say(f"dagnats: tasks still in hand after {DRAIN_SECONDS:.0f}s go back to the queue", err=True)
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)


def _stop_or_quit(stop: asyncio.Event) -> Callable[[], None]:
    """First signal: finish the tasks in hand (for a few seconds). Second: leave now (their
    tasks are redelivered)."""

    def handle() -> None:
        if stop.is_set():
            say("dagnats: stopping now; unfinished tasks go back to the queue", err=True)
            os._exit(130)
        stop.set()  # first: nothing below may keep the stop from being signalled
        exit_by_deadline("dagnats worker")
        say("dagnats: finishing the tasks in hand (signal again to stop now)", err=True)

    return handle


def _load_all(files: list[str]) -> list[Any]:
    from dagnats.api.loader import load_files

    return load_files(files)


def cmd_workflow_validate(args: argparse.Namespace) -> int:
    from dagnats.api.loader import load_files

    results, failed = [], 0
    for f in args.files:
        try:
            for wf in load_files([f]):
                results.append({"file": f, "ok": True, "name": wf.name, "steps": len(wf.steps)})
        except UserError as exc:
            failed += 1
            results.append({"file": f, "ok": False, "error": str(exc)})
    if args.json:
        _print_json(results)
    else:
        for r in results:
            if r["ok"]:
                print(f"{r['file']}: ok ({r['name']}, {r['steps']} steps)")
            else:
                print(f"error: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


async def cmd_workflow_register(args: argparse.Namespace) -> int:
    definitions = _load_all(args.files)  # all valid, or nothing is registered

    async def go(client: Any) -> None:
        out = []
        for wf in definitions:
            version, created = await client.register(wf)
            out.append({"name": wf.name, "version": version, "created": created})
        if args.json:
            _print_json(out)
        else:
            for r in out:
                state = "registered" if r["created"] else "unchanged,"
                print(f"{r['name']}: {state} version {r['version']}")

    return await _with_client(args, go)


async def cmd_workflow_list(args: argparse.Namespace) -> int:
    async def go(client: Any) -> None:
        latest: dict[str, Any] = {}
        versions: dict[str, list[int]] = {}
        for wfv in await client.workflows():
            versions.setdefault(wfv.name, []).append(wfv.version)
            if wfv.name not in latest or wfv.version > latest[wfv.name].version:
                latest[wfv.name] = wfv
        docs = [views.workflow_doc(latest[n], sorted(versions[n])) for n in sorted(latest)]
        for d in docs:
            d.pop("definition")
        if args.json:
            _print_json(docs)
        elif not docs:
            print("no workflows registered yet: `dagnats workflow register FILE`")
        else:
            rows = [[d["name"], str(d["version"]), str(d["steps"]), d["description"][:50]] for d in docs]
            print(views.table(rows, ["name", "version", "steps", "description"]))

    return await _with_client(args, go)


async def cmd_workflow_show(args: argparse.Namespace) -> int:
    from dagnats.api.client import parse_workflow_ref

    name, version = parse_workflow_ref(args.name)

    async def go(client: Any) -> None:
        wfv = await client.workflow(name, version)
        versions = await client.store.workflow_versions(name)
        doc = views.workflow_doc(wfv, versions)
        if args.json:
            _print_json(doc)
        else:
            print(f"{wfv.name} version {wfv.version} (versions: {', '.join(map(str, versions))})")
            print(json.dumps(doc["definition"], indent=2))

    return await _with_client(args, go)


async def cmd_run_start(args: argparse.Namespace) -> int:
    from dagnats.api.loader import parse_json_arg

    run_input: Any = None
    if args.input is not None:
        run_input = parse_json_arg(args.input, "--input")
    elif args.input_file is not None:
        try:
            with open(args.input_file) as f:
                run_input = parse_json_arg(f.read(), args.input_file)
        except OSError as exc:
            raise UserError(f"{args.input_file}: cannot read: {exc.strerror}") from None

    async def go(client: Any) -> int:
        run_id = await client.start(args.workflow, run_input)
        if not args.wait:
            _print_json({"run_id": run_id}) if args.json else print(run_id)
            return 0
        if not args.json:
            print(run_id, flush=True)
        warner = asyncio.create_task(_warn_unserved(client, run_id))
        try:
            state = await _until_end(client, run_id, progress=not args.json)
        finally:
            warner.cancel()
        if args.json:
            _print_json(
                {"run_id": run_id, "status": state.status, "output": state.output, "error": state.error}
            )
        else:
            print(f"{state.status}" + (f": {state.error}" if state.error else ""))
        return 0 if state.status == "completed" else 1

    return await _with_client(args, go)


async def _until_end(client: Any, run_id: str, *, progress: bool) -> Any:
    """The run's end state; with `progress`, a line on stderr for each step as it goes (that
    takes a consumer; without it, `Client.wait` takes none)."""
    if not progress:
        return await client.wait(run_id)
    async for _seq, event in client.follow(run_id):
        if line := views.progress_line(event):
            print(line, file=sys.stderr, flush=True)
    return await client.run(run_id)


async def _warn_unserved(client: Any, run_id: str, every: float = 1.0) -> None:
    """Warn once per step that stays queued with no live worker for its task (the run waits on)."""
    from dagnats.nats.heartbeat import NO_WORKER_GRACE

    first_seen: dict[str, float] = {}
    warned: set[str] = set()
    while True:
        await asyncio.sleep(every)
        try:
            unserved = await client.unserved(await client.run(run_id))
        except Exception:  # a hint only: never let it end the wait
            continue
        now = time.monotonic()
        for sid in list(first_seen):
            if sid not in unserved:
                del first_seen[sid]
        for sid, task in unserved.items():
            if sid not in warned and now - first_seen.setdefault(sid, now) >= NO_WORKER_GRACE:
                warned.add(sid)
                print(views.no_worker_warning(sid, task), file=sys.stderr, flush=True)


async def cmd_run_list(args: argparse.Namespace) -> int:
    async def go(client: Any) -> None:
        states = await client.runs(status=args.status, workflow=args.workflow, limit=args.limit)
        if args.json:
            _print_json([views.summary_doc(s) for s in states])
            return
        if not states:
            print("no runs")
            return
        now = time.time()
        rows = []
        for s in states:
            rows.append(
                [
                    s.run_id,
                    f"{s.workflow}@{s.version}",
                    s.status,
                    f"{s.steps_done}/{s.steps_total}",
                    views.age(s.created_at, now),
                ]
            )
        print(views.table(rows, ["run id", "workflow", "status", "steps", "age"]))

    return await _with_client(args, go)


async def cmd_run_show(args: argparse.Namespace) -> int:
    async def go(client: Any) -> None:
        state = await client.run(args.run_id)
        unserved = await client.unserved(state)
        doc = views.run_doc(state, unserved)
        if args.json:
            _print_json(doc)
            return
        print(f"run {state.run_id}  {state.workflow}@{state.version}  {state.status}")
        print(
            f"created {doc['created_at']}"
            + (f"  finished {doc['finished_at']}" if doc["finished_at"] else "")
        )
        if state.error:
            print(f"error: {state.error}")
        rows = []
        for sid, step in doc["steps"].items():
            detail = step["error"] or ("" if step["output"] is None else json.dumps(step["output"]))
            status = views.no_worker_text(unserved[sid]) if sid in unserved else step["status"]
            rows.append([sid, status, str(step["attempts"]), detail[:70]])
        print(views.table(rows, ["step", "status", "attempts", "output / error"]))

    return await _with_client(args, go)


async def cmd_run_events(args: argparse.Namespace) -> int:
    async def go(client: Any) -> None:
        if args.follow:
            async for seq, event in client.follow(args.run_id):
                print(
                    json.dumps(views.event_doc(seq, event), default=str)
                    if args.json
                    else views.event_line(seq, event),
                    flush=True,
                )
            return
        events = await client.events(args.run_id)
        if args.json:
            _print_json([views.event_doc(seq, ev) for seq, ev in events])
        else:
            for seq, ev in events:
                print(views.event_line(seq, ev))

    return await _with_client(args, go)


async def cmd_run_output(args: argparse.Namespace) -> int:
    async def go(client: Any) -> None:
        state = await client.run(args.run_id)
        if state.status != "completed":
            extra = f": {state.error}" if state.error else ""
            raise UserError(f"run {args.run_id} is {state.status}{extra}; only a completed run has an output")
        _print_json(state.output)

    return await _with_client(args, go)


async def cmd_run_cancel(args: argparse.Namespace) -> int:
    async def go(client: Any) -> None:
        await client.cancel(args.run_id, args.reason)
        print(f"cancel requested for run {args.run_id}")

    return await _with_client(args, go)


async def cmd_run_fork(args: argparse.Namespace) -> int:
    import msgspec

    from dagnats.api.loader import parse_json_arg

    new_input = parse_json_arg(args.input, "--input") if args.input is not None else msgspec.UNSET

    async def go(client: Any) -> None:
        new_id = await client.fork(args.run_id, args.from_step, input=new_input, turn=args.turn)
        _print_json({"run_id": new_id}) if args.json else print(new_id)

    return await _with_client(args, go)


async def cmd_run_signal(args: argparse.Namespace) -> int:
    from dagnats.api.loader import parse_json_arg

    data = parse_json_arg(args.data, "signal data") if args.data is not None else None

    async def go(client: Any) -> None:
        await client.signal(args.run_id, args.name, data)
        print(f"signal {args.name!r} sent to run {args.run_id}")

    return await _with_client(args, go)


async def cmd_status(args: argparse.Namespace) -> int:
    from . import status

    async def go(client: Any) -> None:
        doc = await status.collect(client)
        from .serve import embedded_fsync

        external = args.nats or os.environ.get("DAGNATS_NATS_URL")  # else the data dir's own server
        doc["server"]["fsync"] = None if external else embedded_fsync(args.data_dir)
        _print_json(doc) if args.json else print(status.text(doc))

    return await _with_client(args, go)


async def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    def say(line: str) -> None:
        print(f"bench: {line}", file=sys.stderr, flush=True)

    from tui import bench as console_bench

    result = await bench.run(
        args.quick,
        args.fsync,
        args.nats,
        tiny=args.tiny,
        say=say,
        console=console_bench.measure,
        engine=args.engine,
        first_screen=console_bench.first_screen,  # scale.console_first_screen_ms
        replicas=args.replicas,
    )
    if args.json:
        _print_json(result)
    else:
        print(bench.table(result))
    return 0


async def cmd_approval_list(args: argparse.Namespace) -> int:
    async def go(client: Any) -> None:
        pending = await client.approvals()
        if args.json:
            _print_json([views.approval_doc(p.run_id, p.workflow, p.approval) for p in pending])
            return
        if not pending:
            print("nothing waits for approval")
            return
        now = time.time()
        rows = [
            [
                p.run_id,
                p.approval.step_id,
                p.approval.kind,
                views.age(p.approval.requested_at, now),
                views.approval_summary(p.approval)[:60],
            ]
            for p in pending
        ]
        print(views.table(rows, ["run id", "step", "kind", "age", "asks"]))

    return await _with_client(args, go)


async def cmd_approval_approve(args: argparse.Namespace) -> int:
    return await _decide(args, approved=True, comment=args.comment)


async def cmd_approval_deny(args: argparse.Namespace) -> int:
    return await _decide(args, approved=False, comment=args.reason)


async def _decide(args: argparse.Namespace, *, approved: bool, comment: str) -> int:
    async def go(client: Any) -> None:
        approval = await client.decide(
            args.run_id,
            args.step_id,
            approved=approved,
            comment=comment,
            approval_id=args.approval_id,
            digest=args.digest,
        )
        verb = "approved" if approved else "denied"
        print(f"{verb} {approval.kind} {approval.approval_id} of run {args.run_id}")

    return await _with_client(args, go)


if __name__ == "__main__":
    sys.exit(main())
