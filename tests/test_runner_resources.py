"""LLMOrchTaskRunner with resources: GPU memory per device, an API class, checked from the
records the tools write themselves (pid, start, end, CUDA_VISIBLE_DEVICES)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from prefect import flow

from mixed_toolbox import toolbox
from prefect_llmorch.engine.runner import LLMOrchTaskRunner
from prefect_llmorch.flows.run import execute
from prefect_llmorch.plan.parser import parse
from prefect_llmorch.schedule.resources import UnknownResource

pytestmark = pytest.mark.usefixtures("prefect_harness")

EPS = 1e-3
GPUS = [{"id": 0, "mem_gb": 80}, {"id": 1, "mem_gb": 40}]
MEM = {"infer_small": 20, "infer_medium": 40, "infer_large": 60}

PLAN = """\
s1: search("a", latency=0.2)
s2: search("b", latency=0.2)
s3: search("c", latency=0.2)
s4: infer_large("{s1}", seconds=0.4)
s5: infer_large("{s2}", seconds=0.4)
s6: infer_medium("{s3}", seconds=0.4)
s7: infer_small("x", seconds=0.4)
s8: infer_small("y", seconds=0.4)
s9: crunch("z", seconds=0.2)
"""


def peak(rows: list[dict], weight) -> float:  # noqa: ANN001
    events = sorted([(r["start"], weight(r)) for r in rows] + [(r["end"] - EPS, -weight(r)) for r in rows])
    best = cur = 0.0
    for _, w in events:
        cur += w
        best = max(best, cur)
    return best


def test_gpu_calls_run_on_their_device_within_its_memory_and_searches_within_their_class(tmp_path, monkeypatch):
    # Named in conftest before any worker process exists (workers keep the environment
    # their forkserver started with); emptied here.
    log = Path(os.environ["LLMORCH_MIXED_LOG"])
    log.unlink(missing_ok=True)
    plan = parse(PLAN, toolbox)

    @flow(task_runner=LLMOrchTaskRunner(processors=3, concurrency_limit=None, resources={"search-api": 2}, gpus=GPUS))
    def f():  # noqa: ANN202
        return execute(plan, toolbox, processors=3)

    _, _, report = f()
    assert report.state == "Completed", report.calls
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(r["function"] for r in rows) == sorted(c.function for c in plan.calls)
    gpu = [r for r in rows if r["function"] in MEM]
    for r in gpu:  # each GPU call saw exactly one device
        assert r["cuda_visible_devices"] in ("0", "1"), r
    for dev, mem in (("0", 80), ("1", 40)):
        on = [r for r in gpu if r["cuda_visible_devices"] == dev]
        assert peak(on, lambda r: MEM[r["function"]]) <= mem
    assert peak([r for r in rows if r["function"] == "search"], lambda r: 1) <= 2
    assert peak([r for r in rows if r["function"] != "search"], lambda r: 1) <= 3
    crunch = [r for r in rows if r["function"] == "crunch"]
    assert crunch[0]["cuda_visible_devices"] == ""  # a CPU call sees no GPU


def test_a_call_demanding_a_resource_the_runner_lacks_fails_before_anything_runs(tmp_path, monkeypatch):
    # Named in conftest before any worker process exists (workers keep the environment
    # their forkserver started with); emptied here.
    log = Path(os.environ["LLMORCH_MIXED_LOG"])
    log.unlink(missing_ok=True)
    plan = parse('s1: crunch("a", seconds=0.1)\ns2: infer_small("b", seconds=0.1)\n', toolbox)

    @flow(task_runner=LLMOrchTaskRunner(processors=2, concurrency_limit=None))
    def f():  # noqa: ANN202
        return execute(plan, toolbox, processors=2)

    with pytest.raises(UnknownResource, match="call s2 needs 'gpu_mem_gb'"):
        f()
    assert not log.exists()


# -- machine-wide: one global concurrency limit per resource class (guard.GlobalLimit) ----

TWO_RUNS_PLAN = """\
s1: search("a", latency=0.2)
s2: search("b", latency=0.2)
s3: search("c", latency=0.2)
s4: crunch_wide("w", seconds=0.2)
"""


def _guarded_run(plan, limit: str, box: list, barrier=None) -> None:  # noqa: ANN001
    @flow(task_runner=LLMOrchTaskRunner(processors=2, concurrency_limit=limit, resources={"search-api": 2}))
    def f():  # noqa: ANN202
        if barrier is not None:  # both runners are started: their plans start together
            barrier.wait(timeout=120)
        return execute(plan, toolbox, processors=2)[2]

    box.append(f())


def _active_slots(name: str) -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name).active_slots


def _ensure_limit(name: str, size: int) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=size))


@pytest.mark.slow
def test_two_flow_runs_on_one_server_never_exceed_a_class_or_the_processors_together():
    """Each run alone may hold 2 searches and 2 processors; together they hold at most the
    class's 2 (llmorch-search-api), and a call needing 2 processors takes 2 slots of the
    processors' limit (size 3 here): the two runs' such calls never overlap."""
    import threading
    import uuid

    log = Path(os.environ["LLMORCH_MIXED_LOG"])
    log.unlink(missing_ok=True)
    limit = f"llmorch-test-two-{uuid.uuid4().hex[:6]}"
    _ensure_limit(limit, 3)  # one run holds 2 slots, the other 1: too few for its 2-processor call
    plan = parse(TWO_RUNS_PLAN, toolbox)
    reports: list = []
    barrier = threading.Barrier(2)
    # daemon: a run that never ends fails this test, not the whole session's exit
    runs = [threading.Thread(target=_guarded_run, args=(plan, limit, reports, barrier), daemon=True) for _ in range(2)]
    for t in runs:
        t.start()
    for t in runs:
        t.join(timeout=240)
    assert len(reports) == 2 and all(r.state == "Completed" for r in reports), [r.calls for r in reports]
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(r["function"] for r in rows) == sorted([c.function for c in plan.calls] * 2)
    assert peak([r for r in rows if r["function"] == "search"], lambda r: 1) <= 2
    assert peak([r for r in rows if r["function"] == "crunch_wide"], lambda r: 2) <= 3  # 2 slots each: never together
    assert _active_slots("llmorch-search-api") == 0 and _active_slots(limit) == 0


def test_slots_of_a_resource_class_left_by_a_dead_process_come_back_at_start():
    """What `kill -9` of a run holding both search slots on an ephemeral server leaves: the
    slots in the database, a lease that died with that server, the ledger entry. The next
    run clears them at start; without that its searches would wait forever."""
    import subprocess
    import sys
    import threading
    import uuid

    from prefect.client.orchestration import get_client

    from prefect_llmorch.storage import leases

    name = "llmorch-search-api"
    _ensure_limit(name, 2)
    assert _active_slots(name) == 0
    with get_client(sync_client=True) as client:
        client.increment_concurrency_slots(names=[name], slots=2, mode="concurrency")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lease = str(uuid.uuid4())
    leases.add({"limit": name, "lease": lease, "slots": 2, "api": "http://127.0.0.1:9/api",
                 "pid": dead.pid, "started": 0.0})
    plan = parse('s1: search("a", latency=0.1)\ns2: search("b", latency=0.1)\n', toolbox)
    reports: list = []
    t = threading.Thread(target=_guarded_run, args=(plan, f"llmorch-test-dead-{uuid.uuid4().hex[:6]}", reports), daemon=True)
    t.start()
    t.join(timeout=180)
    assert reports and reports[0].state == "Completed"
    assert _active_slots(name) == 0
    assert all(e["lease"] != lease for e in leases.read())


@pytest.mark.slow
def test_a_call_needing_two_processors_waits_for_two_slots_of_the_processors_limit():
    """The limit has 2 slots and another holder keeps 1: the run gets the other, which is
    not enough for its 2-processor call, and gives it back while it waits (never hold and
    wait); the call starts only once the holder lets go."""
    import threading
    import time
    import uuid

    from prefect.client.orchestration import get_client

    from test_leases import hold_a_slot

    log = Path(os.environ["LLMORCH_MIXED_LOG"])
    log.unlink(missing_ok=True)
    limit = f"llmorch-test-wide-{uuid.uuid4().hex[:6]}"
    _ensure_limit(limit, 2)
    lease = hold_a_slot(limit)
    plan = parse('s1: crunch_wide("w", seconds=0.1)\n', toolbox)
    reports: list = []
    t = threading.Thread(target=_guarded_run, args=(plan, limit, reports), daemon=True)
    t.start()
    deadline = time.monotonic() + 120
    while _active_slots(limit) < 2:  # the run holds the free slot now
        assert time.monotonic() < deadline and t.is_alive(), "the run never took the free slot"
        time.sleep(0.05)
    # It does not hold that slot while it waits for the other: it gives it back (backs off).
    while _active_slots(limit) > 1:
        assert time.monotonic() < deadline and t.is_alive(), "the run held its slot while it waited"
        time.sleep(0.05)
    released = time.time()
    with get_client(sync_client=True) as client:
        client.release_concurrency_slots_with_lease(lease)
    t.join(timeout=120)
    assert reports and reports[0].state == "Completed"
    (row,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert row["function"] == "crunch_wide" and row["start"] >= released
    assert _active_slots(limit) == 0
