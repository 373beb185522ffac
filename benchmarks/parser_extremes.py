"""Parser extremes (issue 13): wall and CPU time and peak RSS of parsing and rendering huge or
pathological plans, each case in its own process.

    python benchmarks/parser_extremes.py            # every case
    python benchmarks/parser_extremes.py list sum   # some

Cases: `list` (0.9 MB list of distinct ints), `list10` (1 MB list of 0-9), `dicts` (a list of
25,000 small dicts of literals, 1 MB), `mixed` (a 169 KB
list ending in a reference: the general list rule), `undef` (5,000 undefined references on
one line), `undef_lines` (5,000 calls each with one), `sum` (a flat 10,000-term sum), `deep`
(lists nested 3,000 deep: a clear error), `render` (parse and `to_text` of 1 MB of `{s1}`).
To compare with an older checkout, run it with `PYTHONPATH=<that checkout>`.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time

CASES = ("list", "list10", "dicts", "mixed", "undef", "undef_lines", "sum", "deep", "render")


def _texts(case: str) -> list[tuple[str, str, str]]:
    """(label, plan text, what to do: "parse" | "render") of a case."""
    if case == "list":
        body = ",".join(str(i) for i in range(150_000))
        return [("list 0.9 MB", f"s1: f([{body}])\n", "parse")]
    if case == "list10":
        body = ",".join(str(i % 10) for i in range(500_000))
        return [("list 1.0 MB (0-9)", f"s1: f([{body}])\n", "parse")]
    if case == "dicts":
        rows = ", ".join(f'{{"id": {i}, "name": "n{i}", "ok": true}}' for i in range(25_000))
        return [("25,000 dicts, 1 MB", f"s1: f([{rows}])\n", "parse")]
    if case == "mixed":
        body = ",".join(str(i) for i in range(30_000))
        return [("list 169 KB + a ref", f"s0: g()\ns1: f([{body}, s0])\n", "parse")]
    if case == "undef":
        return [("5000 undefined (1 line)", "s1: f(" + ", ".join(f"x{i}" for i in range(5000)) + ")\n", "parse")]
    if case == "undef_lines":
        return [("5000 undefined (lines)", "".join(f"s{i}: f(s{i - 1}, x{i})\n" for i in range(1, 5001)), "parse")]
    if case == "sum":
        return [("10000-term sum", "s1: f(" + "+".join(["1"] * 10000) + ")\n", "parse")]
    if case == "deep":
        return [("3000 nested lists", "s1: f(" + "[" * 3000 + "1" + "]" * 3000 + ")\n", "parse")]
    if case == "render":
        text = 's1: f("a")\ns2: g("' + "{s1}" * 250_000 + '")\n'
        return [("parse 1 MB of {s1}", text, "parse"), ("to_text 1 MB of {s1}", text, "render")]
    raise SystemExit(f"unknown case {case!r}; cases: {', '.join(CASES)}")


def _one(case: str) -> None:
    from prefect_llmorch.plan.errors import PlanError
    from prefect_llmorch.plan.parser import parse

    for label, text, what in _texts(case):
        plan = parse(text) if what == "render" else None
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            out = f"{len(plan.to_text())} chars" if plan is not None else f"{len(parse(text))} calls"
        except PlanError as exc:
            out = f"PlanError: {len(getattr(exc, 'errors', []))} kept, str {len(str(exc))} chars"
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3 - base
        print(f"{label:24s} {wall:7.2f} s wall {cpu:7.2f} s CPU  peak RSS +{peak:5.0f} MB  {out}", flush=True)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--one"]:
        _one(argv[1])
        return
    for case in argv or CASES:
        subprocess.run([sys.executable, __file__, "--one", case], check=False)


if __name__ == "__main__":
    main(sys.argv[1:])
