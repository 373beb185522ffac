"""Caching of pure calls through Prefect's cache: counted with the tools' own records."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefect_llmorch import compute, inout
from prefect_llmorch.report import PlanRunFailed
from prefect_llmorch.flows.run import run_plan

pytestmark = pytest.mark.usefixtures("prefect_harness")

TOOLBOX = "toolboxes_cache:toolbox"


class Runs:
    """The tools' own record of what really ran (they append to `path`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.log = str(path)

    def __call__(self) -> list[str]:
        return self.path.read_text().splitlines() if self.path.exists() else []


@pytest.fixture
def runs(tmp_path: Path) -> Runs:
    return Runs(tmp_path / "runs.log")


def _unique(tmp_path: Path) -> int:
    # A fresh argument per test: the cache outlives a test (that is the point).
    return abs(hash(str(tmp_path))) % 10**9


def test_a_second_run_reuses_cached_results_and_runs_nothing(runs, tmp_path: Path) -> None:
    x = _unique(tmp_path)
    L = runs.log
    plan = f's1: square({x}, "{L}")\ns2: lookup("q{x}", "{L}")\ns3: square(s1, "{L}")\n'
    first = run_plan(plan, TOOLBOX, processors=1, concurrency_limit=None)
    assert first.state == "Completed" and len(runs()) == 3
    assert not any(c.cached for c in first.calls)
    second = run_plan(plan, TOOLBOX, processors=1, concurrency_limit=None)
    assert len(runs()) == 3  # the tools ran no more
    assert second.state == "Completed" and all(c.cached for c in second.calls)
    assert second.results == first.results and second.results["s3"] == x**4
    assert {c.id for c in second.calls if c.to_json().get("cached")} == {"s1", "s2", "s3"}


def test_new_arguments_make_a_new_key(runs, tmp_path: Path) -> None:
    x = _unique(tmp_path)
    run_plan(f's1: square({x}, "{runs.log}")\n', TOOLBOX, processors=1, concurrency_limit=None)
    run_plan(f's1: square({x + 1}, "{runs.log}")\n', TOOLBOX, processors=1, concurrency_limit=None)
    assert [line.split()[:2] for line in runs()] == [["square", str(x)], ["square", str(x + 1)]]


def test_no_cache_runs_every_call(runs, tmp_path: Path) -> None:
    x = _unique(tmp_path)
    plan = f's1: square({x}, "{runs.log}")\n'
    run_plan(plan, TOOLBOX, processors=1, concurrency_limit=None)
    report = run_plan(plan, TOOLBOX, processors=1, concurrency_limit=None, cache=False)
    assert len(runs()) == 2 and not report.calls[0].cached


def test_calls_with_effects_always_run(runs, tmp_path: Path) -> None:
    x = _unique(tmp_path)
    for _ in range(2):
        run_plan(f's1: send("m{x}", "{runs.log}")\n', TOOLBOX, processors=1, concurrency_limit=None)
    assert len(runs()) == 2


def test_a_failed_call_is_not_cached(runs, tmp_path: Path) -> None:
    x = _unique(tmp_path)
    flag = tmp_path / "fail"
    flag.write_text("")
    plan = f's1: flaky({x}, "{flag}", "{runs.log}")\n'
    with pytest.raises(PlanRunFailed):
        run_plan(plan, TOOLBOX, processors=1, concurrency_limit=None)
    flag.unlink()
    report = run_plan(plan, TOOLBOX, processors=1, concurrency_limit=None)
    assert report.result == x + 1 and not report.calls[0].cached
    assert len(runs()) == 2  # ran again after failing


def test_a_result_that_cannot_be_stored_fails_clearly(runs, tmp_path: Path) -> None:
    with pytest.raises(PlanRunFailed) as info:
        run_plan(f's1: unstorable({_unique(tmp_path)}, "{runs.log}")\n', TOOLBOX, processors=1, concurrency_limit=None)
    row = info.value.report.calls[0]
    assert row.state == "Failed" and "cache=True" in (row.reason or "")


