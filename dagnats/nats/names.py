"""Every NATS name dagnats uses: streams, subjects, KV buckets, consumers. Nowhere else."""

from __future__ import annotations

HISTORY_STREAM = "DAGNATS_HISTORY"
HISTORY_PREFIX = "dagnats.history"
TASKS_STREAM = "DAGNATS_TASKS"
TASK_PREFIX = "dagnats.task"
TIMERS_STREAM = "DAGNATS_TIMERS"
TIMER_PREFIX = "dagnats.timer"
WORKFLOWS_BUCKET = "dagnats_workflows"
RUNS_BUCKET = "dagnats_runs"
HEARTBEATS_BUCKET = "dagnats_heartbeats"
LIVE_PREFIX = "dagnats.live"
# Values too big for an event (nats/objects.py): a JetStream object store, objects named by
# the sha256 of their content. Its stream is OBJ_<bucket>, subjects $O.<bucket>.C.* / .M.*.
VALUES_BUCKET = "dagnats_values"
VALUES_STREAM = f"OBJ_{VALUES_BUCKET}"
# The index of unfinished runs: one message per run (the last kept), removed when it ends.
ACTIVE_STREAM = "DAGNATS_ACTIVE"
ACTIVE_PREFIX = "dagnats.active"
ACTIVE_BUILT = "dagnats.active.built.v1"  # two tokens: never a run's subject; says it was built

ENGINE_CONSUMER = "dagnats_engine"
TIMER_CONSUMER = "dagnats_timers"

# De-duplication windows: how long a redone publish with the same Nats-Msg-Id is absorbed.
HISTORY_DEDUP_SECONDS = 24 * 3600
TASKS_DEDUP_SECONDS = 24 * 3600
TIMERS_DEDUP_SECONDS = 24 * 3600

# How long a heartbeat lives in its bucket: a process not heard from for this long is gone.
HEARTBEAT_TTL_SECONDS = 30.0


# Who wrote an event is the last token of its subject. NATS permissions confine workers to
# their own token, so a worker can never write what only an operator or the engine may.
SOURCE_ENGINE = "e"
SOURCE_OPERATOR = "o"
SOURCE_WORKER = "w"


def history_subject(run_id: str, source: str) -> str:
    return f"{HISTORY_PREFIX}.{run_id}.{source}"


def history_filter(run_id: str) -> str:
    """Every subject of one run's history (all sources); optimistic concurrency spans them all."""
    return f"{HISTORY_PREFIX}.{run_id}.*"


def run_of_history_subject(subject: str) -> str:
    return subject.split(".")[2]


def source_of_history_subject(subject: str) -> str:
    return subject.rsplit(".", 1)[1]


def active_subject(run_id: str) -> str:
    return f"{ACTIVE_PREFIX}.{run_id}"


def active_filter() -> str:
    """Every run's entry in the index of unfinished runs (not the `built` mark)."""
    return f"{ACTIVE_PREFIX}.*"


def task_subject(task: str, run_id: str) -> str:
    """Tasks carry their run in the subject, so a run that ends can take its queued tasks back."""
    return f"{TASK_PREFIX}.{task}.{run_id}"


def task_filters(task: str) -> list[str]:
    """What a task's consumer takes: its tasks of every run (and, from data written before
    tasks carried their run, the bare task subject)."""
    return [f"{TASK_PREFIX}.{task}", f"{TASK_PREFIX}.{task}.*"]


def run_tasks_filter(run_id: str) -> str:
    return f"{TASK_PREFIX}.*.{run_id}"


def task_consumer(task: str) -> str:
    return "dagnats_task_" + "".join(c if c.isalnum() or c in "-_" else "_" for c in task)


def timer_subject(run_id: str) -> str:
    return f"{TIMER_PREFIX}.{run_id}"


def tool_subject(tool: str) -> str:
    """Where a worker serving a user tool answers (request/reply, queue group per tool)."""
    return f"dagnats.tool.{tool}"


def live_subject(run_id: str, step_id: str) -> str:
    return f"{LIVE_PREFIX}.{run_id}.{step_id}"


def heartbeat_key(kind: str, process_id: str) -> str:
    """`engine.<id>` or `worker.<id>`: a worker may write only under `worker.`."""
    return f"{kind}.{process_id}"


def heartbeat_subject(kind: str, process_id: str) -> str:
    return f"$KV.{HEARTBEATS_BUCKET}.{heartbeat_key(kind, process_id)}"


def workflow_key(name: str, version: int) -> str:
    return f"{name}.{version}"


def workflow_latest_key(name: str) -> str:
    return f"{name}.latest"
