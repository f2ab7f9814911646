"""The workflows and runs behind `dagnats demo`: something to look at in the console.

`dagnats demo` starts an embedded server, engine, timers and the built-in workers (`echo`,
`shell`, `sleep`, the agent runtime with the offline `scripted` provider) on a fresh data dir,
then calls `seed`, which registers the workflows of `demo_workflows` and starts these runs
(workflow: what it shows -> how it ends, at pace 1):

- `hello` x2: two plain tasks, `echo` then `shell` -> completed within a second.
- `release` x2: a 10-step diamond (checkout; lint, unit and integration tests in parallel;
  build; package, docs and a durable `sleep` soak; publish; announce) -> completed after ~55 s.
- `fanout`: a `map` over 10 shards, 3 at a time, each a `sleep` task -> completed after ~15 s.
- `nightly`: a durable `sleep`, then two `sub_workflow` children (`hello`, `fanout`) in
  parallel -> completed after ~35 s, with two child runs.
- `countdown`: `continue_as_new`, one generation per count from 3 -> two runs `continued`,
  the third completed.
- `backup`: a `shell` step that exits 3, retried once -> failed with
  `step upload failed: exit code 3: upload failed: bucket is read-only`.
- `listener`: `wait_for_event` -> waiting until `dagnats run signal RUN deploy-window`.
- `deploy`: a canary `sleep`, then an `approval` step -> waiting (approval kind `step`).
- `assistant`: a scripted `agent_loop` whose `run_command` call is in `approve_tools` ->
  waiting on that exact call (kind `tool_call`); approved, the agent runs it and finishes.
- `triage`: a scripted `planner` with `review: true` -> waiting (kind `plan`); approved, the
  plan (shell, sleep and echo steps) runs inside the run.
- `coding`: the coding pipeline of examples/coding.yaml: a git repository with a bug, a
  planner whose plan runs, an agent that fixes the bug, the tests -> waiting at the `ship`
  approval (kind `step`); approved, it commits.

Everything is defined here in Python (no data files) and runs offline: the agents and
planners use the `scripted` provider, and the shell steps need only `sh`, `git` and `python3`.
`pace` scales every sleep, so tests can run the whole set in a few seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dagnats.api.client import Client
from dagnats.core.definition import WorkflowDef, parse_definition

__all__ = ["demo_workflows", "seed"]

GIT = "git -c user.name=dagnats -c user.email=dagnats@localhost"


class _Pace:
    """Scales the demo's sleeps: `pace=1.0` is the real demo, `0.05` a test."""

    def __init__(self, pace: float) -> None:
        if not pace > 0:
            raise ValueError(f"pace must be > 0, got {pace!r}")
        self.pace = pace

    def __call__(self, seconds: float) -> float:
        """A duration in seconds, for `duration`, `initial`, ..."""
        return max(round(seconds * self.pace, 3), 0.001)

    def sh(self, seconds: float) -> str:
        """A shell `sleep` command."""
        return f"sleep {self(seconds):g}"


def demo_workflows(workdir: Path, pace: float = 1.0) -> list[WorkflowDef]:
    """Every demo workflow, validated, children before their parents.

    `workdir` is not baked into the definitions (runs get their directories as input); it is
    accepted so that the signature matches `seed` and later demos may use it."""
    p = _Pace(pace)
    docs = [
        _hello(),
        _release(p),
        _fanout(p),
        _nightly(p),
        _countdown(p),
        _backup(p),
        _listener(),
        _deploy(p),
        _assistant(),
        _triage(p),
        _coding(),
    ]
    return [parse_definition(doc) for doc in docs]


