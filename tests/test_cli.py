"""`llmorch` commands, run as a user would: a real subprocess, real exit codes, JSON out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"


def llmorch(*args: str, stdin: str | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120")
    return subprocess.run(
        [sys.executable, "-m", "prefect_llmorch.cli", *args], cwd=ROOT, input=stdin,
        capture_output=True, text=True, timeout=timeout, env=env,
    )


def test_check_accepts_the_examples() -> None:
    for plan in ("kitti.plan", "seo.plan", "parallelqa.plan"):
        out = llmorch("check", f"prefect_llmorch/examples/{plan}", "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["ok"] is True


def test_check_reports_every_error_with_line_and_column_and_exits_1() -> None:
    bad = 's1: search("a")\ns2: serch("b")\ns3: chatbot("{s9}")\n'
    out = llmorch("check", "-", "--json", stdin=bad)
    assert out.returncode == 1
    doc = json.loads(out.stdout)
    assert doc["ok"] is False
    where = [(e["line"], e["column"]) for e in doc["errors"]]
    assert where[0] == (2, 5) and len(where) == 2
    assert "did you mean `search`" in doc["errors"][0]["message"]
    human = llmorch("check", "-", stdin=bad)
    assert human.returncode == 1 and "line 2, column 5" in human.stderr and "Traceback" not in human.stderr


def test_check_on_the_malformed_llmcompiler_plan_points_at_the_missing_paren() -> None:
    text = (SHARED / "llmcompiler_plans" / "parallelqa_1.txt").read_text()
    plan = text[text.index("1. search"):]
    out = llmorch("check", "-", "--json", "--toolbox", "tests.cli_toolbox:toolbox", stdin=plan)
    assert out.returncode == 1
    assert json.loads(out.stdout)["errors"][0]["line"] == 2


def test_graph_json_is_the_documented_object() -> None:
    out = llmorch("graph", "prefect_llmorch/examples/seo.plan", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["calls"][2] == {"id": "s3", "function": "compare", "kind": "compute", "rank": 2, "deps": ["s1", "s2"]}
    assert doc["mutex"] == [] and set(doc) == {"calls", "mutex", "work", "critical_path"}
    kitti = json.loads(llmorch("graph", "prefect_llmorch/examples/kitti.plan", "--json").stdout)
    assert len(kitti["mutex"]) == 28 and kitti["mutex"][0] == ["s1", "s2"]
    mermaid = llmorch("graph", "prefect_llmorch/examples/kitti.plan", "--mermaid").stdout
    assert mermaid.startswith("flowchart") and "-.-" in mermaid


def test_simulate_json_on_an_stg_file() -> None:
    out = llmorch("simulate", str(SHARED / "stg" / "robot.stg"), "-P", "4", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["work"] == 2483 and doc["critical_path"] == 569
    assert doc["lower_bound"] <= doc["makespan"] <= doc["work"] / 4 + (1 - 1 / 4) * doc["critical_path"]


def test_unknown_toolbox_is_a_clear_error() -> None:
    out = llmorch("graph", "prefect_llmorch/examples/seo.plan", "--toolbox", "nowhere:tb")
    assert out.returncode == 2 and "cannot import toolbox module 'nowhere'" in out.stderr


@pytest.mark.slow
def test_run_json_executes_on_ephemeral_prefect() -> None:
    out = llmorch("run", "prefect_llmorch/examples/seo.plan", "-P", "2", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout)
    assert doc["state"] == "Completed" and doc["processors"] == 2
    assert [c["id"] for c in doc["calls"]] == ["s1", "s2", "s3", "s4"]
    assert all(set(c) == {"id", "function", "kind", "rank", "state", "start", "end", "pid"} for c in doc["calls"])
    assert doc["result"].startswith("Summary")
    assert doc["lower_bound"] <= doc["makespan"] + 1e-6


@pytest.mark.slow
def test_run_with_a_failing_call_exits_1_with_a_failed_state() -> None:
    plan = 's1: search("Apple stock")\ns2: average([])\ns3: chatbot("{s2}")\n'
    out = llmorch("run", "-", "-P", "1", "--json", stdin=plan)
    assert out.returncode == 1
    doc = json.loads(out.stdout)
    assert doc["state"] == "Failed" and "average() of an empty list" in doc["message"]
    states = {c["id"]: c["state"] for c in doc["calls"]}
    assert states["s1"] == "Completed" and states["s2"] == "Failed" and states["s3"] != "Completed"


@pytest.mark.slow
def test_demo_runs_the_whole_loop_without_an_api_key() -> None:
    out = llmorch("demo", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout)
    assert doc["state"] == "Completed" and doc["attempts"] == 1
    assert doc["tokens"]["prompt"] > 0 and doc["result"].startswith("Demo answer")
