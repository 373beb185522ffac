"""`python benchmarks/kitti.py` -- the KITTI-like plan of the paper (Fig. 3) on P = 2, ours vs Prefect's runners.

The plan: 8 independent compute calls of 1 s of CPU each (`frame`, burning `time.thread_time()`),
`s9` averaging s1-s4 and `s10` averaging s5-s8 (inout, 0.5 s wait each), and a final inout
`s11` (0.5 s) using s9 and s10. With P = 2:

- best possible makespan 5.0 s (4 rounds of 2 frames, then s9 || s10, then s11);
- sequential 9.5 s (the sum of the call times);
- generic lower bound max(L, W/P) = max(2.0, 8/2) = 4.0 s.

Configurations, all in this one process against ONE Prefect server (`--server`, repeatable:
`harness`, a `prefect_test_harness`, isolated from other flow runs on the machine; `ephemeral`,
Prefect's default temporary server; `start`, a `prefect server start` the script starts and
stops; see benchmarks/_servers.py):

- ours: `run_plan(..., processors=2, policy=...)` -- the `llmorch-run` flow on `LLMOrchTaskRunner`
  (compute calls in 2 pre-warmed worker processes), policies `critical-path` and `paper`;
- `ThreadPoolTaskRunner()`: the same compiled tasks (`execute` inside a `@flow`); compute
  calls then run in threads of the flow process and share one GIL;
- `ProcessPoolTaskRunner(max_workers=2)`: compiled tasks cannot be used there (their function
  holds a closure over the compiler and its recorder, which holds a `threading.Lock`:
  cloudpickle fails, and a recorder in a worker process would not reach the flow process
  anyway; the script checks and prints why). So plain `@task` versions of the same calls run
  instead, with the same functions and the same dependencies (futures as parameters), and
  report their own timings. The same plain tasks also run on `ThreadPoolTaskRunner`.

From call (the figure that counts, issue 27's) = last call end - the call of `run_plan` (or of
the flow): the plan is available when the user calls. Latency = last call end - the flow body's
start (`RunReport.t0` for ours, a timestamp at the top of the flow body for the plain tasks):
it starts later, after Prefect created the flow run; 1st call = first call start - that moment;
makespan = last end - first start (it hides the time before the first call). Flow wall = the
flow call, including flow start, runner start and teardown. A warm-up run of ours comes first (not counted: a warm process),
then `--repeat` rounds, each running every configuration once (interleaved, so load changes
hit all alike); each column is median [min-max]. The last lines print the targets (ours,
critical-path: from call median <= 1.10 x 5.0 s, wall <= 1.20 x 5.0 s) with PASS/MISS per server.

Options: --repeat N (5), --only TEXT (configurations whose name contains TEXT),
--server KIND (harness; repeatable).
"""

from __future__ import annotations

import os
import _setup  # noqa: F401  (paths and Prefect settings, before Prefect is imported)
import _servers  # noqa: E402

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable  # noqa: E402

BEST = 5.0
SEQUENTIAL = 9.5
GENERIC_BOUND = 4.0
P = 2

PLAN = "\n".join(
    [f's{i}: frame("frame_{i:03d}", 1.0)' for i in range(1, 9)]
    + [
        "s9: mean([s1, s2, s3, s4], 0.5)",
        "s10: mean([s5, s6, s7, s8], 0.5)",
        "s11: report(s9, s10, 0.5)",
    ]
)


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float, float, int]:
    start = time.time()
    value = fn(*args)
    return value, start, time.time(), os.getpid()


