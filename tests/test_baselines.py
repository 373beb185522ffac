"""The baselines' logic with tiny workloads through the real scripted LLM server and Prefect:
ReAct runs calls one at a time with growing prompts, parallel FC asks once per rank and
runs a rank at once, LLMCompiler-style asks once and runs everything ready at once.
No wall-clock thresholds: only orderings, counts and overlaps."""

from __future__ import annotations

import json

import pytest

from baselines import (
    SYSTEMS,
    BaselineProtocolError,
    parallel_fc_script,
    react_script,
    run_llmcompiler,
    run_llmorch,
    run_parallel_fc,
    run_react,
    script_for,
)
from prefect_llmorch.llm.client import LLMClient
from prefect_llmorch.plan.parser import parse
from prefect_llmorch.testing.fake_llm import FakeLLM, count_tokens

TOOLBOX = "toolboxes:toolbox"

# two independent inout calls, a compute call using both, a final inout call: 3 ranks
PLAN = """s1: fetch(0.05, value="alpha")
s2: fetch(0.05, value="beta")
s3: crunch(0.05, tag=s1)
s4: add(1, 2)
s5: fetch(0.05, value="{s3} {s2} {s4}")
"""


@pytest.fixture
def server():
    with FakeLLM(api_key="sk-test") as fake:
        yield fake


def client_for(fake: FakeLLM) -> LLMClient:
    return LLMClient(fake.base_url, "fake", api_key="sk-test")


def overlaps(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


# -- scripts (no server) --------------------------------------------------------------


def test_react_script_has_one_action_per_call_and_a_final_action_last() -> None:
    replies = react_script(parse(PLAN))
    assert len(replies) == 5
    assert all(r.count("Action:") == 1 for r in replies)
    assert [("Final Action:" in r) for r in replies] == [False] * 4 + [True]
    assert replies[2].endswith("s3: crunch(0.05, tag=s1)")


def test_parallel_fc_script_has_one_json_reply_per_rank() -> None:
    replies = [json.loads(r) for r in parallel_fc_script(parse(PLAN))]
    assert [[c["id"] for c in r["tool_calls"]] for r in replies] == [["s1", "s2", "s4"], ["s3"], ["s5"]]
    assert [r["final"] for r in replies] == [False, False, True]


def test_script_for_knows_every_system_and_nothing_else() -> None:
    for system in SYSTEMS:
        assert script_for(system, PLAN)
    assert script_for("llmcompiler", PLAN) == [parse(PLAN).to_text()]
    with pytest.raises(ValueError, match="unknown system"):
        script_for("magic", PLAN)


# -- runs (real HTTP, real Prefect) ------------------------------------------------------


pytestmark_prefect = pytest.mark.usefixtures("prefect_harness")


@pytestmark_prefect
def test_react_runs_calls_one_after_another_and_its_prompt_grows(server) -> None:
    server.add(*react_script(parse(PLAN)))
    run = run_react("q", TOOLBOX, client_for(server))
    calls = sorted(run.calls, key=lambda c: c["start"])
    assert [c["id"] for c in calls] == ["s1", "s2", "s3", "s4", "s5"]
    for a, b in zip(calls, calls[1:]):
        assert a["end"] <= b["start"], f"{a['id']} and {b['id']} overlap"
    requests = server.chat_requests
    assert len(requests) == run.round_trips == 5
    # each request after the first carries the previous reply and its observation
    prompts = [sum(count_tokens(m["content"]) for m in r.messages) for r in requests]
    assert prompts == sorted(prompts) and len(set(prompts)) == 5
    assert "Observation: alpha" in requests[1].text
    assert run.prompt_tokens == sum(prompts)
    # every call starts only after the LLM answered the step that asked for it
    for req, call in zip(requests, calls):
        assert call["id"] in (req.reply or "")
    assert run.result.endswith(" beta 3.0")


@pytestmark_prefect
def test_parallel_fc_asks_once_per_rank_and_runs_a_rank_at_once(server) -> None:
    server.add(*parallel_fc_script(parse(PLAN)))
    run = run_parallel_fc("q", TOOLBOX, client_for(server))
    assert len(server.chat_requests) == run.round_trips == 3  # ranks
    by_id = {c["id"]: c for c in run.calls}
    assert overlaps(by_id["s1"], by_id["s2"])  # rank 1 runs at once
    assert by_id["s3"]["start"] >= max(by_id["s1"]["end"], by_id["s2"]["end"], by_id["s4"]["end"])  # rank barrier
    assert by_id["s5"]["start"] >= by_id["s3"]["end"]
    assert "s1: alpha" in server.chat_requests[1].text  # results go back to the LLM
    assert run.result.endswith(" beta 3.0")


@pytestmark_prefect
def test_llmcompiler_asks_once_and_runs_compute_in_the_flow_process(server) -> None:
    import os

    server.add(PLAN)
    run = run_llmcompiler("q", TOOLBOX, client_for(server))
    assert len(server.chat_requests) == run.round_trips == 1
    assert server.chat_requests[0].stream
    by_id = {c["id"]: c for c in run.calls}
    assert overlaps(by_id["s1"], by_id["s2"])
    assert by_id["s3"]["pid"] == os.getpid()  # a thread, not a worker process: the GIL is shared
    assert run.result.endswith(" beta 3.0")


@pytestmark_prefect
def test_tokens_of_the_one_plan_systems_are_fewer_than_react(server) -> None:
    server.add(*react_script(parse(PLAN)), PLAN)
    react = run_react("q", TOOLBOX, client_for(server))
    ours = run_llmorch("q", TOOLBOX, client_for(server), processors=1, concurrency_limit=None)
    assert len(server.chat_requests) == 6
    assert ours.round_trips == 1 and ours.tokens < react.tokens
    assert ours.result.endswith(" beta 3.0") and react.result.endswith(" beta 3.0")
    compute = [c for c in ours.calls if c["kind"] == "compute"]
    assert compute and all(c["pid"] != os_pid() for c in compute)  # our worker processes


def os_pid() -> int:
    import os

    return os.getpid()


@pytestmark_prefect
def test_react_reports_an_answer_without_an_action(server) -> None:
    server.add("Thought: I will just guess.\nThe answer is 42.")
    with pytest.raises(BaselineProtocolError, match="exactly one Action line"):
        run_react("q", TOOLBOX, client_for(server))
