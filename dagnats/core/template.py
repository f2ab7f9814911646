"""Input templates: "${input.repo}", "${steps.plan.output.files}", "${run.id}".

A string that is exactly one reference is replaced by the referenced value (any JSON type);
references embedded in longer text are interpolated as text. Write "$${" for a literal "${"
(a shell variable in a command, say). Paths are dotted keys; a
numeric segment indexes an array.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .values import is_ref, refs_in

_REF = re.compile(r"(?<!\$)\$\{\s*([^}]*?)\s*\}")  # "$${" is a literal "${" (for shell commands)
ROOTS = ("input", "steps", "run")


class TemplateError(ValueError):
    """A reference that cannot be resolved against the run's data."""


def references(template: Any) -> list[str]:
    """Every reference path in a template value, in document order."""
    found: list[str] = []
    _collect(template, found)
    return found


def _collect(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.extend(m.group(1) for m in _REF.finditer(value))
    elif isinstance(value, list):
        for item in value:
            _collect(item, out)
    elif isinstance(value, dict):
        for item in value.values():
            _collect(item, out)


def check_syntax(template: Any) -> str | None:
    """Why a template value is malformed (an unclosed "${"), or None."""
    if isinstance(template, str):
        if "${" in _REF.sub("", template).replace("$${", ""):
            return f"unclosed reference in {template!r} (expected ${{...}})"
        return None
    items = (
        template if isinstance(template, list) else template.values() if isinstance(template, dict) else []
    )
    return next((p for p in map(check_syntax, items) if p), None)


def check_reference(path: str) -> str | None:
    """Why a reference path is malformed, or None. Returns the step id it needs via step_of."""
    parts = path.split(".")
    if not path or any(p == "" for p in parts):
        return f"malformed reference ${{{path}}}"
    if parts[0] not in ROOTS:
        return f"reference ${{{path}}} must start with one of: {', '.join(ROOTS)}"
    if parts[0] == "steps" and (len(parts) < 3 or parts[2] != "output"):
        return f"reference ${{{path}}} must look like steps.<id>.output[.<key>...]"
    if parts[0] == "run" and parts[1:] != ["id"]:
        return f"reference ${{{path}}}: only run.id is available"
    return None


def step_of(path: str) -> str | None:
    """The step id a reference reads from, if any."""
    parts = path.split(".")
    return parts[1] if parts[0] == "steps" and len(parts) > 1 else None


def render(template: Any, context: dict[str, Any]) -> Any:
    """Resolve every reference in `template` against `context` (input, steps, run)."""
    if isinstance(template, str):
        whole = _REF.fullmatch(template)
        if whole:
            return lookup(context, whole.group(1))
        return _REF.sub(lambda m: _as_text(lookup(context, m.group(1))), template).replace("$${", "${")
    if isinstance(template, list):
        return [render(item, context) for item in template]
    if isinstance(template, dict):
        return {key: render(item, context) for key, item in template.items()}
    return template


def lookup(context: dict[str, Any], path: str) -> Any:
    value: Any = context
    walked: list[str] = []
    for key in path.split("."):
        walked.append(key)
        if is_ref(value):
            where = ".".join(walked[:-1])
            raise TemplateError(
                f"${{{path}}}: {where} is a value of {value['size']} bytes kept in the object store;"
                " a template can pass it on whole, not read into it"
            )
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isascii() and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            where = ".".join(walked[:-1]) or "context"
            raise TemplateError(f"${{{path}}}: {where} has no {key!r}")
    return value


def _as_text(value: Any) -> str:
    if refs_in(value):
        raise TemplateError(
            "a value kept in the object store cannot be interpolated into text; pass it on whole"
        )
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