def plain_tasks() -> tuple[Any, Any, Any]:
    """`@task` versions of frame / mean / report; each returns (value, start, end, pid)."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    import bench_toolbox as tb

    opts = dict(cache_policy=NO_CACHE, persist_result=False)

    @task(name="frame", tags={"compute"}, **opts)
    def frame_t(name: str, seconds: float) -> tuple[Any, float, float, int]:
        return _timed(tb.frame, name, seconds)

    @task(name="mean", tags={"inout"}, **opts)
    def mean_t(values: list[tuple[Any, ...]], seconds: float) -> tuple[Any, float, float, int]:
        return _timed(tb.mean, [v[0] for v in values], seconds)

    @task(name="report", tags={"inout"}, **opts)
    def report_t(a: tuple[Any, ...], b: tuple[Any, ...], seconds: float) -> tuple[Any, float, float, int]:
        return _timed(tb.report, a[0], b[0], seconds)

    return frame_t, mean_t, report_t


def run_plain(task_runner: Any) -> dict[str, Any]:
    from prefect import flow

    frame_t, mean_t, report_t = plain_tasks()
    started: list[float] = []

    @flow(name="kitti-plain", task_runner=task_runner)
    def kitti_plain() -> list[tuple[Any, float, float, int]]:
        started.append(time.time())  # the plan is available: the flow body runs
        frames = [frame_t.submit(f"frame_{i:03d}", 1.0) for i in range(1, 9)]
        s9 = mean_t.submit(frames[:4], 0.5)
        s10 = mean_t.submit(frames[4:], 0.5)
        s11 = report_t.submit(s9, s10, 0.5)
        return [f.result() for f in [*frames, s9, s10, s11]]

    t0 = time.time()
    rows = kitti_plain()
    wall = time.time() - t0
    starts, ends = [r[1] for r in rows], [r[2] for r in rows]
    durations = {f"s{i}": e - s for i, (s, e) in enumerate(zip(starts, ends), start=1)}
    return {
        "best_measured": _best_measured(durations),
        "from_call": max(ends) - t0,
        "latency": max(ends) - started[0],
        "first_call": min(starts) - started[0],
        "makespan": max(ends) - min(starts),
        "wall": wall,
        "busy": sum(e - s for s, e in zip(starts, ends)),
        "pids": len({r[3] for r in rows[:8]}),
    }


def run_compiled(task_runner: Any) -> dict[str, Any]:
    """The compiled tasks (`execute`) inside a @flow on a given task runner."""
    from prefect import flow

    from bench_toolbox import toolbox
    from prefect_llmorch.flows.run import execute
    from prefect_llmorch.plan.parser import parse

    plan = parse(PLAN, toolbox)

    @flow(name="kitti-compiled", task_runner=task_runner)
    def kitti_compiled() -> Any:
        return execute(plan, toolbox, processors=P)[2]

    t0 = time.time()
    report = kitti_compiled()
    wall = time.time() - t0
    return _from_report(report, wall, t0)


def run_ours(policy: str, concurrency_limit: str | None = "llmorch-processors") -> dict[str, Any]:
    from prefect_llmorch.flows.run import run_plan

    t0 = time.time()
    report = run_plan(PLAN, "bench_toolbox:toolbox", processors=P, policy=policy, concurrency_limit=concurrency_limit)
    wall = time.time() - t0
    return _from_report(report, wall, t0)


def _from_report(report: Any, wall: float, called: float) -> dict[str, Any]:
    assert report.state == "Completed", report.calls
    frames = [c for c in report.calls if c["kind"] == "compute"]
    durations = {c["id"]: c["end"] - c["start"] for c in report.calls}
    return {
        "best_measured": _best_measured(durations),
        "from_call": report.t0 + report.latency - called,  # report.t0: the flow body's start (epoch)
        "latency": report.latency,
        "first_call": report.time_to_first_call,
        "makespan": report.makespan,
        "wall": wall,
        "busy": report.sequential,
        "pids": len({c["pid"] for c in frames}),
        "order": " ".join(
            f"{c['id']}[{c['start']:.2f}-{c['end']:.2f}" + (f" w{c['processor']}]" if c["processor"] is not None else "]")
            for c in sorted(report.calls, key=lambda c: c["start"])
        ),
    }


def _best_measured(d: dict[str, float]) -> float:
    """The best makespan with the *measured* call durations: frames perfectly packed on 2
    processors, then s9 || s10, then s11 (5.0 s when every call takes its nominal time)."""
    return sum(d[f"s{i}"] for i in range(1, 9)) / P + max(d["s9"], d["s10"]) + d["s11"]


def compiled_tasks_pickle() -> str:
    """Can Prefect's ProcessPoolTaskRunner ship our compiled tasks? ('yes' or why not)."""
    import cloudpickle

    from bench_toolbox import toolbox
    from prefect_llmorch.engine.compiler import Compiler, Recorder
    from prefect_llmorch.graph import FRG
    from prefect_llmorch.plan.parser import parse

    plan = parse(PLAN, toolbox)
    compiler = Compiler(frg=FRG.build(plan, toolbox), toolbox=toolbox, recorder=Recorder())
    try:
        cloudpickle.loads(cloudpickle.dumps(compiler.task_for(plan.calls[0])))
    except Exception as exc:
        return f"no ({type(exc).__name__}: {exc})"
    return "yes"


