"""`llmorch-ask` end to end through real HTTP: the scripted OpenAI-compatible server, the
real openai client, a real (test) Prefect server. Nothing of ours is patched."""

from __future__ import annotations

import pytest

from llm_fixtures import KEY, MODEL, fake_llm, free_port, llm  # noqa: F401
from prefect_llmorch.flows.ask import ask_query
from prefect_llmorch.llm.client import LLMClient, LLMError
from prefect_llmorch.flows.run import PlanRunFailed
from prefect_llmorch.flows.planner import PlanningFailed
from prefect_llmorch.testing.fake_llm import FakeError, count_tokens

pytestmark = pytest.mark.usefixtures("prefect_harness")

TOOLBOX = "toolboxes:toolbox"

GOOD = """s1: fetch(0.2, value="alpha")
s2: fetch(0.2, value="beta")
s3: crunch(0.2, tag=s1)
s4: add(1, 2)
s5: self("Combine {s1} and {s2}; checksum {s4}")
"""


def test_good_plan_streams_runs_and_answers_with_token_counts(fake_llm, llm) -> None:  # noqa: F811
    fake_llm.token_delay = 0.01
    fake_llm.add(GOOD, "alpha and beta, 3")
    report = ask_query("combine alpha and beta", TOOLBOX, processors=2, endpoint=llm)
    assert report.state == "Completed"
    calls = {c.id: c for c in report.calls}
    assert set(calls) == {"s1", "s2", "s3", "s4", "s5"}
    assert report.results["s4"] == 3.0 and report.results["s1"] == "alpha"
    assert report.result == {"s3": report.results["s3"], "s5": "alpha and beta, 3"}
    # the self call's prompt had its references filled from results
    self_request = fake_llm.chat_requests[-1]
    assert "Combine alpha and beta; checksum 3.0" in self_request.messages[-1]["content"]
    # tokens: summed over the planner and the self call, as the server reported them
    expected_prompt = sum(count_tokens(" ".join(m["content"] for m in r.messages)) for r in fake_llm.chat_requests)
    assert report.extra["tokens"] == {
        "prompt": expected_prompt,
        "completion": count_tokens(GOOD) + count_tokens("alpha and beta, 3"),
    }
    assert report.extra["attempts"] == 1 and report.extra["plan"].strip() == GOOD.strip()


def test_streaming_dispatch_starts_calls_before_the_plan_is_written(fake_llm, llm) -> None:  # noqa: F811
    # 1 s of tokens after the first line: s1 must have started (and ended) before the stream ends.
    slow_tail = GOOD.replace('s5: self("Combine', 's5: self("' + "pad " * 60 + "Combine")
    fake_llm.token_delay = 0.02
    fake_llm.add(slow_tail, "ok")
    report = ask_query("q", TOOLBOX, processors=2, endpoint=llm)
    import time

    wall = time.time() - time.monotonic()  # fake server times are monotonic
    planner_start = fake_llm.chat_requests[0].received_at + wall - report.t0
    planner_end = fake_llm.chat_requests[0].finished_at + wall - report.t0
    s1 = report.row("s1")
    print(f"planner {planner_start:.3f}-{planner_end:.3f}, s1 {s1.start:.3f}-{s1.end:.3f}")
    assert s1.start < planner_end
    # latency counts from the first LLM request (t0 is taken just before it is sent)
    assert planner_start >= -0.01  # clocks converted monotonic -> wall: allow for the conversion
    assert report.latency == max(c.end for c in report.calls)
    assert s1.released < planner_end and all(c.released >= s1.released for c in report.calls)
    # the best schedule starts no call before the planner handed it over
    assert report.best >= max(c.released + c.duration for c in report.calls) - 1e-6


def test_broken_plan_is_repaired_before_anything_wrong_runs(fake_llm, llm) -> None:  # noqa: F811
    fake_llm.add('s1: fetch(0.1, value="x")\ns2: crunch(0.1, tag=s9)\n', GOOD, "answer")
    report = ask_query("q", TOOLBOX, processors=2, endpoint=llm)
    assert report.state == "Completed" and report.extra["attempts"] == 2
    repair_prompt = fake_llm.chat_requests[1].messages[-1]["content"]
    assert "line 2" in repair_prompt and "s9" in repair_prompt


def test_unrepairable_plan_fails_with_every_attempt_listed(fake_llm, llm) -> None:  # noqa: F811
    fake_llm.default = "s1: nosuch(1)\n"
    with pytest.raises(PlanningFailed) as info:
        ask_query("q", TOOLBOX, processors=1, endpoint=llm, attempts=2)
    assert str(info.value).count("unknown function") >= 4  # 2 attempts x 2 rounds


def test_failed_call_fails_the_run_and_keeps_the_other_results(fake_llm, llm) -> None:  # noqa: F811
    fake_llm.add('s1: fetch(0.1, value="kept")\ns2: fail("tool exploded")\ns3: add(1, 1)\n')
    with pytest.raises(PlanRunFailed) as info:
        ask_query("q", TOOLBOX, processors=1, endpoint=llm, recovery_rounds=0)
    report = info.value.report
    assert report.state == "Failed" and "tool exploded" in str(info.value)
    assert report.results["s1"] == "kept" and report.results["s3"] == 2.0


