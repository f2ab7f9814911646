"""The tasks `dagnats bench` runs as a user's would: in `dagnats worker MODULE:ATTR` processes.

    dagnats worker dagnats.app.bench_tasks:worker   # NOOP, the workloads' every step
    dagnats worker dagnats.app.bench_tasks:agents   # agent_loop, for the agent-history figure

`agents` keeps its workspaces under $DAGNATS_BENCH_WORKSPACES (the bench sets it), else under
the system's temporary directory.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from dagnats.agent.runtime import agent_worker
from dagnats.worker import TaskContext, Worker

NOOP = "bench_noop"

worker = Worker(name="bench")


@worker.task(NOOP)
async def noop(ctx: TaskContext) -> dict[str, Any]:
    """Does nothing and returns a small dict, like the peers' steps in issue #12's table."""
    return {"ok": True}


agents = agent_worker(
    Path(os.environ.get("DAGNATS_BENCH_WORKSPACES") or tempfile.gettempdir()) / "dagnats-bench-agents"
)
