"""Tests for `prefect_llmorch.engine.dask`: a real `dask scheduler` and `dask worker` processes.

Claims are proved from what the compute function itself recorded on the worker (pid,
wall-clock start and end), not from wall-clock thresholds.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import cloudpickle
import pytest

from prefect_llmorch.engine.dask import PROCESSOR, LLMOrchDaskTaskRunner
from prefect_llmorch.flows.run import PlanRunFailed, RunReport, run_plan
from prefect_llmorch.engine.runner import LLMOrchTaskRunner
import toolboxes_dask
from toolboxes_dask import dask_cli_cluster, kill_tree, toolbox

# -- settings (no cluster) ----------------------------------------------------------------


def test_local_cluster_workers_get_one_processor_per_thread_by_default():
    runner = LLMOrchDaskTaskRunner(cluster_kwargs={"n_workers": 2})
    assert runner.cluster_kwargs == {"n_workers": 2, "threads_per_worker": 1, "resources": {PROCESSOR: 1}}
    runner = LLMOrchDaskTaskRunner(cluster_kwargs={"threads_per_worker": 3})
    assert runner.cluster_kwargs["resources"] == {PROCESSOR: 3}


def test_address_leaves_cluster_settings_alone_and_conflicts_are_rejected():
    assert LLMOrchDaskTaskRunner(address="tcp://127.0.0.1:8786").cluster_kwargs == {}
    with pytest.raises(ValueError, match="Cannot specify `address`"):
        LLMOrchDaskTaskRunner(address="tcp://127.0.0.1:8786", cluster_kwargs={"n_workers": 1})
    with pytest.raises(ValueError, match="unknown policy"):
        LLMOrchDaskTaskRunner(address="tcp://127.0.0.1:8786", policy="fastest")


def test_duplicate_equals_and_survives_cloudpickle():
    runner = LLMOrchDaskTaskRunner(address="tcp://127.0.0.1:8786", policy="paper", concurrency_limit=None, preload=["toolboxes_dask"])
    assert runner.duplicate() == runner
    assert cloudpickle.loads(cloudpickle.dumps(runner)) == runner
    assert runner != LLMOrchDaskTaskRunner(address="tcp://127.0.0.1:8786")
    # orchestrate gives the FRG to any LLMOrchTaskRunner: this one is one.
    assert isinstance(runner, LLMOrchTaskRunner)


def test_submit_before_start_names_the_runner():
    runner = LLMOrchDaskTaskRunner(address="tcp://127.0.0.1:8786")
    with pytest.raises(RuntimeError, match="Task runner is not started") as info:
        runner.submit(object(), {})
    assert "The task runner must be started before submitting work: use LLMOrchDaskTaskRunner" in str(info.value)


def _llmorch_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("llmorch")}


def test_a_runner_copy_unpickled_starts_nothing():
    """What Prefect ships with each task run it sends to Dask: a cloudpickled runner. The copy
    holds settings only; nothing connects (nobody listens at the address) or starts."""
    before = _llmorch_threads()
    runner = LLMOrchDaskTaskRunner(address="tcp://127.0.0.1:9", preload=["toolboxes_dask"])
    copy = cloudpickle.loads(cloudpickle.dumps(runner))
    dup = copy.duplicate()  # what Prefect's hydrated_context enters on the worker
    for r in (copy, dup):
        assert r == runner and not r.started_dask
        assert r.pool is None and r.processors == 0 and r.slots_held == 0
    assert _llmorch_threads() == before


def test_the_runner_composes_prefect_dask_instead_of_inheriting_it():
    from prefect_dask.task_runners import DaskTaskRunner

    runner = LLMOrchDaskTaskRunner(cluster_kwargs={"n_workers": 2})
    assert not isinstance(runner, DaskTaskRunner) and isinstance(runner, LLMOrchTaskRunner)
    assert isinstance(runner.dask_runner, DaskTaskRunner)
    assert runner.dask_runner.cluster_kwargs == runner.cluster_kwargs


# -- helpers ----------------------------------------------------------------------------


def _run_bounded(fn: Callable[[], Any], timeout: float) -> Any:
    """Run fn in a thread; fail the test (instead of hanging) if it takes longer than timeout."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"the flow did not finish within {timeout} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def _stamps(report: RunReport) -> dict[str, dict[str, float]]:
    return {c["id"]: report.results[c["id"]] for c in report.calls if c["function"] == "stamp"}


