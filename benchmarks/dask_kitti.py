"""The KITTI-like plan on 2 single-processor Dask workers vs the local runner on P=2, side by side.

    PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120 \\
        python benchmarks/dask_kitti.py [--repeat 2]

The plan: s1..s8 are compute calls that each burn 1 s of CPU (`time.thread_time()`),
s9 = average of s1..s4 and s10 = average of s5..s8 are 0.5 s inout calls, s11 a final
0.5 s inout call. On P=2 the best possible makespan is 5.0 s: the 8 s of compute take at
least 4 s on two processors, s10 needs the last of them, then s10 and s11 take 0.5 s each.

Printed per runner (after one warm-up run each, so worker imports are not counted):
makespan (first call start to last call end, from the calls' own records), makespan / 5.0,
and makespan / max(L, W/P) with L and W the *measured* critical path and compute work.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Dask and local worker processes import the toolbox from the repo root.
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from prefect_llmorch.examples.toolbox import burn, chatbot  # noqa: E402
from prefect_llmorch import Toolbox, inout  # noqa: E402

BEST = 5.0
P = 2


@inout(cost=0.5)
def mean_after(values: list[float], latency: float = 0.5) -> float:
    """The mean of `values`, after `latency` seconds of waiting (an I/O-bound call)."""
    time.sleep(latency)
    return sum(values) / len(values)


TOOLBOX = Toolbox(burn, mean_after, chatbot)

PLAN = "\n".join(
    [f"s{i}: burn(1.0)" for i in range(1, 9)]
    + [
        "s9: mean_after([s1, s2, s3, s4], 0.5)",
        "s10: mean_after([s5, s6, s7, s8], 0.5)",
        's11: chatbot("frames 1-4 average {s9}, frames 5-8 average {s10}", 0.5)',
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="measured runs per runner (after one warm-up)")
    parser.add_argument("--schedule", action="store_true", help="print each call's start/end of the last run")
    args = parser.parse_args()

    from prefect_llmorch.engine.dask import LLMOrchDaskTaskRunner
    from prefect_llmorch.flows.run import run_plan
    from prefect_llmorch.engine.runner import LLMOrchTaskRunner

    runners = {
        "local LLMOrchTaskRunner (P=2)": lambda: LLMOrchTaskRunner(
            processors=P, concurrency_limit=None, preload=["prefect_llmorch.examples.toolbox"]
        ),
        "LLMOrchDaskTaskRunner (2 workers x 1 processor)": lambda: LLMOrchDaskTaskRunner(
            cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True, "dashboard_address": None},
            concurrency_limit=None,
            preload=["prefect_llmorch.examples.toolbox"],
        ),
    }
    rows = []
    for name, make in runners.items():
        makespans, ratios_lb = [], []
        for i in range(args.repeat + 1):
            report = run_plan(PLAN, TOOLBOX, task_runner=make())
            assert report.state == "Completed", report.message
            assert report.processors == P, report.processors
            if i == 0:
                continue  # warm-up: worker start-up and imports
            makespans.append(report.makespan)
            ratios_lb.append(report.makespan / report.lower_bound)
            print(f"  {name} run {i}: makespan {report.makespan:.3f} s, measured max(L, W/P) {report.lower_bound:.3f} s", flush=True)
        rows.append((name, statistics.median(makespans), statistics.median(ratios_lb)))
        if args.schedule:
            t0 = min(c["start"] for c in report.calls)
            for c in report.calls:
                where = f"worker {c['processor']}" if c["processor"] is not None else "flow process"
                print(f"    {c['id']:>4} {c['kind']:<8} {c['start'] - t0:7.3f} -> {c['end'] - t0:7.3f}  pid {c['pid']} ({where})")

    print()
    print(f"KITTI-like plan (8 x 1 s compute, 3 x 0.5 s inout), P = {P}; median of {args.repeat} runs")
    print(f"{'runner':<50} {'makespan':>9} {'/ 5.0':>7} {'/ max(L,W/P)':>13}")
    for name, makespan, ratio_lb in rows:
        print(f"{name:<50} {makespan:>8.3f}s {makespan / BEST:>7.3f} {ratio_lb:>13.3f}")
    local, dask = rows[0][1], rows[1][1]
    print(f"Dask / local makespan: {dask / local:.3f}")


if __name__ == "__main__":
    main()
