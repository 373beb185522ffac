"""`python benchmarks/learned_costs.py` -- costs learned from Prefect's history vs declared (unit) costs.

A plan whose functions declare no cost (every call counts 1) on P = 2 processors:

    s1: long_job("L", 4.0)            4 s of CPU, nothing depends on it
    s2..s5: short_job("a", 0.5)       0.5 s of CPU each
    s6..s9: short_step(s2..s5, 0.5)   0.5 s of CPU each, after its short_job

With unit costs the critical-path policy sees s2..s5 heading paths of 2 calls and s1 a path
of 1, so it runs the short chains first and s1 last: about 2 + 4 = 6 s. With the costs
learned from earlier runs (`costs="history"`: the median Running time of each function's
Completed task runs, `storage/history.py`) it starts s1 at once and fills the other processor
with the short work: 4 s, the lower bound max(critical path, work / P) = max(4, 8 / 2).

Each run also prints its prediction (`report.predicted`: the plan simulated with the costs
the policy was given), beside the measured latency.

One warm-up run teaches the history; then `declared` and `history` runs alternate
(--repeat N each, default 5), all in this one process against ONE Prefect test server.
Latency = from the flow starting to execute (the plan is available) to the last call's end.
No thresholds: medians, spread and their ratio are printed.
"""

from __future__ import annotations

import _setup  # noqa: F401  (paths and Prefect settings, before Prefect is imported)

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from prefect_llmorch import Toolbox, compute  # noqa: E402

from bench_toolbox import burn_cpu  # noqa: E402

P = 2
BOUND = 4.0


@compute
def long_job(name: str, seconds: float) -> str:
    burn_cpu(seconds)
    return name


@compute
def short_job(name: str, seconds: float) -> str:
    burn_cpu(seconds)
    return name


@compute
def short_step(previous: str, seconds: float) -> str:
    burn_cpu(seconds)
    return previous + "'"


toolbox = Toolbox(long_job, short_job, short_step)

PLAN = "\n".join(
    ['s1: long_job("L", 4.0)']
    + [f's{i}: short_job("a{i}", 0.5)' for i in range(2, 6)]
    + [f"s{i + 4}: short_step(s{i}, 0.5)" for i in range(2, 6)]
)


def run(costs: str) -> tuple[float, str]:
    from prefect_llmorch.flows.run import run_plan

    report = run_plan(PLAN, "learned_costs:toolbox", processors=P, costs=costs, concurrency_limit=None)
    assert report.state == "Completed", report.state
    s1 = next(c for c in report.calls if c.id == "s1")
    predicted = report.predicted or {}
    unit = " s" if predicted.get("costs") == "history" else " (unit costs)"
    return report.latency, f"s1 started at {s1.start:.2f} s; predicted {predicted.get('latency', float('nan')):.2f}{unit}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    from prefect.testing.utilities import prefect_test_harness

    t = time.time()
    with prefect_test_harness(server_startup_timeout=120):
        print(f"server: prefect_test_harness (temporary SQLite), started in {time.time() - t:.1f} s")
        run("declared")  # warm-up: workers, and the first history of every function
        results: dict[str, list[float]] = {"declared": [], "history": []}
        for i in range(args.repeat):
            for costs in ("declared", "history"):
                latency, note = run(costs)
                results[costs].append(latency)
                print(f"  {costs:<8} run {i + 1}: latency {latency:.2f} s ({note})", flush=True)
        from prefect_llmorch.storage.history import function_costs

        print(f"learned costs: { {k: round(v, 2) for k, v in sorted(function_costs(['long_job', 'short_job', 'short_step']).items())} }")
    print()
    print(f"{'costs':<10} {'median':>8} {'min':>7} {'max':>7} {'÷ bound 4.0 s':>14}")
    med = {}
    for costs, xs in results.items():
        med[costs] = statistics.median(xs)
        print(f"{costs:<10} {med[costs]:>7.2f}s {min(xs):>6.2f}s {max(xs):>6.2f}s {med[costs] / BOUND:>14.3f}")
    print(f"\nlearned / declared (median latency): {med['history'] / med['declared']:.3f}")


if __name__ == "__main__":
    main()
