"""Build workflow definitions in Python; the result is validated exactly like a JSON file.

wf = Workflow("report", timeout="1h")
fetch = wf.task("fetch", "shell", config={"command": "curl -s $URL"})
words = wf.task("words", "word-count", depends_on=[fetch], input={"text": fetch.output("stdout")})
definition = wf.build()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dagnats.core.definition import WorkflowDef, parse_definition

StepLike = "StepRef | str"


@dataclass(frozen=True)
class StepRef:
    """A handle on a step: use it in `depends_on`, or `.output("key")` in an input template."""

    id: str

    def output(self, *path: str | int) -> str:
        suffix = "".join(f".{p}" for p in path)
        return f"${{steps.{self.id}.output{suffix}}}"


def input_ref(*path: str | int) -> str:
    """A template reading the run input: input_ref("repo") == "${input.repo}"."""
    return "${input" + "".join(f".{p}" for p in path) + "}"


class Workflow:
    def __init__(
        self,
        name: str,
        *,
        description: str = "",
        timeout: str | float | None = None,
        input_schema: dict[str, Any] | None = None,
    ) -> None:
        self.doc: dict[str, Any] = {"name": name, "steps": []}
        if description:
            self.doc["description"] = description
        if timeout is not None:
            self.doc["timeout"] = timeout
        if input_schema is not None:
            self.doc["input_schema"] = input_schema

    def step(
        self, id: str, type: str = "task", *, depends_on: list[StepRef | str] | None = None, **fields: Any
    ) -> StepRef:
        """Add any step; keyword arguments are the definition fields (config, input, retry, ...)."""
        step: dict[str, Any] = {"id": id}
        if type != "task":
            step["type"] = type
        if depends_on:
            step["depends_on"] = [d.id if isinstance(d, StepRef) else d for d in depends_on]
        step.update({k: v for k, v in fields.items() if v is not None})
        self.doc["steps"].append(step)
        return StepRef(id)

    def task(self, id: str, task: str, **fields: Any) -> StepRef:
        return self.step(id, task=task, **fields)

    def sleep(self, id: str, duration: str | float, **fields: Any) -> StepRef:
        return self.step(id, "sleep", config={"duration": duration}, **fields)

    def wait_for_event(
        self, id: str, name: str, timeout: str | float | None = None, **fields: Any
    ) -> StepRef:
        config: dict[str, Any] = {"name": name}
        if timeout is not None:
            config["timeout"] = timeout
        return self.step(id, "wait_for_event", config=config, **fields)

    def sub_workflow(self, id: str, workflow: str, version: int | None = None, **fields: Any) -> StepRef:
        config: dict[str, Any] = {"workflow": workflow}
        if version is not None:
            config["version"] = version
        return self.step(id, "sub_workflow", config=config, **fields)

    def map(
        self,
        id: str,
        task: str,
        over: StepRef,
        *,
        config: dict[str, Any] | None = None,
        concurrency: int = 0,
        max_items: int = 1000,
        **fields: Any,
    ) -> StepRef:
        cfg = {"task": task, "config": config or {}, "concurrency": concurrency, "max_items": max_items}
        return self.step(id, "map", depends_on=[over], config=cfg, **fields)

    def to_dict(self) -> dict[str, Any]:
        return self.doc

    def build(self) -> WorkflowDef:
        """Validate and return the definition (raises DefinitionError naming the path)."""
        return parse_definition(self.doc)
