"""`run_plan` / the `llmorch-run` flow: final states, artifacts, `self`, recovery."""

from __future__ import annotations

import pytest

from llm_fixtures import fake_llm, llm  # noqa: F401
from prefect_llmorch.flows.run import PlanRunFailed, run_plan

pytestmark = pytest.mark.usefixtures("prefect_harness")

TOOLBOX = "toolboxes:toolbox"


def test_completed_run_publishes_the_frg_and_the_schedule() -> None:
    from prefect.client.orchestration import get_client

    report = run_plan('s1: fetch(0.1, value=2)\ns2: add(s1, 3)\n', TOOLBOX, processors=1)
    assert report.state == "Completed" and report.result == 5.0
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts(limit=100)}
    assert {"llmorch-frg", "llmorch-schedule"} <= keys


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
