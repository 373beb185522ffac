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
