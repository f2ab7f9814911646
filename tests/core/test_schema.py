"""input_schema: validate() finds the first problem with its path; check_schema() polices keywords."""

from __future__ import annotations

from typing import Any

import pytest

from dagnats.core.schema import check_schema, validate

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["repo"],
    "additionalProperties": False,
    "properties": {
        "repo": {"type": "string", "minLength": 3, "maxLength": 20, "pattern": "^[a-z]+/[a-z]+$"},
        "n": {"type": "integer", "minimum": 1, "maximum": 10},
        "ratio": {"type": "number"},
        "mode": {"enum": ["fast", "slow"]},
        "kind": {"const": "job"},
        "opt": {"type": ["string", "null"]},
        "flag": {"type": "boolean"},
        "tags": {"type": "array", "minItems": 1, "maxItems": 3, "items": {"type": "string"}},
        "meta": {
            "type": "object",
            "required": ["owner"],
            "properties": {"owner": {"type": "object", "properties": {"id": {"type": "integer"}}}},
            "additionalProperties": {"type": "string"},
        },
    },
}


@pytest.mark.parametrize(
    "value",
    [
        {"repo": "acme/app"},
        {"repo": "acme/app", "n": 1, "ratio": 0.5, "mode": "fast", "kind": "job", "opt": None, "flag": True},
        {"repo": "acme/app", "ratio": 2, "opt": "x", "tags": ["a", "b", "c"]},
        {"repo": "acme/app", "meta": {"owner": {"id": 7}, "note": "free text"}},
    ],
)
def test_valid_values(value: Any) -> None:
    assert validate(SCHEMA, value) is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ([], "input: expected object, got array"),
        (None, "input: expected object, got null"),
        ({}, "input: missing required field 'repo'"),
        ({"repo": 5}, "input.repo: expected string, got integer"),
        ({"repo": "ab"}, "input.repo: must be at least 3 characters"),
        ({"repo": "a" * 21}, "input.repo: must be at most 20 characters"),
        ({"repo": "Acme/App"}, "input.repo: does not match pattern '^[a-z]+/[a-z]+$'"),
        ({"repo": "acme/app", "n": True}, "input.n: expected integer, got boolean"),
        ({"repo": "acme/app", "n": 1.5}, "input.n: expected integer, got number"),
        ({"repo": "acme/app", "n": 0}, "input.n: must be >= 1"),
        ({"repo": "acme/app", "n": 11}, "input.n: must be <= 10"),
        ({"repo": "acme/app", "ratio": "1"}, "input.ratio: expected number, got string"),
        ({"repo": "acme/app", "mode": "medium"}, "input.mode: must be one of ['fast', 'slow']"),
        ({"repo": "acme/app", "kind": "other"}, "input.kind: must be 'job'"),
        ({"repo": "acme/app", "opt": 1}, "input.opt: expected string or null, got integer"),
        ({"repo": "acme/app", "flag": 0}, "input.flag: expected boolean, got integer"),
        ({"repo": "acme/app", "extra": 1}, "input: unexpected field 'extra'"),
        ({"repo": "acme/app", "tags": []}, "input.tags: needs at least 1 items"),
        ({"repo": "acme/app", "tags": ["a", "b", "c", "d"]}, "input.tags: allows at most 3 items"),
        ({"repo": "acme/app", "tags": ["a", 2]}, "input.tags[1]: expected string, got integer"),
        ({"repo": "acme/app", "meta": {}}, "input.meta: missing required field 'owner'"),
        (
            {"repo": "acme/app", "meta": {"owner": {"id": "x"}}},
            "input.meta.owner.id: expected integer, got string",
        ),
        (
            {"repo": "acme/app", "meta": {"owner": {}, "note": 3}},
            "input.meta.note: expected string, got integer",
        ),
    ],
)
def test_invalid_values(value: Any, problem: str) -> None:
    assert validate(SCHEMA, value) == problem


def test_custom_root_path() -> None:
    assert (
        validate({"type": "string"}, 1, path="steps.a.input") == "steps.a.input: expected string, got integer"
    )


def test_empty_schema_accepts_anything() -> None:
    for value in (None, 1, "x", [1], {"a": 1}):
        assert validate({}, value) is None


def test_check_schema_accepts_supported_schema() -> None:
    assert check_schema(SCHEMA) is None
    assert (
        check_schema({"$schema": "x", "title": "t", "description": "d", "default": 1, "examples": []}) is None
    )


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ([], "input_schema: expected an object"),
        ({"oneOf": []}, "input_schema: unsupported keyword 'oneOf'"),
        ({"type": "dict"}, "input_schema.type: unknown type 'dict'"),
        ({"type": ["string", "int"]}, "input_schema.type: unknown type 'int'"),
        (
            {"properties": {"a": {"format": "email"}}},
            "input_schema.properties.a: unsupported keyword 'format'",
        ),
        ({"properties": {"a": "string"}}, "input_schema.properties.a: expected an object"),
        ({"items": {"type": "set"}}, "input_schema.items.type: unknown type 'set'"),
        (
            {"additionalProperties": {"anyOf": []}},
            "input_schema.additionalProperties: unsupported keyword 'anyOf'",
        ),
        (
            {"properties": {"a": {"properties": {"b": {"$ref": "#"}}}}},
            "input_schema.properties.a.properties.b: unsupported keyword '$ref'",
        ),
        ({"pattern": "("}, "input_schema.pattern: invalid regular expression"),
    ],
)
def test_check_schema_problems(schema: Any, problem: str) -> None:
    result = check_schema(schema)
    assert result is not None and result.startswith(problem), result


@pytest.mark.parametrize(
    ("schema", "value"),
    [
        ({"type": "object", "properties": "x"}, {}),  # check_schema: AttributeError
        ({"type": [["string"]]}, "x"),  # check_schema: TypeError (unhashable list)
        ({"enum": 5}, 1),  # accepted; validate: TypeError
        ({"type": "integer", "minimum": "1"}, 3),  # accepted; validate: TypeError
        ({"type": "string", "maxLength": "3"}, "ab"),  # accepted; validate: TypeError
        ({"type": "object", "required": "repo"}, {"repo": 1}),  # accepted; validate: "missing 'r'"
    ],
)
def test_malformed_keyword_values_are_rejected_by_check_schema(schema: dict[str, Any], value: Any) -> None:
    """Regression: keyword *values* used to go unchecked, so a malformed schema either crashed
    check_schema itself or was accepted and later made validate() crash (or misbehave) when a run
    was submitted. Expected: a "path: reason" problem at registration."""
    problem = check_schema(schema)
    assert problem is not None and problem.startswith("input_schema"), (
        f"accepted; validate then gives {_outcome(schema, value)}"
    )


def _outcome(schema: dict[str, Any], value: Any) -> str:
    try:
        return repr(validate(schema, value))
    except Exception as exc:  # noqa: BLE001 - reporting what the bug looks like
        return f"{type(exc).__name__}: {exc}"
