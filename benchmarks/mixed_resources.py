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
demand-time / capacity), and ours' speedup over each. Simulation only: exact, the same on
every machine, no GPU needed.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for _p in (str(HERE.parent), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from mixed_toolbox import toolbox  # noqa: E402
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


def main() -> int:
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
