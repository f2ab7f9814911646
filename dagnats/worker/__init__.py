"""Workers: the public SDK (`Worker`, `TaskContext`, `NonRetryable`, `TaskFailed`) and the
runtime that pulls and runs their tasks."""

from .sdk import SUSPEND, NonRetryable, TaskContext, TaskFailed, Worker

__all__ = ["SUSPEND", "NonRetryable", "TaskContext", "TaskFailed", "Worker"]
