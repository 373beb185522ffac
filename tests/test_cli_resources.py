"""`--resource NAME=AMOUNT` on the CLI: parsed before Prefect starts, bad values exit 2."""

from __future__ import annotations

import subprocess
import sys

from llm_fixtures import fake_llm, llm  # noqa: F401


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "prefect_llmorch.cli", *args], capture_output=True, text=True, timeout=120)


def test_a_bad_resource_option_is_one_line_and_exit_2() -> None:
    for bad in ("gpu=x", "search-api", "search-api=0"):
        out = _cli("run", "example:kitti", "--resource", bad)
        assert out.returncode == 2, (bad, out.stderr)
        assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: --resource")


def test_simulate_takes_capacities() -> None:
    out = _cli("simulate", "example:kitti", "-P", "2", "--resource", "search-api=2", "--json")
    assert out.returncode == 0, out.stderr
    assert '"makespan"' in out.stdout


def test_ask_and_serve_take_resource_options_and_refuse_bad_ones_in_one_line() -> None:
    for command in (["ask", "a question"], ["serve"]):
        out = _cli(*command, "--resource", "search-api=-1")
        assert out.returncode == 2, (command, out.stderr)
        assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: --resource 'search-api=-1'")


def test_ask_refuses_a_toolbox_that_needs_a_capacity_it_was_not_given() -> None:
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "benchmarks"), str(root)]))
    out = subprocess.run(
        [sys.executable, "-m", "prefect_llmorch.cli", "ask", "q", "-t", "mixed_toolbox:toolbox", "--resource", "search-api=2"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1
    assert "function infer_small needs 'gpu_mem_gb', which this run has no capacity for" in out.stderr


def test_deployments_take_capacities_from_the_environment_and_check_the_resources_parameter(monkeypatch) -> None:  # noqa: ANN001
    import pydantic
    import pytest

    from prefect_llmorch.flows import deploy

    monkeypatch.setenv("LLMORCH_RESOURCES", "search-api=2,gpu_mem_gb=80")
    assert deploy.make_task_runner().resources == {"search-api": 2.0, "gpu_mem_gb": 80.0}
    assert deploy.AskParameters(query="q", resources={"search-api": 3}).resources == {"search-api": 3.0}
    for bad in ({"search-api": 0}, {"processors": 2}, {"two words": 1}):
        with pytest.raises(pydantic.ValidationError):
            deploy.RunParameters(resources=bad)


def test_ask_query_admits_searches_by_the_capacity_it_was_given(prefect_harness, fake_llm, llm) -> None:  # noqa: ANN001, F811
    """Three searches planned by the (fake) LLM, capacity 1: the tools' own records never overlap."""
    import json
    import os
    from pathlib import Path

    from prefect_llmorch.flows.ask import ask_query

    log = Path(os.environ["LLMORCH_MIXED_LOG"])
    log.unlink(missing_ok=True)
    fake_llm.add('s1: search("a", latency=0.2)\ns2: search("b", latency=0.2)\ns3: search("c", latency=0.2)\n')
    report = ask_query("q", "mixed_toolbox:toolbox", processors=1, endpoint=llm, concurrency_limit=None,
                       resources={"search-api": 1}, gpus=[{"id": 0, "mem_gb": 80}], recovery_rounds=0)
    assert report.state == "Completed"
    rows = sorted((json.loads(line) for line in log.read_text().splitlines()), key=lambda r: r["start"])
    assert [r["function"] for r in rows] == ["search"] * 3
    assert all(b["start"] >= a["end"] - 1e-3 for a, b in zip(rows, rows[1:]))  # one at a time