def _stats(values: list[float]) -> str:
    """median [min-max]"""
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def main(argv: list[str] | None = None) -> list[tuple[str, float, bool]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", default="", help="run only configurations whose name contains one of these (comma-separated)")
    parser.add_argument("--server", choices=_servers.KINDS, action="append",
                        help="harness (default), ephemeral, start (prefect server start); repeatable")
    args = parser.parse_args(argv)

    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

    configs: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("ours critical-path (run_plan)", lambda: run_ours("critical-path")),
        ("ours paper (run_plan)", lambda: run_ours("paper")),
        ("ours critical-path, no glob.lim", lambda: run_ours("critical-path", None)),
        ("ThreadPool, compiled tasks", lambda: run_compiled(ThreadPoolTaskRunner())),
        ("ThreadPool, plain @task", lambda: run_plain(ThreadPoolTaskRunner())),
        ("ProcessPool(2), plain @task", lambda: run_plain(ProcessPoolTaskRunner(max_workers=P))),
    ]
    configs = [(n, f) for n, f in configs if any(o in n for o in args.only.split(","))]
    print(f"KITTI-like plan, P = {P}: best {BEST} s, sequential {SEQUENTIAL} s, max(L, W/P) = {GENERIC_BOUND} s")
    print(f"compiled tasks survive cloudpickle for ProcessPoolTaskRunner: {compiled_tasks_pickle()}")
    targets: list[tuple[str, float, bool]] = []
    for kind in args.server or ["harness"]:
        with _servers.server(kind) as description:
            print(f"\nserver: {description}; load average {_load()}")
            run_ours("critical-path")  # warm-up (imports, first flow run, tag look-ups): not counted
            print(f"  warm-up run done; load average {_load()}", flush=True)
            results: dict[str, list[dict[str, Any]]] = {n: [] for n, _ in configs}
            failures: dict[str, int] = {}
            for rep in range(args.repeat):  # interleaved: round r runs every configuration once
                for name, fn in configs:
                    try:
                        r = fn()
                    except Exception as exc:  # counted and printed, not hidden; the round goes on
                        failures[name] = failures.get(name, 0) + 1
                        print(f"  {name} (round {rep + 1}) FAILED: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                        continue
                    results[name].append(r)
                    print(f"  {name} (round {rep + 1}): latency {r['latency']:.3f} s, makespan {r['makespan']:.3f} s", flush=True)
            load = _load()
        print(f"\n{kind}: median [min-max] of {args.repeat} interleaved rounds (seconds); load average at the end {load}")
        print(
            f"{'configuration':<31} {'from call':>18} {'/5.0':>5} {'latency':>18} {'/5.0':>5} {'1st call':>17} {'makespan':>18}"
            f" {'best(meas.)':>18} {'flow wall':>18} {'frame pids':>10}"
        )
        for name, rs in results.items():
            if not rs:
                print(f"{name:<31} every round failed")
                continue
            lat = [r["latency"] for r in rs]
            call = [r["from_call"] for r in rs]
            print(
                f"{name:<31} {_stats(call):>18} {statistics.median(call) / BEST:>5.2f}"
                f" {_stats(lat):>18} {statistics.median(lat) / BEST:>5.2f} {_stats([r['first_call'] for r in rs]):>17}"
                f" {_stats([r['makespan'] for r in rs]):>18} {_stats([r['best_measured'] for r in rs]):>18}"
                f" {_stats([r['wall'] for r in rs]):>18} {max(r['pids'] for r in rs):>10}"
            )
        if failures:
            print(f"failed runs: {failures}")
        ours = results.get("ours critical-path (run_plan)")
        if ours:
            med = statistics.median(r["from_call"] for r in ours)
            wall = statistics.median(r["wall"] for r in ours)
            best = statistics.median(r["best_measured"] for r in ours)
            failed = failures.get("ours critical-path (run_plan)", 0)
            targets.append((
                f"KITTI-like P=2 latency from the call of run_plan, median <= 1.10 x {BEST} s ({kind}; best schedule"
                f" with the measured durations {best:.2f} s, that latency / it {med / best:.2f}; failed runs {failed};"
                f" load {load})", med, med <= 1.10 * BEST and not failed,
            ))
            targets.append((
                f"KITTI-like P=2 run_plan wall (call to return), median <= 1.20 x {BEST} s ({kind}; / best measured"
                f" {wall / best:.2f})", wall, wall <= 1.20 * BEST and not failed,
            ))
            tp = results.get("ThreadPool, plain @task")
            if tp:
                print(f"ours / ThreadPool plain @task latency (medians): {med / statistics.median(r['latency'] for r in tp):.2f}x")
        print(
            "from call = last call end - the call of run_plan (or of the flow); latency = last call end - the flow\n"
            "body's start; 1st call = first call start\n"
            "- that moment; makespan = last end - first start; /5.0 = median latency / the best schedule (5.0 s);\n"
            "best(meas.) = the best schedule with the measured call durations (frames packed on P = 2, then\n"
            "s9 || s10, then s11): on a loaded machine 1 s of CPU takes more than 1 s of wall time.\n"
            "'no glob.lim' = concurrency_limit=None: no machine-wide `llmorch-processors` slots to take."
        )
        for name, rs in results.items():
            if rs and "order" in rs[-1]:
                print(f"calls of {name} (last round): {rs[-1]['order']}")
    for text, value, ok in targets:
        print(f"TARGET {text}: {value:.3f} s {'PASS' if ok else 'MISS'}")
    return targets


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
