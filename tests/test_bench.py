"""`dagnats bench` keeps working: its smallest settings run and report every figure (not their values)."""

from __future__ import annotations

import json

from conftest import dagnats

FIGURES = {
    "ceiling": {"awaited_msgs_per_s", "awaited_us", "async_msgs_per_s"},
    "w1": {"step_ms_p50", "step_ms_p99"},
    "w2": {"steps_per_s", "runs_per_s"},
    "w3": {"wall_ms"},
    "approval": {"ms_p50"},
    "recovery": {
        "first_progress_s",
        "all_done_s",
        "duplicates",
        "machine_first_progress_s",
        "machine_all_done_s",
        "machine_duplicates",
        "machine_reran_in_flight",
    },
    "agent_history": {"ratio"},
    "console": {"ms_p50", "ms_p99", "key_ms_p50", "key_ms_p99"},
    "memory": {"peak_rss_mb", "engine_rss_mb", "nats_rss_mb"},
    "scale": {
        "map_items_per_s",
        "map_items_per_s_small",
        "map_linearity",
        "list_ms",
        "approvals_ms",
        "console_first_screen_ms",
    },
}


def test_bench_reports_every_figure():
    proc = dagnats("bench", "--tiny", "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["fsync"] is False
    for section, keys in FIGURES.items():
        assert keys <= set(result[section]), section
        assert all(isinstance(result[section][k], (int, float)) for k in keys), section
    assert result["console"]["missed"] == 0 and result["console"]["measured"] > 0
    assert result["scale"]["errors"] == []
    # measured through the public paths: a worker process, Client.wait and Client.wait_many
    assert result["setup"]["engine_mode"] == "process"
    assert result["setup"]["tasks"].startswith("dagnats worker dagnats.app.bench_tasks:worker")
    assert result["setup"]["w2_wait"] == "Client.wait_many"
    assert result["memory"]["peak_rss_mb"] == round(
        result["memory"]["engine_rss_mb"] + result["memory"]["nats_rss_mb"], 1
    )


def test_bench_refuses_fsync_for_a_server_not_its_own():
    proc = dagnats("bench", "--tiny", "--fsync", "--nats", "nats://127.0.0.1:1", timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "--fsync applies to the bench's own server" in proc.stderr
