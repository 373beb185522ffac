"""`python benchmarks/mixed_resources.py` -- a mixed workload: GPU inference, CPU work, rate-limited searches.

The plan (`PLAN` below, calls of `mixed_toolbox`): six searches on an API that allows 2 at
once, each read by a GPU inference call (models of 20, 40 and 60 GB on one 80 GB device,
2-4 s each), four independent CPU calls, a CPU call that combines the answers and a final
40 GB inference call. Simulated with the functions' declared costs (the times the tools
sleep or burn) on P = 2 and P = 4 with:

- `ours`: the Coordinator admitting a call when all it needs fits (critical-path order);
- `processors-only`: today's coordinator; a started call waits first come first served for
  its GPU memory or API slot while holding its processor;
- `LLMCompiler-style` (`eager`): every ready call starts at once; CPU calls time-slice the
  cores; GPU memory and API slots are waited for in turn (no out-of-memory failure, no 429);
- `sequential` (ReAct-style, one call after another).

Printed: makespan, its ratio to the lower bound max(critical path, per resource
demand-time / capacity), and ours' speedup over each. Simulation: exact, the same on
every machine, no GPU needed.

`--real` runs the same plan for real, through `run_plan`-style Prefect flows on the
ephemeral server (the tools sleep and burn as declared), `--runs` times each (default 3),
at P = `-P` (default 2), and prints the median makespan of each and ours' ratio:

- `ours`: `run_plan(..., resources={"search-api": 2}, gpus=[80 GB])` on `mixed_toolbox.toolbox`;
- `processors-only`: `run_plan` on P processors with `mixed_toolbox.gated_toolbox` (no
  declared resources; a started call waits inside for its GPU memory or API slot, holding
  its processor, as the device or API would make it wait);
- `LLMCompiler-style`: every call started as soon as its inputs exist, unbounded, on
  Prefect's `ThreadPoolTaskRunner` (`baselines._PlainCompiler`), with the gated toolbox;
  compute calls in threads of the flow process (LLMCompiler's thread pool; one core for
  CPU work under the GIL).

Makespan here is from the first call's start to the last call's end, from the records the
tools write themselves (`LLMORCH_MIXED_LOG`): the same clock for every strategy, without
flow start-up. The global concurrency limit is off for ours (the baselines have none).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for _p in (str(HERE.parent), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import _setup  # noqa: E402,F401  (paths, PYTHONPATH for the workers, ephemeral-server settings)
from mixed_toolbox import gated_toolbox, toolbox  # noqa: E402
from prefect_llmorch.graph import FRG  # noqa: E402
from prefect_llmorch.plan.parser import parse  # noqa: E402
from prefect_llmorch.schedule.simulator import simulate, simulate_baseline  # noqa: E402

PLAN = """\
s1: search("gpu prices")
s2: search("model cards")
s3: search("benchmarks")
s4: search("papers")
s5: search("forums")
s6: search("news")
s7: infer_large("Summarize {s1}")
s8: infer_medium("Summarize {s2}")
s9: infer_small("Summarize {s3}")
s10: infer_large("Summarize {s4}")
s11: infer_medium("Summarize {s5}")
s12: infer_small("Summarize {s6}")
s13: crunch("corpus a")
s14: crunch("corpus b")
s15: crunch("corpus c")
s16: crunch("corpus d")
s17: crunch("{s7} {s8} {s9} {s10} {s11} {s12}")
s18: infer_medium("Report on {s17} {s13} {s14} {s15} {s16}")
"""

RESOURCES = {"search-api": 2}
GPUS = [{"id": 0, "mem_gb": 80}]
STRATEGIES = (("ours", None), ("processors-only", "processors-only"), ("LLMCompiler-style", "eager"), ("sequential", "sequential"))


def frg() -> FRG:
    return FRG.build(parse(PLAN, toolbox), toolbox)


def _makespan(log: Path) -> float:
    import json

    rows = [json.loads(line) for line in log.read_text().splitlines()]
    if len(rows) != len(parse(PLAN, toolbox)):
        raise AssertionError(f"{len(rows)} records for {len(parse(PLAN, toolbox))} calls")
    return max(r["end"] for r in rows) - min(r["start"] for r in rows)


def _llmcompiler_style(plan_text: str) -> None:
    from prefect import flow
    from prefect.futures import wait
    from prefect.task_runners import ThreadPoolTaskRunner

    from baselines import _PlainCompiler, _failed
    from prefect_llmorch.engine.compiler import Recorder

    plan = parse(plan_text, gated_toolbox)

    @flow(name="mixed-llmcompiler-style", task_runner=ThreadPoolTaskRunner(max_workers=64), validate_parameters=False)
    def run() -> None:
        futures: dict = {}
        compiler = _PlainCompiler(frg=FRG.build(plan, gated_toolbox), toolbox=gated_toolbox, recorder=Recorder())
        compiler.submit(list(plan.calls), futures)
        wait(list(futures.values()))
        _failed("llmcompiler-style", futures)

    run()


def real(processors: int, runs: int) -> int:
    """The mixed plan for real on Prefect (see the module docstring); medians of `runs`."""
    import os
    import statistics
    import tempfile

    from prefect_llmorch.flows.run import run_plan

    work = Path(tempfile.mkdtemp(prefix="llmorch-mixed-bench-"))
    log, gate = work / "calls.jsonl", work / "gate.json"
    # Named before any worker process starts: workers keep the environment they start with.
    os.environ["LLMORCH_MIXED_LOG"], os.environ["LLMORCH_MIXED_GATE"] = str(log), str(gate)
    strategies = {
        "ours": lambda: run_plan(PLAN, "mixed_toolbox:toolbox", processors=processors, resources=RESOURCES,
                                 gpus=GPUS, concurrency_limit=None, cache=False),
        "processors-only": lambda: run_plan(PLAN, "mixed_toolbox:gated_toolbox", processors=processors,
                                            concurrency_limit=None, cache=False),
        "LLMCompiler-style": lambda: _llmcompiler_style(PLAN),
    }
    times: dict[str, list[float]] = {k: [] for k in strategies}
    for i in range(runs):
        for label, go in strategies.items():  # interleaved: machine load hits every strategy alike
            log.unlink(missing_ok=True)
            gate.unlink(missing_ok=True)
            go()
            times[label].append(_makespan(log))
            print(f"  run {i + 1} {label}: {times[label][-1]:.2f} s", flush=True)
    load = os.getloadavg()
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nreal Prefect runs, P = {processors}, median of {runs} (load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}):")
    print(f"  {'strategy':<18} {'median':>8} {'runs':<24} {'/ ours':>7}")
    for label, m in median.items():
        runs_text = " ".join(f"{t:.2f}" for t in times[label])
        print(f"  {label:<18} {m:>8.2f} {runs_text:<24} {m / median['ours']:>7.2f}")
    return 0


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="run the plan on Prefect instead of simulating it")
    parser.add_argument("--runs", type=int, default=3, help="runs per strategy with --real (median)")
    parser.add_argument("-P", "--processors", type=int, default=2, help="P with --real")
    args = parser.parse_args()
    if args.runs < 1 or args.processors < 1:
        parser.error("--runs and -P must be at least 1")
    if args.real:
        return real(args.processors, args.runs)
    g = frg()
    print(
        f"mixed plan: {len(g)} calls ({sum(g.kind[c] == 'compute' for c in g.ids)} compute), work {g.work:g} s, "
        f"critical path {g.critical_path:g} s; search-api {RESOURCES['search-api']}, one {GPUS[0]['mem_gb']} GB GPU"
    )
    for p in (2, 4):
        bound = g.lower_bound(p, RESOURCES, GPUS)
        rows = {}
        for label, baseline in STRATEGIES:
            if baseline is None:
                s = simulate(g, p, resources=RESOURCES, gpus=GPUS)
            else:
                s = simulate_baseline(g, p, baseline, resources=RESOURCES, gpus=GPUS)
            problems = s.problems(g)
            if problems:
                raise AssertionError(f"{label}: {problems[:3]}")
            rows[label] = s.makespan
        print(f"\nP = {p}: lower bound {bound:g} s")
        print(f"  {'strategy':<18} {'makespan':>9} {'/ bound':>8} {'ours faster by':>15}")
        for label, makespan in rows.items():
            faster = "" if label == "ours" else f"{makespan / rows['ours']:.2f}x"
            print(f"  {label:<18} {makespan:>9.3f} {makespan / bound:>8.3f} {faster:>15}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
