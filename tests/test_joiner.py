"""The join step (`flows/joiner.py`, `llm/joining.py`) end to end through real HTTP: the
scripted OpenAI-compatible server, the real openai client, a real (test) Prefect server.
Nothing of ours is patched; the scripted replies are what a model would write."""

from __future__ import annotations

import time

import pytest

from llm_fixtures import fake_llm, llm  # noqa: F401
from prefect_llmorch.flows.ask import ask_query
from prefect_llmorch.flows.joiner import JoinSettings, check_joiner
from prefect_llmorch.llm.joining import JOIN_HINT, JoinFailed, has_join_marker, join_query, next_id, render_results
from prefect_llmorch.plan.parser import parse
from prefect_llmorch.testing.fake_llm import count_tokens

TRIPS = "prefect_llmorch.examples.trips:toolbox"
RAIN = "If it will rain in Oslo tomorrow, list museums there, otherwise hiking trails."


def _spent(fake) -> dict[str, int]:
    """Tokens as the server counted them over every request (what the ask must report)."""
    return {
        "prompt": sum(count_tokens(" ".join(m["content"] for m in r.messages)) for r in fake.chat_requests),
        "completion": sum(count_tokens(r.reply or "") for r in fake.chat_requests),
    }


def _latest_task_runs(flow_name: str = "llmorch-ask", timeout: float = 30.0) -> list:
    """The task runs of the newest `flow_name` run, once all are final in the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                       sort=FlowRunSort.START_TIME_DESC, limit=1)
        deadline = time.monotonic() + timeout
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            if all(r.state and r.state.is_final() for r in runs) or time.monotonic() > deadline:
                return runs
            time.sleep(0.2)


# -- the joiner without Prefect ------------------------------------------------------------

def test_results_are_cut_to_the_budget_with_a_note() -> None:
    plan = parse('s1: guide("x")\ns2: landmark(s1)', _trips())
    text = render_results(plan, {"s1": "a" * 50}, {"s2": "Error: no"}, value_chars=10)
    assert text.splitlines() == ["s1 = aaaaaaaaaa [... cut: 10 of 50 characters shown]", "s2 failed: Error: no"]
    assert next_id(plan) == "s3" and has_join_marker('s1: f()\n  s2: join()\n') and not has_join_marker("s1: join(s1)")


def test_a_bad_reply_goes_back_with_its_error_and_streamed_calls_of_a_repaired_reply_are_stale(fake_llm, llm) -> None:  # noqa: F811
    tb = _trips()
    plan = parse('s1: forecast("Oslo")', tb)
    # the first reply streams s2 (dispatched), then breaks; the repair changes s2
    fake_llm.add('Plan:\ns2: museums("Oslo")\ns3: nosuch(s2)\n', 'Plan:\ns2: trails("Oslo")\n')
    seen: list = []
    jr = join_query(RAIN, tb, llm, plan, {"s1": {"rain": False}}, on_call=seen.append)
    assert [c.id for c in seen] == ["s2"] and [c.id for c in jr.stale] == ["s2"] and jr.dispatched == ()
    assert [c.function for c in jr.continuation] == ["trails"]
    fix = fake_llm.chat_requests[1].messages[-1]["content"]
    assert "nosuch" in fix and "starting at s2" in fix
    fake_llm.add("Sure, here is what I found.", "Still chatting.")
    with pytest.raises(JoinFailed, match="must start with `Answer:` or `Plan:`"):
        join_query(RAIN, tb, llm, plan, {"s1": 1})


def test_settings_are_checked_before_anything_runs() -> None:
    for bad in (dict(joiner="sometimes"), dict(max_rounds=-1), dict(max_tokens=0)):
        with pytest.raises(ValueError):
            JoinSettings(**bad)
    with pytest.raises(ValueError, match="joiner must be one of"):
        ask_query("q", TRIPS, joiner="maybe")
    check_joiner("off", 0, None)


# -- asks with rounds ------------------------------------------------------------------------

@pytest.mark.usefixtures("prefect_harness")
def test_a_condition_is_answered_by_a_streamed_continuation_in_the_same_flow_run(fake_llm, llm) -> None:  # noqa: F811
    fake_llm.token_delay = 0.01
    # s2 arrives first; the joiner keeps writing for a while: s2 must start before it ends
    fake_llm.add(
        's1: forecast("Oslo", "tomorrow")\ns2: join()\n',
        "Plan:\ns2: museums(s1.city)\ns3: trails(\"" + "x " * 60 + "\")\n",
    )
    report = ask_query(RAIN, TRIPS, processors=1, endpoint=llm, max_rounds=1)
    assert report.state == "Completed"
    assert report.result == report.results["s3"] == []  # the continuation's last call answers
    assert report.results["s2"] == ["Munch Museum", "Viking Ship Museum", "National Museum"]
    planner, joiner = fake_llm.chat_requests
    assert JOIN_HINT in planner.messages[0]["content"]
    prompt = joiner.messages[-1]["content"]
    assert '"rain": true' in prompt and "starting at s2" in prompt and RAIN in prompt
    wall = time.time() - time.monotonic()
    assert report.row("s2").start < joiner.finished_at + wall - report.t0  # streamed: started before the reply ended
    assert report.extra["tokens"] == _spent(fake_llm)
    joined = report.extra["joiner"]
    assert [j["decision"] for j in joined["joins"]] == ["continue"] and len(joined["plans"]) == 2
    assert report.extra["plan"].splitlines()[0] == 's1: forecast("Oslo", "tomorrow")'
    names = {r.name for r in _latest_task_runs()}
    assert {"planner · round 1", "joiner · round 1", "s1 · forecast", "s2 · museums"} <= names
    frg = _latest_artifact("llmorch-frg")  # the FRG across rounds, every round's plan, the tokens
    assert "s2" in frg.split("## Rounds")[0] and "### Round 2 (written by joiner · round 1)" in frg
    assert "museums(s1.city)" in frg and f"{report.extra['tokens']['prompt']} prompt" in frg


def _latest_artifact(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from prefect_llmorch.flows.report import records_sent

    assert records_sent(60)  # a run's artifacts are sent after its answer
    with get_client(sync_client=True) as client:
        (art,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                       sort=ArtifactSort.CREATED_DESC, limit=1)
    return str(art.data)


@pytest.mark.usefixtures("prefect_harness")
def test_a_count_decides_how_many_calls_follow_and_a_second_join_answers(fake_llm, llm) -> None:  # noqa: F811
    fake_llm.add(
        's1: host_cities("Norway")\ns2: join()\n',
        "Plan:\ns2: forecast(s1[0])\ns3: forecast(s1[1])\ns4: forecast(s1[2])\ns5: join()\n",
        "Answer: rain in Oslo and Bergen, sun in Trondheim",
    )
    report = ask_query("Weather tomorrow in each host city of Norway?", TRIPS, processors=1, endpoint=llm)
    assert report.result == "rain in Oslo and Bergen, sun in Trondheim"
    assert [report.results[f"s{i}"].city for i in (2, 3, 4)] == ["Oslo", "Bergen", "Trondheim"]
    second = fake_llm.chat_requests[2].messages[-1]["content"]
    assert "s4 = " in second and "starting at s5" in second
    assert [j["decision"] for j in report.extra["joiner"]["joins"]] == ["continue", "answer"]
    assert report.extra["tokens"] == _spent(fake_llm)


@pytest.mark.usefixtures("prefect_harness")
def test_joiner_always_costs_one_short_request_when_the_plan_already_answers(fake_llm, llm) -> None:  # noqa: F811
    fake_llm.add('s1: guide("best view of Oslo")\n', "Answer: s1")
    report = ask_query("Where is the best view of Oslo?", TRIPS, processors=1, endpoint=llm, joiner="always")
    assert report.result == report.results["s1"] and len(fake_llm.chat_requests) == 2
    assert count_tokens(fake_llm.chat_requests[1].reply) == 2
    # and auto: a plan without join() is final: no join request at all
    fake_llm.add('s1: guide("best view of Oslo")\n')
    report = ask_query("Where is the best view of Oslo?", TRIPS, processors=1, endpoint=llm)
    assert len(fake_llm.chat_requests) == 3 and "joiner" not in report.extra


@pytest.mark.usefixtures("prefect_harness")
def test_at_the_rounds_or_token_budget_the_joiner_answers_with_what_it_has(fake_llm, llm) -> None:  # noqa: F811
    plan = 's1: guide("best view of Oslo")\ns2: join()\n'
    fake_llm.add(plan, "Answer: read holmenkollen")
    report = ask_query("best view?", TRIPS, processors=1, endpoint=llm, max_rounds=0)
    system = fake_llm.chat_requests[1].messages[0]["content"]
    assert "Plan:" not in system and report.result == "read holmenkollen"
    assert report.extra["joiner"]["joins"][0]["forced"] == "rounds"
    # a budget the planner alone spends: no join request, the last result is the answer
    fake_llm.add(plan)
    report = ask_query("best view?", TRIPS, processors=1, endpoint=llm, max_tokens=50)
    assert len(fake_llm.chat_requests) == 3
    assert report.result == report.results["s1"] and "token budget" in report.extra["joiner"]["stopped"]


def _trips():
    from prefect_llmorch.examples.trips import toolbox

    return toolbox


@pytest.mark.usefixtures("prefect_harness")
def test_trace_back_recovery_reaches_across_rounds(fake_llm, llm) -> None:  # noqa: F811
    # the continuation's s2 fails on the value round 1's s1 produced: recovery repairs s1
    fake_llm.add(
        's1: fetch(0.1, value="boom")\ns2: join()\n',
        "Plan:\ns2: fail(s1)\ns3: add(2, 2)\n",
        's1: fetch(0.1, value="fine")',  # the repair of the recovery point s1 (round 1)
    )
    from prefect_llmorch.flows.run import PlanRunFailed

    with pytest.raises(PlanRunFailed) as info:  # fail() always raises: s2 fails again
        ask_query("q", "toolboxes:toolbox", processors=1, endpoint=llm, recovery_rounds=1)
    report = info.value.report
    (rnd,) = report.extra["recovery"]["rounds"]
    assert rnd["recovery_points"] == ["s1"] and rnd["rerun"] == ["s1", "s2"]
    assert "boom" in fake_llm.chat_requests[2].messages[-1]["content"]
    assert report.results["s1"] == "fine" and report.results["s3"] == 4.0
    assert [j["decision"] for j in report.extra["joiner"]["joins"]] == ["continue"]
    assert report.extra["tokens"] == _spent(fake_llm)  # the repair request counts too


@pytest.mark.usefixtures("prefect_harness")
def test_a_retried_flow_run_replays_each_rounds_plan_and_join_without_asking_again(fake_llm, llm) -> None:  # noqa: F811
    from prefect import flow

    from prefect_llmorch.engine.runner import LLMOrchTaskRunner
    from prefect_llmorch.flows.ask import answer

    fake_llm.add('s1: forecast("Oslo", "tomorrow")\ns2: join()\n', "Plan:\ns2: museums(s1.city)\n")
    reports: list = []

    @flow(retries=1, task_runner=LLMOrchTaskRunner(processors=1, concurrency_limit=None))
    def crashes_once():  # the process dies after the rounds, the run is retried (same flow run id)
        reports.append(answer(RAIN, TRIPS, endpoint=llm))
        if len(reports) == 1:
            raise RuntimeError("crashed after the rounds")
        return reports[-1]

    report = crashes_once()
    assert len(reports) == 2 and len(fake_llm.chat_requests) == 2  # the retry asked nothing
    assert report.result == report.results["s2"] == ["Munch Museum", "Viking Ship Museum", "National Museum"]
    assert report.extra["plan"] == reports[0].extra["plan"]
    cached = {r.name for r in _latest_task_runs(crashes_once.name) if r.state.is_completed() and r.state.name == "Cached"}
    assert {"planner · round 1", "joiner · round 1"} <= cached


def test_the_cli_refuses_bad_join_settings_before_anything_runs() -> None:
    from typer.testing import CliRunner

    from prefect_llmorch.cli import app

    for args, message in (
        (["--joiner", "maybe"], "--joiner 'maybe': must be auto, always or off"),
        (["--rounds", "-1"], "--rounds -1: must be at least 0"),
        (["--max-tokens", "0"], "--max-tokens 0: must be at least 1"),
    ):
        result = CliRunner().invoke(app, ["ask", "q?", *args])
        assert result.exit_code != 0 and message in result.output, result.output


def test_the_json_form_continues_or_answers_under_a_schema(fake_llm, llm) -> None:  # noqa: F811
    tb = _trips()
    plan = parse('s1: forecast("Oslo", "tomorrow")', tb)
    results = {"s1": {"city": "Oslo", "rain": True}}
    fake_llm.add(
        '{"calls": [{"id": "s2", "function": "museums", "kwargs": {"city": {"ref": "s1", "path": ["city"]}}}]}',
        '{"answer": "s1"}',
    )
    jr = join_query(RAIN, tb, llm, plan, results, mode="json")
    assert [c.id for c in jr.continuation] == ["s2"] and jr.plan is not None and jr.plan["s2"].deps == {"s1"}
    request = fake_llm.chat_requests[0]  # the server checked the reply against this schema
    assert request.body["response_format"]["json_schema"]["name"] == "llmorch_join"
    assert '"function": "forecast"' in request.messages[-1]["content"]  # the plan that ran, as JSON
    jr = join_query(RAIN, tb, llm, plan, results, mode="json", must_answer=True)
    assert jr.answered and jr.answer_ref == "s1" and jr.value(results) == results["s1"]
    assert fake_llm.chat_requests[1].body["response_format"]["json_schema"]["schema"]["required"] == ["answer"]


# -- what a small model writes (Qwen2.5-Coder-1.5B's replies, as it wrote them) -------------

#: The local model's reply to the condition question (main fff7739): the calls, then a line
#: of the prompt echoed, then `Answer: s2`.
PROSE_AFTER_CALLS = (
    'Plan:\ns2: museums("Oslo")\n\n'
    "When the result of one call already is the whole answer, write only its id, e.g. `Answer: s5`.\n\n"
    "The answer:\nAnswer: s2"
)


def test_prose_after_the_last_whole_call_ends_the_continuation(fake_llm, llm) -> None:  # noqa: F811
    tb = _trips()
    plan = parse('s1: forecast("Oslo", "tomorrow")', tb)
    fake_llm.add(PROSE_AFTER_CALLS, PROSE_AFTER_CALLS)
    jr = join_query(RAIN, tb, llm, plan, {"s1": {"city": "Oslo", "rain": True}})
    assert len(fake_llm.chat_requests) == 1 and [a.errors for a in jr.attempts] == [()]
    assert [c.function for c in jr.continuation] == ["museums"] and "When the result" not in jr.text
    assert "Answer: s2" in jr.attempts[0].text  # the record keeps the reply as written


def test_a_malformed_call_after_a_whole_call_is_an_error_and_the_repair_numbers_the_lines(fake_llm, llm) -> None:  # noqa: F811
    tb = _trips()
    plan = parse('s1: forecast("Oslo", "tomorrow")', tb)
    # `s3 = trails(Oslo)` may be meant as a call: it is read, and its error goes back
    fake_llm.add('Plan:\ns2: museums("Oslo")\ns3 = trails(Oslo)\n', 'Plan:\ns2: museums(s1.city)\n')
    jr = join_query(RAIN, tb, llm, plan, {"s1": {"city": "Oslo", "rain": True}})
    (first, _) = jr.attempts
    assert first.errors and [c.function for c in jr.continuation] == ["museums"]
    fix = fake_llm.chat_requests[1].messages[-1]["content"]
    assert '  1 | s1: forecast("Oslo", "tomorrow")' in fix and "  4 | s3 = trails(Oslo)" in fix
    assert "lines 1-1 ran already" in fix and "text arguments in double quotes" in fix
    assert f"line 4," in first.errors[0]  # the errors count lines as the listing numbers them


@pytest.mark.usefixtures("prefect_harness")
def test_a_join_without_a_usable_reply_keeps_what_the_plan_computed(fake_llm, llm) -> None:  # noqa: F811
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    fake_llm.add('s1: forecast("Oslo", "tomorrow")\ns2: join()\n', "Sure, it rains.", "It rains, so museums.")
    report = ask_query(RAIN, TRIPS, processors=1, endpoint=llm)  # returns: does not raise
    assert report.state == "Completed" and report.result == report.results["s1"] and report.result.rain is True
    assert "the join step failed: joiner · round 1: no usable reply after 2 attempts" in report.message
    assert "the result of s1" in report.message
    joined = report.extra["joiner"]
    assert joined["failed"] and joined["joins"][0]["decision"] == "failed" and len(joined["joins"][0]["replies"]) == 2
    assert report.extra["tokens"] == _spent(fake_llm)  # the failed replies count
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["llmorch-ask"])),
                                       sort=FlowRunSort.START_TIME_DESC, limit=1)
    assert run.state.is_completed() and run.state.name == "JoinFailed" and "no usable reply" in run.state.message
    states = {r.name: r.state.type.value for r in _latest_task_runs()}
    assert states["joiner · round 1"] == "FAILED" and states["s1 · forecast"] == "COMPLETED"


def test_a_reply_with_both_forms_goes_back(fake_llm, llm) -> None:  # noqa: F811
    tb = _trips()
    plan = parse('s1: forecast("Oslo", "tomorrow")', tb)
    # the local model's reply to the condition question with the worked examples
    fake_llm.add("Answer: s1\n\nPlan:\ns2: museums(s1.city)\ns3: trails(s1.city)", "Plan:\ns2: museums(s1.city)\n")
    jr = join_query(RAIN, tb, llm, plan, {"s1": {"city": "Oslo", "rain": True}})
    assert "both forms" in jr.attempts[0].errors[0] and [c.function for c in jr.continuation] == ["museums"]


@pytest.mark.usefixtures("prefect_harness")
def test_the_deployable_ask_flow_keeps_the_results_of_a_failed_join() -> None:
    from prefect_llmorch.blocks import LLMEndpoint
    from prefect_llmorch.engine.runner import LLMOrchTaskRunner
    from prefect_llmorch.flows.deploy import AskParameters, llmorch_ask
    from prefect_llmorch.testing.fake_llm import FakeLLM

    plan = 's1: forecast("Oslo", "tomorrow")\ns2: join()\n'
    with FakeLLM([plan, "No idea.", "Still no idea."], token_delay=0.0, model="m") as server:
        LLMEndpoint(base_url=server.base_url, model="m", api_key="k").save("llm-join-fails", overwrite=True)
        flow = llmorch_ask.with_options(task_runner=LLMOrchTaskRunner(processors=1, concurrency_limit=None))
        state = flow(AskParameters(query=RAIN, toolbox=TRIPS, endpoint="llm-join-fails", processors=1), return_state=True)
    out = state.result()
    assert state.is_completed() and state.name == "JoinFailed" and "no usable reply" in state.message
    assert "rain=True" in str(out["result"]) and "the join step failed" in out["joiner"]["stopped"]  # the last result
