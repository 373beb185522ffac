"""No fixed cost per ask (issue 27.5), as exact invariants: the planner's LLM request leaves
before Prefect has started the flow run (`PlanningAhead`), the bookkeeping is in Prefect when
`ask_query` returns, and a plan handed over parsed is not parsed again (`Handoff`). The LLM is
the scripted OpenAI-compatible server (real HTTP); `benchmarks/ask_overhead.py` measures."""

from __future__ import annotations

import time

import pytest

from llm_fixtures import fake_llm, llm  # noqa: F401
from prefect_llmorch.llm.planning import plan_query

TOOLBOX = "toolboxes:toolbox"


def _toolbox():
    from prefect_llmorch.functions import load_toolbox

    return load_toolbox(TOOLBOX)


def _wait_for_requests(server, n: int) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 30
    while len(server.chat_requests) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(server.chat_requests) == n


@pytest.mark.usefixtures("prefect_harness")
def test_the_planner_request_reaches_the_llm_before_the_flow_run_is_running(fake_llm, llm) -> None:  # noqa: F811
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    from prefect_llmorch.flows.ask import ask_query

    asked: list[float] = []

    def plan(_request: dict) -> str:  # on the server's thread, as the request arrives
        asked.append(time.time())  # wall clock: the API's timestamps are on it too
        return "s1: add(1, 2)\n"

    fake_llm.add(plan)
    report = ask_query("one plus two", TOOLBOX, processors=1, endpoint=llm, recovery_rounds=0)
    assert report.result == 3 and len(asked) == 1 and len(fake_llm.chat_requests) == 1  # asked once
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(  # the latest ask: this one (tests run one at a time)
            flow_filter=FlowFilter(name=FlowFilterName(any_=["llmorch-ask"])), sort=FlowRunSort.START_TIME_DESC, limit=1,
        )
        artifacts = {a.key for a in client.read_artifacts() if a.flow_run_id == run.id}
    assert run.start_time is not None and asked[0] < run.start_time.timestamp()
    # the bookkeeping is in Prefect when ask_query returns: the final state, the artifacts
    assert run.state is not None and run.state.is_completed()
    assert {"llmorch-frg", "llmorch-schedule"} <= artifacts


def test_the_request_sent_ahead_is_the_planners_first_and_is_sent_once(fake_llm, llm) -> None:  # noqa: F811
    from prefect_llmorch.llm.ahead import PlanningAhead

    fake_llm.add("s1: add(1, 2)\n")
    tb = _toolbox()
    ahead = PlanningAhead(llm, "one plus two", tb)
    _wait_for_requests(fake_llm, 1)  # before the planner asked for anything
    result = plan_query("one plus two", tb, ahead)
    ahead.close()
    assert result.text.strip() == "s1: add(1, 2)" and len(fake_llm.chat_requests) == 1


def test_a_planner_asking_something_else_gets_its_own_answer(fake_llm, llm) -> None:  # noqa: F811
    from prefect_llmorch.llm.ahead import PlanningAhead

    fake_llm.add("not asked for", "s1: add(2, 2)\n")
    tb = _toolbox()
    ahead = PlanningAhead(llm, "one plus two", tb)
    _wait_for_requests(fake_llm, 1)  # the server answers in arrival order
    result = plan_query("two plus two", tb, ahead)  # another question: the stream ahead is not it
    ahead.close()
    assert result.text.strip() == "s1: add(2, 2)" and len(fake_llm.chat_requests) == 2


def test_a_plan_handed_over_is_taken_only_for_its_text_and_toolbox() -> None:
    import concurrent.futures

    from prefect_llmorch.flows.handoff import Handoff, handed, handing
    from prefect_llmorch.plan.parser import parse

    tb = _toolbox()
    text = "s1: add(1, 2)\n"
    plan = parse(text, tb)
    done: concurrent.futures.Future = concurrent.futures.Future()
    done.set_result(plan)
    handoff = Handoff(toolbox=tb, text=text, plan=done)
    assert handoff.parsed(text, tb) is plan  # the very object: not parsed again
    assert handoff.parsed("s1: add(2, 2)\n", tb) is None
    assert handed().parsed(text, tb) is None
    with handing(handoff):
        assert handed() is handoff
    assert handed() is not handoff