async def seed(client: Client, workdir: Path, pace: float = 1.0) -> list[str]:
    """Register the demo workflows and start the demo runs; return their run ids in start order.

    `workdir` is an empty directory the runs may write into (the coding pipeline's git
    repository, the assistant's notes)."""
    workdir = Path(workdir)
    for wf in demo_workflows(workdir, pace):
        await client.register(wf)
    notes = workdir / "assistant"
    notes.mkdir(parents=True, exist_ok=True)
    (notes / "README.md").write_text("# notes\n\nA scratch project for the demo assistant.\n")
    runs: list[tuple[str, Any]] = [
        # Long runs first, so they are under way while the rest is seeded.
        ("release", {"version": "2.4.0"}),
        ("nightly", {}),
        ("release", {"version": "2.3.1"}),
        ("fanout", {}),
        ("coding", {"repo": str(workdir / "calc-repo"), "issue": "add() subtracts"}),
        ("assistant", {"dir": str(notes), "task": "start a TODO list for this project"}),
        ("triage", {"incident": "p99 latency of the checkout API doubled at 02:10"}),
        ("deploy", {"version": "2.4.0"}),
        ("listener", {"service": "checkout"}),
        ("countdown", {"n": 3}),
        ("backup", {"target": "s3://backups/nightly"}),
        ("hello", {"name": "operator"}),
        ("hello", {"name": "world"}),
    ]
    return [await client.start(name, input) for name, input in runs]


# --- the workflows -----------------------------------------------------------------------------


def _hello() -> dict[str, Any]:
    return {
        "name": "hello",
        "description": "greet someone, then shout it (echo + shell)",
        "input_schema": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
        "steps": [
            {"id": "greet", "task": "echo", "input": {"greeting": "hello, ${input.name}"}},
            {
                "id": "shout",
                "task": "shell",
                "depends_on": ["greet"],
                "config": {"command": "echo '${steps.greet.output.greeting}' | tr a-z A-Z"},
            },
        ],
    }


def _release(p: _Pace) -> dict[str, Any]:
    def job(step_id: str, deps: list[str], seconds: float, say: str, **extra: Any) -> dict[str, Any]:
        return {
            "id": step_id,
            "task": "shell",
            "depends_on": deps,
            "config": {"command": f'{p.sh(seconds)} && echo "{say}"'},
            **extra,
        }

    return {
        "name": "release",
        "description": "checkout, test in parallel, build, package and document, soak, publish",
        "input_schema": {
            "type": "object",
            "required": ["version"],
            "properties": {"version": {"type": "string"}},
        },
        "timeout": "1h",
        "steps": [
            job("checkout", [], 2, "checked out v${input.version}"),
            job("lint", ["checkout"], 4, "lint: 0 problems in 142 files"),
            job("unit-tests", ["checkout"], 9, "unit: 412 passed"),
            job(
                "integration-tests",
                ["checkout"],
                20,
                "integration: 37 passed, 2 skipped",
                retry={"max_attempts": 2, "initial": p(1)},
            ),
            job("build", ["lint", "unit-tests", "integration-tests"], 6, "built app-${input.version}.tar.gz"),
            job("package", ["build"], 5, "pushed image app:${input.version}"),
            job("docs", ["build"], 3, "docs for ${input.version} rendered"),
            {
                "id": "soak",
                "type": "sleep",
                "description": "let the staging deployment soak (a durable timer)",
                "depends_on": ["build"],
                "config": {"duration": p(20)},
            },
            job("publish", ["package", "docs", "soak"], 3, "published ${input.version}"),
            {
                "id": "announce",
                "task": "echo",
                "depends_on": ["publish"],
                "input": {
                    "version": "${input.version}",
                    "image": "${steps.package.output.stdout}",
                    "published": "${steps.publish.output.stdout}",
                },
            },
        ],
    }


def _fanout(p: _Pace) -> dict[str, Any]:
    shards = [f"shard-{i:02d}" for i in range(1, 11)]
    return {
        "name": "fanout",
        "description": "list 10 shards, then process them 3 at a time (a map step)",
        "steps": [
            {"id": "list", "task": "echo", "input": shards},
            {
                "id": "process",
                "type": "map",
                "depends_on": ["list"],
                "config": {"task": "sleep", "config": {"duration": p(3.5)}, "concurrency": 3},
            },
            {
                "id": "count",
                "task": "shell",
                "depends_on": ["process"],
                "config": {"command": "echo '${steps.process.output}' | grep -o slept | wc -l | tr -d ' '"},
            },
        ],
    }


