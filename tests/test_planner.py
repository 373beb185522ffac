"""The planner through real HTTP with the real openai client: streaming dispatch,
compile-time recovery (repair, re-plan, give up), token counts, and the Prefect task."""

from __future__ import annotations

import logging
import pickle
import time

import pytest

from fake_llm import FakeError, count_tokens
from llm_fixtures import KEY, MODEL, fake_llm, free_port, llm  # noqa: F401 - fixtures
from prefect_llmorch.functions import Toolbox, compute, inout
from prefect_llmorch.llm.client import LLMClient, LLMError
from prefect_llmorch.plan.errors import PlanError
from prefect_llmorch.plan.parser import parse
from prefect_llmorch.flows.planner import (
    EXAMPLES,
    PlannerResult,
    PlanningFailed,
    ask_self,
    build_system_prompt,
    plan_query,
    planner_task,
)


@inout
def search(query: str) -> str:
    """Search the web and return the top snippet."""
    return f"result for {query}"


@compute
def count_words(text: str) -> int:
    """Count the words of a text."""
    return len(text.split())


TOOLBOX = Toolbox(search, count_words)
QUERY = "Which has more words in its top result, Apple stock or Microsoft stock?"

GOOD = (
    's1: search("Apple stock")\n'
    's2: search("Microsoft stock")\n'
    "s3: count_words(s1)\n"
    "s4: count_words(s2)\n"
    's5: self("Apple: {s3} words, Microsoft: {s4} words. Which has more?")'
)
# line 3 refers to `sl` (letter l), an undefined reference
BROKEN = GOOD.replace("count_words(s1)", "count_words(sl)")
# unknown function on line 2
BROKEN_2 = GOOD.replace('s2: search("Microsoft', 's2: serch("Microsoft')
LLMCOMPILER = (
    "Thought: I need both results.\n"
    '1. search("Apple stock")\n'
    "2. search('Microsoft stock')\n"
    '3. self("Compare $1 with ${2}")\n'
    "4. join()\n"
    "<END_OF_PLAN>"
)


def first_error(text: str) -> PlanError:
    with pytest.raises(PlanError) as info:
        parse(text, TOOLBOX)
    return info.value.errors[0]


def test_examples_in_the_prompt_are_valid_paper_dialect_plans():
    for _functions, _question, plan_text in EXAMPLES:
        plan = parse(plan_text)
        assert plan.dialect == "paper"
        assert plan.calls[-1].function == "self"
        assert any(len(c.deps) > 1 for c in plan)  # each shows a join of parallel calls


def test_prompt_has_functions_with_kinds_language_examples_and_query(fake_llm, llm):
    fake_llm.add(GOOD)
    plan_query(QUERY, TOOLBOX, llm)
    system, user = fake_llm.chat_requests[0].messages
    assert system["role"] == "system" and user["role"] == "user"
    assert TOOLBOX.describe() in system["content"]
    assert "count_words(text: str) -> int  [compute]" in system["content"]
    assert "sN: function(arguments)" in system["content"]
    assert EXAMPLES[1][2] in system["content"]
    assert QUERY in user["content"]
    assert system["content"] == build_system_prompt(TOOLBOX)


def test_good_plan_is_returned_with_one_attempt_at_temperature_zero(fake_llm, llm):
    fake_llm.add(GOOD)
    result = plan_query(QUERY, TOOLBOX, llm)
    assert isinstance(result, PlannerResult)
    assert result.plan == parse(GOOD, TOOLBOX)
    assert result.text == GOOD
    assert len(result.attempts) == 1 and result.attempts[0].ok
    request = fake_llm.chat_requests[0]
    assert request.stream and request.temperature == 0.0 and request.model == MODEL


