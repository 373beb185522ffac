"""`run_plan` / the `llmorch-run` flow: final states, artifacts, `self`, recovery."""

from __future__ import annotations

import pytest

from llm_fixtures import fake_llm, llm  # noqa: F401
from prefect_llmorch.flows.run import PlanRunFailed, run_plan
from prefect_llmorch.flows.report import records_sent

pytestmark = pytest.mark.usefixtures("prefect_harness")

TOOLBOX = "toolboxes:toolbox"


def test_completed_run_publishes_the_frg_the_schedule_and_its_progress() -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import ArtifactSort

    report = run_plan('s1: fetch(0.1, value=2)\ns2: add(s1, 3)\n', TOOLBOX, processors=1)
    assert report.state == "Completed" and report.result == 5.0
    assert records_sent(60)  # a run's artifacts are sent after its answer
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(limit=200, sort=ArtifactSort.CREATED_DESC)
    latest = {}
    for a in artifacts:
        latest.setdefault(a.key, a)
    assert {"llmorch-frg", "llmorch-schedule", "llmorch-progress"} <= set(latest)
    # the FRG as a markdown table (the UI renders no mermaid)
    frg = latest["llmorch-frg"].data
    assert "| call | function | kind | rank | deps | mutex group |" in frg and "| s2 | add | compute | 2 | s1 |  |" in frg
    assert "mermaid" not in frg
    # the progress artifact is created off the flow's thread, and closed with the final count
    assert float(latest["llmorch-progress"].data) == 100.0
    assert latest["llmorch-progress"].description == "2 of 2 calls finished"
    assert latest["llmorch-schedule"].description.startswith(f"latency {report.latency:.3f} s")


def test_self_calls_ask_the_llm_with_references_filled(fake_llm, llm) -> None:  # noqa: F811
    fake_llm.add("forty-two")
    report = run_plan('s1: fetch(0.1, value="the answer")\ns2: self("What is {s1}?")\n', TOOLBOX, processors=1, endpoint=llm)
    assert report.result == "forty-two"
    assert fake_llm.chat_requests[0].messages[-1]["content"] == "What is the answer?"


def test_plan_errors_fail_the_flow_before_anything_runs() -> None:
    from prefect_llmorch.plan.errors import PlanError

    with pytest.raises(PlanError, match="line 2"):
        run_plan('s1: fetch(0.1)\ns2: add(s9, 1)\n', TOOLBOX, processors=1)


def test_recovery_repairs_the_parent_of_a_failed_call(fake_llm, llm) -> None:  # noqa: F811
    # s2 = add(s1, 1) fails because s1 produced text; the LLM repairs s1 to produce a number.
    fake_llm.add('s1: fetch(0.1, value=41)')
    report = run_plan('s1: fetch(0.1, value="x")\ns2: add(s1, 1)\ns3: fetch(0.1, value="kept")\n', TOOLBOX,
                      processors=1, endpoint=llm, recovery_rounds=2)
    assert report.state == "Completed"
    assert report.results["s2"] == 42.0 and report.results["s3"] == "kept"
    assert "Input should be a valid number" in fake_llm.chat_requests[0].messages[-1]["content"]


def test_cancel_running_reaches_recovery_from_the_flow_parameter(fake_llm, llm, runlog) -> None:  # noqa: F811
    """`run_plan(..., cancel_running=True)`: s2 (60 s of CPU, fed by the recovery point s1)
    is cancelled when s3 fails, and re-runs with the repaired s1."""
    import toolboxes_recovery as tr

    fake_llm.add('s1: echo(0.05, tag="parent")')
    plan = 's1: echo(60, tag="parent")\ns2: crunch(s1, tag="long")\ns3: flaky("leaf", s1, until="crunch:long")\n'
    report = run_plan(plan, "toolboxes_recovery:toolbox", processors=2, endpoint=llm, recovery_rounds=1,
                      cancel_running=True, concurrency_limit=None)
    assert report.state == "Completed" and report.results["s3"] == 0.05
    (rnd,) = report.extra["recovery"]["rounds"]
    assert rnd["cancelled"] == ["s2"] and rnd["rerun"] == ["s1", "s2", "s3"]
    assert tr.runs(runlog).count("crunch:long") == 2


def test_without_recovery_the_failure_is_reported_with_results_kept() -> None:
    with pytest.raises(PlanRunFailed) as info:
        run_plan('s1: fetch(0.1, value="x")\ns2: add(s1, 1)\ns3: fetch(0.1, value="kept")\n', TOOLBOX, processors=1)
    report = info.value.report
    assert "s2 · add failed: ArgumentsInvalid" in str(info.value)
    assert report.results == {"s1": "x", "s3": "kept"}


def test_final_state_is_the_local_one_not_the_api_s_lagging_copy() -> None:
    """`prefect.futures.wait` leaves `future.state` reading the API, which learns task states
    from events and may still say Running (here: knows nothing) for a finished call."""
    import concurrent.futures
    import uuid

    from prefect.futures import PrefectConcurrentFuture, wait
    from prefect.states import Completed

    from prefect_llmorch.engine.compiler import final_state

    inner: concurrent.futures.Future = concurrent.futures.Future()
    inner.set_result(Completed(data=1))
    fut = PrefectConcurrentFuture(task_run_id=uuid.uuid4(), wrapped_future=inner)
    assert not wait([fut], timeout=5).not_done  # with a timeout, wait() leaves _final_state unset
    assert not fut.state.is_completed()  # the API has never heard of this task run
    assert final_state(fut).is_completed()


# -- the report: honest latency, typed rows that say what happened ---------------------