def _assert_one_compute_at_a_time_per_process(stamps: dict[str, dict[str, float]]) -> None:
    by_pid: dict[int, list[tuple[float, float, str]]] = {}
    for cid, s in stamps.items():
        by_pid.setdefault(s["pid"], []).append((s["start"], s["end"], cid))
    for pid, spans in by_pid.items():
        spans.sort()
        for (s0, e0, a), (s1, e1, b) in zip(spans, spans[1:]):
            assert s1 >= e0, f"worker pid {pid} ran {a} ({s0:.3f}-{e0:.3f}) and {b} ({s1:.3f}-{e1:.3f}) at once"


MIXED_PLAN = """\
s1: fetch(0.2, 0.4)
s2: stamp(0.6)
s3: stamp(0.6)
s4: stamp(0.6)
s5: stamp(0.6)
s6: stamp(0.6)
s7: stamp(s1)
s8: fetch(0.2, [s2, s3, s4])
s9: fetch(0.1, [s5, s6, s7, s8])
"""


# -- on a real cluster --------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_mixed_plan_uses_both_workers_one_compute_call_each_at_a_time(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client

    with dask_cli_cluster(tmp_path) as cluster:
        runner = LLMOrchDaskTaskRunner(address=cluster.address, concurrency_limit="llmorch-dask-test", preload=["toolboxes_dask"])
        report = _run_bounded(lambda: run_plan(MIXED_PLAN, toolbox, task_runner=runner), timeout=180)
        worker_pids = cluster.worker_pids()

    assert report.state == "Completed", report.message
    assert report.processors == 2  # P = the two workers' `processor` resources
    stamps = _stamps(report)
    assert len(stamps) == 6
    assert {s["pid"] for s in stamps.values()} <= set(worker_pids), "compute calls ran outside the Dask workers"
    assert len({worker_pids[s["pid"]] for s in stamps.values()}) == 2, "both workers were used"
    _assert_one_compute_at_a_time_per_process(stamps)
    # inout calls hold no processor: they ran in the flow process, not on a worker
    inout_pids = {c["pid"] for c in report.calls if c["kind"] == "inout"}
    assert inout_pids == {os.getpid()}
    # the runner's records agree with what the function saw
    for c in report.calls:
        if c["id"] in stamps:
            assert c["pid"] == stamps[c["id"]]["pid"]
            assert c["processor"] in (0, 1)
    assert report.results["s7"]["end"] - report.results["s7"]["start"] >= 0.4  # s7 got s1's 0.4 s
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name("llmorch-dask-test").limit == 2


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_plain_compute_tasks_go_to_dask_with_a_processor_each(prefect_harness, tmp_path):
    """Workers of two threads and one `processor`: only the processor each compute task asks
    Dask for keeps them one at a time per worker."""
    from prefect import flow, task

    import toolboxes_dask

    @task(tags={"compute"})
    def plain_stamp(seconds: float) -> dict:
        return toolboxes_dask.stamp(seconds)

    with dask_cli_cluster(tmp_path, threads=2) as cluster:

        @flow(task_runner=LLMOrchDaskTaskRunner(address=cluster.address, concurrency_limit=None))
        def plain() -> list[dict]:
            return [f.result() for f in [plain_stamp.submit(0.4) for _ in range(4)]]

        stamps = _run_bounded(plain, timeout=180)
        worker_pids = cluster.worker_pids()
    assert {s["pid"] for s in stamps} <= set(worker_pids)
    _assert_one_compute_at_a_time_per_process({str(i): s for i, s in enumerate(stamps)})