def test_calls_are_dispatched_while_the_plan_still_streams(fake_llm, llm):
    fake_llm.token_delay = 0.05
    fake_llm.add(GOOD)
    seen: list[tuple[str, float]] = []
    result = plan_query(QUERY, TOOLBOX, llm, on_call=lambda call: seen.append((call.id, time.monotonic())))
    stream_done = fake_llm.chat_requests[0].finished_at
    assert [cid for cid, _ in seen] == ["s1", "s2", "s3", "s4", "s5"]
    times = dict(seen)
    # s1 is complete when the newline before `s2:` arrives, token 4 of 20; the server
    # still sleeps 16 x 50 ms after that, so s1 starts at least ~0.8 s before the end
    assert stream_done - times["s1"] > 10 * 0.05
    assert times["s1"] < times["s2"] < times["s3"] < times["s4"] < stream_done
    assert times["s4"] < times["s5"]  # the last line is complete only when the stream ends
    assert result.dispatched == ("s1", "s2", "s3", "s4", "s5")
    assert result.stale == ()


def test_dispatched_calls_carry_their_dependencies_first(fake_llm, llm):
    fake_llm.add(GOOD)
    dispatched: list = []
    plan_query(QUERY, TOOLBOX, llm, on_call=dispatched.append)
    done: set[str] = set()
    for call in dispatched:
        assert call.deps <= done
        done.add(call.id)


def test_token_counts_equal_what_the_server_reported(fake_llm, llm):
    fake_llm.add(BROKEN, GOOD)
    result = plan_query(QUERY, TOOLBOX, llm)
    for attempt, request in zip(result.attempts, fake_llm.chat_requests, strict=True):
        assert attempt.prompt_tokens == sum(count_tokens(m["content"]) for m in request.messages)
        assert attempt.completion_tokens == count_tokens(request.reply)
    assert result.prompt_tokens == sum(a.prompt_tokens for a in result.attempts)
    assert result.tokens == result.prompt_tokens + result.completion_tokens
    assert result.completion_tokens == count_tokens(BROKEN) + count_tokens(GOOD)


def test_broken_plan_is_repaired_on_the_second_attempt(fake_llm, llm):
    fake_llm.add(BROKEN, GOOD)
    result = plan_query(QUERY, TOOLBOX, llm)
    assert result.plan == parse(GOOD, TOOLBOX)
    first, second = result.attempts
    assert not first.ok and second.ok and second.repair
    err = first_error(BROKEN)
    assert first.errors[0].line == err.line == 3
    repair = fake_llm.chat_requests[1].messages
    assert [m["role"] for m in repair] == ["system", "user", "assistant", "user"]
    assert repair[2]["content"] == BROKEN
    feedback = repair[3]["content"]
    assert f"line {err.line}, column {err.column}: {err.message}" in feedback
    assert err.context.strip().splitlines()[0] in feedback  # the offending line, with caret
    assert "3 | s3: count_words(sl)" in feedback
    assert EXAMPLES[0][2] in repair[0]["content"]  # examples travel with the repair
    assert fake_llm.chat_requests[1].temperature == 0.0


def test_every_error_of_a_plan_is_sent_back(fake_llm, llm):
    two_errors = BROKEN.replace('s2: search("Microsoft', 's2: serch("Microsoft')
    fake_llm.add(two_errors, GOOD)
    result = plan_query(QUERY, TOOLBOX, llm)
    assert len(result.attempts[0].errors) == 2
    feedback = fake_llm.chat_requests[1].messages[-1]["content"]
    assert "2 errors" in feedback
    for err in result.attempts[0].errors:
        assert f"line {err.line}, column {err.column}" in feedback


def test_after_attempts_are_used_up_it_replans_from_scratch_at_higher_temperature(fake_llm, llm):
    fake_llm.add(BROKEN, BROKEN_2, BROKEN, GOOD)
    result = plan_query(QUERY, TOOLBOX, llm, attempts=3, replans=1, replan_temperature=0.7)
    temps = [r.temperature for r in fake_llm.chat_requests]
    assert temps == [0.0, 0.0, 0.0, 0.7]
    fresh = fake_llm.chat_requests[3].messages
    assert [m["role"] for m in fresh] == ["system", "user"]  # from scratch: no broken plan
    assert [(a.round, a.repair, a.temperature) for a in result.attempts] == [
        (0, False, 0.0), (0, True, 0.0), (0, True, 0.0), (1, False, 0.7)
    ]
    assert result.plan == parse(GOOD, TOOLBOX)


