"""parse_definition: every problem is a DefinitionError that starts with its exact path."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from dagnats.core.definition import (
    DefinitionError,
    MapConfig,
    RetryPolicy,
    SleepConfig,
    SubWorkflowConfig,
    WaitConfig,
    parse_definition,
    step_config,
)


def wf(*steps: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"name": "flow", "steps": list(steps), **top}


def task(sid: str, *deps: str, **kw: Any) -> dict[str, Any]:
    return {"id": sid, "task": kw.pop("task", "work"), "depends_on": list(deps), **kw}


BAD = [
    # (label, document, exact message prefix)
    ("not an object", ["x"], "definition: expected an object"),
    ("missing name", {"steps": [task("a")]}, "definition: missing required field name"),
    ("bad name", wf(task("a"), name="no spaces"), "name: 'no spaces' must be"),
    ("no steps", wf(), "steps: a workflow needs at least one step"),
    ("unknown top field", wf(task("a"), colour="red"), "definition: unknown field colour"),
    ("unknown step field", wf(task("a", colour="red")), "steps[0]: unknown field colour"),
    ("wrong field type", wf(task("a"), {"id": 5, "task": "t"}), "steps[1].id: expected str, got int"),
    ("missing step id", wf({"task": "t"}), "steps[0]: missing required field id"),
    ("bad step id", wf(task("a b")), "steps[0].id: 'a b' must be"),
    (
        "bad backoff",
        wf(task("a"), task("b", retry={"backoff": "linear"})),
        "steps[1].retry.backoff: expected one of fixed, exponential, got 'linear'",
    ),
    ("retry unknown field", wf(task("a", retry={"tries": 3})), "steps[0].retry: unknown field tries"),
    (
        "max_attempts zero",
        wf(task("a", retry={"max_attempts": 0})),
        "steps[0].retry.max_attempts: must be 1..",
    ),
    (
        "multiplier below 1",
        wf(task("a", retry={"multiplier": 0.5})),
        "steps[0].retry.multiplier: must be >= 1",
    ),
    (
        "bad retry initial",
        wf(task("a", retry={"initial": "soon"})),
        "steps[0].retry.initial: invalid duration 'soon'",
    ),
    ("bad retry max", wf(task("a", retry={"max": -1})), "steps[0].retry.max: duration must not be negative"),
    ("bad step timeout", wf(task("a", timeout="5x")), "steps[0].timeout: invalid duration '5x'"),
    ("bad run timeout", wf(task("a"), timeout="1y"), "timeout: invalid duration '1y'"),
    ("unknown dependency", wf(task("a", "nope")), "steps[0].depends_on[0]: unknown step 'nope'"),
    ("self dependency", wf(task("a", "a")), "steps[0].depends_on[0]: a step cannot depend on itself"),
    ("dependency twice", wf(task("a"), task("b", "a", "a")), "steps[1].depends_on: lists a step twice"),
    ("cycle of two", wf(task("a", "b"), task("b", "a")), "steps[0]: dependency cycle a -> b -> a"),
    (
        "cycle of three",
        wf(task("x"), task("a", "c"), task("b", "a"), task("c", "b")),
        "steps[1]: dependency cycle a -> c -> b -> a",
    ),
    ("duplicate ids", wf(task("a"), task("b"), task("a")), "steps[2].id: duplicate id 'a' (also steps[0])"),
    ("unknown step type", wf({"id": "a", "type": "bogus"}), "steps[0].type: unknown step type 'bogus'"),
    ("task without task name", wf({"id": "a"}), "steps[0].task: a task step needs the name of its task"),
    (
        "engine step with task",
        wf({"id": "a", "type": "sleep", "task": "t", "config": {"duration": "1s"}}),
        "steps[0].task: only task steps name a task",
    ),
    (
        "shell unknown config field",
        wf(task("a", task="shell", config={"command": "ls", "shel": "sh"})),
        "steps[0].config: unknown field shel",
    ),
    ("shell missing command", wf(task("a", task="shell")), "steps[0].config: missing required field command"),
    (
        "shell bad env value",
        wf(task("a", task="shell", config={"command": "ls", "env": {"A": 1}})),
        "steps[0].config.env[...]: expected str, got int",
    ),  # msgspec does not name dict keys
    (
        "shell bad timeout",
        wf(task("a", task="shell", config={"command": "ls", "timeout": "x"})),
        "steps[0].config.timeout: invalid duration 'x'",
    ),
    ("echo takes no config", wf(task("a", task="echo", config={"x": 1})), "steps[0].config: unknown field x"),
    (
        "sleep bad duration",
        wf({"id": "a", "type": "sleep", "config": {"duration": "forever"}}),
        "steps[0].config.duration: invalid duration 'forever'",
    ),
    (
        "sleep too long",
        wf({"id": "a", "type": "sleep", "config": {"duration": "400d"}}),
        "steps[0].config.duration: at most 365d",
    ),
    (
        "wait without name",
        wf({"id": "a", "type": "wait_for_event", "config": {}}),
        "steps[0].config: missing required field name",
    ),
    (
        "sub_workflow bad name",
        wf({"id": "a", "type": "sub_workflow", "config": {"workflow": "a b"}}),
        "steps[0].config.workflow: 'a b' is not a workflow name",
    ),
    (
        "map without dependency",
        wf({"id": "m", "type": "map", "config": {"task": "t"}}),
        "steps[0]: a map step needs exactly one dependency or an input template",
    ),
    (
        "map with two dependencies",
        wf(
            task("a"),
            task("b"),
            {"id": "m", "type": "map", "depends_on": ["a", "b"], "config": {"task": "t"}},
        ),
        "steps[2]: a map step needs exactly one dependency",
    ),
    (
        "map max_items zero",
        wf(
            task("a"),
            {"id": "m", "type": "map", "depends_on": ["a"], "config": {"task": "t", "max_items": 0}},
        ),
        "steps[1].config.max_items: must be 1..10000",
    ),
    (
        "map negative concurrency",
        wf(
            task("a"),
            {"id": "m", "type": "map", "depends_on": ["a"], "config": {"task": "t", "concurrency": -1}},
        ),
        "steps[1].config.concurrency: must be >= 0",
    ),
    (
        "map item config checked",
        wf(
            task("a"),
            {"id": "m", "type": "map", "depends_on": ["a"], "config": {"task": "shell", "config": {}}},
        ),
        "steps[1].config.config: missing required field command",
    ),
    (
        "template reads non-upstream step",
        wf(task("a"), task("b", input="${steps.c.output}"), task("c")),
        "steps[1].input: ${steps.c.output} reads step 'c', which is not upstream of 'b'",
    ),
    (
        "template reads downstream step",
        wf(task("a", input={"x": "${steps.b.output.x}"}), task("b", "a")),
        "steps[0].input: ${steps.b.output.x} reads step 'b', which is not upstream of 'a'",
    ),
    (
        "config template reads sibling",
        wf(task("a"), task("b"), task("c", "a", config={"v": "${steps.b.output}"})),
        "steps[2].config: ${steps.b.output} reads step 'b'",
    ),
    (
        "when reads non-upstream",
        wf(task("a"), task("b", when="${steps.a.output.ok}")),
        "steps[1].when: ${steps.a.output.ok} reads step 'a'",
    ),
    (
        "compare reads non-upstream",
        wf(task("a"), task("b", skip_if={"ref": "steps.a.output", "op": "exists"})),
        "steps[1].skip_if: ${steps.a.output} reads step 'a'",
    ),
    (
        "malformed reference",
        wf(task("a", input="${input..x}")),
        "steps[0].input: malformed reference ${input..x}",
    ),
    (
        "unknown reference root",
        wf(task("a", input="${env.HOME}")),
        "steps[0].input: reference ${env.HOME} must start with one of: input, steps, run",
    ),
    (
        "steps reference without output",
        wf(task("a"), task("b", "a", input="${steps.a.result}")),
        "steps[1].input: reference ${steps.a.result} must look like steps.<id>.output",
    ),
    ("bad compare op", wf(task("a", when={"ref": "input.x", "op": "~="})), "steps[0].when"),
    (
        "schema unsupported keyword",
        wf(task("a"), input_schema={"type": "object", "oneOf": []}),
        "input_schema: unsupported keyword 'oneOf'",
    ),
    (
        "schema nested unsupported keyword",
        wf(task("a"), input_schema={"type": "object", "properties": {"x": {"format": "uri"}}}),
        "input_schema.properties.x: unsupported keyword 'format'",
    ),
    (
        "schema unknown type",
        wf(task("a"), input_schema={"type": "dict"}),
        "input_schema.type: unknown type 'dict'",
    ),
]


@pytest.mark.parametrize(
    ("doc", "prefix"), [(doc, prefix) for _, doc, prefix in BAD], ids=[b[0] for b in BAD]
)
def test_bad_definition_names_exact_path(doc: Any, prefix: str) -> None:
    with pytest.raises(DefinitionError) as info:
        parse_definition(doc)
    assert str(info.value).startswith(prefix), str(info.value)


def test_bad_schema_keyword_value_is_a_definition_error() -> None:
    """Regression: `properties` that is not an object used to crash check_schema with
    AttributeError; it must be a DefinitionError naming the path."""
    with pytest.raises(DefinitionError, match=r"^input_schema\.properties"):
        parse_definition(wf(task("a"), input_schema={"type": "object", "properties": "x"}))


GOOD = [
    ("single task", wf(task("a"))),
    (
        "retry policies",
        wf(
            task("a", retry={"max_attempts": 3}),
            task(
                "b",
                "a",
                retry={
                    "max_attempts": 5,
                    "backoff": "exponential",
                    "initial": "500ms",
                    "max": "10s",
                    "multiplier": 3,
                },
            ),
        ),
    ),
    (
        "when and skip_if",
        wf(
            task("a"),
            task("b", "a", when="${steps.a.output.ok}"),
            task("c", "a", skip_if={"ref": "steps.a.output.n", "op": ">", "value": 3}),
            task("d", when={"ref": "input.flag", "op": "exists"}),
        ),
    ),
    (
        "templates",
        wf(
            task("a"),
            task("b", "a"),
            task(
                "c",
                "b",
                input={"first": "${steps.a.output}", "run": "${run.id}", "txt": "x-${input.y}"},
                config={"v": "${steps.b.output.v}"},
            ),
        ),
    ),
    (
        "sub_workflow",
        wf({"id": "child", "type": "sub_workflow", "config": {"workflow": "other", "version": 2}}),
    ),
    (
        "map over dependency",
        wf(
            task("list"),
            {
                "id": "m",
                "type": "map",
                "depends_on": ["list"],
                "config": {"task": "work", "concurrency": 2, "max_items": 10},
            },
        ),
    ),
    (
        "map over input template",
        wf({"id": "m", "type": "map", "input": "${input.items}", "config": {"task": "echo"}}),
    ),
    ("sleep", wf({"id": "nap", "type": "sleep", "config": {"duration": "1h30m"}})),
    ("wait_for_event", wf({"id": "w", "type": "wait_for_event", "config": {"name": "go", "timeout": "2d"}})),
    (
        "builtin tasks",
        wf(
            task("e", task="echo"),
            task("s", task="shell", config={"command": ["ls", "-l"], "timeout": "30s"}),
            task("z", task="sleep", config={"duration": 2}),
        ),
    ),
    (
        "timeouts and schema",
        wf(
            task("a", timeout="5m"),
            timeout="1d",
            input_schema={
                "type": "object",
                "required": ["x"],
                "properties": {"x": {"type": "integer", "minimum": 0}},
            },
        ),
    ),
]


@pytest.mark.parametrize("doc", [g[1] for g in GOOD], ids=[g[0] for g in GOOD])
def test_valid_definitions_parse(doc: dict[str, Any]) -> None:
    parsed = parse_definition(doc)
    assert parsed.name == "flow"
    assert [s.id for s in parsed.steps] == [s["id"] for s in doc["steps"]]
    # A parsed definition survives an encode/decode round trip unchanged.
    assert msgspec.json.decode(msgspec.json.encode(parsed), type=type(parsed)) == parsed


def test_parsed_fields_and_typed_configs() -> None:
    parsed = parse_definition(
        wf(
            task("a", retry={"max_attempts": 3, "initial": "2s"}, timeout="5m"),
            {"id": "nap", "type": "sleep", "depends_on": ["a"], "config": {"duration": "1m"}},
            {"id": "w", "type": "wait_for_event", "config": {"name": "go"}},
            {"id": "c", "type": "sub_workflow", "config": {"workflow": "other"}},
            {"id": "m", "type": "map", "depends_on": ["a"], "config": {"task": "echo", "concurrency": 2}},
            timeout="1h",
        )
    )
    a = parsed.step("a")
    assert a.retry == RetryPolicy(max_attempts=3, initial="2s")
    assert a.timeout_seconds == 300.0
    assert parsed.timeout_seconds == 3600.0
    assert parsed.step("w").timeout_seconds is None
    assert a.input is msgspec.UNSET
    assert step_config(parsed.step("nap")) == SleepConfig(duration="1m")
    assert step_config(parsed.step("w")) == WaitConfig(name="go")
    assert step_config(parsed.step("c")) == SubWorkflowConfig(workflow="other")
    assert step_config(parsed.step("m")) == MapConfig(task="echo", concurrency=2)
    with pytest.raises(KeyError):
        parsed.step("missing")


@pytest.mark.parametrize(
    ("policy", "delays"),
    [
        (RetryPolicy(), [1.0, 1.0, 1.0]),
        (RetryPolicy(backoff="fixed", initial="5s"), [5.0, 5.0, 5.0]),
        (RetryPolicy(backoff="exponential", initial=1), [1.0, 2.0, 4.0, 8.0]),
        (RetryPolicy(backoff="exponential", initial="500ms", multiplier=3), [0.5, 1.5, 4.5]),
        (RetryPolicy(backoff="exponential", initial="1s", max="5s"), [1.0, 2.0, 4.0, 5.0, 5.0]),
        (
            RetryPolicy(backoff="exponential", initial="10m"),
            [600.0, 1200.0, 2400.0, 3600.0],
        ),  # default cap 1h
        (RetryPolicy(backoff="fixed", initial="10s", max="3s"), [3.0]),
    ],
)
def test_retry_delay(policy: RetryPolicy, delays: list[float]) -> None:
    assert [policy.delay(n) for n in range(1, len(delays) + 1)] == pytest.approx(delays)


def test_exponential_delay_is_capped_for_late_attempts() -> None:
    """Regression: max_attempts may be up to 100000, so delay() must stay capped for any attempt
    (`multiplier ** (attempt - 1)` used to raise OverflowError from attempt 1025 on)."""
    policy = RetryPolicy(max_attempts=5000, backoff="exponential", initial="1s", max="1m")
    parse_definition(wf(task("a", retry=msgspec.to_builtins(policy))))  # accepted by validation
    assert policy.delay(1025) == 60.0


def test_exponential_delay_with_large_multiplier_is_capped() -> None:
    """Regression: the same overflow, reachable with only 3 attempts (multiplier is unbounded)."""
    policy = RetryPolicy(max_attempts=3, backoff="exponential", initial="1s", max="1m", multiplier=1e200)
    parse_definition(wf(task("a", retry=msgspec.to_builtins(policy))))  # accepted by validation
    assert policy.delay(2) == 60.0
    assert policy.delay(3) == 60.0  # 1e200 ** 2 overflows a float


def test_exponential_delay_with_a_zero_cap() -> None:
    """`max: 0` is a valid duration, so exponential backoff must give 0s delays.

    BUG (dagnats/core/definition.py, RetryPolicy.delay): the log-space overflow guard computes
    math.log(cap), which raises "ValueError: math domain error" when cap is 0; decide() then
    crashes on the second failure of such a step (see test_decide)."""
    policy = RetryPolicy(max_attempts=3, backoff="exponential", initial="1s", max=0)
    parse_definition(wf(task("a", retry=msgspec.to_builtins(policy))))  # accepted by validation
    assert [policy.delay(1), policy.delay(2)] == [0.0, 0.0]


@pytest.mark.parametrize("multiplier", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_multiplier_is_rejected(multiplier: float) -> None:
    """BUG (dagnats/core/definition.py, _validate_retry): only `multiplier < 1` is refused, so NaN
    and infinity (YAML `.nan` / `.inf`) are accepted. JSON encodes them as null, so the run.started
    event that carries the definition no longer decodes (`Expected float, got null - at
    $.definition.steps[0].retry.multiplier`); with NaN, delay() also returns NaN."""
    with pytest.raises(DefinitionError, match=r"^steps\[0\]\.retry\.multiplier: "):
        parse_definition(
            wf(task("a", retry={"max_attempts": 3, "backoff": "exponential", "multiplier": multiplier}))
        )
