"""Rates of resource classes (issue 30 item 2): `--resource search-api=5/s`. Parsed and
checked (pure), applied by the Coordinator and the simulator with the time they are given,
and machine-wide by Prefect's rate limits: three flow runs at once, measured by the tools'
own clocks, never start more calls than the rate allows in any window."""

from __future__ import annotations

import contextvars
import json
import threading
import time
from typing import Any

import pytest

from prefect_llmorch.graph import FRG
from prefect_llmorch.schedule.policy import Coordinator
from prefect_llmorch.schedule.resources import (
    BadResource, Capacities, Rate, RateGate, check_demands, parse_rate, parse_resource_options,
)
from prefect_llmorch.schedule.simulator import simulate
from toolboxes_rates import fetch, most_in_any_window, toolbox


def test_rates_parse_in_every_unit_and_bad_ones_say_what_is_expected() -> None:
    assert parse_rate("10/s") == Rate(10, 1.0) and parse_rate("500/min") == Rate(500, 60.0)
    assert parse_rate("2/h") == Rate(2, 3600.0) and parse_rate("3/30s") == Rate(3, 30.0)
    assert parse_rate("2/mins") == Rate(2, 60.0) and parse_rate("1/.5s") == Rate(1, 0.5)
    # `ms` is not a plural of `m` (it once read as 10/min); `.` is not a count
    for bad in ("0/s", "10/fortnight", "ten/s", "10", "10/ms", "1/.s", "1/0s"):
        with pytest.raises(BadResource, match="like 10/s"):
            parse_rate(bad, "api")
    assert parse_resource_options(["api=10/s", "db=4,2/s", "gpu_mem_gb=80"]) == {"api": "10/s", "db": "4,2/s", "gpu_mem_gb": 80.0}
    with pytest.raises(BadResource, match="--resource 'api=10/week'"):
        parse_resource_options(["api=10/week"])
    assert parse_resource_options(["api=4", "api=10/s"]) == {"api": "4,10/s"}  # a capacity and a rate
    with pytest.raises(BadResource, match="given twice"):
        parse_resource_options(["api=10/s", "api=5/s"])


def test_a_rate_alone_is_a_known_resource_without_a_capacity_and_both_can_be_given() -> None:
    caps = Capacities.of(2, {"api": "10/s", "db": "4,2/s"})
    assert caps.rates == {"api": Rate(10, 1.0), "db": Rate(2, 1.0)}
    assert "api" not in caps.amounts and caps.amounts["db"] == 4.0
    check_demands({"s1": {"api": 50}}, caps)  # any number at once: only the pace is bounded
    assert caps.settings() == {"db": "4,2/s", "api": "10/s"}
    assert Capacities.of(2, caps.settings()) == caps


def test_the_gate_spaces_starts_evenly() -> None:
    gate = RateGate(Rate(4, 1.0))
    assert gate.allows(0.0)
    gate.record(0.0)
    assert not gate.allows(0.2) and gate.next_start(0.2) == 0.25 and gate.allows(0.25)


def test_the_coordinator_admits_rated_calls_when_the_rate_allows_and_says_when_next() -> None:
    ids = ["a", "b", "c", "d"]
    frg = FRG.from_edges(ids, {}, kinds={c: "inout" for c in ids}, resources={c: {"api": 1} for c in ids})
    co = Coordinator(frg, 1, resources={"api": "2/s"})
    assert co.get_ready(now=10.0) == ("a",)
    assert co.get_ready(now=10.3) == () and co.next_admission(10.3) == 10.5
    assert co.get_ready(now=10.5) == ("b",)
    co.done("a", "b")
    assert co.get_ready(now=11.0) == ("c",)
    # without the time, the caller paces the calls (the runner: at the call, machine-wide)
    assert Coordinator(frg, 1, resources={"api": "2/s"}).get_ready() == ("a", "b", "c", "d")


