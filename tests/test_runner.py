"""LLMOrchTaskRunner on a real (test) Prefect server: the execution invariants, proven
from recorded start/end times and process ids, never from wall-clock thresholds."""

from __future__ import annotations

import itertools
from typing import Any
import time

import pytest
from prefect import flow, task

from prefect_llmorch.engine.compiler import Recorder
from prefect_llmorch.flows.run import execute
from prefect_llmorch.plan.model import Arg, Call, ListExpr, Literal, Plan, Ref
from prefect_llmorch.engine.runner import LLMOrchTaskRunner

from toolboxes import toolbox

pytestmark = pytest.mark.usefixtures("prefect_harness")

EPS = 1e-3


def lit(v):  # noqa: ANN001, ANN201
    return Arg(None, Literal(v))


def mixed_plan() -> Plan:
    """6 compute calls (ranks 1 and 2), 3 inout calls, a join of everything."""
    calls = [Call(f"c{i}", "crunch", (lit(0.3),)) for i in range(1, 5)]
    calls += [Call(f"w{i}", "fetch", (lit(0.2), Arg("value", Literal(f"w{i}")))) for i in range(1, 3)]
    calls += [
        Call("c5", "add", (Arg(None, Literal(1)), Arg(None, Literal(2)))),
        Call("c6", "crunch", (lit(0.2), Arg("tag", Ref("w1")))),
        Call("w3", "fetch", (lit(0.1), Arg("value", ListExpr(tuple(Ref(x) for x in ("c1", "c2", "c3", "c4", "c5", "c6")))))),
    ]
    return Plan(tuple(calls))


def run_in_flow(plan: Plan, processors: int, policy: str = "critical-path", limit: str | None = None):  # noqa: ANN201
    @flow(task_runner=LLMOrchTaskRunner(processors=processors, policy=policy, concurrency_limit=limit))
    def f():  # noqa: ANN202
        frg, rec, report = execute(plan, toolbox, processors=processors)
        return frg, rec, report

    return f()


