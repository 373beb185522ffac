"""Functions of the mixed-workload benchmark (`mixed_resources.py`): GPU inference, CPU work,
rate-limited searches. No GPU is needed: an inference call sleeps for its time, as a process
driving a device waits on it, while holding its processor.

- `infer_small` / `infer_medium` / `infer_large`: models of 20, 40 and 60 GB on the GPU
  (`resources={"gpu_mem_gb": ...}`, plus the processor that drives the device);
- `crunch`: CPU work (burns thread CPU time, as `bench_toolbox.burn_cpu`);
- `crunch_wide`: a call declared to hold two cores (`resources={"processors": 2}`, as a
  native library's two threads would); here it burns one thread's CPU while holding both;
- `search`: a web search API allowing 2 calls at once (`resources={"search-api": 1}`, inout).

`gated_toolbox` has the same functions declaring no resources: each waits *inside* the
call (holding its processor, or its thread) until the device memory or API slot it needs is
free, in a gate shared by processes (the file named by `LLMORCH_MIXED_GATE`, capacities
`GATE_CAPACITY`): what a runner that knows only processors gets, the device or the API
making calls wait. `benchmarks/mixed_resources.py --real` runs the baselines on it.

Each call appends one JSON line to the file named by `LLMORCH_MIXED_LOG` when it is set:
function, pid, start, end, and the `CUDA_VISIBLE_DEVICES` it ran with, so a real run can be
checked against the capacities from records the tools write themselves.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from typing import Iterator

from bench_toolbox import burn_cpu
from prefect_llmorch import Toolbox, compute, inout

INFER_SECONDS = {"infer_small": 2.0, "infer_medium": 3.0, "infer_large": 4.0}


def _record(function: str, start: float) -> None:
    path = os.environ.get("LLMORCH_MIXED_LOG")
    if path:
        row = {
            "function": function,
            "pid": os.getpid(),
            "start": start,
            "end": time.time(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")


def _infer(function: str, prompt: str, seconds: float | None) -> str:
    start = time.time()
    time.sleep(INFER_SECONDS[function] if seconds is None else seconds)
    _record(function, start)
    return f"{function}: {len(prompt)} chars read"


@compute(cost=2.0, resources={"gpu_mem_gb": 20})
def infer_small(prompt: str, seconds: float | None = None) -> str:
    """Answer with a 20 GB model (2 s on the device, or `seconds`)."""
    return _infer("infer_small", prompt, seconds)


@compute(cost=3.0, resources={"gpu_mem_gb": 40})
def infer_medium(prompt: str, seconds: float | None = None) -> str:
    """Answer with a 40 GB model (3 s on the device, or `seconds`)."""
    return _infer("infer_medium", prompt, seconds)


@compute(cost=4.0, resources={"gpu_mem_gb": 60})
def infer_large(prompt: str, seconds: float | None = None) -> str:
    """Answer with a 60 GB model (4 s on the device, or `seconds`)."""
    return _infer("infer_large", prompt, seconds)


@compute(cost=1.0)
def crunch(label: str, seconds: float = 1.0) -> str:
    """Parse and score documents: `seconds` of CPU."""
    start = time.time()
    burn_cpu(seconds)
    _record("crunch", start)
    return f"{label}: scored"


@compute(cost=1.0, resources={"processors": 2})
def crunch_wide(label: str, seconds: float = 1.0) -> str:
    """Index a corpus holding two cores (`seconds` of CPU)."""
    start = time.time()
    burn_cpu(seconds)
    _record("crunch_wide", start)
    return f"{label}: indexed"


def _search(query: str, latency: float) -> str:
    start = time.time()
    time.sleep(latency)
    _record("search", start)
    return f"results for {query!r}"


@inout(cost=0.5, resources={"search-api": 1})
def search(query: str, latency: float = 0.5) -> str:
    """Search the web (the API allows 2 calls at once)."""
    return _search(query, latency)


toolbox = Toolbox(infer_small, infer_medium, infer_large, crunch, crunch_wide, search)

#: What the gate lets through at once (the one 80 GB device, the API's 2 calls).
GATE_CAPACITY = {"gpu_mem_gb": 80.0, "search-api": 2.0}
_MEM = {"infer_small": 20.0, "infer_medium": 40.0, "infer_large": 60.0}


@contextmanager
def _gate(resource: str, amount: float) -> Iterator[None]:
    """Hold `amount` of `resource` in the file gate while the block runs (no gate: no wait)."""
    import fcntl

    path = os.environ.get("LLMORCH_MIXED_GATE")
    if not path:
        yield
        return

    def update(delta: float) -> bool:
        with open(path, "a+", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.seek(0)
            used = json.loads(fh.read() or "{}")
            now = used.get(resource, 0.0) + delta
            if delta > 0 and now > GATE_CAPACITY[resource] + 1e-9:
                return False
            used[resource] = now
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps(used))
            return True

    while not update(amount):  # the device (or API) is full: wait, as a caller would
        time.sleep(0.01)
    try:
        yield
    finally:
        update(-amount)


def _gated_infer(function: str, prompt: str, seconds: float | None) -> str:
    with _gate("gpu_mem_gb", _MEM[function]):
        return _infer(function, prompt, seconds)


@compute(cost=2.0, name="infer_small")
def gated_infer_small(prompt: str, seconds: float | None = None) -> str:
    """`infer_small`, waiting inside the call for its 20 GB on the device."""
    return _gated_infer("infer_small", prompt, seconds)


@compute(cost=3.0, name="infer_medium")
def gated_infer_medium(prompt: str, seconds: float | None = None) -> str:
    """`infer_medium`, waiting inside the call for its 40 GB on the device."""
    return _gated_infer("infer_medium", prompt, seconds)


@compute(cost=4.0, name="infer_large")
def gated_infer_large(prompt: str, seconds: float | None = None) -> str:
    """`infer_large`, waiting inside the call for its 60 GB on the device."""
    return _gated_infer("infer_large", prompt, seconds)


@inout(cost=0.5, name="search")
def gated_search(query: str, latency: float = 0.5) -> str:
    """`search`, waiting inside the call for one of the API's 2 slots."""
    with _gate("search-api", 1.0):
        return _search(query, latency)


gated_toolbox = Toolbox(gated_infer_small, gated_infer_medium, gated_infer_large, crunch, crunch_wide, gated_search)
