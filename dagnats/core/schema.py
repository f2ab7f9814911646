"""A small, strict subset of JSON Schema for workflow `input_schema`.

Supported keywords are listed in KEYWORDS; a schema using any other keyword is rejected at
registration rather than silently ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

KEYWORDS = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "enum",
        "const",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "pattern",
        "description",
        "title",
        "default",
        "$schema",
        "examples",
    }
)
_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def check_schema(schema: Any, path: str = "input_schema") -> str | None:
    """Why `schema` is not a supported schema, as "path: reason", or None."""
    if not isinstance(schema, dict):
        return f"{path}: expected an object"
    for key, value in schema.items():
        if key not in KEYWORDS:
            return f"{path}: unsupported keyword {key!r} (supported: {', '.join(sorted(KEYWORDS))})"
        if problem := _check_keyword(key, value, f"{path}.{key}"):
            return problem
    return None


def _check_keyword(key: str, value: Any, path: str) -> str | None:
    check = _KEYWORD_CHECKS.get(key)
    return None if check is None else check(value, path)


def _check_type(value: Any, path: str) -> str | None:
    for t in value if isinstance(value, list) else [value]:
        if not isinstance(t, str) or t not in _TYPES:
            return f"{path}: unknown type {t!r} (expected one of {', '.join(_TYPES)})"
    return None


def _check_properties(value: Any, path: str) -> str | None:
    if not isinstance(value, dict):
        return f"{path}: expected an object of schemas"
    for name, sub in value.items():
        if problem := check_schema(sub, f"{path}.{name}"):
            return problem
    return None


def _check_pattern(value: Any, path: str) -> str | None:
    try:
        re.compile(value)
    except (re.error, TypeError) as exc:
        return f"{path}: invalid regular expression ({exc})"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _expect(ok: Callable[[Any], bool], what: str) -> Callable[[Any, str], str | None]:
    return lambda value, path: None if ok(value) else f"{path}: expected {what}"


_NUMBER = _expect(_is_number, "a number")
_COUNT = _expect(_is_count, "a non-negative integer")
_TEXT = _expect(lambda v: isinstance(v, str), "a string")
_KEYWORD_CHECKS: dict[str, Callable[[Any, str], str | None]] = {
    "type": _check_type,
    "properties": _check_properties,
    "items": lambda value, path: check_schema(value, path),
    "additionalProperties": lambda value, path: (
        None if isinstance(value, bool) else check_schema(value, path)
    ),
    "required": _expect(
        lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of field names"
    ),
    "enum": _expect(lambda v: isinstance(v, list), "a list of values"),
    "minimum": _NUMBER,
    "maximum": _NUMBER,
    "minLength": _COUNT,
    "maxLength": _COUNT,
    "minItems": _COUNT,
    "maxItems": _COUNT,
    "pattern": _check_pattern,
    "title": _TEXT,
    "description": _TEXT,
}


def validate(schema: dict[str, Any], value: Any, path: str = "input") -> str | None:
    """The first way `value` violates `schema`, as "path: reason", or None."""
    types = schema.get("type")
    if types is not None:
        allowed = types if isinstance(types, list) else [types]
        if not any(_TYPES[t](value) for t in allowed):
            return f"{path}: expected {' or '.join(allowed)}, got {_type_name(value)}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{path}: must be one of {schema['enum']!r}"
    if "const" in schema and value != schema["const"]:
        return f"{path}: must be {schema['const']!r}"
    if isinstance(value, dict):
        return _validate_object(schema, value, path)
    if isinstance(value, list):
        return _validate_array(schema, value, path)
    if isinstance(value, str):
        return _validate_string(schema, value, path)
    if _is_number(value):
        return _validate_number(schema, value, path)
    return None


def _validate_number(schema: dict[str, Any], value: float, path: str) -> str | None:
    if "minimum" in schema and value < schema["minimum"]:
        return f"{path}: must be >= {schema['minimum']}"
    if "maximum" in schema and value > schema["maximum"]:
        return f"{path}: must be <= {schema['maximum']}"
    return None


def _validate_object(schema: dict[str, Any], value: dict[str, Any], path: str) -> str | None:
    for name in schema.get("required", []):
        if name not in value:
            return f"{path}: missing required field {name!r}"
    props = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        if name in props:
            problem = validate(props[name], item, f"{path}.{name}")
        elif extra is False:
            problem = f"{path}: unexpected field {name!r}"
        elif isinstance(extra, dict):
            problem = validate(extra, item, f"{path}.{name}")
        else:
            problem = None
        if problem:
            return problem
    return None


def _validate_array(schema: dict[str, Any], value: list[Any], path: str) -> str | None:
    if "minItems" in schema and len(value) < schema["minItems"]:
        return f"{path}: needs at least {schema['minItems']} items"
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        return f"{path}: allows at most {schema['maxItems']} items"
    if isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            if problem := validate(schema["items"], item, f"{path}[{i}]"):
                return problem
    return None


def _validate_string(schema: dict[str, Any], value: str, path: str) -> str | None:
    if "minLength" in schema and len(value) < schema["minLength"]:
        return f"{path}: must be at least {schema['minLength']} characters"
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        return f"{path}: must be at most {schema['maxLength']} characters"
    if "pattern" in schema and not re.search(schema["pattern"], value):
        return f"{path}: does not match pattern {schema['pattern']!r}"
    return None


def _type_name(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _TYPES[name](value):
            return name
    return type(value).__name__
