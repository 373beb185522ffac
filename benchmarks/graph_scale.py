"""`python benchmarks/graph_scale.py` -- how FRG building (and plan parsing) scales with plan size.

Builds synthetic plans of 10, 100, 1,000 and 10,000 calls (each call uses up to three random
earlier calls; half the functions are compute) as `Plan` objects, and times `FRG.build` plus
the derived data a run needs (mutex pairs, bottom levels, `to_json`). If the parser is
available (`prefect_llmorch.plan.parser.parse`), it also times parsing the rendered text.
Prints the time per call at each size and the growth ratio of the per-call time from one size
to the next (1.0 = linear). Seeded, so every run builds the same plans.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prefect_llmorch.graph import FRG  # noqa: E402
from prefect_llmorch.plan.model import Arg, Call, Literal, Plan, Ref  # noqa: E402

SIZES = (10, 100, 1000, 10000)
FUNCTIONS = ("search", "fetch", "detect", "python")
KINDS = {"search": "inout", "fetch": "inout", "detect": "compute", "python": "compute"}


def synthetic_plan(n: int, seed: int = 0) -> Plan:
    """A plan of n calls; call i uses up to 3 random earlier calls (more often recent ones)."""
    rnd = random.Random(seed)
    calls = []
    for i in range(1, n + 1):
        k = rnd.randint(0, min(3, i - 1))
        refs = sorted({rnd.randint(max(1, i - 50), i - 1) for _ in range(k)})
        args = [Arg(None, Literal(f"item {i}"))] + [Arg(None, Ref(f"s{j}")) for j in refs]
        calls.append(Call(f"s{i}", rnd.choice(FUNCTIONS), tuple(args)))
    return Plan(tuple(calls))


def render_paper(plan: Plan) -> str:
    """Render in the paper dialect (fallback when `plan/render.py` is not there yet)."""
    try:
        return plan.to_text("paper")
    except Exception:  # render.py not written yet, or it failed: our own simple renderer
        lines = []
        for call in plan.calls:
            parts = []
            for arg in call.args:
                v = arg.value
                parts.append(v.id if isinstance(v, Ref) else repr(v.value))  # type: ignore[union-attr]
            lines.append(f"{call.id}: {call.function}({', '.join(parts)})")
        return "\n".join(lines) + "\n"


def best_of(fn: Callable[[], object], budget: float = 1.0, at_most: int = 50) -> float:
    """Smallest wall time of fn() over repeated runs within about `budget` seconds."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < at_most and (not times or time.perf_counter() - start < budget):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def build_all(plan: Plan) -> FRG:
    kinds = {c.id: KINDS[c.function] for c in plan.calls}
    frg = FRG.build(plan, kinds=kinds)
    frg.mutex, frg.to_json()  # derived data a run or `llmorch graph` needs
    return frg


def report(label: str, per_call: dict[int, float]) -> None:
    print(f"\n{label}")
    print(f"{'calls':>7} {'total ms':>10} {'us/call':>9} {'growth of us/call':>18}")
    prev = None
    for n, t in per_call.items():
        growth = "" if prev is None else f"{t / prev:.2f}x"
        print(f"{n:>7} {t * n * 1e3:>10.2f} {t * 1e6:>9.1f} {growth:>18}")
        prev = t


def main() -> None:
    plans = {n: synthetic_plan(n) for n in SIZES}
    kinds = {n: {c.id: KINDS[c.function] for c in p.calls} for n, p in plans.items()}
    build = {n: best_of(lambda p=p, k=kinds[n]: FRG.build(p, kinds=k)) / n for n, p in plans.items()}
    full = {n: best_of(lambda p=p: build_all(p)) / n for n, p in plans.items()}
    for n, p in plans.items():
        frg = build_all(p)
        print(f"{n:>6} calls: {frg.n_edges} edges, max rank {max(frg.rank.values())}, {len(frg.mutex)} mutex pairs")
    report("FRG.build: edges, ranks, bottom levels, critical path (best of repeated runs)", build)
    report("FRG.build + mutex pairs + to_json (pairs grow with the square of a rank's width)", full)
    try:
        from prefect_llmorch.plan.parser import parse
    except ImportError as exc:
        print(f"\nparse: skipped, the parser is not available yet ({exc})")
        return
    texts = {n: render_paper(p) for n, p in plans.items()}
    try:
        parsed = parse(texts[10])
        assert [c.id for c in parsed.calls] == [c.id for c in plans[10].calls]
    except Exception as exc:  # noqa: BLE001 - the parser is being written; report, don't crash
        print(f"\nparse: skipped, parsing the rendered text failed: {type(exc).__name__}: {exc}")
        return
    sizes = [n for n in SIZES if n <= 1000]
    parse_t = {n: best_of(lambda t=texts[n]: parse(t), budget=2.0, at_most=10) / n for n in sizes}
    report("parse(text) of the rendered plan (best of repeated runs)", parse_t)
    both = {n: parse_t[n] + build[n] for n in sizes}
    report("parse + FRG.build", both)


if __name__ == "__main__":
    main()
