"""Reading definition files (JSON or YAML) and Python builder modules."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from dagnats.core.definition import DefinitionError, WorkflowDef, parse_definition
from dagnats.errors import UserError


def load_files(paths: list[str]) -> list[WorkflowDef]:
    """Every definition in the files; a Python file may define several."""
    out: list[WorkflowDef] = []
    for path in paths:
        out.extend(load_python(path) if path.endswith(".py") else [load_file(path)])
    return out


def load_python(path: str) -> list[WorkflowDef]:
    """Module-level `Workflow` builders (and WorkflowDef values) of a Python file."""
    from .builder import Workflow

    spec = importlib.util.spec_from_file_location(f"_dagnats_def_{abs(hash(path))}", path)
    if spec is None or spec.loader is None:
        raise UserError(f"{path}: cannot load as a Python module")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except FileNotFoundError:
        raise UserError(f"{path}: cannot read: no such file") from None
    except DefinitionError as exc:
        raise UserError(f"{path}: {exc}") from None
    except Exception as exc:
        raise UserError(f"{path}: error while importing: {type(exc).__name__}: {exc}") from None
    found: list[WorkflowDef] = []
    for value in vars(module).values():
        try:
            if isinstance(value, Workflow):
                found.append(value.build())
            elif isinstance(value, WorkflowDef):
                found.append(value)
        except DefinitionError as exc:
            raise UserError(f"{path}: {exc}") from None
    if not found:
        raise UserError(f"{path}: defines no Workflow at module level")
    return found


def load_file(path: str) -> WorkflowDef:
    """Parse and validate one definition file; UserError names the file and the problem."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None
    data = _parse(path, text)
    try:
        return parse_definition(data)
    except DefinitionError as exc:
        raise UserError(f"{path}: {exc}") from None


def _parse(path: str, text: str) -> Any:
    if path.endswith((".yaml", ".yml")):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise UserError(f"{path}: malformed YAML{where}: {problem}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None


def load_object(spec: str) -> Any:
    """Import "package.module:attr" (the current directory is importable, as with python -m)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserError(f"expected MODULE:ATTR, got {spec!r} (e.g. examples.worker:worker)")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"cannot import {module_name}: {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise UserError(f"module {module_name} has no attribute {attr!r}") from None


def parse_json_arg(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{what} is not valid JSON: {exc.msg} at column {exc.colno}") from None