def test_latency_counts_from_the_flow_start_to_the_last_call_s_end() -> None:
    import time

    from prefect_llmorch.report import CallRow

    before = time.time()
    report = run_plan('s1: fetch(0.2, value=2)\ns2: add(s1, 3)\ns3: fetch(0.1, value=1)\n', TOOLBOX, processors=1)
    after = time.time()
    assert all(isinstance(c, CallRow) for c in report.calls)
    starts = [c.start for c in report.calls]
    ends = [c.end for c in report.calls]
    assert before <= report.t0 and report.t0 + report.latency <= after  # t0 is inside the call
    assert report.latency == max(ends) and report.time_to_first_call == min(starts) > 0
    assert abs(report.makespan - (max(ends) - min(starts))) < 1e-5  # its own name: first start to last end
    durations = {c.id: c.end - c.start for c in report.calls}
    # best schedule with the measured durations: s1 -> s2 is the path; s3 waits beside it (inout)
    assert abs(report.best - max(durations["s1"] + durations["s2"], durations["s3"])) < 1e-5
    assert report.overhead == round(report.latency - report.best, 6)
    out = report.to_json()
    assert {"t0", "latency", "time_to_first_call", "best", "overhead", "makespan", "lower_bound"} <= set(out)
    assert out["t0"] == report.t0 and out["latency"] == report.latency
    assert all("reason" not in c for c in out["calls"])  # every call completed


def test_rows_say_why_a_call_did_not_run_and_what_failed() -> None:
    with pytest.raises(PlanRunFailed) as info:
        run_plan('s1: fail("exploded")\ns2: add(s1, 1)\ns3: add(s2, 1)\ns4: fetch(0.1, value=1)\n', TOOLBOX, processors=1)
    report = info.value.report
    s1, s2, s3, s4 = (report.row(c) for c in ("s1", "s2", "s3", "s4"))
    assert s1.state == "Failed" and s1.reason == "ValueError: exploded"
    assert s2.state == "NotReady" and s2.reason == "not run: upstream s1 failed" and s2.start is None
    assert s3.state == "NotReady" and s3.reason == "not run: upstream s2 did not run"
    assert s4.state == "Completed" and s4.reason is None
    rows = {c["id"]: c for c in report.to_json()["calls"]}
    assert rows["s2"]["state"] == "NotReady" and rows["s2"]["reason"] == "not run: upstream s1 failed"
    assert "reason" not in rows["s4"]
    assert "s2 · add ended NotReady: not run: upstream s1 failed" in str(info.value)


def test_a_call_whose_worker_died_says_so() -> None:
    with pytest.raises(PlanRunFailed) as info:
        run_plan('s1: die(0.05)\ns2: add(1, 1)\n', TOOLBOX, processors=1, concurrency_limit=None)
    report = info.value.report
    s1 = report.row("s1")
    assert s1.state == "Failed" and s1.reason is not None and s1.reason.startswith("WorkerDied")
    assert report.to_json()["calls"][0]["reason"] == s1.reason
    assert report.row("s2").state == "Completed"


def test_best_schedule_respects_release_times_and_processors() -> None:
    from prefect_llmorch.report import best_schedule
    from prefect_llmorch.graph import FRG

    frg = FRG.from_edges(["a", "b", "c", "d"], {"c": ["a", "b"]}, kinds={"d": "inout"})
    durations = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 0.5}
    assert best_schedule(frg, durations, 2) == 2.0
    assert best_schedule(frg, durations, 1) == 3.0  # compute calls one at a time; d beside them
    assert best_schedule(frg, durations, 2, release={"c": 2.5}) == 3.5  # c known only at 2.5
    assert best_schedule(frg, durations, 2, release={"d": 4.0}) == 4.5
    assert best_schedule(FRG.from_edges([], {}), {}, 2) == 0.0


def test_execution_refuses_misuse_with_a_clear_message() -> None:
    from prefect_llmorch.flows.execute import Execution
    from prefect_llmorch.plan.model import Plan

    import toolboxes

    ex = Execution(toolboxes.toolbox, processors=1, secrets={})
    with pytest.raises(RuntimeError, match=r"finish\(\) before start\(\)"):
        ex.finish()
    ex.start(Plan(()))
    with pytest.raises(RuntimeError, match="the plan is final"):
        ex.adopt(parse_one('s1: add(1, 2)'))
    with pytest.raises(RuntimeError, match="called already"):
        ex.start(Plan(()))
    ex.close()
    ex.close()  # safe twice


def parse_one(line: str):  # type: ignore[no-untyped-def]
    import toolboxes
    from prefect_llmorch.plan.parser import parse

    return parse(line, toolboxes.toolbox).calls[0]


@pytest.mark.parametrize("processors", [1, 2, 3])
def test_best_schedule_lies_between_the_lower_bound_and_graham_s_bound(processors: int) -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from prefect_llmorch.report import best_schedule, measured_lower_bound
    from prefect_llmorch.graph import FRG

    @st.composite
    def graphs(draw):  # type: ignore[no-untyped-def]
        n = draw(st.integers(1, 9))
        ids = [f"s{i}" for i in range(n)]
        deps = {c: draw(st.sets(st.sampled_from(ids[:i]), max_size=3)) if i else set() for i, c in enumerate(ids)}
        durations = {c: draw(st.floats(0.0, 5.0, allow_nan=False)) for c in ids}
        return FRG.from_edges(ids, deps), durations

    @settings(max_examples=150, deadline=None)
    @given(graphs())
    def check(case) -> None:  # type: ignore[no-untyped-def]
        frg, durations = case
        best = best_schedule(frg, durations, processors)
        measured = FRG.from_edges(frg.ids, frg.deps, costs=durations)
        graham = measured.work / processors + (1 - 1 / processors) * measured.critical_path
        assert measured_lower_bound(frg, durations, processors) - 1e-6 <= best <= graham + 1e-6

    check()