def test_effects_and_cache_together_are_refused() -> None:
    with pytest.raises(ValueError, match="effects=True cannot be cache=True"):
        @inout(cache=True, effects=True)
        def both() -> None: ...

    with pytest.raises(ValueError, match="never retried"):
        @compute(effects=True, retries=2)
        def retried() -> None: ...


def test_the_cli_takes_no_cache_and_costs(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "prefect_llmorch.cli", "run", "example:kitti", "--costs", "guess"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2 and "--costs declared or --costs history" in out.stderr


def test_recovery_and_the_cache_agree(runs, tmp_path: Path) -> None:
    """Trace-back recovery through the fake LLM (real HTTP): the repaired call's new arguments
    make a new key (it runs, then is stored); the failed call's result is never stored (it
    runs again next time, and fails again, and is repaired from the cache)."""
    from llm_fixtures import KEY, MODEL
    from prefect_llmorch.llm.client import LLMClient
    from prefect_llmorch.testing import FakeLLM

    L = runs.log  # in every call's arguments: keys unique to this test
    plan = f's1: ticker("Aple", "{L}")\ns2: quote(s1, "{L}")\n'
    repair = f's1: ticker("Apple", "{L}")'

    def run_with_recovery() -> object:
        with FakeLLM([repair], api_key=KEY, model=MODEL) as server:
            client = LLMClient(server.base_url, MODEL, KEY, max_retries=0, timeout=20)
            report = run_plan(plan, TOOLBOX, processors=1, concurrency_limit=None, endpoint=client, recovery_rounds=1)
            assert len(server.chat_requests) == 1  # one repair asked for, each time
        return report

    first = run_with_recovery()
    assert first.state == "Completed" and first.result == 190.0
    (rnd,) = first.extra["recovery"]["rounds"]
    assert rnd["recovery_points"] == ["s1"] and rnd["rerun"] == ["s1", "s2"]
    ran = [line.split()[:2] for line in runs()]
    # The repaired s1 ran (a new key, not the stored result of ticker("Aple")), then s2.
    assert ran == [["ticker", "Aple"], ["quote", "?Aple"], ["ticker", "Apple"], ["quote", "AAPL"]]
    assert not any(c.cached for c in first.calls)

    second = run_with_recovery()
    assert second.state == "Completed" and second.result == 190.0
    # Only the call that failed ran again: ticker("Aple") and both repaired calls came from the cache.
    assert [line.split()[:2] for line in runs()][4:] == [["quote", "?Aple"]]
    assert {c.id for c in second.calls if c.cached} == {"s1", "s2"}


def test_a_cached_compute_call_takes_no_processor(runs, tmp_path: Path) -> None:
    """The runner asks whether a cache=True compute call's result is stored before the call
    takes a slot: on the second run no compute call holds a processor (the runner's own
    count) and none reaches a worker (the tools' records)."""
    from prefect import flow

    from prefect_llmorch.engine.runner import LLMOrchTaskRunner
    from prefect_llmorch.flows.execute import current_llmorch_runner, execute
    from prefect_llmorch.functions import load_toolbox
    from prefect_llmorch.plan.parser import parse

    tb = load_toolbox(TOOLBOX)
    x, L = _unique(tmp_path), runs.log
    plan = parse(f's1: square({x}, "{L}")\ns2: square(s1, "{L}")\ns3: square({x + 1}, "{L}")\n', tb)

    @flow(task_runner=LLMOrchTaskRunner(processors=1, concurrency_limit=None))
    def twice() -> tuple[int, int, list[bool]]:
        _, _, report = execute(plan, tb, processors=1)
        runner = current_llmorch_runner()
        return runner.max_running_compute, runner.cached_without_slot, [c.cached for c in report.calls]

    assert twice() == (1, 0, [False, False, False])
    assert len(runs()) == 3
    assert twice() == (0, 3, [True, True, True])  # no call took a processor, s2 once s1 was done
    assert len(runs()) == 3