def test_the_simulator_never_starts_more_than_the_rate_in_any_window() -> None:
    ids = [f"c{i}" for i in range(12)]
    frg = FRG.from_edges(ids, {}, kinds={c: "inout" for c in ids}, costs={c: 0.7 for c in ids},
                         resources={c: {"api": 1} for c in ids})
    schedule = simulate(frg, 2, resources={"api": "3,5/s"})  # both: 3 at once, 5 a second
    starts = [e.start for e in schedule.entries]
    assert most_in_any_window(starts, 1.0) <= 5
    assert max(sum(1 for e in schedule.entries if e.start <= t < e.end) for t in starts) <= 3
    assert schedule.makespan > 0.7 * 12 / 3  # the capacity binds: 0.7 s calls, 3 at once


def test_most_in_any_window_counts_half_open_windows() -> None:
    assert most_in_any_window([0.0, 0.5, 1.0, 1.2], 1.0) == 3
    assert most_in_any_window([0.0, 0.25, 0.5, 0.75], 1.0) == 4


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_three_flow_runs_at_once_never_start_more_calls_than_the_rate_in_any_window(tmp_path) -> None:  # noqa: ANN001
    """Three flow runs, each with its own runner, start 3 calls of a `search-api` limited to
    2/s at once (9 could start together): by the tools' own clocks, no window of one second
    holds more than 2 starts."""
    from prefect import flow

    from prefect_llmorch.engine.runner import LLMOrchTaskRunner
    from prefect_llmorch.flows.run import execute
    from prefect_llmorch.plan.parser import parse

    log = tmp_path / "calls.jsonl"
    barrier = threading.Barrier(3)
    reports, errors = [], []

    def one(run: int) -> None:
        plan = parse("\n".join(f's{i}: fetch({run}, {i}, "{log}")' for i in range(3)), toolbox)
        runner = LLMOrchTaskRunner(processors=1, resources={"search-api": "2/s"})

        @flow(name="rates-three-runs", task_runner=runner)
        def paced():  # noqa: ANN202
            return execute(plan, toolbox, processors=1)[2]

        barrier.wait()
        try:
            reports.append(paced())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=contextvars.copy_context().run, args=(one, r)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert [r.state for r in reports] == ["Completed"] * 3, [r.message for r in reports]
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted((r["run"], r["i"]) for r in rows) == [(run, i) for run in range(3) for i in range(3)]
    starts = sorted(r["start"] for r in rows)
    assert most_in_any_window(starts, 1.0) <= 2, [round(t - starts[0], 3) for t in starts]


@pytest.mark.usefixtures("prefect_harness")
def test_a_compute_call_waiting_for_its_rate_holds_no_processor(tmp_path) -> None:  # noqa: ANN001
    """P = 1 and `burn-api` at 1 call per 3 s: after a1, a2 must wait for the rate. The
    runner's Coordinator holds it back (`get_ready(now=)`, woken at `next_admission`), so the
    plain compute call c runs on the one processor meanwhile; taken at once, a2 would hold the
    processor while it waited for Prefect's pace, and c would start after it."""
    from prefect_llmorch.flows.run import run_plan

    log = tmp_path / "calls.jsonl"
    plan = f'a1: rated_burn("a1", "{log}")\na2: rated_burn("a2", "{log}")\nc: plain_burn("c", "{log}")\n'
    report = run_plan(plan, toolbox, processors=1, resources={"burn-api": "1/3s"}, concurrency_limit=None)
    assert report.state == "Completed", report.message
    rows = {r["tag"]: r for r in map(json.loads, log.read_text().splitlines())}
    assert rows["a2"]["start"] - rows["a1"]["start"] >= 2.9  # the rate (3 s), less clock slack
    assert rows["c"]["end"] <= rows["a2"]["start"], rows  # c ran while a2 waited


