"""Learned costs: read back from Prefect's task-run history, with the local file as fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefect_llmorch import Toolbox, inout
from prefect_llmorch.flows.history import call_costs, durations_by_function, function_costs, history_file, local_costs, remember
from prefect_llmorch.plan.parser import parse


@inout
def history_wait(seconds: float, value: int = 0) -> int:
    """Sleeps: its task runs last at least `seconds`."""
    import time

    time.sleep(seconds)
    return value


@inout
def history_add(a: int, b: int) -> int:
    return a + b


# Function names used by no other test, so other tests' task runs on the session's server do
# not mix into the history read back here.
HISTORY_TOOLBOX = Toolbox(history_wait, history_add)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Only the fallback file's location moves; the API under test is the session's harness.
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    return tmp_path


def test_remember_keeps_the_most_recent_durations_first(home: Path) -> None:
    remember({"detect": [1.0, 2.0]})
    remember({"detect": [3.0], "average": [0.5]})
    data = json.loads(history_file().read_text())
    assert data["detect"] == [3.0, 2.0, 1.0] and data["average"] == [0.5]
    assert local_costs(["detect", "average", "nothing"]) == {"detect": 2.0, "average": 0.5}


def test_a_corrupt_history_file_is_ignored(home: Path) -> None:
    history_file().parent.mkdir(parents=True)
    history_file().write_text("{not json")
    assert local_costs(["detect"]) == {}
    remember({"detect": [1.5]})
    assert local_costs(["detect"]) == {"detect": 1.5}


def test_call_costs_maps_functions_to_call_ids() -> None:
    plan = parse('s1: fetch(0.1)\ns2: fetch(0.2)\ns3: add(s1, s2)\n')
    assert call_costs(plan, {"fetch": 0.4}) == {"s1": 0.4, "s2": 0.4}


@pytest.mark.usefixtures("prefect_harness")
def test_costs_are_learned_from_completed_task_runs(home: Path) -> None:
    from prefect_llmorch.flows.run import run_plan

    plan = "s1: history_wait(0.6, value=1)\ns2: history_wait(0.6, value=2)\ns3: history_add(s1, s2)\n"
    report = run_plan(plan, HISTORY_TOOLBOX, processors=1)
    assert report.state == "Completed"
    learned = function_costs(["history_wait", "history_add", "never_ran_xyz"])
    assert learned["history_wait"] >= 0.6
    assert learned["history_add"] < learned["history_wait"]
    assert "never_ran_xyz" not in learned


def test_without_an_api_the_local_history_is_used(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An API that cannot be reached: nothing listens on this port.
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    remember({"detect": [1.25]})
    assert function_costs(["detect"]) == {"detect": 1.25}


def test_durations_by_function_takes_completed_records_only() -> None:
    from prefect_llmorch.engine.compiler import CallRecord

    done = CallRecord(id="s1", function="f", kind="inout", rank=1)
    done.state, done.start, done.end = "Completed", 1.0, 1.5
    failed = CallRecord(id="s2", function="f", kind="inout", rank=1)
    failed.state, failed.start, failed.end = "Failed", 1.0, 3.0
    assert durations_by_function([done, failed]) == {"f": [0.5]}
