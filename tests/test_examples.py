"""The example workflows run as their comments say."""

from __future__ import annotations

import subprocess

from conftest import ROOT, dagnats, dagnats_json, wait_until

EXAMPLES = ROOT / "examples"


def test_every_example_definition_validates():
    files = sorted(
        str(p) for p in EXAMPLES.iterdir() if p.suffix in (".json", ".yaml") or p.name == "pipeline.py"
    )
    proc = dagnats("workflow", "validate", *files)
    assert proc.returncode == 0, proc.stderr


def test_coding_pipeline_runs_offline_to_a_commit(serve, data_dir, tmp_path):
    repo = tmp_path / "calc-repo"
    assert dagnats("workflow", "register", str(EXAMPLES / "coding.yaml"), data_dir=data_dir).returncode == 0
    run_id = dagnats_json(
        "run",
        "start",
        "coding",
        "--input",
        f'{{"repo": "{repo}", "issue": "add() subtracts"}}',
        data_dir=data_dir,
    )["run_id"]
    wait_until(
        lambda: dagnats_json("approval", "list", data_dir=data_dir), timeout=40, what="the ship approval"
    )
    (pending,) = dagnats_json("approval", "list", data_dir=data_dir)
    assert pending["step_id"] == "ship" and "it now returns a + b" in pending["prompt"]
    shown = dagnats_json("run", "show", run_id, data_dir=data_dir)
    assert shown["steps"]["plan.reproduce"]["status"] == "completed"
    assert "a - b" in shown["steps"]["plan.inspect"]["output"]["stdout"]  # the plan ran before the fix
    assert shown["steps"]["fix"]["output"]["turns"] == 4
    assert (repo / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
    assert (
        dagnats("approval", "approve", run_id, "ship", "--comment", "ship it", data_dir=data_dir).returncode
        == 0
    )
    wait_until(
        lambda: dagnats_json("run", "show", run_id, data_dir=data_dir)["status"] == "completed", what="commit"
    )
    log = subprocess.run(["git", "log", "--oneline"], cwd=repo, capture_output=True, text=True).stdout
    assert "fix: add() subtracts" in log.splitlines()[0]