@pytest.mark.usefixtures("prefect_harness")
def test_no_global_limit_opts_out_of_the_machine_wide_rate_and_the_run_is_still_paced(tmp_path) -> None:  # noqa: ANN001
    """`guard="local"` (`--no-global-limit`) uses none of the llmorch-* limits, rates included
    (it once still created and waited on `llmorch-rate-<r>`); the run's own Coordinator still
    spaces its calls by the rate, by the tools' own clocks."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from prefect_llmorch.engine.runner import LLMOrchTaskRunner
    from prefect_llmorch.flows.run import run_plan

    with get_client(sync_client=True) as client:
        try:  # another test of the session may have made it
            client.delete_global_concurrency_limit_by_name("llmorch-rate-search-api")
        except ObjectNotFound:
            pass
    log = tmp_path / "calls.jsonl"
    plan = "\n".join(f's{i}: fetch(0, {i}, "{log}")' for i in range(3))
    runner = LLMOrchTaskRunner(processors=1, guard="local", resources={"search-api": "2/s"})
    report = run_plan(plan, toolbox, task_runner=runner)
    assert report.state == "Completed", report.message
    with get_client(sync_client=True) as client:
        names = {limit.name for limit in client.read_global_concurrency_limits(limit=200)}
    assert "llmorch-rate-search-api" not in names, names
    starts = sorted(json.loads(line)["start"] for line in log.read_text().splitlines())
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    # spaced where the Coordinator admits them (0.5 s), less the slack from admission to start
    assert len(starts) == 3 and min(gaps) >= 0.4, gaps


def _wait_api_slot_just_taken() -> str:
    """`wait-api` paced at 1 call per 10 minutes, its slot just taken by another process (this
    test, through the API): a call of it now waits for Prefect's pace. The limit's name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    from prefect_llmorch.engine.rates import ensure_rate_limit

    name = "llmorch-rate-wait-api"
    with get_client(sync_client=True) as client:
        try:  # made afresh: another test deletes it
            client.delete_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            pass
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=1, slot_decay_per_second=1 / 600, active=True))
        assert ensure_rate_limit("wait-api", Rate(1, 600.0)) == name  # this process knows it made
        client.increment_concurrency_slots(names=[name], slots=1, mode="rate_limit")
    return name


@pytest.mark.usefixtures("prefect_harness")
def test_a_call_waiting_for_the_machine_wide_rate_ends_cancelled_when_its_run_is_cancelled(tmp_path) -> None:  # noqa: ANN001
    """A call waiting for another process's pace (10 minutes) is ended by its cancel token:
    the run's `cancel_all` ends it Cancelled at once, and it never runs."""
    from prefect_llmorch.engine.compiler import Recorder
    from prefect_llmorch.engine.runner import LLMOrchTaskRunner
    from prefect_llmorch.plan.parser import parse

    _wait_api_slot_just_taken()
    log = tmp_path / "calls.jsonl"
    plan = parse(f's1: waited("s1", "{log}")', toolbox)
    recorder = Recorder()

    def cancel_once_waiting(runner: LLMOrchTaskRunner) -> None:
        deadline = time.monotonic() + 20
        while recorder.records.get("s1") is None or recorder.records["s1"].state != "Running":
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        time.sleep(0.5)  # inside Prefect's wait for the slot
        runner.cancel_all()

    paced = _cancelled_when(LLMOrchTaskRunner(processors=1, resources={"wait-api": "1/600s"}), plan, recorder, cancel_once_waiting)
    done = []
    flow_thread = threading.Thread(
        target=contextvars.copy_context().run, args=(lambda: done.append(paced(return_state=True)),), daemon=True)
    flow_thread.start()
    flow_thread.join(timeout=120)  # the pace is 600 s: ended long before unless the cancel ended it
    assert done, "the call still waits for its rate after the run was cancelled"
    assert recorder.records["s1"].state == "Cancelled", recorder.records["s1"]
    assert not log.exists()  # it never ran


@pytest.mark.usefixtures("prefect_harness")
def test_a_rate_limit_the_api_refuses_fails_the_call_saying_so(tmp_path) -> None:  # noqa: ANN001
    """The rate limit deleted after this process made it (the API then refuses a slot): the
    call fails, recorded Failed with an error naming its rate limit, and never runs."""
    from prefect.client.orchestration import get_client

    from prefect_llmorch.report import PlanRunFailed
    from prefect_llmorch.flows.run import run_plan

    name = _wait_api_slot_just_taken()
    with get_client(sync_client=True) as client:
        client.delete_global_concurrency_limit_by_name(name)
    log = tmp_path / "calls.jsonl"
    with pytest.raises(PlanRunFailed, match=r"s1 · waited failed: RateUnavailable: rate limits \['llmorch-rate-wait-api'\] do not exist"):
        run_plan(f's1: waited("s1", "{log}")', toolbox, processors=1, resources={"wait-api": "1/600s"})
    assert not log.exists()