def test_repairs_within_a_replan_use_the_replan_temperature(fake_llm, llm):
    fake_llm.add(BROKEN, BROKEN, BROKEN_2, GOOD)
    plan_query(QUERY, TOOLBOX, llm, attempts=2, replans=1, replan_temperature=0.9)
    assert [r.temperature for r in fake_llm.chat_requests] == [0.0, 0.0, 0.9, 0.9]
    assert fake_llm.chat_requests[3].messages[-1]["content"].startswith("Your plan cannot run")


def test_a_repair_that_repeats_the_plan_is_followed_by_repairs_at_the_replan_temperature(fake_llm, llm):
    fake_llm.add(BROKEN, BROKEN, BROKEN_2, GOOD)
    result = plan_query(QUERY, TOOLBOX, llm, attempts=4, replans=0, replan_temperature=0.7)
    assert [r.temperature for r in fake_llm.chat_requests] == [0.0, 0.0, 0.7, 0.7]
    assert [a.temperature for a in result.attempts] == [0.0, 0.0, 0.7, 0.7]
    assert result.plan == parse(GOOD, TOOLBOX)


def test_a_repair_that_changes_the_plan_keeps_the_temperature(fake_llm, llm):
    fake_llm.add(BROKEN, BROKEN_2, GOOD)
    plan_query(QUERY, TOOLBOX, llm, attempts=3, replans=0, replan_temperature=0.7)
    assert [r.temperature for r in fake_llm.chat_requests] == [0.0, 0.0, 0.0]


def test_always_broken_raises_planning_failed_listing_every_attempt(fake_llm, llm):
    fake_llm.default = BROKEN
    fake_llm.add(BROKEN_2)
    with pytest.raises(PlanningFailed) as info:
        plan_query(QUERY, TOOLBOX, llm, attempts=3, replans=1)
    exc = info.value
    assert len(exc.attempts) == len(fake_llm.chat_requests) == 6
    message = str(exc)
    assert message.startswith("no valid plan after 6 attempts")
    for number in range(1, 7):
        assert f"attempt {number} (" in message
    undefined, unknown = first_error(BROKEN), first_error(BROKEN_2)
    assert f"line {unknown.line}, column {unknown.column}: {unknown.message}" in message
    assert message.count(f"line {undefined.line}, column {undefined.column}: {undefined.message}") == 5
    assert "temperature 0.7" in message
    assert pickle.loads(pickle.dumps(exc)).attempts[0].text == BROKEN_2


def test_calls_streamed_from_a_broken_first_answer_are_reported(fake_llm, llm):
    repaired = GOOD.replace('search("Microsoft stock")', 'search("MSFT stock")')
    fake_llm.add(BROKEN, repaired)
    dispatched: list = []
    result = plan_query(QUERY, TOOLBOX, llm, on_call=dispatched.append)
    # dispatch stopped at the bad line 3; repairs are never stream-dispatched
    assert [c.id for c in dispatched] == ["s1", "s2"]
    assert result.dispatched == ("s1",)  # unchanged in the final plan: do not run again
    assert [c.id for c in result.stale] == ["s2"]  # changed: cancel it
    assert result.stale[0] == dispatched[1]


def test_failed_planning_reports_the_calls_already_dispatched(fake_llm, llm):
    fake_llm.default = BROKEN
    dispatched: list = []
    with pytest.raises(PlanningFailed) as info:
        plan_query(QUERY, TOOLBOX, llm, attempts=1, replans=0, on_call=dispatched.append)
    assert [c.id for c in info.value.dispatched] == ["s1", "s2"] == [c.id for c in dispatched]