def _nightly(p: _Pace) -> dict[str, Any]:
    return {
        "name": "nightly",
        "description": "wait for quiet hours, then run two child workflows in parallel",
        "steps": [
            {"id": "start", "task": "echo", "input": {"started": "nightly"}},
            {
                "id": "quiet-hours",
                "type": "sleep",
                "depends_on": ["start"],
                "config": {"duration": p(18)},
            },
            {
                "id": "greet",
                "type": "sub_workflow",
                "depends_on": ["quiet-hours"],
                "input": {"name": "nightly"},
                "config": {"workflow": "hello"},
            },
            {
                "id": "crunch",
                "type": "sub_workflow",
                "depends_on": ["quiet-hours"],
                "config": {"workflow": "fanout"},
            },
            {
                "id": "report",
                "task": "echo",
                "depends_on": ["greet", "crunch"],
                "input": {
                    "greeting": "${steps.greet.output.stdout}",
                    "shards": "${steps.crunch.output.stdout}",
                },
            },
        ],
    }


def _countdown(p: _Pace) -> dict[str, Any]:
    return {
        "name": "countdown",
        "description": "count down by one per generation, handing over with continue_as_new",
        "steps": [
            {"id": "tick", "type": "sleep", "config": {"duration": p(2)}},
            {
                "id": "dec",
                "task": "shell",
                "depends_on": ["tick"],
                "config": {"command": "printf %s $((${input.n} - 1))"},
            },
            {
                "id": "again",
                "type": "continue_as_new",
                "depends_on": ["dec"],
                "when": {"ref": "steps.dec.output.stdout", "op": "!=", "value": "0"},
                "config": {"input": {"n": "${steps.dec.output.stdout}"}, "max_generations": 10},
            },
            {
                "id": "liftoff",
                "task": "echo",
                "depends_on": ["dec"],
                "when": {"ref": "steps.dec.output.stdout", "op": "==", "value": "0"},
                "input": "liftoff",
            },
        ],
    }


def _backup(p: _Pace) -> dict[str, Any]:
    return {
        "name": "backup",
        "description": "snapshot, then an upload that always fails (to show a failed run)",
        "steps": [
            {
                "id": "snapshot",
                "task": "shell",
                "config": {"command": "echo 'snapshot of db taken (1.2 GB)'"},
            },
            {
                "id": "upload",
                "task": "shell",
                "depends_on": ["snapshot"],
                "config": {
                    "command": "echo 'uploading to ${input.target}'; "
                    "echo 'upload failed: bucket is read-only' >&2; exit 3"
                },
                "retry": {"max_attempts": 2, "backoff": "fixed", "initial": p(2)},
            },
            {"id": "verify", "task": "echo", "depends_on": ["upload"]},
        ],
    }


def _listener() -> dict[str, Any]:
    return {
        "name": "listener",
        "description": 'wait for a signal: dagnats run signal RUN_ID deploy-window \'{"slot": "now"}\'',
        "steps": [
            {"id": "prepare", "task": "echo", "input": {"service": "${input.service}"}},
            {
                "id": "window",
                "type": "wait_for_event",
                "depends_on": ["prepare"],
                "config": {"name": "deploy-window"},
            },
            {
                "id": "roll-out",
                "task": "shell",
                "depends_on": ["window"],
                "config": {"command": "echo 'rolling out ${input.service} in window ${steps.window.output}'"},
            },
        ],
    }


def _deploy(p: _Pace) -> dict[str, Any]:
    return {
        "name": "deploy",
        "description": "build, canary, ask an operator, promote to production",
        "input_schema": {
            "type": "object",
            "required": ["version"],
            "properties": {"version": {"type": "string"}},
        },
        "steps": [
            {
                "id": "build",
                "task": "shell",
                "config": {"command": "echo 'app-${input.version}.tar.gz'"},
            },
            {
                "id": "canary",
                "type": "sleep",
                "depends_on": ["build"],
                "config": {"duration": p(3)},
            },
            {
                "id": "approve",
                "type": "approval",
                "depends_on": ["canary"],
                "input": {
                    "version": "${input.version}",
                    "artifact": "${steps.build.output.stdout}",
                    "canary": "5% of traffic, error rate 0.02%",
                },
                "config": {"prompt": "Promote ${input.version} to production? The canary looks healthy."},
            },
            {
                "id": "promote",
                "task": "shell",
                "depends_on": ["approve"],
                "config": {
                    "command": "echo 'promoted ${input.version} (approved by ${steps.approve.output.by})'"
                },
            },
        ],
    }


