"""Input templates: render, lookup, references, check_reference, step_of."""

from __future__ import annotations

from typing import Any

import pytest

from dagnats.core.template import TemplateError, check_reference, references, render, step_of

CTX: dict[str, Any] = {
    "input": {"repo": "acme/app", "n": 3, "flag": False, "tags": ["x", "y"], "nested": {"k": None}},
    "steps": {"plan": {"output": {"files": ["a.py", "b.py"], "count": 2}}},
    "run": {"id": "r123"},
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        # a whole reference keeps the referenced value's type
        ("${input.n}", 3),
        ("${input.flag}", False),
        ("${input.tags}", ["x", "y"]),
        ("${input.nested.k}", None),
        ("${ input.repo }", "acme/app"),
        ("${steps.plan.output.files}", ["a.py", "b.py"]),
        ("${steps.plan.output.files.1}", "b.py"),  # numeric segment indexes an array
        ("${run.id}", "r123"),
        ("${input}", CTX["input"]),
        # embedded references are interpolated as text (JSON for non-strings)
        ("repo=${input.repo}", "repo=acme/app"),
        ("n=${input.n}!", "n=3!"),
        ("${input.repo}/${run.id}", "acme/app/r123"),
        ("files: ${steps.plan.output.files}", 'files: ["a.py","b.py"]'),
        ("flag ${input.flag} ${input.nested.k}", "flag false null"),
        # containers are rendered recursively; other values pass through
        ({"a": "${input.n}", "b": ["${run.id}", 1, None]}, {"a": 3, "b": ["r123", 1, None]}),
        ("no refs", "no refs"),
        (42, 42),
        (None, None),
    ],
)
def test_render(template: Any, expected: Any) -> None:
    assert render(template, CTX) == expected


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("${input.missing}", "${input.missing}: input has no 'missing'"),
        ("${steps.other.output}", "${steps.other.output}: steps has no 'other'"),
        ("${input.tags.2}", "${input.tags.2}: input.tags has no '2'"),  # index out of range
        ("${input.tags.-1}", "input.tags has no '-1'"),
        ("${input.repo.x}", "input.repo has no 'x'"),  # cannot index into a string
        ("${nope}", "${nope}: context has no 'nope'"),
        ("text ${input.missing}", "input has no 'missing'"),
        ({"deep": ["${input.nested.k.z}"]}, "input.nested.k has no 'z'"),
    ],
)
def test_render_missing_raises(template: Any, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        render(template, CTX)
    assert message in str(info.value)


def test_references_in_document_order() -> None:
    doc = {
        "a": "${input.x} and ${steps.s.output.y}",
        "b": ["${run.id}", {"c": "${ steps.t.output }"}],
        "d": 5,
    }
    assert references(doc) == ["input.x", "steps.s.output.y", "run.id", "steps.t.output"]
    assert references("plain") == []
    assert references(None) == []


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("input", None),
        ("input.a.0.b", None),
        ("steps.a.output", None),
        ("steps.a.output.x.1", None),
        ("run.id", None),
        ("", "malformed reference ${}"),
        ("input..x", "malformed reference ${input..x}"),
        ("input.", "malformed reference"),
        ("env.HOME", "must start with one of: input, steps, run"),
        ("steps", "must look like steps.<id>.output"),
        ("steps.a", "must look like steps.<id>.output"),
        ("steps.a.result", "must look like steps.<id>.output"),
        ("run", "only run.id is available"),
        ("run.name", "only run.id is available"),
    ],
)
def test_check_reference(path: str, problem: str | None) -> None:
    result = check_reference(path)
    if problem is None:
        assert result is None
    else:
        assert result is not None and problem in result


@pytest.mark.parametrize(
    ("path", "step"),
    [("steps.plan.output", "plan"), ("steps.plan.output.x", "plan"), ("input.steps", None), ("run.id", None)],
)
def test_step_of(path: str, step: str | None) -> None:
    assert step_of(path) == step


def test_non_ascii_digit_segment_is_a_template_error() -> None:
    """Regression: a segment such as "²" passes `str.isdigit()` but `int("²")` raised a plain
    ValueError, which escaped decide() (it only catches TemplateError)."""
    assert check_reference("input.tags.²") is None
    with pytest.raises(TemplateError):
        render("${input.tags.²}", CTX)
