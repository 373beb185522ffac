"""`python benchmarks/stg_simulation.py` -- policies and baselines on the Standard Task Graph set.

For every STG file in `/work/shared/data/stg` (or the directory given as the first argument)
and P in {2, 4, 8, 16}, simulates the coordinator with each policy (`critical-path`,
`paper`) and the baselines (`eager`, `rank-barrier`), and prints the mean and worst ratio
makespan / lower bound per strategy, where the lower bound is max(L, W/P). Target for the
default `critical-path` policy: mean <= 1.01, worst <= 1.07. Simulation only (costs from the
files), so the numbers are exact and the same on every machine.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prefect_llmorch.schedule.policy import POLICIES  # noqa: E402
from prefect_llmorch.schedule.simulator import read_stg, simulate, simulate_baseline  # noqa: E402

STG_DIR = Path("/work/shared/data/stg")
PROCESSORS = (2, 4, 8, 16)
STRATEGIES = (*POLICIES, "eager", "rank-barrier")
TARGET = {"critical-path": (1.01, 1.07)}


def main(stg_dir: Path = STG_DIR) -> int:
    files = sorted(stg_dir.glob("*.stg"))
    if not files:
        print(f"no .stg files in {stg_dir}")
        return 1
    t0 = time.perf_counter()
    ratios: dict[str, list[float]] = {s: [] for s in STRATEGIES}
    worst_at: dict[str, str] = {}
    per_p: dict[tuple[str, int], list[float]] = {}
    print(f"{'file':<14} {'tasks':>5} {'P':>3} {'LB':>8} " + " ".join(f"{s:>13}" for s in STRATEGIES))
    for path in files:
        frg = read_stg(path)
        for p in PROCESSORS:
            lb = frg.lower_bound(p)
            row = []
            for s in STRATEGIES:
                sched = simulate(frg, p, s) if s in POLICIES else simulate_baseline(frg, p, s)
                r = sched.makespan / lb
                if not ratios[s] or r > max(ratios[s]):
                    worst_at[s] = f"{path.name} P={p}"
                ratios[s].append(r)
                per_p.setdefault((s, p), []).append(r)
                row.append(r)
            print(f"{path.name:<14} {len(frg):>5} {p:>3} {lb:>8.1f} " + " ".join(f"{r:>13.4f}" for r in row))
    print(f"\nmakespan / lower bound over {len(files)} files x P in {PROCESSORS} ({len(files) * len(PROCESSORS)} runs each)")
    print(f"{'strategy':<14} {'mean':>7} {'worst':>7}  worst at          " + " ".join(f"mean P={p:<3}" for p in PROCESSORS))
    ok = True
    for s in STRATEGIES:
        mean, worst = statistics.mean(ratios[s]), max(ratios[s])
        by_p = " ".join(f"{statistics.mean(per_p[(s, p)]):>9.4f}" for p in PROCESSORS)
        verdict = ""
        if s in TARGET:
            tm, tw = TARGET[s]
            met = mean <= tm and worst <= tw
            ok &= met
            verdict = f"  target mean <= {tm}, worst <= {tw}: {'met' if met else 'MISSED'}"
        print(f"{s:<14} {mean:>7.4f} {worst:>7.4f}  {worst_at[s]:<17} {by_p}{verdict}")
    print(f"\n({time.perf_counter() - t0:.1f} s)")
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else STG_DIR))
