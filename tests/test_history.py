"""Learned costs: read back from Prefect's task-run history, with the local file as fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from typing import Any

from prefect_llmorch import Toolbox, compute, inout
from prefect_llmorch.graph import FRG
from prefect_llmorch.schedule.predict import critical_path_calls, predict
from prefect_llmorch.storage.history import (
    call_costs, check_costs, choose_costs, durations_by_function, function_costs, has_history, history_file,
    local_costs, remember,
)
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


@pytest.mark.usefixtures("prefect_harness")
def test_the_history_read_is_reused_and_kept_current_by_this_process_s_runs(home: Path) -> None:
    """A warm process reads the task-run history once per `API_TTL_SECONDS` (the query sat
    before the first call of every run); what its own runs measured joins what it read. The
    source says so: `api` (the read, kept current), not `local` (the file's fallback)."""
    fn = "history_cache_probe_xyz"  # no task run of it exists: the read finds none
    sources: dict[str, str] = {}
    assert function_costs([fn], sources=sources) == {} and sources == {}
    remember({fn: [0.7]})
    sources.clear()
    assert function_costs([fn], sources=sources) == {fn: 0.7} and sources == {fn: "api"}


@pytest.mark.usefixtures("prefect_harness")
def test_past_its_ttl_the_history_read_is_used_at_once_and_read_again_behind(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run past the TTL does not wait for the query: it takes what this process read, and
    the read runs again on a thread (here it finds no task run of the function, and says so)."""
    import time

    from prefect_llmorch.host.server import server_key
    from prefect_llmorch.storage import history

    fn = "history_stale_probe_xyz"
    function_costs([fn])  # read once: none
    remember({fn: [0.9]})  # this process's own run joins the read
    monkeypatch.setattr(history, "API_TTL_SECONDS", 0.0)  # every read is stale from now on
    server = server_key()
    read_at = history._api_history().read[server][fn][0]
    assert function_costs([fn]) == {fn: 0.9}  # at once, from what was read
    deadline = time.monotonic() + 30
    while server in history._api_history().refreshing and time.monotonic() < deadline:
        time.sleep(0.02)
    at, durations = history._api_history().read[server][fn]
    assert at > read_at and durations == []  # read again: the API has no run of it


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


# ---------------------------------------------------------------- which costs a run uses


@pytest.fixture
def no_costs_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default as users get it (conftest pins LLMORCH_COSTS=declared for the other tests)."""
    monkeypatch.delenv("LLMORCH_COSTS", raising=False)


@pytest.mark.usefixtures("no_costs_env")
def test_a_history_of_other_functions_is_named_declared_costs(home: Path) -> None:
    remember({"detect": [1.5]})
    choice = choose_costs(["chatbot"], api=False)
    assert (choice.source, choice.costs) == ("history", {})  # looked up: nothing for this plan
    assert choice.used() == "declared"
    assert choice.describe(["chatbot"]) == "declared costs (no history of these functions yet)"
    assert choose_costs(["detect", "chatbot"], api=False).used() == "history"


def test_the_prediction_says_history_only_for_a_plan_whose_functions_have_one() -> None:
    from prefect_llmorch.storage.history import CostChoice
    from prefect_llmorch.flows.run import predicted

    frg = FRG.from_edges(["s1", "s2"], {"s2": ["s1"]}, functions={"s1": "detect", "s2": "chatbot"})
    # ask looks up the whole toolbox: a history of `search` only says nothing about this plan
    assert predicted(frg, 2, "critical-path", CostChoice("history", {"search": 1.0}))["costs"] == "declared"
    mixed = predicted(frg, 2, "critical-path", CostChoice("history", {"detect": 2.0, "search": 1.0}))
    assert (mixed["costs"], mixed["declared"]) == ("history", ["chatbot"])
    assert "declared" not in predicted(frg, 2, "critical-path", CostChoice("history", {"detect": 2.0, "chatbot": 1.0}))
    assert predicted(frg, 2, "critical-path", CostChoice("declared"))["costs"] == "declared"


def test_the_report_names_the_costs_of_the_prediction_and_of_the_lower_bound() -> None:
    from prefect_llmorch.report import RunReport

    report = RunReport(state="Completed", processors=2, calls=[], result=None, latency=4.61, lower_bound=4.567,
                       sequential=9.0, predicted={"latency": 4.5, "costs": "declared"})
    assert report.summary().endswith("| predicted 4.50 s (declared costs)")
    assert report.measured_line().startswith("lower bound 4.567 s (measured call times) |")
    report.predicted = {"latency": 12.3456, "costs": "history", "declared": ["chatbot"]}
    assert report.summary().endswith("| predicted 12.3 s (history costs; declared: chatbot)")


@pytest.mark.usefixtures("no_costs_env")
def test_the_default_is_declared_until_there_is_a_history_then_history(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not has_history()
    first = choose_costs(["detect"], api=False)
    assert (first.source, first.why, first.costs) == ("declared", "no history yet", {})
    remember({"detect": [1.5]})
    assert has_history()
    second = choose_costs(["detect", "average"], api=False)
    assert (second.source, second.why, second.costs, second.origin) == ("history", "history exists", {"detect": 1.5}, {"detect": "local"})
    assert second.describe(["detect", "average"]) == "history costs (detect 1.5 s; declared: average)"
    # Opting out: given, or by the environment.
    assert choose_costs(["detect"], "declared", api=False).source == "declared"
    monkeypatch.setenv("LLMORCH_COSTS", "declared")
    assert choose_costs(["detect"], api=False).why == "LLMORCH_COSTS"
    monkeypatch.setenv("LLMORCH_COSTS", "guess")
    with pytest.raises(ValueError, match="costs must be one of declared, history"):
        choose_costs(["detect"])
    with pytest.raises(ValueError, match="got 'learned'"):
        check_costs("learned")


def test_cached_rows_teach_no_cost() -> None:
    from prefect_llmorch.engine.compiler import CallRecord

    cached = CallRecord(id="s1", function="f", kind="inout", rank=1, cached=True)
    cached.state, cached.start, cached.end = "Completed", 2.0, 2.0
    assert durations_by_function([cached]) == {}


def test_predict_simulates_the_plan_with_its_costs() -> None:
    from prefect_llmorch.graph import FRG
    from prefect_llmorch.schedule.simulator import simulate

    # s1 alone is long; s2 -> s3 is a chain of short calls (all compute, P = 2).
    frg = FRG.from_edges(["s1", "s2", "s3"], {"s3": ["s2"]}, costs={"s1": 4.0, "s2": 0.5, "s3": 0.5})
    p = predict(frg, 2)
    assert p.latency == simulate(frg, 2).makespan == 4.0
    assert p.critical_path == ["s1"] and p.length == 4.0
    assert p.calls == {"s1": (0.0, 4.0), "s2": (0.0, 0.5), "s3": (0.5, 1.0)}
    unit = FRG.from_edges(["s1", "s2", "s3"], {"s3": ["s2"]})
    assert critical_path_calls(unit) == ["s2", "s3"] and predict(unit, 1).latency == 3.0
    assert predict(frg, 1).to_json()["critical_path"] == ["s1"]


@compute
def history_long(tag: str) -> str:
    import time

    time.sleep(1.5)  # well above two task runs of history_short, even on a loaded machine
    return tag


@compute
def history_short(tag: str) -> str:
    return tag


LEARN_TOOLBOX = Toolbox(history_long, history_short)
# On P = 1 the critical-path policy starts the call heading the longest remaining path first.
# With unit costs that is s2 (the chain s2 -> s3 costs 2, s1 costs 1); once the history has
# s1's function at about 1.5 s and the other at a few ms, it is s1.
LEARN_PLAN = 's1: history_long("L")\ns2: history_short("a")\ns3: history_short(s2)\n'


def _order(calls: Any) -> list[str]:
    return [cid for cid, _ in sorted(calls, key=lambda item: item[1])]


@pytest.mark.usefixtures("prefect_harness", "no_costs_env")
def test_learned_costs_feed_the_policy_and_the_report_predicts(home: Path) -> None:
    from prefect_llmorch.flows.run import run_plan

    # No history yet: declared (unit) costs.
    declared = run_plan(LEARN_PLAN, LEARN_TOOLBOX, processors=1, concurrency_limit=None)
    predicted = declared.predicted
    assert predicted["costs"] == "declared" and predicted["latency"] == 3.0 and predicted["critical_path"] == ["s2", "s3"]
    ran = _order((c.id, c.start) for c in declared.calls)
    assert ran[0] == "s2" and ran == _order((cid, se[0]) for cid, se in predicted["calls"].items())
    assert declared.to_json()["predicted"] == predicted and "predicted 3.00 s (declared costs)" in declared.summary()
    # The run wrote its measured durations: now there is a history, and the default uses it.
    assert set(json.loads(history_file().read_text())) == {"history_long", "history_short"}
    learned = run_plan(LEARN_PLAN, LEARN_TOOLBOX, processors=1, concurrency_limit=None)
    predicted = learned.predicted
    assert predicted["costs"] == "history" and predicted["critical_path"] == ["s1"]
    ran = _order((c.id, c.start) for c in learned.calls)
    assert ran[0] == "s1" and ran == _order((cid, se[0]) for cid, se in predicted["calls"].items())
    assert 1.5 <= predicted["latency"] and "s (history costs)" in learned.summary()


# ---------------------------------------------------------------- llmorch plan / graph


def _llmorch(*args: str, home: Path, extra: dict[str, str] | None = None) -> Any:
    from homes import migrated_home

    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("LLMORCH_COSTS", "PREFECT_API_URL", "LLMORCH_DEBUG")}
    env.update(PREFECT_HOME=str(migrated_home(home)), PREFECT_SERVER_ANALYTICS_ENABLED="false", **(extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "prefect_llmorch.cli", *args], capture_output=True, text=True, timeout=120, env=env,
    )


def test_graph_predicts_with_declared_costs_then_with_the_history(tmp_path: Path) -> None:
    from prefect_llmorch.examples import open_plan_path
    from prefect_llmorch.examples.toolbox import toolbox
    from prefect_llmorch.graph import FRG

    out = _llmorch("graph", "example:kitti", "-P", "2", home=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "predicted latency on P=2: 4.50 s (critical-path policy, simulated with declared costs (no history yet))" in out.stdout
    assert "critical path: s1 -> s9 -> s11 (1.50 s)" in out.stdout
    # A history (as a run writes it): detect 2 s, average 0.1 s; chatbot has none.
    (tmp_path / "llmorch").mkdir()
    (tmp_path / "llmorch" / "costs.json").write_text(json.dumps({"detect": [2.0], "average": [0.1]}))
    out = _llmorch("graph", "example:kitti", "-P", "2", "--json", home=tmp_path)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)["prediction"]
    plan = parse(open_plan_path("example:kitti").read_text(), toolbox)
    expected = predict(FRG.build(plan, toolbox, costs=call_costs(plan, {"detect": 2.0, "average": 0.1})), 2)
    assert doc["costs"] == "history" and doc["learned"] == {"average": 0.1, "detect": 2.0}
    # 8 frames on 2 processors, then the last average (0.1) and chatbot (declared 0.5)
    assert doc["latency"] == expected.latency == 8 * 2.0 / 2 + 0.1 + 0.5
    assert doc["critical_path"] == ["s1", "s9", "s11"] and doc["critical_path_length"] == 2.6
    human = _llmorch("graph", "example:kitti", "-P", "2", home=tmp_path)
    assert "simulated with history costs (average 0.1 s, detect 2 s; declared: chatbot)" in human.stdout
    assert "declared costs (given)" in _llmorch("graph", "example:kitti", "--costs", "declared", home=tmp_path).stdout
    bad = _llmorch("graph", "example:kitti", "--costs", "guess", home=tmp_path)
    assert bad.returncode == 2 and "give --costs declared or --costs history" in bad.stderr


def test_plan_prints_the_prediction_of_the_llms_plan(tmp_path: Path) -> None:
    from llm_fixtures import KEY, MODEL
    from prefect_llmorch.testing import FakeLLM

    (tmp_path / "llmorch").mkdir()
    (tmp_path / "llmorch" / "costs.json").write_text(json.dumps({"detect": [2.0]}))
    plan = 's1: detect("a.png")\ns2: detect("b.png")\ns3: detect("c.png")\ns4: average([s1, s2, s3])\n'
    with FakeLLM([plan], api_key=KEY, model=MODEL) as server:
        env = {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": KEY, "LLMORCH_MODEL": MODEL}
        out = _llmorch("plan", "how busy are frames a-c?", "-P", "2", "--json", home=tmp_path, extra=env)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)["prediction"]
    # 3 detects of 2 s on 2 processors, then average (its declared cost 0: no history of it).
    assert doc["costs"] == "history" and doc["latency"] == 2.0 + 2.0 + 0.0
    assert doc["critical_path"] == ["s1", "s4"] and doc["calls"]["s3"] == [2.0, 4.0]
