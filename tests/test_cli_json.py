"""`llmorch` with JSON plans and the JSON planner, run as a user would (real subprocess)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_cli import llmorch as _llmorch

PLANS = Path(__file__).parent / "plans"


def llmorch(*args: str, stdin: str | None = None, api_url: str | None = None):  # type: ignore[no-untyped-def]
    """`llmorch` run from tests/, where the test toolbox module is."""
    return _llmorch(*args, stdin=stdin, cwd=Path(__file__).parent, api_url=api_url)
TOOLBOX = "toolboxes_fields:toolbox"
NESTFUL = ('[{"name": "find_airport", "arguments": {"query": "Paris"}, "label": "var1"},\n'
           ' {"name": "echo", "arguments": {"text": "$var1.name$"}, "label": "var2"},\n'
           ' {"name": "var_result", "arguments": {"answer": "$var2$"}}]\n')


def test_check_and_graph_take_a_json_plan_file(tmp_path: Path) -> None:
    plan = tmp_path / "trip.json"
    plan.write_text(NESTFUL)
    out = llmorch("check", str(plan), "-t", TOOLBOX, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"ok": True, "errors": [], "calls": 2}
    out = llmorch("graph", str(plan), "-t", TOOLBOX, "--json")
    assert out.returncode == 0, out.stderr
    assert "var1" in out.stdout and "var2" in out.stdout


def test_check_reports_a_json_plan_error_with_pointer_line_and_column() -> None:
    bad = NESTFUL.replace("$var1.name$", "$var1.nmae$")
    out = llmorch("check", "-", "-t", TOOLBOX, "--json", stdin=bad)
    assert out.returncode == 1
    [err] = json.loads(out.stdout)["errors"]
    assert err["kind"] == "field" and err["pointer"] == "/1/arguments/text" and err["line"] == 2
    assert "did you mean 'name'?" in err["message"]
    human = llmorch("check", "-", "-t", TOOLBOX, stdin=bad)
    assert human.returncode == 1 and "(/1/arguments/text)" in human.stderr and "Traceback" not in human.stderr


def test_check_accepts_the_nestful_samples_without_a_toolbox_of_theirs() -> None:
    out = llmorch("check", str(PLANS / "nestful_flights.json"), "-t", "prefect_llmorch.examples.toolbox:toolbox", "--json")
    assert out.returncode == 1  # their functions are not in the example toolbox
    kinds = {e["kind"] for e in json.loads(out.stdout)["errors"]}
    assert kinds == {"unknown_function"}


def test_unknown_planner_mode_is_refused() -> None:
    out = llmorch("demo", "--planner", "yaml")
    assert out.returncode != 0 and "unknown planner 'yaml'" in out.stderr


@pytest.mark.slow
def test_demo_with_the_json_planner_runs_the_whole_loop(prefect_server) -> None:  # noqa: ANN001
    out = llmorch("demo", "--planner", "json", "--json", api_url=prefect_server.url)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout)
    assert doc["state"] == "Completed" and doc["attempts"] == 1
    assert json.loads(doc["plan"])["calls"][2]["kwargs"]["a"] == {"ref": "s1", "path": ["summary"]}
    assert "AAPL 1.2% vs MSFT -0.4%" in doc["result"]


def test_ask_with_an_unreachable_llm_prints_a_json_report(prefect_server) -> None:  # noqa: ANN001
    """`--json` means a JSON report on standard output for every outcome: an LLM that
    cannot be reached included (state Failed, the reason, nothing finished), exit 1."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, PREFECT_API_URL=prefect_server.url, OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1",
               OPENAI_API_KEY="sk-test", LLMORCH_MODEL="m", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    out = subprocess.run([sys.executable, "-m", "prefect_llmorch.cli", "ask", "Did Apple do better?", "--json"],
                         capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode == 1, out.stderr[-3000:]
    doc = json.loads(out.stdout)
    assert doc["state"] == "Failed" and "refused" in doc["message"] and doc["calls"] == []
    assert "sk-test" not in out.stdout + out.stderr
