"""dagnats: durable DAG workflows and LLM agent pipelines on NATS JetStream."""

from dagnats.worker import NonRetryable, TaskContext, TaskFailed, Worker

__all__ = ["NonRetryable", "TaskContext", "TaskFailed", "Worker"]
__version__ = "0.1.0"
