"""dagnats: durable DAG workflows and LLM agent pipelines on NATS JetStream."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dagnats.worker import NonRetryable, TaskContext, TaskFailed, Worker

if TYPE_CHECKING:
    from dagnats.api.client import Client
    from dagnats.app.embedded import embedded

__all__ = ["Client", "NonRetryable", "TaskContext", "TaskFailed", "Worker", "embedded"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """`Client` and `embedded` are imported on first use: a worker importing `dagnats` for its
    `Worker` does not load the client, the engine and the server's code."""
    if name == "Client":
        from dagnats.api.client import Client

        return Client
    if name == "embedded":
        from dagnats.app.embedded import embedded

        return embedded
    raise AttributeError(f"module 'dagnats' has no attribute {name!r}")