def test_code_fences_around_the_plan_are_ignored(fake_llm, llm):
    fake_llm.add("```text\n" + GOOD + "\n```\n")
    dispatched: list = []
    result = plan_query(QUERY, TOOLBOX, llm, on_call=dispatched.append)
    assert result.plan == parse(GOOD, TOOLBOX)
    assert len(dispatched) == 5


def test_llmcompiler_dialect_answers_are_accepted(fake_llm, llm):
    fake_llm.add(LLMCOMPILER)
    dispatched: list = []
    result = plan_query(QUERY, TOOLBOX, llm, on_call=dispatched.append)
    assert result.plan.dialect == "llmcompiler"
    assert [c.function for c in result.plan] == ["search", "search", "self"]
    assert [c.id for c in dispatched] == list(result.plan.ids)


def test_on_call_errors_propagate_and_stop_planning(fake_llm, llm):
    fake_llm.add(GOOD)

    def refuse(call):
        raise RuntimeError(f"cannot start {call.id}")

    with pytest.raises(RuntimeError, match="cannot start s1"):
        plan_query(QUERY, TOOLBOX, llm, on_call=refuse)


def test_endpoint_errors_are_not_mistaken_for_bad_plans(fake_llm):
    fake_llm.add(GOOD)
    wrong = LLMClient(fake_llm.base_url, MODEL, "sk-llmorch-WRONG-9e1", max_retries=0)
    with pytest.raises(LLMError, match=r"rejected the API key \(401\)"):
        plan_query(QUERY, TOOLBOX, wrong)
    fake_llm.add(FakeError(500, "overloaded"))
    client = LLMClient(fake_llm.base_url, MODEL, KEY, max_retries=0)
    fake_llm.add(GOOD)
    client.complete([{"role": "user", "content": "drain the GOOD reply"}])
    with pytest.raises(LLMError, match="HTTP 500: overloaded"):
        plan_query(QUERY, TOOLBOX, client)


def test_unreachable_endpoint_raises_llm_error_without_the_key():
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(LLMError) as info:
        plan_query(QUERY, TOOLBOX, LLMClient(base_url, MODEL, KEY, max_retries=0))
    assert str(info.value) == f"cannot reach the LLM endpoint at {base_url}: connection refused"
    assert KEY not in repr(info.value)


def test_each_attempt_is_logged_outside_a_run(fake_llm, llm, caplog):
    fake_llm.add(BROKEN, GOOD)
    with caplog.at_level(logging.INFO, logger="prefect_llmorch.llm.planning"):
        plan_query(QUERY, TOOLBOX, llm)
    text = caplog.text
    assert "attempt 1 (plan, temperature 0): 1 error" in text
    assert "undefined reference `sl`" in text
    assert "attempt 2 (repair, temperature 0): valid plan" in text


def test_bad_settings_are_rejected(llm):
    with pytest.raises(ValueError, match="attempts"):
        plan_query(QUERY, TOOLBOX, llm, attempts=0)
    with pytest.raises(ValueError, match="replans"):
        plan_query(QUERY, TOOLBOX, llm, replans=-1)


def test_ask_self_returns_the_answer_and_its_tokens(fake_llm, llm):
    fake_llm.add("Apple has more words.")
    answer = ask_self(llm, "Apple: 7 words, Microsoft: 5 words. Which has more?")
    assert answer.text == "Apple has more words."
    assert answer.completion_tokens == 4
    request = fake_llm.chat_requests[0]
    assert request.messages[-1] == {
        "role": "user", "content": "Apple: 7 words, Microsoft: 5 words. Which has more?"
    }
    assert not request.stream


def test_planner_task_is_named_planner_and_untagged():
    """Untagged: Prefect's engine makes no tag-slot request (a write) for it."""
    assert planner_task.name == "planner"
    assert not planner_task.tags