def _assistant() -> dict[str, Any]:
    todo = "# TODO\n\n- [ ] write the installation guide\n- [ ] add a changelog\n- [ ] set up CI\n"
    script = [
        {
            "text": "Let me look at the project first.",
            "tool_calls": [{"name": "list_files", "arguments": {"path": "."}}],
        },
        {
            "text": "There is only a README. I will read it.",
            "tool_calls": [{"name": "read_file", "arguments": {"path": "README.md"}}],
        },
        {
            "text": "I will start a TODO list.",
            "tool_calls": [{"name": "write_file", "arguments": {"path": "TODO.md", "content": todo}}],
        },
        {
            "text": "Let me check the result with a command (this one needs your approval).",
            "tool_calls": [
                {
                    "name": "run_command",
                    "arguments": {"command": "wc -l README.md TODO.md && grep -c '\\[ \\]' TODO.md"},
                }
            ],
        },
        {"text": "Done: TODO.md lists 3 open items next to the README."},
    ]
    return {
        "name": "assistant",
        "description": "a scripted agent that edits files; its shell commands need an operator's approval",
        "input_schema": {
            "type": "object",
            "required": ["dir", "task"],
            "properties": {"dir": {"type": "string"}, "task": {"type": "string"}},
        },
        "steps": [
            {
                "id": "agent",
                "type": "agent_loop",
                "config": {
                    "provider": "scripted",
                    "system": "You help with small chores in the project in your working directory.",
                    "prompt": "${input.task}",
                    "workdir": "${input.dir}",
                    "tools": ["read_file", "write_file", "list_files", "run_command"],
                    "approve_tools": ["run_command"],
                    "max_turns": 10,
                    "script": script,
                },
            }
        ],
    }


def _triage(p: _Pace) -> dict[str, Any]:
    plan = {
        "steps": [
            {
                "id": "logs",
                "task": "shell",
                "config": {"command": "echo 'ERROR upstream timeout payments-db (x214)'"},
            },
            {
                "id": "metrics",
                "task": "shell",
                "config": {"command": "echo 'p99 412ms -> 905ms since 02:10; pool saturation 100%'"},
            },
            {"id": "wait", "task": "sleep", "config": {"duration": p(2)}},
            {
                "id": "summary",
                "task": "echo",
                "depends_on": ["logs", "metrics", "wait"],
                "input": {
                    "logs": "${steps.logs.output.stdout}",
                    "metrics": "${steps.metrics.output.stdout}",
                },
            },
        ]
    }
    return {
        "name": "triage",
        "description": "a model plans an investigation; an operator reviews the plan before it runs",
        "steps": [
            {
                "id": "plan",
                "type": "planner",
                "config": {
                    "provider": "scripted",
                    "prompt": "Plan an investigation of this incident: ${input.incident}",
                    "allowed_tasks": ["shell", "echo", "sleep"],
                    "max_steps": 6,
                    "review": True,
                    "script": [
                        {
                            "text": "Check the logs and the metrics in parallel, then summarize.",
                            "tool_calls": [{"name": "submit_plan", "arguments": plan}],
                        }
                    ],
                },
            },
            {
                "id": "report",
                "task": "echo",
                "depends_on": ["plan"],
                "input": {"incident": "${input.incident}", "findings": "${steps.plan.output.summary}"},
            },
        ],
    }


