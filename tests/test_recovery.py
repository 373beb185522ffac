"""Trace-back runtime recovery on a real (test) Prefect server, repaired through the fake
OpenAI-compatible server over real HTTP with the real openai client; nothing of ours is
patched. Every test injects runtime failures, then checks which calls re-ran (attempt
numbers, `Recorder.history`, the run log the functions write), which results were reused
(logged once), and the final state. Pure tests of recovery points at the end."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_fixtures import KEY, MODEL
from prefect_llmorch.engine.compiler import Recorder
from prefect_llmorch.llm.client import LLMClient
from prefect_llmorch.plan.model import Call
from prefect_llmorch.plan.parser import parse
from prefect_llmorch.flows.recovery import ARTIFACT_KEY, RecoveryConfig
from prefect_llmorch.flows.report import records_sent
from prefect_llmorch.llm.repair import RepairRejected, parse_repair
from prefect_llmorch.schedule.recovery import recovery_points, rerun_set
from prefect_llmorch.testing import FakeLLM

import toolboxes_recovery as tr


POLICIES = ["critical-path", "paper"]
TB = tr.toolbox


class Outcome:
    def __init__(self, state: Any, box: dict[str, Any], server: FakeLLM, elapsed: float) -> None:
        self.state = state
        self.recorder: Recorder = box["recorder"]
        self.report = box["report"]
        self.requests = server.chat_requests
        self.elapsed = elapsed
        self.calls = {c.id: c for c in self.report.calls}
        self.recovery = self.report.extra.get("recovery", {})

    @property
    def rounds(self) -> list[dict[str, Any]]:
        return self.recovery.get("rounds", [])

    def attempts(self, cid: str) -> list[tuple[int, str]]:
        """(attempt, state) of every run of a call: history first, then the last record."""
        recs = [r for r in self.recorder.history if r.id == cid] + [self.recorder.records[cid]]
        return [(r.attempt, r.state) for r in recs]


def run(plan_text: str, script: list[Any], *, policy: str = "critical-path", processors: int = 2,
        max_rounds: int = 3, running: str = "wait") -> Outcome:
    """Run a plan with recovery in an `LLMOrchTaskRunner` flow; the flow fails when calls do."""
    from prefect import flow

    from prefect_llmorch.flows.execute import execute
    from prefect_llmorch.report import PlanRunFailed
    from prefect_llmorch.engine.runner import LLMOrchTaskRunner

    box: dict[str, Any] = {}
    with FakeLLM(script, api_key=KEY, model=MODEL) as server:
        client = LLMClient(server.base_url, MODEL, KEY, max_retries=0, timeout=20)
        config = RecoveryConfig(client, max_rounds=max_rounds, round_timeout=90, running=running)

        @flow(task_runner=LLMOrchTaskRunner(processors=processors, policy=policy, concurrency_limit=None))
        def recovering() -> Any:
            plan = parse(plan_text, TB)
            _, box["recorder"], box["report"] = execute(plan, TB, processors=processors, recovery=config)
            report = box["report"]
            if report.failed:
                raise PlanRunFailed(report.message, report)
            return report.result

        started = time.monotonic()
        state = recovering(return_state=True)
        elapsed = time.monotonic() - started
        return Outcome(state, box, server, elapsed)


def count(log: str, key: str) -> int:
    return tr.runs(log).count(key)


def test_on_failure_fires_only_after_prefect_retries(runlog):
    """`flaky_retried` fails once and its Prefect retry succeeds: no recovery round, no LLM
    request. `broken_retried` fails both tries: one failure reaches recovery, once."""
    out = run('s1: flaky_retried("a")\ns2: echo(s1)', [])
    assert out.state.is_completed() and out.requests == [] and out.rounds == []
    assert count(runlog, "flaky_retried:a") == 2  # the first try and Prefect's retry
    Path(runlog).unlink()
    out = run('s1: broken_retried("b")', ['s1: search("b")'])
    assert out.state.is_completed(), out.report.message
    assert count(runlog, "broken_retried:b") == 2  # both tries before trace-back began
    assert [f["call_id"] for f in out.rounds[0]["failed"]] == ["s1"] and len(out.rounds) == 1
    assert out.attempts("s1") == [(0, "Failed"), (1, "Completed")]


PRICES_PLAN = (
    's1: lookup("Aple")\n'
    's2: lookup("Microsoft")\n'
    "s3: price(s1)\n"
    "s4: price(s2)\n"
    "s5: combine(s3, s4)"
)


@pytest.mark.parametrize("policy", POLICIES)
def test_bad_argument_produced_upstream_repairs_the_parent(runlog, policy):
    out = run(PRICES_PLAN, ['s1: lookup("Apple")'], policy=policy)
    assert out.state.is_completed(), out.report.message
    assert out.report.result == [190.0, 410.0, None]
    (rnd,) = out.rounds
    assert [f["call_id"] for f in rnd["failed"]] == ["s3"]
    assert "unknown ticker symbol '?Aple'" in rnd["failed"][0]["error"]
    assert rnd["recovery_points"] == ["s1"]
    assert rnd["repairs"][0]["before"] == 's1: lookup("Aple")' and rnd["repairs"][0]["after"] == 's1: lookup("Apple")'
    assert rnd["rerun"] == ["s1", "s3", "s5"] and rnd["reused"] == ["s2", "s4"]
    # re-ran as `(repair 1)` task runs; the other branch was computed once and reused
    assert out.attempts("s1") == [(0, "Completed"), (1, "Completed")]
    assert out.attempts("s3") == [(0, "Failed"), (1, "Completed")]
    assert out.attempts("s2") == [(0, "Completed")] and out.attempts("s4") == [(0, "Completed")]
    assert count(runlog, "lookup:Microsoft") == 1 and count(runlog, "price:MSFT") == 1
    assert count(runlog, "lookup:Aple") == 1 and count(runlog, "lookup:Apple") == 1
    assert count(runlog, "combine:") == 1  # s5 never ran with a failed input
    # what the LLM was shown: failed call, its arguments, its exception, the recovery call, functions
    prompt = out.requests[0].text
    assert "s3: price(s1)" in prompt and "price('?Aple')" in prompt
    assert "ValueError: unknown ticker symbol '?Aple'" in prompt
    assert 'Recovery call to repair: s1: lookup("Aple")' in prompt and TB.describe() in prompt


def test_wrong_function_is_swapped_for_another_of_the_same_kind(runlog):
    plan = 's1: search_old("prefect")\ns2: echo(value="{s1}!")\ns3: crunch(0.1, tag="side")'
    out = run(plan, ['s1: search("prefect")'])
    assert out.state.is_completed(), out.report.message
    assert out.report.results["s2"] == "top result for prefect!"
    (rnd,) = out.rounds
    assert rnd["recovery_points"] == ["s1"]  # no ancestors: its own recovery point
    assert rnd["repairs"][0]["after"] == 's1: search("prefect")'
    assert out.attempts("s1") == [(0, "Failed"), (1, "Completed")]
    assert out.attempts("s2")[-1] == (1, "Completed") and out.attempts("s3") == [(0, "Completed")]
    assert count(runlog, "crunch:side") == 1
    assert "search_old was retired" in out.requests[0].text


def test_failure_in_a_leaf_reruns_its_branch_only(runlog):
    """The leaf fails (its service is down once); trace-back re-runs it from its parent,
    which the LLM keeps unchanged; the sibling branch is reused."""
    plan = (
        's1: echo("x", tag="parent")\n'
        's2: crunch(0.2, tag="sibling")\n'
        's3: echo(s2, tag="sibling-child")\n'
        's4: flaky("leaf", s1)'
    )
    out = run(plan, ['s1: echo("x", tag="parent")'])
    assert out.state.is_completed(), out.report.message
    assert out.report.results["s4"] == "x"
    (rnd,) = out.rounds
    assert rnd["recovery_points"] == ["s1"] and rnd["rerun"] == ["s1", "s4"]
    assert rnd["repairs"][0]["changed"] is False
    assert out.attempts("s4") == [(0, "Failed"), (1, "Completed")]
    assert count(runlog, "crunch:sibling") == 1 and count(runlog, "echo:sibling-child") == 1
    assert count(runlog, "echo:parent") == 2 and count(runlog, "flaky:leaf") == 2


def test_failures_in_two_branches_at_once_repair_both_points_in_turn(runlog):
    plan = (
        's1: lookup("Aple")\n'
        's2: lookup("Microsft")\n'
        's3: lookup("Alphabet")\n'
        "s4: price(s1)\n"
        "s5: price(s2)\n"
        "s6: price(s3)\n"
        "s7: combine(s4, s5, s6)"
    )
    out = run(plan, ['s1: lookup("Apple")', 's2: lookup("Microsoft")'])
    assert out.state.is_completed(), out.report.message
    assert out.report.result == [190.0, 410.0, 150.0]
    (rnd,) = out.rounds
    assert [f["call_id"] for f in rnd["failed"]] == ["s4", "s5"]
    assert rnd["recovery_points"] == ["s1", "s2"]
    assert [r["after"] for r in rnd["repairs"]] == ['s1: lookup("Apple")', 's2: lookup("Microsoft")']
    assert len(out.requests) == 2  # one repair request per recovery point
    assert "s5: price(s2)" in out.requests[1].text and 's1: lookup("Apple")' in out.requests[1].text
    assert rnd["reused"] == ["s3", "s6"]
    assert count(runlog, "lookup:Alphabet") == 1 and count(runlog, "price:GOOG") == 1
    for cid in ("s4", "s5"):
        assert out.attempts(cid) == [(0, "Failed"), (1, "Completed")]


@pytest.mark.parametrize("policy", POLICIES)
def test_failure_while_siblings_run_waits_for_them_and_drops_unstarted_reruns(runlog, policy):
    """P = 1. s3 holds the processor until s1 has failed; s2 (a compute call that descends
    from the recovery point s0) is ready but waits for the processor: it is dropped, not run
    with the bad input. Recovery starts when the running calls (s3, s4) have ended, and
    their results are reused. The functions synchronise through the run log, not timing."""
    plan = (
        's0: wait_then(-1.0, until="hold:busy", tag="s0")\n'
        "s1: positive(s0)\n"
        's2: crunch(0.1, tag="t{s0}")\n'
        's3: hold("positive:-1.0", after=1.0, tag="busy")\n'
        's4: wait_then(1, until="positive:-1.0", after=1.0, tag="io-sibling")'
    )
    out = run(plan, ['s0: wait_then(2.0, until="hold:busy", tag="s0")'], policy=policy, processors=1)
    assert out.state.is_completed(), out.report.message
    (rnd,) = out.rounds
    assert rnd["recovery_points"] == ["s0"] and rnd["rerun"] == ["s0", "s1", "s2"]
    assert rnd["reused"] == ["s3", "s4"]
    assert out.attempts("s2") == [(0, "Cancelled"), (1, "Completed")]
    assert count(runlog, "crunch:t-1.0") == 0 and count(runlog, "crunch:t2.0") == 1  # dropped, then run once
    assert count(runlog, "hold:busy") == 1 and count(runlog, "wait_then:io-sibling") == 1
    first_s1 = next(r for r in out.recorder.history if r.id == "s1")
    s3, s4 = out.calls["s3"], out.calls["s4"]
    assert first_s1.end < s3.end and first_s1.end < s4.end  # siblings ran on past the failure
    rerun_start = min(out.calls[c].start for c in ("s0", "s1", "s2"))
    assert rerun_start >= max(s3.end, s4.end)  # recovery waited for them


def test_repair_that_fails_again_takes_a_second_round(runlog):
    out = run(PRICES_PLAN, ['s1: lookup("Appel")', 's1: lookup("Apple")'])
    assert out.state.is_completed(), out.report.message
    assert [r["outcome"] for r in out.rounds] == ["failed again", "recovered"]
    assert out.recovery["outcome"] == "recovered in 2 round(s)"
    assert out.attempts("s1") == [(0, "Completed"), (1, "Completed"), (2, "Completed")]
    assert out.attempts("s3") == [(0, "Failed"), (1, "Failed"), (2, "Completed")]
    assert out.rounds[1]["failed"][0]["arguments"] == "price('?Appel')"
    assert 's1: lookup("Appel")' in out.requests[1].text  # round 2 sees the plan as repaired
    assert count(runlog, "lookup:Microsoft") == 1 and count(runlog, "price:MSFT") == 1


def test_unrepairable_plan_ends_failed_with_a_report_of_every_round(runlog):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    from prefect_llmorch.flows.run import PlanRunFailed

    out = run(PRICES_PLAN, ['s1: lookup("Apel")', 's1: lookup("Appl")'], max_rounds=2)
    assert out.state.is_failed()
    exc = out.state.result(raise_on_failure=False)
    assert isinstance(exc, PlanRunFailed)
    assert out.recovery["outcome"] == "gave up after 2 round(s)"
    assert [r["outcome"] for r in out.rounds] == ["failed again", "failed again"]
    assert "s3" in out.report.failed and "s5" in out.report.failed
    assert out.report.results["s4"] == 410.0  # kept
    assert out.attempts("s3") == [(0, "Failed"), (1, "Failed"), (2, "Failed")]
    assert count(runlog, "lookup:Microsoft") == 1
    message = str(exc)
    for text in ('`s1: lookup("Aple")` → `s1: lookup("Apel")`', '`s1: lookup("Apel")` → `s1: lookup("Appl")`',
                 "Round 1: failed again", "Round 2: failed again", "unknown ticker symbol '?Appl'"):
        assert text in message
    assert records_sent(60)  # a run's artifacts are sent after its answer
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[ARTIFACT_KEY]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[out.state.state_details.flow_run_id]),
        ))
    assert len(arts) == 1 and "Round 2: failed again" in arts[0].data


def test_compute_worker_crash_is_repaired_with_another_compute_function(runlog):
    plan = 's1: die(0.05)\ns2: echo(s1, tag="after")\ns3: crunch(0.1, tag="kept")'
    out = run(plan, ['s1: crunch(0.05, tag="instead")'])
    assert out.state.is_completed(), out.report.message
    (rnd,) = out.rounds
    assert "died while running it" in rnd["failed"][0]["error"]
    assert rnd["repairs"][0]["after"] == 's1: crunch(0.05, tag="instead")'
    assert out.attempts("s1") == [(0, "Failed"), (1, "Completed")]
    assert out.report.results["s2"] == out.report.results["s1"]  # the new worker's pid
    assert count(runlog, "crunch:kept") == 1 and count(runlog, "crunch:instead") == 1


def test_repair_that_changes_kind_is_rejected_and_the_error_fed_back(runlog):
    plan = 's1: search_old("q")\ns2: echo(s1)'
    out = run(plan, ['s1: crunch(0.1, tag="q")', 's1: search("q")'])
    assert out.state.is_completed(), out.report.message
    rep = out.rounds[0]["repairs"][0]
    assert len(rep["rejections"]) == 1 and "must keep its kind" in rep["rejections"][0]
    assert rep["after"] == 's1: search("q")'
    assert len(out.requests) == 2
    feedback = out.requests[1].messages
    assert feedback[-2] == {"role": "assistant", "content": 's1: crunch(0.1, tag="q")'}
    assert "must keep its kind: use an inout function" in feedback[-1]["content"]
    assert count(runlog, "crunch:q") == 0


def test_repair_that_does_not_parse_is_fed_back_once(runlog):
    plan = 's1: search_old("q")\ns2: echo(s1)'
    out = run(plan, ['Sure! Here it is: s1: search("q"', 's1: search("q")'])
    assert out.state.is_completed(), out.report.message
    rep = out.rounds[0]["repairs"][0]
    assert rep["rejections"][0].startswith("the answer does not parse")
    assert "does not parse" in out.requests[1].messages[-1]["content"]
    assert out.attempts("s1") == [(0, "Failed"), (1, "Completed")]


def test_rejected_twice_the_round_fails_and_the_next_round_repairs(runlog):
    """Both answers of round 1 are unusable (wrong id, forward reference): nothing re-runs
    in round 1; round 2 asks again and recovers, as `(repair 2)` task runs."""
    plan = 's1: search_old("q")\ns2: echo(s1)'
    out = run(plan, ['s9: search("q")', "s1: search(s2)", 's1: search("q")'])
    assert out.state.is_completed(), out.report.message
    assert [r["outcome"] for r in out.rounds] == ["repair rejected", "recovered"]
    r1 = out.rounds[0]["repairs"][0]
    assert "keep the id `s1`" in r1["rejections"][0] and "undefined reference `s2`" in r1["rejections"][1]
    assert out.rounds[0]["rerun"] == []
    assert out.attempts("s1") == [(0, "Failed"), (2, "Completed")]
    assert count(runlog, "search_old:q") == 1 and count(runlog, "search:q") == 1


def test_recovery_is_bounded_when_the_llm_endpoint_fails(runlog):
    from fake_llm import FakeError

    out = run('s1: search_old("q")', [FakeError(500), FakeError(500)], max_rounds=2)
    assert out.state.is_failed()
    assert [r["outcome"] for r in out.rounds] == ["llm error", "llm error"]
    assert out.recovery["outcome"] == "gave up after 2 round(s)"
    assert out.elapsed < 60


# --------------------------------------------------------------------------- pure logic


def test_parse_repair_rules():
    plan = parse(PRICES_PLAN, TB)
    s3 = plan["s3"]
    assert parse_repair("s3: price(s2)", s3, ["s1", "s2"], TB).deps == {"s2"}
    with pytest.raises(RepairRejected, match="exactly one call"):
        parse_repair("s3: price(s1)\ns4: price(s1)", s3, ["s1", "s2"], TB)
    with pytest.raises(RepairRejected, match="type-check"):
        parse_repair("s3: price(1, 2, 3)", s3, ["s1", "s2"], TB)
    with pytest.raises(RepairRejected, match="unknown function"):
        parse_repair("s3: prize(s1)", s3, ["s1", "s2"], TB)
    with pytest.raises(RepairRejected, match="empty"):
        parse_repair("```\n```", s3, ["s1"], TB)


@st.composite
def dags(draw):  # noqa: ANN001, ANN201
    n = draw(st.integers(1, 12))
    ids = [f"s{i}" for i in range(n)]
    deps = {cid: sorted(draw(st.sets(st.sampled_from(ids[:i]), max_size=3))) if i else [] for i, cid in enumerate(ids)}
    rank: dict[str, int] = {}
    for cid in ids:
        rank[cid] = 1 + max((rank[d] for d in deps[cid]), default=0)
    failed = draw(st.sets(st.sampled_from(ids), min_size=1))
    return ids, deps, rank, failed


@settings(max_examples=300, deadline=None)
@given(dags())
def test_recovery_points_properties(dag):
    ids, deps, rank, failed = dag
    points = recovery_points(deps, rank, failed)
    assert points == sorted(set(points), key=ids.index)  # plan order, no duplicates
    for f in failed:
        if not deps[f]:
            assert f in points
        else:  # its parents of the smallest rank, and no other parent
            low = min(rank[p] for p in deps[f])
            assert {p for p in deps[f] if rank[p] == low} <= set(points)
    for p in points:  # every point is a failed root or such a parent of a failed call
        assert (p in failed and not deps[p]) or any(
            p in deps[f] and rank[p] == min(rank[q] for q in deps[f]) for f in failed
        )
    succs = {cid: [c for c in ids if cid in deps[c]] for cid in ids}
    rerun = rerun_set(succs, points)
    assert set(failed) <= rerun  # every failed call re-runs
    for cid in rerun:  # closed under descendants
        assert set(succs[cid]) <= rerun


def test_recovery_points_on_an_frg():
    from prefect_llmorch.graph import FRG

    frg = FRG.build(parse(PRICES_PLAN, TB), TB)
    assert recovery_points(frg.deps, frg.rank, ["s3", "s4"]) == ["s1", "s2"]
    assert recovery_points(frg.deps, frg.rank, ["s5"]) == ["s3", "s4"]
    assert sorted(rerun_set(frg.succs, ["s1"])) == ["s1", "s3", "s5"]


def test_config_rejects_negative_rounds():
    with pytest.raises(ValueError, match="max_rounds"):
        RecoveryConfig(LLMClient("http://127.0.0.1:9/v1", MODEL), max_rounds=-1)


pytestmark = pytest.mark.usefixtures("prefect_harness")


# -- running calls that recovery will re-run: running="cancel" ends them at once -------------

CANCEL_PLAN = (
    's1: echo(60, tag="parent")\n'
    's2: crunch(s1, tag="long")\n'  # compute, 60 s of CPU unless cancelled
    's3: flaky("leaf", s1, until="crunch:long")\n'  # fails while s2 runs: traces back to s1
    's4: echo("kept", tag="unrelated")'
)


@pytest.mark.parametrize("policy", POLICIES)
def test_cancel_mode_kills_a_running_compute_call_that_will_rerun(runlog, policy):
    """s3 fails while s2 (a descendant of the recovery point s1) burns CPU: with
    running="cancel" its worker process is killed at once, and s2 re-runs with the repaired s1.
    (With "wait", s2 would burn its 60 s first: the round timeout of 90 s still bounds it.)"""
    out = run(CANCEL_PLAN, ['s1: echo(0.05, tag="parent")'], policy=policy, running="cancel")
    assert out.state.is_completed(), out.report.message
    (rnd,) = out.rounds
    assert rnd["recovery_points"] == ["s1"] and rnd["rerun"] == ["s1", "s2", "s3"]
    assert rnd["reused"] == ["s4"] and rnd["cancelled"] == ["s2"]
    assert out.attempts("s2") == [(0, "Cancelled"), (1, "Completed")]
    assert out.attempts("s3") == [(0, "Failed"), (1, "Completed")]
    first = next(r for r in out.recorder.history if r.id == "s2")
    assert "s2 · crunch was cancelled (trace-back recovery will re-run it (s3 failed))" in first.error
    assert count(runlog, "crunch:long") == 2 and count(runlog, "echo:unrelated") == 1
    assert out.report.results["s3"] == 0.05


def test_cancel_mode_abandons_a_running_inout_call_that_will_rerun(runlog):
    """An inout call cannot be killed: its task run ends Cancelled at once and its thread is
    left to end by itself; the re-run uses the repaired input."""
    plan = (
        's1: echo("never:logged", tag="parent")\n'
        's2: wait_then(s1, until=s1, tag="stuck")\n'  # waits for a key nobody logs
        's3: flaky("leaf", s1, until="wait_then:stuck")'  # fails once s2 is surely running
    )
    out = run(plan, ['s1: echo("echo:parent", tag="parent")'], running="cancel")
    assert out.state.is_completed(), out.report.message
    assert out.attempts("s2") == [(0, "Cancelled"), (1, "Completed")]
    first = next(r for r in out.recorder.history if r.id == "s2")
    assert "s2 · wait_then was cancelled (trace-back recovery will re-run it (s3 failed))" in first.error
    assert out.report.results["s2"] == "echo:parent" and out.report.results["s3"] == "echo:parent"


def test_wait_mode_lets_a_running_call_that_will_rerun_end(runlog):
    """The default: running calls end by themselves; their results are dropped and re-made."""
    plan = (
        's1: echo(0.3, tag="parent")\n'
        's2: crunch(s1, tag="busy")\n'
        's3: flaky("leaf", s1, until="crunch:busy")'
    )
    out = run(plan, ['s1: echo(0.05, tag="parent")'])
    assert out.state.is_completed(), out.report.message
    assert out.attempts("s2") == [(0, "Completed"), (1, "Completed")] and out.rounds[0]["cancelled"] == []
    assert count(runlog, "crunch:busy") == 2


def test_running_mode_is_checked() -> None:
    with pytest.raises(ValueError, match="running must be one of 'wait', 'cancel', got 'kill'"):
        RecoveryConfig(LLMClient("http://127.0.0.1:9/v1", MODEL, KEY), running="kill")
