"""`dagnats bench`'s map figure: one run of a single `map` step over many small items.

The run is timed from `client.start` to `client.wait` returning, so it includes the client's
own fold of the history (as a user's program pays it). The map has no concurrency limit
(`concurrency: 0`): every item is queued as soon as the map expands, which is the fastest
setting (a limit only adds passes that each queue one item when one finishes).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from dagnats.api.client import Client
from dagnats.core.definition import parse_definition


def map_workflow(name: str, task: str, items: int) -> dict[str, object]:
    """A workflow whose only step maps `task` over the run's input (a list of `items`)."""
    step = {
        "id": "each",
        "type": "map",
        "input": "${input}",
        "config": {"task": task, "max_items": items, "concurrency": 0},
    }
    return {"name": name, "steps": [step]}


async def measure_map(client: Client, *, items: int, task: str, say: Callable[[str], None]) -> float:
    """Items per second of one run mapping `task` over `items` small items."""
    name = f"bench-map-{items}"
    say(f"map: one map step over {items} items")
    await client.register(parse_definition(map_workflow(name, task, items)))
    t0 = time.perf_counter()
    run_id = await client.start(name, [{"i": i} for i in range(items)])
    state = await client.wait(run_id)
    elapsed = time.perf_counter() - t0
    if state.status != "completed":
        raise RuntimeError(f"bench run {run_id} of {name} ended {state.status}: {state.error}")
    return round(items / elapsed, 1)