def _coding() -> dict[str, Any]:
    setup = "\n".join(
        [
            "set -e",
            "mkdir -p '${input.repo}' && cd '${input.repo}'",
            "if [ ! -d .git ]; then",
            "  git init -q .",
            "  printf 'def add(a, b):\\n    return a - b\\n' > calc.py",
            "  printf 'import unittest\\nfrom calc import add\\n\\nclass TestAdd(unittest.TestCase):\\n"
            "    def test_add(self):\\n        self.assertEqual(add(2, 3), 5)\\n' > test_calc.py",
            f"  git add -A && {GIT} commit -qm 'add calc'",
            "fi",
            "git log --oneline | head -1",
        ]
    )
    plan = {
        "steps": [
            {
                "id": "reproduce",
                "task": "shell",
                "config": {"command": "python3 -m unittest -q 2>&1 | tail -3; true", "cwd": "${input.repo}"},
            },
            {
                "id": "inspect",
                "task": "shell",
                "depends_on": ["reproduce"],
                "config": {"command": "cat calc.py", "cwd": "${input.repo}"},
            },
        ]
    }
    fix_script = [
        {
            "text": "Let me read the code.",
            "tool_calls": [{"name": "read_file", "arguments": {"path": "calc.py"}}],
        },
        {
            "text": "add() subtracts; I will fix it.",
            "tool_calls": [
                {
                    "name": "write_file",
                    "arguments": {"path": "calc.py", "content": "def add(a, b):\n    return a + b\n"},
                }
            ],
        },
        {
            "text": "Now the tests.",
            "tool_calls": [{"name": "run_command", "arguments": {"command": "python3 -m unittest -q"}}],
        },
        {"text": "Fixed: add() returned a - b; it now returns a + b, and the tests pass."},
    ]
    return {
        "name": "coding",
        "description": "plan a fix, let an agent edit a git repository, run its tests, ask a human, commit",
        "input_schema": {
            "type": "object",
            "required": ["repo", "issue"],
            "properties": {"repo": {"type": "string"}, "issue": {"type": "string"}},
        },
        "timeout": "2h",
        "steps": [
            {
                "id": "setup",
                "task": "shell",
                "description": "create a small repository with a failing test",
                "config": {"command": setup},
            },
            {
                "id": "plan",
                "type": "planner",
                "depends_on": ["setup"],
                "config": {
                    "provider": "scripted",
                    "prompt": "Plan how to investigate this issue in ${input.repo}: ${input.issue}",
                    "allowed_tasks": ["shell"],
                    "max_steps": 5,
                    "script": [
                        {
                            "text": "First reproduce the failure, then look at the code.",
                            "tool_calls": [{"name": "submit_plan", "arguments": plan}],
                        }
                    ],
                },
            },
            {
                "id": "fix",
                "type": "agent_loop",
                "depends_on": ["plan"],
                "config": {
                    "provider": "scripted",
                    "system": "You fix bugs in the repository in your working directory. "
                    "Keep changes minimal.",
                    "prompt": "Fix this issue: ${input.issue}. Run the tests before you answer.",
                    "workdir": "${input.repo}",
                    "tools": ["read_file", "write_file", "list_files", "run_command"],
                    "max_turns": 20,
                    "max_duration": "30m",
                    "script": fix_script,
                },
            },
            {
                "id": "test",
                "task": "shell",
                "depends_on": ["fix"],
                "config": {
                    "command": "python3 -m unittest -q 2>&1 && git diff --stat",
                    "cwd": "${input.repo}",
                },
                "retry": {"max_attempts": 2, "backoff": "fixed", "initial": "1s"},
                "timeout": "10m",
            },
            {
                "id": "ship",
                "type": "approval",
                "depends_on": ["test"],
                "config": {
                    "prompt": "Commit the fix for '${input.issue}'? The agent says: ${steps.fix.output.text}",
                    "timeout": "24h",
                },
            },
            {
                "id": "commit",
                "task": "shell",
                "depends_on": ["ship"],
                "config": {
                    "command": f"{GIT} commit -qam 'fix: ${{input.issue}}' && git log --oneline | head -1",
                    "cwd": "${input.repo}",
                },
            },
        ],
    }