def test_planner_task_plans_inside_a_flow_with_an_endpoint_block(prefect_harness, fake_llm):
    from prefect import flow

    from prefect_llmorch.blocks import LLMEndpoint

    fake_llm.add(BROKEN, GOOD)
    endpoint = LLMEndpoint(base_url=fake_llm.base_url, model=MODEL, api_key=KEY)
    dispatched: list = []

    @flow
    def plan_flow() -> PlannerResult:
        return planner_task(QUERY, TOOLBOX, endpoint, on_call=dispatched.append)

    state = plan_flow(return_state=True)
    result = state.result()
    assert result.plan == parse(GOOD, TOOLBOX)
    assert len(result.attempts) == 2
    # Each attempt is its own task run inside `planner`; the broken answer's run failed.
    runs = _task_runs_when_final(state.state_details.flow_run_id, 3)
    by_name = {r.name: r for r in runs}
    assert set(by_name) == {"planner", "planner · attempt 1 (plan)", "planner · attempt 2 (repair)"}
    first = by_name["planner · attempt 1 (plan)"]
    assert first.state.is_failed() and "PlanError" in first.state.message
    assert by_name["planner · attempt 2 (repair)"].state.is_completed()
    assert all(not r.tags for r in runs)  # no tag-slot write for any of them
    assert [c.id for c in dispatched] == ["s1", "s2"]


def _task_runs_when_final(flow_run_id, expect: int, timeout: float = 30.0) -> list:
    """The flow run's task runs, once the API has recorded `expect` of them in final states
    (it learns task states from events, asynchronously)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            if (len(runs) >= expect and all(r.state and r.state.is_final() for r in runs)) or time.monotonic() > deadline:
                return runs
            time.sleep(0.2)


def test_an_example_calling_a_toolbox_function_with_other_parameters_is_left_out():
    """The example toolbox's `detect(image)` against the KITTI example's `detect_objects(frame)`:
    the real model copied that example's `load_frame` into the plan (issue 28)."""
    from prefect_llmorch.examples.toolbox import toolbox as example_toolbox

    kitti = EXAMPLES[1]
    assert "detect_objects(frame: list)" in kitti[0]
    clash = Toolbox(*[spec for name, spec in example_toolbox.items() if name != "self"])
    prompt = build_system_prompt(clash)
    assert "detect_objects" not in prompt and "load_frame" not in prompt  # gone, not only renamed
    assert EXAMPLES[0][2] in prompt and EXAMPLES[3][2] in prompt  # `search(query)` fits: kept
    assert prompt.count("\nExample ") == len(EXAMPLES) - 1 and "Example 3\n" in prompt  # renumbered
    assert kitti[2] in build_system_prompt(TOOLBOX)  # no clash: every example


def test_an_answer_cut_off_at_the_length_limit_is_planned_afresh_not_quoted(fake_llm):  # noqa: F811
    """A small model that repeats a line until the context is full: quoting that answer in a
    repair prompt would not fit either (a real server refused it with 400), so the next
    attempt plans afresh. The fake server cuts at `max_tokens` as a real one does."""
    client = LLMClient(fake_llm.base_url, MODEL, KEY, max_retries=0, max_tokens=count_tokens(GOOD))
    looping = 's1: search("Apple stock")\n' * 40  # s1 again and again, then cut mid-line
    fake_llm.add(looping, GOOD)
    result = plan_query(QUERY, TOOLBOX, client)
    assert result.plan == parse(GOOD, TOOLBOX)
    first, second = fake_llm.chat_requests
    assert first.reply != looping and count_tokens(first.reply) == count_tokens(GOOD)  # cut
    assert second.messages == first.messages  # the same plan request: no cut answer quoted
    assert (first.temperature, second.temperature) == (0.0, 0.7)  # not the same loop again
    assert [(a.ok, a.repair) for a in result.attempts] == [(False, False), (True, False)]
