"""Test toolbox of the machine-wide guard test (tests/test_guard.py, benchmarks/guard.py).

`busy` burns CPU in a worker process and appends its own record (pid, start, end) to the
file named by its `log` argument (an argument, not an environment variable: compute workers
keep the environment of their forkserver). Module-level, so workers import it by name.
"""

from __future__ import annotations

import json
import os
import time

from prefect_llmorch import Toolbox, compute


@compute(cost=0.15)
def busy(i: int, log: str, seconds: float = 0.15) -> int:
    """Hold a CPU for `seconds` of this thread's CPU time; record pid, start and end."""
    start = time.time()
    began = time.thread_time()
    x = 0
    while time.thread_time() - began < seconds:
        for k in range(200):
            x += k * k
    end = time.time()
    line = json.dumps({"i": i, "pid": os.getpid(), "start": start, "end": end}) + "\n"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one write of a short line with O_APPEND: lines never interleave
    finally:
        os.close(fd)
    return i


toolbox = Toolbox(busy)


def plan_text(log: str, calls: int = 4, seconds: float = 0.15) -> str:
    return "\n".join(f'c{i}: busy({i}, "{log}", {seconds})' for i in range(calls))


def peak(rows: list[dict], eps: float = 1e-3) -> int:
    """Most records overlapping at any moment (an end at the same moment as a start is not
    an overlap)."""
    events = sorted([(r["start"], 1) for r in rows] + [(r["end"] - eps, -1) for r in rows])
    best = cur = 0
    for _, step in events:
        cur += step
        best = max(best, cur)
    return best


def three_runs_at_once(
    log: str, limit: str, runs: int = 3, processors: int = 2, calls: int = 4, seconds: float = 0.15,
) -> tuple[list, list[dict]]:
    """`runs` flow runs of a P = `processors` compute-heavy plan, started together (threads
    of this process, each its own flow run, runner and leases) against the current server,
    guarded by global concurrency limit `limit`. Returns (reports, the tools' records)."""
    import contextvars
    import threading

    from prefect import flow

    from prefect_llmorch.engine.runner import LLMOrchTaskRunner
    from prefect_llmorch.flows.run import execute
    from prefect_llmorch.plan.parser import parse

    plan = parse(plan_text(log, calls, seconds), toolbox)
    reports: list = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(runs)

    def one() -> None:
        runner = LLMOrchTaskRunner(processors=processors, concurrency_limit=limit)
        assert runner.guard == "global"  # never the local opt-out

        @flow(name="guard-three-runs", task_runner=runner)
        def guarded():  # noqa: ANN202
            return execute(plan, toolbox, processors=processors)[2]

        barrier.wait()
        try:
            reports.append(guarded())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    # Each thread in a copy of the caller's context: its Prefect settings (which API) too.
    threads = [threading.Thread(target=contextvars.copy_context().run, args=(one,)) for _ in range(runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    if errors:
        raise errors[0]
    with open(log) as f:
        rows = [json.loads(line) for line in f]
    return reports, rows