def test_unreachable_endpoint_fails_clearly_without_the_key_in_prefect_logs() -> None:
    client = LLMClient(f"http://127.0.0.1:{free_port()}/v1", MODEL, KEY, max_retries=0)
    with pytest.raises(LLMError, match="cannot reach the LLM endpoint") as info:
        ask_query("q", TOOLBOX, processors=1, endpoint=client)
    assert KEY not in str(info.value)
    _assert_key_not_in_logs()


def test_rejected_key_fails_clearly_without_the_key_in_prefect_logs(fake_llm) -> None:  # noqa: F811
    client = LLMClient(fake_llm.base_url, MODEL, KEY + "-wrong", max_retries=0)
    with pytest.raises(LLMError, match="401"):
        ask_query("q", TOOLBOX, processors=1, endpoint=client)
    _assert_key_not_in_logs()


def test_server_error_is_reported_as_such(fake_llm, llm) -> None:  # noqa: F811
    fake_llm.add(FakeError(503, "overloaded"))
    with pytest.raises(LLMError):
        ask_query("q", TOOLBOX, processors=1, endpoint=llm)


def _assert_key_not_in_logs() -> None:
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # the run's logs go in batches: all sent before they are read
    with get_client(sync_client=True) as client:
        logs = client.read_logs(limit=200)
        runs = client.read_flow_runs(limit=50)
    assert logs, "expected Prefect logs to read back"
    assert all(KEY not in (log.message or "") for log in logs)
    for run in runs:
        assert KEY not in repr(run.parameters)


def test_a_call_failing_at_run_time_is_repaired_by_trace_back_recovery(fake_llm, llm) -> None:  # noqa: F811
    # s2 fails on the value s1 produced; recovery asks the LLM to repair s1 (its parent).
    fake_llm.add('s1: fetch(0.1, value="boom")\ns2: fail(s1)\ns3: add(2, 2)\n')
    fake_llm.add('s1: fetch(0.1, value="fine")')  # the repair of the recovery point s1
    with pytest.raises(PlanRunFailed) as info:  # fail() always raises: s2 fails again
        ask_query("q", TOOLBOX, processors=1, endpoint=llm, recovery_rounds=1)
    report = info.value.report
    rounds = report.extra["recovery"]["rounds"]
    assert len(rounds) == 1
    repair_request = fake_llm.chat_requests[1].messages[-1]["content"]
    assert "boom" in repair_request and "s1" in repair_request
    assert report.results["s1"] == "fine"  # the repaired call ran
    assert report.results["s3"] == 4.0  # outside the re-run subgraph: kept


def test_calls_streamed_from_a_repaired_draft_neither_count_nor_leak_results(fake_llm, llm) -> None:  # noqa: F811
    # The draft's s2 fails (and may already run); the planner repairs line 3 and changes s2.
    fake_llm.token_delay = 0.02
    fake_llm.add('s1: fetch(0.1, value=1)\ns2: fail("draft")\ns3: nosuch(s2)\n', 's1: fetch(0.1, value=1)\ns2: add(s1, 1)\n')
    report = ask_query("q", TOOLBOX, processors=1, endpoint=llm)
    assert report.state == "Completed"
    assert report.results["s2"] == 2.0  # the final plan's s2, not the draft's
    assert "recovery" not in report.extra  # the draft's failure was not the plan's failure
    assert len(fake_llm.chat_requests) == 2  # plan + one planner repair; no recovery request


def test_cancel_running_in_ask_stops_a_running_call_that_will_rerun(fake_llm, llm, runlog) -> None:  # noqa: F811
    """`ask_query(..., cancel_running=True)`: s3 fails while s2 waits (inout, started while
    the plan streamed); s2 is a descendant of the recovery point s1, so it ends Cancelled at
    once instead of waiting for a key nobody logs, and re-runs with the repaired s1."""
    import toolboxes_recovery as tr

    fake_llm.token_delay = 0.05  # s1 and s2 start while the plan streams, before recovery exists
    fake_llm.add(
        's1: echo("never:logged", tag="parent")\n'
        's2: wait_then(s1, until=s1, tag="stuck")\n'
        's3: flaky("leaf", s1, until="wait_then:stuck")\n',
        's1: echo("echo:parent", tag="parent")',
    )
    report = ask_query("q", "toolboxes_recovery:toolbox", processors=2, endpoint=llm,
                       cancel_running=True, concurrency_limit=None)
    assert report.state == "Completed" and report.results["s2"] == "echo:parent"
    (rnd,) = report.extra["recovery"]["rounds"]
    assert rnd["cancelled"] == ["s2"] and rnd["rerun"] == ["s1", "s2", "s3"]
    assert tr.runs(runlog).count("wait_then:stuck") == 2