def _kill_when_started(cluster, marker: Path, victims: list[int], timeout: float = 120) -> int:
    """Wait until a compute call has started on worker victims[0], then kill the victims' trees."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = cluster.worker_pids()
        for f in marker.iterdir():
            pid = int(f.name.split("-")[0])
            if pids.get(pid) == victims[0]:
                for v in victims:
                    kill_tree(cluster.workers[v])
                return pid
        time.sleep(0.05)
    raise AssertionError("no compute call started on the worker to kill")


LOSS_PLAN = "\n".join(f's{i}: stamp(1.0, "{{marker}}")' for i in range(1, 7))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_worker_killed_mid_call_reruns_the_call_on_the_other_worker(prefect_harness, tmp_path):
    marker = tmp_path / "started"
    marker.mkdir()
    with dask_cli_cluster(tmp_path) as cluster:
        runner = LLMOrchDaskTaskRunner(address=cluster.address, concurrency_limit=None, preload=["toolboxes_dask"])
        plan = LOSS_PLAN.replace("{marker}", str(marker))
        box: dict[str, Any] = {}
        killer = threading.Thread(target=lambda: box.setdefault("killed", _kill_when_started(cluster, marker, [0])))
        killer.start()
        report = _run_bounded(lambda: run_plan(plan, toolbox, task_runner=runner), timeout=180)
        killer.join(10)
        survivors = {p for p, i in cluster.worker_pids().items() if i == 1}

    killed = box["killed"]
    assert report.state == "Completed", report.message
    stamps = _stamps(report)
    assert all(s["pid"] in survivors for s in stamps.values()), "every result came from the surviving worker"
    started = [int(f.name.split("-")[0]) for f in marker.iterdir()]
    assert killed in started and len(started) > len(stamps), "the killed call started again elsewhere"
    _assert_one_compute_at_a_time_per_process(stamps)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_losing_every_worker_fails_the_calls_clearly_instead_of_hanging(prefect_harness, tmp_path):
    marker = tmp_path / "started"
    marker.mkdir()
    with dask_cli_cluster(tmp_path) as cluster:
        runner = LLMOrchDaskTaskRunner(address=cluster.address, concurrency_limit=None, no_worker_timeout=3)
        plan = LOSS_PLAN.replace("{marker}", str(marker))
        killer = threading.Thread(target=_kill_when_started, args=(cluster, marker, [0, 1]))
        killer.start()
        with pytest.raises(PlanRunFailed) as info:
            _run_bounded(lambda: run_plan(plan, toolbox, task_runner=runner), timeout=180)
        killer.join(10)

    report = info.value.report
    assert report.state == "Failed"
    failed = [c for c in report.calls if c["state"] == "Failed"]
    assert failed and all("WorkerDied" in c["error"] and "no Dask worker" in c["error"] for c in failed)
    assert "no Dask worker offering a `processor`" in str(info.value)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_raising_compute_call_fails_its_run_clearly_and_cancel_ends_a_running_one(prefect_harness, tmp_path):
    """A compute function's own exception, raised on a Dask worker, fails its call with that
    exception (type and message) and keeps the other calls' results; a cancelled call ends at
    once (`CallCancelled`), although the worker thread runs on."""
    from distributed import Client

    from prefect_llmorch.engine.dask import DaskProcessorPool
    from prefect_llmorch.procs.workers import CallCancelled, Cancel

    marker = tmp_path / "started"
    marker.mkdir()
    with dask_cli_cluster(tmp_path) as cluster:
        runner = LLMOrchDaskTaskRunner(address=cluster.address, concurrency_limit=None, preload=["toolboxes_dask"])
        plan = "s1: stamp(0.1)\ns2: reject(s1)\ns3: stamp(0.2)"
        with pytest.raises(PlanRunFailed) as info:
            _run_bounded(lambda: run_plan(plan, toolbox, task_runner=runner), timeout=180)
        report = info.value.report
        states = {c["id"]: c["state"] for c in report.calls}
        assert states == {"s1": "Completed", "s2": "Failed", "s3": "Completed"}
        (s2,) = [c for c in report.calls if c["id"] == "s2"]
        assert s2["error"].startswith("ValueError: cannot use {") and s2["pid"] in cluster.worker_pids()
        assert "s2" in str(info.value) and set(report.results) == {"s1", "s3"}

        errors: list[BaseException] = []
        with Client(cluster.address, timeout=30) as client:
            pool = DaskProcessorPool(client)
            cancel = Cancel()

            def call() -> None:
                try:
                    pool.run("s9 · stamp", toolboxes_dask.stamp, (60,), {"marker": str(marker)}, cancel=cancel)
                except BaseException as exc:  # noqa: BLE001
                    errors.append(exc)

            t = threading.Thread(target=call, daemon=True)
            t.start()
            deadline = time.monotonic() + 60
            while not any(marker.iterdir()):
                assert time.monotonic() < deadline, "the call never started on a worker"
                time.sleep(0.05)
            cancel.set("not needed")
            t.join(15)
            assert not t.is_alive(), "a cancelled Dask call kept its caller waiting"
    (exc,) = errors
    assert isinstance(exc, CallCancelled) and "s9 · stamp was cancelled (not needed)" in str(exc)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_runner_copy_prefect_enters_on_a_worker_starts_nothing_until_used(prefect_harness, tmp_path):
    """Prefect enters a copy of the flow's runner around each task run it sends to a worker.
    That copy holds no pool, no threads, no slots; a task that submits a child through it
    starts it then (and the child runs on the cluster)."""
    from prefect import flow, task
    from prefect.context import FlowRunContext

    @task
    def child() -> int:
        return os.getpid()

    @task
    def look(submit_child: bool) -> dict:
        runner = FlowRunContext.get().task_runner
        seen = {
            "pid": os.getpid(),
            "type": type(runner).__name__,
            "started": runner.started_dask,
            "pool": runner.pool is not None,
            "processors": runner.processors,
            "slots": runner.slots_held,
            "threads": sorted(_llmorch_threads()),
        }
        if submit_child:
            seen["child_pid"] = child.submit().result()
            seen["started_after_use"] = runner.started_dask
        return seen

    with dask_cli_cluster(tmp_path) as cluster:

        @flow(task_runner=LLMOrchDaskTaskRunner(address=cluster.address, concurrency_limit=None))
        def probe() -> list[dict]:
            return [look.submit(False).result(), look.submit(True).result()]

        idle, used = _run_bounded(probe, timeout=180)
        worker_pids = cluster.worker_pids()
    for seen in (idle, used):
        assert seen["pid"] in worker_pids and seen["type"] == "LLMOrchDaskTaskRunner"
        assert (seen["started"], seen["pool"], seen["processors"], seen["slots"], seen["threads"]) == (False, False, 0, 0, [])
    assert used["started_after_use"] is True and used["child_pid"] in worker_pids


# -- resources on Dask, a tool's exit, the live-runners registry (one cluster) ------------

RESOURCE_PLAN = """\
s1: search("a", latency=0.3)
s2: search("b", latency=0.3)
s3: infer_medium("m", seconds=0.6)
s4: infer_small("x", seconds=0.6)
s5: infer_small("y", seconds=0.6)
s6: infer_medium("n", seconds=0.6)
"""
GPU_MEM = {"infer_small": 20, "infer_medium": 40, "infer_large": 60}


def _peak(rows: list[dict], weight: Callable[[dict], float]) -> float:
    events = sorted([(r["start"], weight(r)) for r in rows] + [(r["end"] - 1e-3, -weight(r)) for r in rows])
    best = cur = 0.0
    for _, w in events:
        cur += w
        best = max(best, cur)
    return best


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_dask_workers_offer_resources_by_name_and_tool_exits_and_cancels_end_their_calls(prefect_harness, tmp_path):
    """Workers offer `processor=2,gpu_mem_gb=40` each: the runner's capacities are their sums
    (P = 4, 80 GB) plus its `search-api` class; Dask places each GPU call where its memory
    is free, so no worker ever holds more than its 40 GB (the tools' own records, by worker
    pid), while searches run one at a time in the flow process. A call needing more than
    any worker offers fails before anything runs; a tool's SystemExit on a worker fails
    only its call; the started runner is live, and cancelling it ends a running call."""
    import json

    import mixed_toolbox

    from prefect_llmorch.host.interrupt import live_runners
    from prefect_llmorch.schedule.resources import DemandExceedsCapacity

    log = Path(os.environ["LLMORCH_MIXED_LOG"])  # named in conftest, before the workers start
    log.unlink(missing_ok=True)
    marker = tmp_path / "started"
    marker.mkdir()
    with dask_cli_cluster(tmp_path, processors_per_worker=2, resources="gpu_mem_gb=40") as cluster:
        def runner() -> LLMOrchDaskTaskRunner:
            return LLMOrchDaskTaskRunner(address=cluster.address, concurrency_limit=None, resources={"search-api": 1},
                                         preload=["mixed_toolbox", "toolboxes_dask"])

        used = runner()
        report = _run_bounded(lambda: run_plan(RESOURCE_PLAN, mixed_toolbox.toolbox, task_runner=used), timeout=180)
        worker_pids = cluster.worker_pids()

        with pytest.raises(DemandExceedsCapacity, match="call s1 needs gpu_mem_gb=60 but the largest Dask worker offers gpu_mem_gb=40"):
            _run_bounded(lambda: run_plan('s1: infer_large("x", seconds=0.1)', mixed_toolbox.toolbox, task_runner=runner()), timeout=120)

        with pytest.raises(PlanRunFailed) as info:
            _run_bounded(lambda: run_plan("s1: stamp(0.1)\ns2: leave(3)\ns3: stamp(0.1)", toolbox, task_runner=runner()), timeout=120)
        exits = {c["id"]: c for c in info.value.report.calls}

        box: dict[str, Any] = {}

        def long_run() -> None:
            try:
                box["report"] = run_plan(f's1: stamp(20, "{marker}")', toolbox, task_runner=runner())
            except BaseException as exc:  # noqa: BLE001
                box["error"] = exc

        t = threading.Thread(target=long_run, daemon=True)
        t.start()
        deadline = time.monotonic() + 120
        while not any(marker.iterdir()):
            assert time.monotonic() < deadline and t.is_alive(), "the long call never started"
            time.sleep(0.05)
        live = [r for r in live_runners() if isinstance(r, LLMOrchDaskTaskRunner)]
        capacities = [(r.processors, dict(r.resources)) for r in live]
        for r in live:
            r.cancel_all()
        t.join(60)
        assert not t.is_alive(), "cancel_all did not end the run"

    assert report.state == "Completed", report.message
    assert report.processors == 4  # the GPU calls ran: the workers' gpu_mem_gb became a capacity
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(r["function"] for r in rows) == sorted(["search"] * 2 + ["infer_medium"] * 2 + ["infer_small"] * 2)
    gpu = [r for r in rows if r["function"] in GPU_MEM]
    assert {r["pid"] for r in gpu} <= set(worker_pids)
    for w in set(worker_pids.values()):
        on = [r for r in gpu if worker_pids[r["pid"]] == w]
        assert _peak(on, lambda r: GPU_MEM[r["function"]]) <= 40, f"worker {w} held more than its 40 GB"
    searches = [r for r in rows if r["function"] == "search"]
    assert {r["pid"] for r in searches} == {os.getpid()} and _peak(searches, lambda r: 1) <= 1

    assert (exits["s1"]["state"], exits["s2"]["state"], exits["s3"]["state"]) == ("Completed", "Failed", "Completed")
    assert exits["s2"]["error"].startswith("ToolExit") and "SystemExit(3)" in exits["s2"]["error"]

    assert capacities == [(4, {"gpu_mem_gb": 80.0, "search-api": 1.0})]  # the started runner was live
    ended = box.get("report") or getattr(box.get("error"), "report", None)
    assert ended is not None, box
    (s1,) = ended.calls
    assert s1["state"] == "Cancelled", s1


# -- ported from prefect-dask's tests (what `DaskTaskRunner` offers) ------------------------
# src/integrations/prefect-dask/tests/test_task_runners.py in PrefectHQ/prefect: the same
# settings and cluster behaviours on LLMOrchDaskTaskRunner. Clusters that run no task are
# in-process (`processes=False`: threads of this process, started in about a second); task
# runs go to worker processes, as in production (in-process workers would share this
# process's Prefect services with the tests before, see the lead's notes on leases.py).

IN_PROCESS = {"processes": False, "dashboard_address": None}


def test_duplicate_and_eq_follow_dask_task_runner_s_settings():
    """`__eq__` compares the Dask settings as `DaskTaskRunner.__eq__` does (defaults it fills in
    are equal to leaving them out) plus ours; `duplicate()` is equal, not started."""
    runner = LLMOrchDaskTaskRunner(cluster_kwargs={"n_workers": 2}, adapt_kwargs={"minimum": 1, "maximum": 2})
    new = runner.duplicate()
    assert new == runner and new is not runner and hash(new) == hash(runner)
    assert new.adapt_kwargs == {"minimum": 1, "maximum": 2}
    assert LLMOrchDaskTaskRunner(address="tcp://h:1", adapt_kwargs=None) == LLMOrchDaskTaskRunner(address="tcp://h:1")
    assert LLMOrchDaskTaskRunner(address="tcp://h:1", client_kwargs={"set_as_default": False}) == LLMOrchDaskTaskRunner(
        address="tcp://h:1"
    )
    assert runner != LLMOrchDaskTaskRunner(cluster_kwargs={"n_workers": 2}, adapt_kwargs={"minimum": 1, "maximum": 3})
    assert runner != LLMOrchDaskTaskRunner(cluster_kwargs={"n_workers": 2}, adapt_kwargs={"minimum": 1, "maximum": 2}, policy="paper")


def test_client_of_a_runner_not_started_says_to_start_it():
    with pytest.raises(RuntimeError, match="Task runner is not started"):
        LLMOrchDaskTaskRunner(address="tcp://127.0.0.1:9").client


@pytest.mark.timeout(180)
def test_client_is_the_started_runner_s_dask_client(prefect_harness):
    import distributed

    runner = LLMOrchDaskTaskRunner(cluster_kwargs={**IN_PROCESS, "n_workers": 1}, concurrency_limit=None)
    with runner:
        client = runner.client
        assert isinstance(client, distributed.Client) and client is runner.client
        assert client is runner.dask_runner.client
        assert sum(w["resources"].get(PROCESSOR, 0) for w in client.scheduler_info()["workers"].values()) == 1


@pytest.mark.timeout(180)
@pytest.mark.parametrize("adapt", ["sync", "async"])
def test_dask_cluster_adapt_is_properly_called(prefect_harness, adapt):
    """prefect-dask's test: a cluster class whose `adapt` is synchronous (as
    dask_kubernetes.classic.KubeCluster) or a coroutine (dask_kubernetes.operator.KubeCluster)
    is adapted with `adapt_kwargs` when the runner starts. (Prefect's mock takes no cluster
    kwargs; a cluster class takes ours: `threads_per_worker`, `resources`.)"""
    import distributed

    calls: list[dict[str, Any]] = []

    class MockDaskCluster(distributed.LocalCluster):
        def adapt(self, **kwargs: Any) -> None:  # type: ignore[override]
            calls.append(kwargs)

    class AsyncMockDaskCluster(distributed.LocalCluster):
        async def adapt(self, **kwargs: Any) -> None:  # type: ignore[override]
            calls.append(kwargs)

    runner = LLMOrchDaskTaskRunner(
        cluster_class=MockDaskCluster if adapt == "sync" else AsyncMockDaskCluster,
        cluster_kwargs={**IN_PROCESS, "n_workers": 1},
        adapt_kwargs={"minimum": 1, "maximum": 1},
        concurrency_limit=None,
    )
    with runner:
        runner.client  # as in prefect-dask's test (here the cluster started on entering)
        assert calls == [{"minimum": 1, "maximum": 1}]
        assert runner.processors == 1  # the subclass of LocalCluster got the processor resource


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_an_adaptive_cluster_with_no_worker_yet_grows_to_run_compute_tasks(prefect_harness):
    """`adapt_kwargs` with a finite `maximum` on a LocalCluster: P is what the cluster may
    grow to (maximum x processors per worker), known before any worker exists; Dask's
    adaptive scaling starts workers for the waiting calls."""
    from prefect import flow, task

    @task(tags={"compute"})
    def square(x: int) -> int:
        return x * x

    runner = LLMOrchDaskTaskRunner(
        cluster_kwargs={"dashboard_address": None, "n_workers": 0}, adapt_kwargs={"minimum": 0, "maximum": 2},
        concurrency_limit=None,
    )

    @flow(task_runner=runner)
    def squares() -> tuple[list[int], int]:
        from prefect.context import FlowRunContext

        used = FlowRunContext.get().task_runner
        return [f.result() for f in [square.submit(i) for i in range(4)]], used.processors

    values, processors = _run_bounded(squares, timeout=200)
    assert values == [0, 1, 4, 9] and processors == 2


@pytest.fixture(scope="module")
def two_processor_cluster() -> Any:
    """prefect-dask's `cluster` fixture: one LocalCluster for the module, two worker processes
    of one `processor` each; runners connect by address."""
    import distributed

    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, resources={PROCESSOR: 1}, dashboard_address=None
    ) as cluster:
        yield cluster


@pytest.mark.slow
class TestPrefectDasksFlowTests:
    """prefect-dask's `TestDaskTaskRunner` flow tests (its `dask_task_runner_with_existing_
    cluster_address` fixture): plain tasks (sent to Dask by the held `DaskTaskRunner`) and
    compute ones (with a `processor`)."""

    @pytest.fixture
    def task_runner(self, two_processor_cluster: Any) -> LLMOrchDaskTaskRunner:
        return LLMOrchDaskTaskRunner(address=two_processor_cluster.scheduler_address, concurrency_limit=None)

    @pytest.mark.timeout(180)
    def test_successful_flow_run(self, prefect_harness, task_runner):
        from prefect import flow, task

        @task
        def task_a():  # noqa: ANN202
            return "a"

        @task(tags={"compute"})
        def task_b():  # noqa: ANN202
            return "b"

        @task
        def task_c(b: str):  # noqa: ANN202
            return b + "c"

        @flow(version="test", task_runner=task_runner)
        def test_flow():  # noqa: ANN202
            a = task_a.submit()
            b = task_b.submit()
            c = task_c.submit(b)
            return a.result(), b.result(), c.result()

        assert _run_bounded(test_flow, timeout=150) == ("a", "b", "bc")

    @pytest.mark.timeout(180)
    def test_failing_flow_run(self, prefect_harness, task_runner):
        from prefect import flow, task

        @task
        def task_a():  # noqa: ANN202
            raise RuntimeError("This task fails!")

        @task(tags={"compute"})
        def task_b():  # noqa: ANN202
            raise ValueError("This task fails and passes data downstream!")

        @task
        def task_c(b: str):  # noqa: ANN202
            return b + "c"

        @flow(version="test", task_runner=task_runner)
        def test_flow():  # noqa: ANN202
            a = task_a.submit()
            b = task_b.submit()
            c = task_c.submit(b)
            d = task_c.submit(c)
            return a, b, c, d

        state = _run_bounded(lambda: test_flow(return_state=True), timeout=150)
        assert state.is_failed()
        a, b, c, d = state.result(raise_on_failure=False)
        with pytest.raises(RuntimeError, match="This task fails!"):
            a.result()
        with pytest.raises(ValueError, match="This task fails and passes data downstream"):
            b.result()
        assert c.is_pending() and c.name == "NotReady"
        assert f"Upstream task run '{b.state_details.task_run_id}' did not reach a 'COMPLETED' state" in c.message
        assert d.is_pending() and d.name == "NotReady"

    @pytest.mark.timeout(180)
    def test_nested_task_submission(self, prefect_harness, task_runner):
        from prefect import flow, task

        @task
        def nested_task():  # noqa: ANN202
            return "nested task"

        @task
        def parent_task():  # noqa: ANN202
            return nested_task.submit().result()

        @flow(task_runner=task_runner)
        def umbrella_flow():  # noqa: ANN202
            return parent_task.submit().result()

        assert _run_bounded(umbrella_flow, timeout=150) == "nested task"

    @pytest.mark.timeout(180)
    def test_state_dependencies_via_wait_for(self, prefect_harness, task_runner):
        from prefect import flow, task

        @task
        def task_a():  # noqa: ANN202
            return time.time()

        @task(tags={"compute"})
        def task_b():  # noqa: ANN202
            return time.time()

        @flow(task_runner=task_runner)
        def test_flow():  # noqa: ANN202
            a = task_a.submit()
            b = task_b.submit(wait_for=[a])
            return a.result(), b.result()

        a_time, b_time = _run_bounded(test_flow, timeout=150)
        assert b_time > a_time

    @pytest.mark.timeout(180)
    @pytest.mark.parametrize("compute", [False, True])
    def test_submit_sync_task_receives_context(self, prefect_harness, task_runner, compute):
        """Prefect's `test_submit_sync_task_receives_context` (tests/test_task_runners.py) on
        this runner: the task's function, on a Dask worker, sees the submitting tags."""
        from prefect import tags, task
        from prefect.context import TagsContext

        def context_matters() -> set[str]:
            return set(TagsContext.get().current_tags)

        context_task = task(context_matters, tags={"compute"} if compute else None)
        with tags("tag1", "tag2"):
            with task_runner:
                assert task_runner.submit(context_task, {}).result(timeout=120) == {"tag1", "tag2"}