def overlap_max(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e - EPS, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


@pytest.mark.parametrize("policy", ["critical-path", "paper"])
def test_mixed_plan_respects_processors_inputs_and_inout_first(policy: str) -> None:
    P = 2
    frg, rec, report = run_in_flow(mixed_plan(), P, policy)
    assert report.state == "Completed", report.calls
    calls = {c["id"]: c for c in report.calls}
    compute = [c for c in report.calls if c["kind"] == "compute"]
    # never more than P compute calls overlapped
    assert overlap_max([(c["start"], c["end"]) for c in compute]) <= P
    # mutually exclusive calls that overlapped in time ran in different processes
    for a, b in frg.mutex:
        ca, cb = calls[a], calls[b]
        if ca["start"] < cb["end"] - EPS and cb["start"] < ca["end"] - EPS:
            assert ca["pid"] != cb["pid"], (a, b)
    # every call started only after its inputs ended
    for cid in frg.ids:
        for dep in frg.deps[cid]:
            assert calls[cid]["start"] >= calls[dep]["end"] - EPS, (cid, dep)
    # inout calls that were ready at the start started before the compute calls that had to wait
    waiting = [c for c in compute if frg.rank[c["id"]] == 1]
    waiting.sort(key=lambda c: c["start"])
    late = waiting[P:]
    for w in ("w1", "w2"):
        assert all(calls[w]["start"] <= c["start"] + EPS for c in late)
    # compute calls ran in worker processes, not in the flow process
    import os

    assert all(c["pid"] != os.getpid() for c in compute)
    assert report.results["c5"] == 3.0
    assert report.results["w3"][4] == 3.0


def test_compute_calls_run_in_parallel_processes() -> None:
    plan = Plan(tuple(Call(f"c{i}", "crunch", (lit(0.4),)) for i in range(4)))
    _, _, report = run_in_flow(plan, 2)
    pids = {c["pid"] for c in report.calls}
    assert len(pids) == 2  # both workers used, one call per process at a time
    intervals = [(c["start"], c["end"]) for c in report.calls]
    assert overlap_max(intervals) == 2  # two ran at once: real parallelism


def test_killed_worker_fails_the_call_clearly_and_keeps_other_results() -> None:
    plan = Plan(
        (
            Call("a", "crunch", (lit(0.1),)),
            Call("b", "die", (lit(0.3),)),
            Call("c", "fetch", (lit(0.1), Arg("value", Literal("kept")))),
            Call("d", "add", (Arg(None, Ref("b")), Arg(None, Literal(1)))),
            Call("e", "crunch", (lit(0.1),)),
        )
    )
    started = time.monotonic()
    _, _, report = run_in_flow(plan, 2)
    assert time.monotonic() - started < 60  # bounded: never a hang
    calls = {c["id"]: c for c in report.calls}
    assert report.state == "Failed"
    assert calls["b"]["state"] == "Failed"
    assert "died while running it" in calls["b"]["error"] and "b · die" in calls["b"]["error"]
    assert calls["d"]["state"] != "Completed"
    assert report.results["c"] == "kept" and "a" in report.results and "e" in report.results


def test_timeout_kills_the_worker_and_the_pool_recovers() -> None:
    plan = Plan((Call("h", "hang", ()), Call("after", "crunch", (lit(0.1),)), Call("x", "crunch", (lit(0.1),))))
    _, _, report = run_in_flow(plan, 1)
    calls = {c["id"]: c for c in report.calls}
    assert calls["h"]["state"] == "Failed" and "timeout of 0.5 s" in calls["h"]["error"]
    assert calls["after"]["state"] == "Completed" and calls["x"]["state"] == "Completed"


def test_untagged_and_compute_tagged_prefect_tasks_work_without_a_plan() -> None:
    @task(tags={"compute"})
    def square(x: int) -> int:
        return x * x

    @task
    def plus(a: int, b: int) -> int:
        return a + b

    @flow(task_runner=LLMOrchTaskRunner(processors=2, concurrency_limit=None))
    def f() -> int:
        a, b = square.submit(3), square.submit(4)
        return plus.submit(a, b).result()

    assert f() == 25


def test_runner_duplicate_and_settings() -> None:
    r = LLMOrchTaskRunner(processors=3, policy="paper")
    assert r.duplicate() == r
    with pytest.raises(ValueError, match="processors must be at least 1"):
        LLMOrchTaskRunner(processors=0)
    with pytest.raises(ValueError, match="unknown policy"):
        LLMOrchTaskRunner(policy="fastest")


def test_submit_before_start_is_refused() -> None:
    @task
    def noop() -> None:
        return None

    with pytest.raises(RuntimeError, match="not started"):
        LLMOrchTaskRunner(processors=1).submit(noop, {})


def test_two_flow_runs_together_never_exceed_the_global_limit() -> None:
    """Each flow run may use P = 2 processors; the global limit (2) is shared by both."""
    import threading

    limit = "llmorch-test-processors"
    reports = {}

    def one(name: str) -> None:
        plan = Plan(tuple(Call(f"{name}{i}", "crunch", (lit(0.3),)) for i in range(3)))
        reports[name] = run_in_flow(plan, 2, limit=limit)[2]

    threads = [threading.Thread(target=one, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert set(reports) == {"a", "b"}
    assert all(r.state == "Completed" for r in reports.values())
    # both runs' times are relative to their own t0: compare on wall clock via the records
    intervals = []
    for r in reports.values():
        for c in r.calls:
            intervals.append((c["start"] + r.t0, c["end"] + r.t0))
    assert overlap_max(intervals) <= 2

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        gcl = client.read_global_concurrency_limit_by_name(limit)
    assert gcl.limit == 2 and gcl.active_slots == 0  # every slot given back


def test_an_unknown_policy_from_a_flow_parameter_fails_the_run_instead_of_hanging() -> None:
    from prefect_llmorch.flows.run import orchestrate

    flow = orchestrate.with_options(task_runner=LLMOrchTaskRunner(processors=1, concurrency_limit=None))
    started = time.monotonic()
    # the options as the API would pass them (a dict): checked when the flow run starts
    state = flow("s1: fetch(0.1)\ns2: crunch(0.1)\n", "toolboxes:toolbox", options={"policy": "Critical-Path"}, return_state=True)
    assert state.is_failed() and "unknown policy 'Critical-Path'" in state.message
    assert time.monotonic() - started < 60


def test_an_existing_global_limit_smaller_than_p_is_honoured() -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    limit = "llmorch-test-small"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit, limit=1))
    plan = Plan(tuple(Call(f"c{i}", "crunch", (lit(0.2),)) for i in range(3)))
    report = run_in_flow(plan, 2, limit=limit)[2]
    assert report.state == "Completed"
    assert overlap_max([(c["start"], c["end"]) for c in report.calls]) == 1


# -- one coordinator: the runner's dispatch is the simulator's Coordinator ----------------


def replay_plan() -> Plan:
    """On P = 1 both policies order this plan differently from submission order:
    critical-path starts a1 (it has a successor) before e1 (submitted first); paper starts d2
    (ready first, once c1 is done) before b2 (submitted first, ready once a1 is done)."""
    return Plan(
        (
            Call("e1", "crunch", (lit(0.3),)),
            Call("a1", "crunch", (lit(0.2),)),
            Call("c1", "fetch", (lit(0.05), Arg("value", Literal(1.0)))),
            Call("b2", "add", (Arg(None, Ref("a1")), lit(1))),
            Call("d2", "add", (Arg(None, Ref("c1")), lit(1))),
        )
    )


def run_capturing_runner(plan: Plan, processors: int, policy: str):  # noqa: ANN201
    from prefect.context import FlowRunContext

    seen: list[LLMOrchTaskRunner] = []

    @flow(task_runner=LLMOrchTaskRunner(processors=processors, policy=policy, concurrency_limit=None))
    def f():  # noqa: ANN202
        seen.append(FlowRunContext.get().task_runner)
        return execute(plan, toolbox, processors=processors)

    frg, rec, report = f()
    return frg, report, seen[0]


@pytest.mark.parametrize("policy", ["critical-path", "paper"])
def test_replaying_the_completion_order_through_the_coordinator_gives_the_runner_s_start_order(policy: str) -> None:
    from prefect_llmorch.graph import FRG
    from prefect_llmorch.schedule.policy import Coordinator

    plan = replay_plan()
    _, report, runner = run_capturing_runner(plan, 1, policy)
    assert report.state == "Completed", report.calls
    trace = runner.trace
    started = [cid for ev, ids in trace if ev == "start" for cid in ids]
    assert sorted(started) == sorted(c.id for c in plan.calls)  # each call passed out once

    # The recorded completions, fed to a fresh Coordinator over the plan's own FRG (what the
    # simulator drives), pass out exactly what the runner started, batch by batch.
    co = Coordinator(FRG.build(plan, toolbox), 1, policy)
    for ev, ids in trace:
        if ev == "start":
            assert co.get_ready() == ids
        else:
            co.done(*ids)
    assert co.is_finished() and co.get_ready() == ()

    # The trace is what really happened, by the tools' own clocks: a call passed out after
    # another's done() started after that call's function ended.
    calls = {c["id"]: c for c in report.calls}
    finished: list[str] = []
    for ev, ids in trace:
        if ev == "done":
            finished.extend(ids)
        else:
            for cid in ids:
                assert all(calls[cid]["start"] >= calls[z]["end"] - EPS for z in finished), (cid, finished)


def test_the_first_burst_of_a_plan_is_coordinated_whole_not_in_submission_order() -> None:
    """critical-path on P = 1: a1 (longer remaining path) before e1, although e1 was
    submitted first and a processor was free when it was."""
    _, report, runner = run_capturing_runner(replay_plan(), 1, "critical-path")
    assert runner.trace[0] == ("start", ("c1", "a1"))
    calls = {c["id"]: c for c in report.calls}
    assert calls["a1"]["end"] <= calls["e1"]["start"] + EPS


# -- plain Prefect tasks ---------------------------------------------------------------


def settled(futures: list) -> list:  # noqa: ANN001
    """The final states of futures, as this process saw them (not the API's lagging copy)."""
    from prefect.futures import wait

    from prefect_llmorch.engine.compiler import final_state

    wait(futures)
    return [final_state(fut) for fut in futures]


def test_plain_compute_tasks_run_in_the_worker_processes_two_at_once() -> None:
    import os

    from prefect.context import FlowRunContext

    from runner_tasks import where

    pools: list[list[int]] = []

    @flow(task_runner=LLMOrchTaskRunner(processors=2, concurrency_limit=None))
    def f() -> list[tuple[int, float, float]]:
        pools.append(FlowRunContext.get().task_runner.pool.pids)
        return [fut.result() for fut in [where.submit(0.3) for _ in range(4)]]

    records = f()
    pids = {pid for pid, _, _ in records}
    assert os.getpid() not in pids
    assert pids <= set(pools[0]) and len(pids) == 2
    assert overlap_max([(s, e) for _, s, e in records]) == 2


def test_a_compute_task_whose_function_cannot_be_pickled_fails_saying_why() -> None:
    import threading

    lock = threading.Lock()

    @task(tags={"compute"})
    def locked() -> bool:
        with lock:
            return True

    @flow(task_runner=LLMOrchTaskRunner(processors=1, concurrency_limit=None))
    def f():  # noqa: ANN202
        return locked.submit().wait() or locked.submit()

    state = f(return_state=True)
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert "'locked' is tagged compute" in message and "tag the task inout" in message


def test_a_compute_task_cannot_submit_tasks_and_says_so_instead_of_hanging() -> None:
    """Depth 2 on P = 2: two compute parents, each submitting and waiting on a compute
    child. Their functions run in worker processes, outside the flow run."""
    from runner_tasks import compute_parent

    @flow(task_runner=LLMOrchTaskRunner(processors=2, concurrency_limit=None))
    def f():  # noqa: ANN202
        return settled([compute_parent.submit(i) for i in range(2)])

    states = f()
    assert all(s.is_failed() for s in states)
    message = str(states[0].result(raise_on_failure=False))
    assert "runs its function in a worker process, outside the flow run" in message
    assert "Submit the child tasks from the flow" in message and "tag this task inout" in message


def test_an_async_compute_task_submitting_a_compute_task_is_refused_at_once() -> None:
    from runner_tasks import async_compute_parent

    @flow(task_runner=LLMOrchTaskRunner(processors=2, concurrency_limit=None))
    def f():  # noqa: ANN202
        return settled([async_compute_parent.submit(i) for i in range(2)])

    states = f()
    assert all(s.is_failed() for s in states)
    assert "holds a processor while it waits" in str(states[0].result(raise_on_failure=False))


def test_inout_parents_waiting_on_compute_children_complete_on_two_processors() -> None:
    from runner_tasks import inout_parent

    @flow(task_runner=LLMOrchTaskRunner(processors=2, concurrency_limit=None))
    def f() -> list[list[int]]:
        return [fut.result() for fut in [inout_parent.submit(i) for i in range(3)]]

    assert f() == [[0, 1], [1, 4], [4, 9]]


# -- cancel_all ----------------------------------------------------------------------------


def test_cancel_all_kills_running_compute_calls_and_starts_no_queued_one(tmp_path) -> None:
    import os
    import threading

    import psutil
    from prefect.context import FlowRunContext
    from prefect.futures import wait

    from runner_tasks import spin

    first = tmp_path / "first"
    queued = [tmp_path / f"q{i}" for i in range(3)]
    seen: dict[str, object] = {}

    def cancel_once_started(runner: LLMOrchTaskRunner) -> None:
        deadline = time.monotonic() + 120
        while not first.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        seen["worker"] = int(first.read_text() or 0)
        runner.cancel_all()

    @flow(task_runner=LLMOrchTaskRunner(processors=1, concurrency_limit=None))
    def f():  # noqa: ANN202
        runner = FlowRunContext.get().task_runner
        futures = [spin.submit(str(first))] + [spin.submit(str(q)) for q in queued]
        canceller = threading.Thread(target=cancel_once_started, args=(runner,))
        canceller.start()
        wait(futures)
        canceller.join()
        return [fut.state for fut in futures]

    states = f()
    assert all(s.is_cancelled() for s in states), [s.type for s in states]
    assert not any(q.exists() for q in queued)  # no queued call started
    pid = seen["worker"]
    assert pid and pid != os.getpid()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_cancel_all_ends_a_running_plan_s_compute_and_inout_calls_cancelled() -> None:
    """A compiled plan: a long compute call (its worker is killed), a long inout call (its
    thread is abandoned), and a call waiting on them (never started)."""
    import threading

    from prefect.context import FlowRunContext

    plan = Plan(
        (
            Call("slow", "crunch", (lit(60),)),
            Call("wait", "fetch", (lit(60), Arg("value", Literal("w")))),
            Call("after", "add", (Arg(None, Ref("slow")), lit(1))),
        )
    )
    recorder = Recorder()

    def cancel_once_running(runner: LLMOrchTaskRunner) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = {cid: rec.state for cid, rec in recorder.records.items()}
            if states.get("slow") == "Running" and states.get("wait") == "Running":
                break
            time.sleep(0.02)
        runner.cancel_all()

    @flow(task_runner=LLMOrchTaskRunner(processors=1, concurrency_limit=None))
    def f():  # noqa: ANN202
        canceller = threading.Thread(target=cancel_once_running, args=(FlowRunContext.get().task_runner,))
        canceller.start()
        report = execute(plan, toolbox, processors=1, recorder=recorder)[2]
        canceller.join()
        return report

    report = f(return_state=True).result(raise_on_failure=False)
    calls = {c["id"]: c for c in report.calls} if hasattr(report, "calls") else {}
    states = {cid: rec.state for cid, rec in recorder.records.items()}
    assert states["slow"] == "Cancelled" and states["wait"] == "Cancelled", states
    assert states["after"] not in ("Running", "Completed"), states  # never started
    assert not calls or calls["after"]["start"] is None


# -- a plan announced before its calls are submitted (`use_graph`) --------------------------
def _announced_flow(submit_second: bool):  # noqa: ANN202
    """A flow that announces `s1: fetch(0)` and `s2: fetch(0)`, submits s1 alone and waits
    for it to end before it submits s2 (or never submits s2)."""
    from prefect import flow

    from prefect_llmorch.engine.compiler import Compiler, Recorder
    from prefect_llmorch.flows.execute import current_llmorch_runner
    from prefect_llmorch.graph import FRG
    from prefect_llmorch.plan.parser import parse
    from toolboxes import toolbox

    @flow(task_runner=LLMOrchTaskRunner(processors=1, concurrency_limit=None))
    def announced() -> tuple[str, list[Any]]:
        plan = parse("s1: fetch(0, 1)\ns2: fetch(0, 2)", toolbox)
        frg = FRG.build(plan, toolbox)
        runner = current_llmorch_runner()
        runner.use_graph(frg)
        compiler = Compiler(frg=frg, toolbox=toolbox, recorder=Recorder(), pool=runner.pool)
        futures: dict[str, Any] = {}
        compiler.submit([plan.calls[0]], futures)
        futures["s1"].wait(timeout=60)  # before: nothing started until s2 was submitted too
        first = futures["s1"].state.name
        if submit_second:
            compiler.submit([plan.calls[1]], futures)
        runner.no_more_submissions()
        return first, [f.result() for f in futures.values()]

    return announced


def test_a_call_of_an_announced_plan_starts_before_the_rest_of_the_plan_is_submitted() -> None:
    first, results = _announced_flow(submit_second=True)()
    assert first == "Completed"
    assert results == [1, 2]


def test_an_announced_call_never_submitted_does_not_hold_the_run() -> None:
    first, results = _announced_flow(submit_second=False)()
    assert (first, results) == ("Completed", [1])


# -- a call's processor goes back when its body succeeds, not when its run ends ----------------
def test_the_next_compute_call_starts_while_prefect_still_finishes_the_one_before(tmp_path: Any) -> None:
    """P = 1, two independent compute calls. Each one's on_completion hook (Prefect's engine,
    after the body) waits for the other call's own record: the second starts on the freed
    processor while the first's hook still waits. Before, the processor came back only when
    the first's whole task run ended: its hook waited out its 20 s, the second started after."""
    import json
    import os
    import threading

    from prefect import flow

    from prefect_llmorch.engine.compiler import Compiler
    from prefect_llmorch.flows.execute import current_llmorch_runner
    from prefect_llmorch.graph import FRG
    from prefect_llmorch.plan.parser import parse
    from toolboxes_guard import plan_text, toolbox as guard_toolbox

    log = str(tmp_path / "records.jsonl")
    hook_end: dict[int, float] = {}

    def records() -> dict[int, dict[str, Any]]:
        if not os.path.exists(log):
            return {}
        return {r["i"]: r for r in map(json.loads, open(log).read().splitlines())}

    def waiting_for(other: int) -> Any:
        def hold(task: Any, task_run: Any, state: Any) -> None:
            deadline = time.monotonic() + 20
            while other not in records() and time.monotonic() < deadline:
                time.sleep(0.01)
            hook_end[1 - other] = time.time()

        return hold

    @flow(task_runner=LLMOrchTaskRunner(processors=1, concurrency_limit=None))
    def two() -> tuple[list[int], int]:
        plan = parse(plan_text(log, calls=2, seconds=0.05), guard_toolbox)
        frg = FRG.build(plan, guard_toolbox)
        runner = current_llmorch_runner()
        runner.use_graph(frg)
        compiler = Compiler(frg=frg, toolbox=guard_toolbox, recorder=Recorder(), pool=runner.pool)
        futures = {}
        for i, call in enumerate(plan.calls):
            t = compiler.task_for(call)
            t.on_completion_hooks.append(waiting_for(1 - i))
            futures[call.id] = t.submit(call_text=compiler.call_text(call), inputs={})
        runner.no_more_submissions()
        results = [f.result() for f in futures.values()]
        return results, runner.max_running_compute

    out: list[Any] = []
    worker = threading.Thread(target=lambda: out.append(two()), daemon=True)
    worker.start()
    worker.join(120)
    assert out, "the flow run did not end"
    assert out[0] == ([0, 1], 1)
    rows = records()
    first, second = sorted(rows, key=lambda i: rows[i]["start"])
    assert rows[second]["start"] >= rows[first]["end"]  # one processor: never together
    assert rows[second]["start"] < hook_end[first], "the second call waited for the first's task run to end"


def test_back_to_back_runs_of_one_process_start_no_worker_process_the_second_time(monkeypatch: Any) -> None:
    """The runner's pool is kept for the process's next runner (`LLMORCH_KEEP_WORKERS_SECONDS`):
    the second run's compute calls run in processes that existed before it started (their
    pids, as the workers report them)."""
    import psutil

    from prefect_llmorch.procs import workers
    from prefect_llmorch.flows.run import run_plan

    monkeypatch.setenv("LLMORCH_KEEP_WORKERS_SECONDS", "30")
    plan = "\n".join(f"c{i}: crunch(0.05)" for i in range(4))
    try:
        first = run_plan(plan, "toolboxes:toolbox", processors=2, concurrency_limit=None)
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        second = run_plan(plan, "toolboxes:toolbox", processors=2, concurrency_limit=None)
        assert first.state == second.state == "Completed"
        used = {c.pid for c in second.calls}
        assert used and used <= before
    finally:
        workers._discard_at_exit()  # the kept pool is this test's: no other test takes it


def test_the_runner_s_threads_are_shut_down_once_at_exit() -> None:
    from runner_tasks import square

    runner = LLMOrchTaskRunner(processors=1, concurrency_limit=None)
    shutdowns: list[bool] = []
    with runner:
        executor = runner._executor
        real_shutdown = executor.shutdown

        def counted(*args: Any, **kwargs: Any) -> None:
            shutdowns.append(kwargs.get("wait", True))
            real_shutdown(*args, **kwargs)

        executor.shutdown = counted  # type: ignore[method-assign]
        assert runner.submit(square, {"x": 3}).result(timeout=60) == 9
    assert shutdowns == [True]  # once, waiting for the task-run threads