@pytest.mark.usefixtures("prefect_harness")
def test_a_process_talking_to_two_apis_paces_on_each_its_own_limit(prefect_server) -> None:  # noqa: ANN001
    """One resource at 1 call per 10 minutes, paced on the session's test server and then on
    another server: the second API gets its own rate limit (made there) and its own asker (it
    does not wait for the first API's pace), and its slot is taken there."""
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from prefect_llmorch.engine.rates import pace
    from prefect_llmorch.schedule.resources import rate_limit_name

    resource = f"two-apis-{uuid.uuid4().hex[:6]}"
    rates = {resource: Rate(1, 600.0)}
    pace([resource], rates)  # on the test server
    outcome: list[object] = []

    def on_the_other_api() -> None:
        try:
            pace([resource], rates)
            with get_client(sync_client=True) as client:
                outcome.append(client.read_global_concurrency_limit_by_name(rate_limit_name(resource)).active_slots)
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)

    with temporary_settings(updates={PREFECT_API_URL: prefect_server.url}):
        other = threading.Thread(target=contextvars.copy_context().run, args=(on_the_other_api,), daemon=True)
        other.start()
        other.join(timeout=120)  # the first API's pace would make it wait 10 minutes
    assert outcome == [1], outcome


@pytest.mark.usefixtures("prefect_harness")
def test_no_rate_timer_of_a_run_is_left_alive_after_it(tmp_path) -> None:  # noqa: ANN001
    """The runner wakes itself for a call waiting for its run's rate (a `threading.Timer`):
    s2 waits 10 minutes for `wait-api`, then f2 a second for `search-api` (an earlier wake
    replaces the later one), and the run is cancelled while s2 still waits. No timer of the
    run is alive after it: the replaced one and the last one were cancelled."""
    from prefect_llmorch.engine.compiler import Recorder
    from prefect_llmorch.engine.runner import LLMOrchTaskRunner
    from prefect_llmorch.plan.parser import parse

    log = tmp_path / "calls.jsonl"
    plan = parse(f's1: waited("s1", "{log}")\ns2: waited("s2", "{log}")\n'
                 f'f1: then_fetch(s1, "f1", "{log}")\nf2: then_fetch(s1, "f2", "{log}")', toolbox)
    recorder = Recorder()
    before = {t for t in threading.enumerate() if isinstance(t, threading.Timer)}

    def cancel_once_f2_ran(runner: LLMOrchTaskRunner) -> None:
        deadline = time.monotonic() + 120
        while getattr(recorder.records.get("f2"), "state", None) != "Completed" and time.monotonic() < deadline:
            time.sleep(0.02)
        runner.cancel_all()

    runner = LLMOrchTaskRunner(processors=1, guard="local", resources={"wait-api": "1/600s", "search-api": "1/s"})
    _cancelled_when(runner, plan, recorder, cancel_once_f2_ran)(return_state=True)
    states = {cid: rec.state for cid, rec in recorder.records.items()}
    assert states["f2"] == "Completed" and states["s2"] != "Completed", states
    left = [t for t in threading.enumerate() if isinstance(t, threading.Timer) and t not in before and t.is_alive()]
    assert not left, left


def _cancelled_when(runner: Any, plan: Any, recorder: Any, cancel: Any) -> Any:
    """A flow on `runner` that runs `plan` (records into `recorder`) while a thread calls
    `cancel(runner)`, which cancels the run when its condition holds."""
    from prefect import flow
    from prefect.context import FlowRunContext

    from prefect_llmorch.flows.run import execute

    @flow(task_runner=runner)
    def paced():  # noqa: ANN202
        canceller = threading.Thread(target=cancel, args=(FlowRunContext.get().task_runner,))
        canceller.start()
        report = execute(plan, toolbox, processors=1, recorder=recorder)[2]
        canceller.join()
        return report

    return paced
