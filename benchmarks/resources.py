"""`python benchmarks/resources.py` -- resource-aware admission vs processors-only vs eager, simulated.

Random STG-like task graphs (the STG generator's `sameprob` and `layrprob` shapes: n tasks,
costs 1..10, edges drawn with a fixed probability; seeded) get resource demands drawn per
task (seeded): most are CPU calls (one processor), some GPU calls (one processor and 20-60
GB of GPU memory), some rate-limited searches (inout, one `search-api` slot, no processor),
a few two-core calls. Each graph is simulated on P processors, GPU devices of 80 GB and
`search-api` capacity 2 with:

- `ours`: the Coordinator admitting a call when its whole demand fits (critical-path order);
- `processors-only`: the same coordinator seeing only processors; a started call then waits
  first come first served for its GPU memory or API slot, holding its processor meanwhile
  (what a processors-only scheduler with a semaphore or a concurrency limit per tool does);
- `eager`: LLMCompiler-style, every ready call starts at once; CPU calls time-slice the P
  cores; GPU memory and API slots are waited for first come first served (the kindest model:
  no out-of-memory failure, no 429 retry).

Printed: per strategy, the ratio makespan / lower bound, where the lower bound is
max(critical path, per resource: demand-time / capacity); median, 10th and 90th
percentile, worst; and how much faster ours is than each baseline (median of per-graph
ratios). Simulation only, so the numbers are exact and the same on every machine.

    python benchmarks/resources.py              # 3 sizes x 2 shapes x 10 seeds x P in {4, 8}
    python benchmarks/resources.py --seeds 3    # quicker
    python benchmarks/resources.py --stg        # also the STG files in /work/shared/data/stg
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prefect_llmorch.graph import FRG  # noqa: E402
from prefect_llmorch.schedule.simulator import read_stg, simulate, simulate_baseline  # noqa: E402

STG_DIR = Path("/work/shared/data/stg")
SIZES = (50, 100, 200)
SHAPES = ("sameprob", "layrprob")
PROCESSORS = (4, 8)
STRATEGIES = ("ours", "processors-only", "eager")
GPU_SIZES = (20, 30, 40, 60)
# share of tasks per class: CPU, GPU, search, two-core
MIXES = {
    "cpu-heavy": (("cpu", 0.5), ("gpu", 0.2), ("search", 0.2), ("wide", 0.1)),
    "gpu-and-api-heavy": (("cpu", 0.3), ("gpu", 0.4), ("search", 0.3), ("wide", 0.0)),
}


def stg_like(n: int, shape: str, rnd: random.Random) -> tuple[list[str], dict[str, list[str]], dict[str, float]]:
    """A random task graph shaped like the STG generator's: `sameprob` draws each edge i -> j
    (i < j) with one probability; `layrprob` puts tasks in layers and draws edges from
    earlier layers only. Average in-degree about 2, costs uniform in 1..10."""
    ids = [f"t{i}" for i in range(1, n + 1)]
    deps: dict[str, list[str]] = {c: [] for c in ids}
    if shape == "sameprob":
        p = min(1.0, 4.0 / n)
        for j in range(n):
            deps[ids[j]] = [ids[i] for i in range(j) if rnd.random() < p]
    else:
        layers: list[list[str]] = []
        k = 0
        while k < n:
            width = rnd.randint(1, max(1, int(n ** 0.5 * 1.5)))
            layers.append(ids[k:k + width])
            k += width
        for li, layer in enumerate(layers[1:], 1):
            earlier = [c for lay in layers[:li] for c in lay]
            p = min(1.0, 2.0 / len(earlier) * 2)
            for c in layer:
                deps[c] = [d for d in earlier if rnd.random() < p]
    costs = {c: float(rnd.randint(1, 10)) for c in ids}
    return ids, deps, costs


def with_demands(
    ids: list[str], deps: dict[str, list[str]], costs: dict[str, float], rnd: random.Random, mix: tuple
) -> FRG:
    kinds: dict[str, str] = {}
    resources: dict[str, dict[str, float]] = {}
    names, weights = zip(*mix)
    for c in ids:
        cls = rnd.choices(names, weights)[0]
        if cls == "gpu":
            resources[c] = {"gpu_mem_gb": float(rnd.choice(GPU_SIZES))}
        elif cls == "search":
            kinds[c] = "inout"
            resources[c] = {"search-api": 1.0}
        elif cls == "wide":
            resources[c] = {"processors": 2.0}
    return FRG.from_edges(ids, deps, kinds, costs, resources=resources)


def capacities(processors: int) -> tuple[dict[str, float], list[dict[str, float]]]:
    """`search-api` 2; one 80 GB device per 4 processors."""
    return {"search-api": 2.0}, [{"id": i, "mem_gb": 80.0} for i in range(max(1, processors // 4))]


def run(frg: FRG, processors: int) -> dict[str, float]:
    resources, gpus = capacities(processors)
    bound = frg.lower_bound(processors, resources, gpus)
    out = {}
    for s in STRATEGIES:
        if s == "ours":
            sched = simulate(frg, processors, resources=resources, gpus=gpus)
        else:
            sched = simulate_baseline(frg, processors, s, resources=resources, gpus=gpus)
        problems = sched.problems(frg)
        if problems:  # a schedule that breaks a capacity or an edge is a bug, not a number
            raise AssertionError(f"{s}: {problems[:3]}")
        out[s] = sched.makespan / bound
    return out


def pct(values: list[float], q: float) -> float:
    xs = sorted(values)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10, help="graphs per (size, shape)")
    ap.add_argument("--stg", action="store_true", help=f"also the STG files in {STG_DIR}, with drawn demands")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    for mix_name, mix in MIXES.items():
        cases = make_cases(mix, args.seeds, args.stg)
        report(mix_name, mix, cases, args.stg)
    print(f"({time.perf_counter() - t0:.1f} s)")
    return 0


def make_cases(mix: tuple, seeds: int, stg: bool) -> list[tuple[str, FRG]]:
    cases: list[tuple[str, FRG]] = []
    for n in SIZES:
        for shape in SHAPES:
            for seed in range(seeds):
                rnd = random.Random(f"{shape}-{n}-{seed}")
                cases.append((f"{shape} n={n} seed={seed}", with_demands(*stg_like(n, shape, rnd), rnd, mix)))
    if stg:
        for path in sorted(STG_DIR.glob("*.stg")):
            base = read_stg(path)
            rnd = random.Random(path.name)
            deps = {c: sorted(base.deps[c], key=base.index) for c in base.ids}
            cases.append((path.name, with_demands(list(base.ids), deps, dict(base.cost), rnd, mix)))
    return cases


def report(mix_name: str, mix: tuple, cases: list[tuple[str, FRG]], stg: bool) -> None:
    ratios: dict[tuple[str, int], list[float]] = {}
    speedup: dict[tuple[str, int], list[float]] = {}
    for _, frg in cases:
        for p in PROCESSORS:
            r = run(frg, p)
            for s in STRATEGIES:
                ratios.setdefault((s, p), []).append(r[s])
                if s != "ours":
                    speedup.setdefault((s, p), []).append(r[s] / r["ours"])
    kinds = [f"random {'/'.join(SHAPES)} of {', '.join(map(str, SIZES))} tasks"] if any(" n=" in n for n, _ in cases) else []
    kinds += ["STG files"] if stg else []
    print(
        f"{mix_name}: {len(cases)} graphs ({'; '.join(kinds)}), tasks {', '.join(f'{k} {w:.0%}' for k, w in mix)}; "
        f"search-api 2, one 80 GB GPU per 4 processors"
    )
    print("makespan / lower bound, lower bound = max(critical path, demand-time / capacity per resource)")
    print(f"{'P':>2} {'strategy':<16} {'median':>7} {'p10':>7} {'p90':>7} {'worst':>7}   ours faster by (median, p10..p90)")
    for p in PROCESSORS:
        for s in STRATEGIES:
            xs = ratios[(s, p)]
            line = f"{p:>2} {s:<16} {statistics.median(xs):>7.3f} {pct(xs, 0.1):>7.3f} {pct(xs, 0.9):>7.3f} {max(xs):>7.3f}"
            if s != "ours":
                sp = speedup[(s, p)]
                line += f"   {statistics.median(sp):.3f}x ({pct(sp, 0.1):.3f}..{pct(sp, 0.9):.3f})"
            print(line)
    print()


if __name__ == "__main__":
    sys.exit(main())
