"""The Python builder produces the same validated definitions as JSON files."""

from __future__ import annotations

import pytest

from dagnats.api.builder import Workflow, input_ref
from dagnats.core.definition import DefinitionError, parse_definition

from conftest import ROOT, dagnats


def test_builder_matches_the_equivalent_document():
    wf = Workflow("b", description="d", timeout="1h")
    a = wf.task("a", "echo", input={"x": input_ref("x")})
    b = wf.task(
        "b", "shell", depends_on=[a], config={"command": "echo " + a.output("x")}, retry={"max_attempts": 2}
    )
    wf.sleep("nap", "5s", depends_on=[b])
    wf.map("each", "echo", over=a, concurrency=2)
    wf.wait_for_event("gate", "go", timeout="1m")
    wf.sub_workflow("child", "other", version=3)
    built = wf.build()
    assert built == parse_definition(
        {
            "name": "b",
            "description": "d",
            "timeout": "1h",
            "steps": [
                {"id": "a", "task": "echo", "input": {"x": "${input.x}"}},
                {
                    "id": "b",
                    "task": "shell",
                    "depends_on": ["a"],
                    "config": {"command": "echo ${steps.a.output.x}"},
                    "retry": {"max_attempts": 2},
                },
                {"id": "nap", "type": "sleep", "depends_on": ["b"], "config": {"duration": "5s"}},
                {
                    "id": "each",
                    "type": "map",
                    "depends_on": ["a"],
                    "config": {"task": "echo", "config": {}, "concurrency": 2, "max_items": 1000},
                },
                {"id": "gate", "type": "wait_for_event", "config": {"name": "go", "timeout": "1m"}},
                {"id": "child", "type": "sub_workflow", "config": {"workflow": "other", "version": 3}},
            ],
        }
    )


def test_builder_errors_name_the_path():
    wf = Workflow("bad")
    wf.task("a", "echo", depends_on=["ghost"])
    with pytest.raises(DefinitionError, match=r"steps\[0\]\.depends_on\[0\]: unknown step 'ghost'"):
        wf.build()


def test_python_definition_files_validate_from_the_cli(tmp_path):
    ok = dagnats("workflow", "validate", str(ROOT / "examples" / "pipeline.py"))
    assert ok.returncode == 0 and "ok (pipeline, 3 steps)" in ok.stdout
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from dagnats.api.builder import Workflow\nw = Workflow('x')\nw.task('a', 'echo', retry={'max_attempts': 0})\n"
    )
    proc = dagnats("workflow", "validate", str(bad))
    assert proc.returncode == 1 and "steps[0].retry.max_attempts: must be 1..100000" in proc.stderr
