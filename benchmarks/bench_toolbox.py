"""Functions of the execution benchmarks (`kitti.py`, `overhead.py`).

Module-level, so worker processes (ours and Prefect's ProcessPoolTaskRunner's) import them
by name: the benchmarks put this directory on `sys.path` (and on `PYTHONPATH` for
subprocesses) before anything starts a process.

- compute functions hold a CPU: they burn until `time.thread_time()` has advanced by the
  cost (never `sleep`, never `process_time`: see DESIGN.md section 4);
- inout functions wait (`time.sleep`), as a device or a remote call would.

No Prefect here: the plain-task baselines wrap these functions in `@task` themselves.
"""

from __future__ import annotations

import os
import time

from prefect_llmorch import Toolbox, compute, inout


def burn_cpu(seconds: float) -> float:
    """Burn `seconds` of this thread's CPU time; return the CPU seconds used."""
    start = time.thread_time()
    x = 0
    while time.thread_time() - start < seconds:
        for i in range(200):
            x += i * i
    return time.thread_time() - start


@compute(cost=1.0)
def frame(name: str, seconds: float = 1.0) -> float:
    """Process one camera frame: `seconds` of CPU; returns a deterministic object count."""
    burn_cpu(seconds)
    return float(sum(map(ord, name)) % 7)


@inout(cost=0.5)
def mean(values: list[float], seconds: float = 0.5) -> float:
    """Average some numbers after waiting `seconds` (a remote aggregation service)."""
    time.sleep(seconds)
    return sum(values) / len(values)


@inout(cost=0.5)
def report(a: float, b: float, seconds: float = 0.5) -> str:
    """Write the final answer after waiting `seconds` (an LLM call)."""
    time.sleep(seconds)
    return f"frames 1-4: {a:.2f} objects on average, frames 5-8: {b:.2f}"


@inout(cost=0.0)
def noop_inout(i: int = 0) -> int:
    """Do nothing (per-call overhead of an inout call)."""
    return i


@compute(cost=0.0)
def noop_compute(i: int = 0) -> int:
    """Do nothing in a worker process (per-call overhead of a compute call)."""
    return i


@compute(cost=0.0)
def pid() -> int:
    """The worker's process id (warms a worker up)."""
    return os.getpid()


toolbox = Toolbox(frame, mean, report, noop_inout, noop_compute, pid)
