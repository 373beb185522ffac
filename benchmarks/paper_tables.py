"""The paper's tables, measured side by side: ReAct-style, parallel function calling,
LLMCompiler-style and ours (policies `paper` and `critical-path`) on the same workloads.

    PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120 \\
        python benchmarks/paper_tables.py            # or: llmorch bench paper

Every workload, every per-call time and the LLM's speed are in `benchmarks/workloads.toml`.
Each system answers each workload's question through a real OpenAI-compatible HTTP server
(`FakeLLM`, with the config's latency and token delay) scripted with what that system needs
to read, and runs the calls through Prefect flows (`baselines`).

Printed per workload: each system's latency (from the first LLM request to the end of the
last call), speedup vs ReAct-style, LLM round trips, tokens and their ratio vs ReAct-style,
and our latency / lower bound. The lower bound is for any system that receives the plan
by the same stream: each call is released when its line has streamed (latency + token delay
x tokens up to the newline after it), and

    LB(P) = max( max over calls v of  head(v) + bottom_level(v),
                 max over sets C  of  min head(C) + compute work(C) / P + min tail(C) )

where head(v) is the earliest start allowed by releases and deps, tail(v) the longest path
after v, and C ranges over the compute calls with head >= h and tail >= t (all h, t).

Writes `benchmarks/out/report.md`, `report.json` and, with matplotlib (extra `bench`),
`speedup_vs_p.png` (simulated P = 1..8 as lines, measured P as markers) and `gantt.png`.
Runs against a private PREFECT_HOME (`benchmarks/out/prefect-home`) unless PREFECT_HOME or
PREFECT_API_URL is set, so other ephemeral servers' SQLite traffic does not stall it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import string
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
# our worker processes import the toolbox (`paper_toolbox:toolbox`) by name
os.environ["PYTHONPATH"] = os.pathsep.join([str(BENCH)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
if "PREFECT_HOME" not in os.environ and "PREFECT_API_URL" not in os.environ:
    os.environ["PREFECT_HOME"] = str(OUT / "prefect-home")
    (OUT / "prefect-home").mkdir(parents=True, exist_ok=True)

TOOLBOX = "paper_toolbox:toolbox"
NOLIMIT = "llmorch-critical-path-nolimit"
LABELS = {
    "react": "ReAct-style",
    "parallel-fc": "parallel FC",
    "llmcompiler": "LLMCompiler-style",
    "llmorch-paper": "ours (paper)",
    "llmorch-critical-path": "ours (critical-path)",
    "llmorch-critical-path-nolimit": "ours (critical-path), no global limit",
}
OURS = "llmorch-critical-path"
#: Workloads where ours also runs without the `llmorch-processors` global concurrency limit
#: (a diagnostic: taking its slot through the API can land on the critical path).
NOLIMIT_WORKLOADS = ("kitti", "agnews")


# -- the config ------------------------------------------------------------------------


@dataclass
class Workload:
    name: str
    title: str
    about: str
    question: str
    text: str  # the plan, times filled in
    plan: Any  # Plan
    frg: Any  # FRG with each call's time as its cost


@dataclass
class Config:
    latency: float
    token_delay: float
    measured: list[int]
    simulated: int
    main_p: int
    scaling: list[str]
    gantt: str
    workloads: dict[str, Workload]
    path: Path


def call_seconds(call: Any, toolbox: Any) -> float:
    """The `seconds` argument of a call (its time), a literal in the plan."""
    import inspect

    from prefect_llmorch.plan.model import Literal

    spec = toolbox[call.function]
    params = list(inspect.signature(spec.fn).parameters)
    for k, arg in enumerate(call.args):
        if arg.name == "seconds" or (arg.name is None and params[k] == "seconds"):
            if not isinstance(arg.value, Literal):
                raise ValueError(f"{call.id}: the seconds argument must be a number")
            return float(arg.value.value)
    return float(inspect.signature(spec.fn).parameters["seconds"].default)


def load_config(path: Path) -> Config:
    from paper_toolbox import toolbox

    from prefect_llmorch.graph import FRG
    from prefect_llmorch.plan.parser import parse

    raw = tomllib.loads(path.read_text())
    times = {k: repr(float(v)) for k, v in raw["times"].items()}
    workloads = {}
    for name, w in raw["workload"].items():
        text = string.Template(w["plan"]).substitute(times).strip() + "\n"
        plan = parse(text, toolbox)
        costs = {c.id: call_seconds(c, toolbox) for c in plan.calls}
        workloads[name] = Workload(name, w["title"], w["about"], w["question"], text, plan, FRG.build(plan, toolbox, costs=costs))
    pr = raw["processors"]
    return Config(
        latency=float(raw["llm"]["latency"]), token_delay=float(raw["llm"]["token_delay"]),
        measured=list(pr["measured"]), simulated=int(pr["simulated"]), main_p=int(pr["main"]),
        scaling=list(pr["scaling"]), gantt=pr["gantt"], workloads=workloads, path=path,
    )


# -- model: release times, lower bound, simulated systems -------------------------------


def reply_seconds(cfg: Config, reply: str) -> float:
    """How long the fake server takes to answer `reply` in full."""
    from prefect_llmorch.testing.fake_llm import tokens_of

    return cfg.latency + cfg.token_delay * len(tokens_of(reply))


def release_times(cfg: Config, wl: Workload) -> dict[str, float]:
    """When each call's line has streamed, so that the planner can dispatch it."""
    from baselines import plan_script
    from prefect_llmorch.testing.fake_llm import tokens_of

    text = plan_script(wl.plan)[0]
    tokens = tokens_of(text)
    ends, pos = [], 0
    for tok in tokens:
        pos += len(tok)
        ends.append(pos)
    out = {}
    for call in wl.plan.calls:
        # the newline after the call's last line arrives with the next line's first token
        line_end = sum(len(row) + 1 for row in text.splitlines()[: call.line - 1]) + len(text.splitlines()[call.line - 1])
        k = next((i for i, e in enumerate(ends) if e > line_end), len(tokens) - 1)
        out[call.id] = cfg.latency + cfg.token_delay * (k + 1)
    return out


def lower_bound(frg: Any, release: dict[str, float], P: int) -> float:
    """LB(P) of the module docstring: no system that streams this plan can do better."""
    head: dict[str, float] = {}
    for v in frg.topological_order():
        head[v] = max([release[v]] + [head[d] + frg.cost[d] for d in frg.deps[v]])
    tail = {v: frg.bottom_level[v] - frg.cost[v] for v in frg.ids}
    best = max(head[v] + frg.bottom_level[v] for v in frg.ids)
    compute = [v for v in frg.ids if frg.kind[v] == "compute"]
    for h in {head[v] for v in compute}:
        for t in {tail[v] for v in compute}:
            C = [v for v in compute if head[v] >= h and tail[v] >= t]
            if C:
                best = max(best, min(head[v] for v in C) + sum(frg.cost[v] for v in C) / P + min(tail[v] for v in C))
    return best


def _with_releases(frg: Any, release: dict[str, float]) -> Any:
    from prefect_llmorch.graph import FRG

    ids = [f"release:{v}" for v in frg.ids] + list(frg.ids)
    deps = {v: sorted(frg.deps[v]) + [f"release:{v}"] for v in frg.ids}
    kinds = {**{f"release:{v}": "inout" for v in frg.ids}, **frg.kind}
    costs = {**{f"release:{v}": release[v] for v in frg.ids}, **frg.cost}
    return FRG.from_edges(ids, deps, kinds, costs)


def simulated(cfg: Config, wl: Workload, system: str, P: int) -> float:
    """The latency each system would have with no overheads (the fake LLM's timing, the
    configured call times; compute calls on threads share one core under the GIL)."""
    from baselines import script_for
    from prefect_llmorch.schedule.simulator import simulate, simulate_baseline

    frg = wl.frg
    if system == NOLIMIT:
        system = OURS
    if system == "react":
        return sum(reply_seconds(cfg, r) for r in script_for("react", wl.plan)) + frg.work
    if system == "parallel-fc":
        replies = script_for("parallel-fc", wl.plan)
        total = 0.0
        for reply, rank in zip(replies, sorted(set(frg.rank.values()))):
            ids = [v for v in frg.ids if frg.rank[v] == rank]
            inout = [frg.cost[v] for v in ids if frg.kind[v] == "inout"]
            compute = [frg.cost[v] for v in ids if frg.kind[v] == "compute"]
            total += reply_seconds(cfg, reply) + max(max(inout, default=0.0), sum(compute))
        return total
    g = _with_releases(frg, release_times(cfg, wl))
    if system == "llmcompiler":
        return simulate_baseline(g, 1, "eager").makespan  # threads: one core under the GIL
    if system == "llmcompiler-processes":
        return simulate_baseline(g, P, "eager").makespan  # a process per call, time-sliced on P cores
    return simulate(g, P, system.removeprefix("llmorch-")).makespan


# -- measuring --------------------------------------------------------------------------


def measure(cfg: Config, wl: Workload, system: str, P: int) -> Any:
    """Run `system` on the workload once, against a fresh scripted server; LLM times are
    the server's (request received to last byte written), for every system alike."""
    from baselines import run_llmorch, run_system, script_for
    from prefect_llmorch.llm.client import LLMClient
    from prefect_llmorch.testing.fake_llm import FakeLLM

    with FakeLLM(script_for(OURS, wl.plan), token_delay=cfg.token_delay, latency=cfg.latency) as server:
        client = LLMClient(server.base_url, "fake-llm", api_key="bench-key-not-secret")
        if system == NOLIMIT:
            run = run_llmorch(wl.question, TOOLBOX, client, processors=P, concurrency_limit=None)
        else:
            server._script.clear()
            server.add(*script_for(system, wl.plan))
            run = run_system(system, wl.question, TOOLBOX, client, processors=P)
        offset = time.time() - time.monotonic()
        run.llm = [(r.received_at + offset, r.finished_at + offset) for r in server.chat_requests]
        client.close()
    bad = [c["id"] for c in run.calls if c.get("state") != "Completed"]
    if bad or len(run.calls) != len(wl.plan):
        raise RuntimeError(f"{system} on {wl.name}: calls {bad} did not complete")
    return run


def _row(run: Any) -> dict[str, Any]:
    z = run.zero()
    return {
        "latency": run.latency, "makespan": run.makespan, "wall": run.wall, "round_trips": len(run.llm),
        "prompt_tokens": run.prompt_tokens, "completion_tokens": run.completion_tokens,
        "llm": [(s - z, e - z) for s, e in run.llm],
        "calls": [{**c, "start": c["start"] - z, "end": c["end"] - z} for c in run.calls],
    }


def run_all(cfg: Config, systems: list[str], names: list[str], repeat: int, log: Any) -> dict[str, Any]:
    from baselines import SYSTEMS

    results: dict[str, Any] = {}
    # Warm-up (not recorded): the ephemeral server, Prefect's imports, our worker start-up path.
    first = cfg.workloads[names[0]]
    for system in (OURS, "llmcompiler"):
        measure(cfg, first, system, cfg.main_p)
    for name in names:
        wl = cfg.workloads[name]
        ps = sorted({cfg.main_p} | (set(cfg.measured) if name in cfg.scaling else set()))
        results[name] = {}
        for P in ps:
            extra = [NOLIMIT] if name in NOLIMIT_WORKLOADS and P == cfg.main_p else []
            for system in systems + extra:
                if P != cfg.main_p and system not in ("llmorch-paper", "llmorch-critical-path"):
                    continue  # the baselines do not use P (threads, one core for compute)
                runs = [measure(cfg, wl, system, P) for _ in range(repeat)]
                med = sorted(runs, key=lambda r: r.latency)[len(runs) // 2]
                row = _row(med)
                row["all_latencies"] = [r.latency for r in runs]
                results[name].setdefault(str(P), {})[system] = row
                log(f"  {wl.title:<34} P={P} {LABELS[system]:<21} latency {row['latency']:6.2f} s  "
                    f"(wall {row['wall']:5.2f} s, {row['round_trips']} LLM requests, "
                    f"{row['prompt_tokens'] + row['completion_tokens']} tokens)")
    assert set(systems) <= set(SYSTEMS)
    return results


# -- reporting --------------------------------------------------------------------------


def summarize(cfg: Config, results: dict[str, Any], systems: list[str]) -> list[dict[str, Any]]:
    """One row per (workload, system) at the main P, with ratios and the model's numbers."""
    rows = []
    P = cfg.main_p
    for name, by_p in results.items():
        wl = cfg.workloads[name]
        lb = lower_bound(wl.frg, release_times(cfg, wl), P)
        got = by_p[str(P)]
        react = got.get("react")
        for system in systems + [s for s in got if s not in systems]:
            r = got[system]
            tokens = r["prompt_tokens"] + r["completion_tokens"]
            rows.append({
                "workload": name, "title": wl.title, "system": system, "P": P,
                "latency": r["latency"],
                "speedup": react["latency"] / r["latency"] if react else None,
                "round_trips": r["round_trips"], "tokens": tokens,
                "token_ratio": tokens / (react["prompt_tokens"] + react["completion_tokens"]) if react else None,
                "simulated": simulated(cfg, wl, system, P), "lower_bound": lb,
                "vs_lb": r["latency"] / lb if system.startswith("llmorch") else None,
                "vs_lb_measured": r["latency"] / measured_lower_bound(cfg, wl, r, P) if system.startswith("llmorch") else None,
                "compute_stretch": _stretch(wl, r),
            })
    return rows


def measured_lower_bound(cfg: Config, wl: Workload, row: dict[str, Any], P: int) -> float:
    """LB(P) with each call's time as measured in this run (machine contention included)."""
    from prefect_llmorch.graph import FRG

    costs = {c["id"]: c["end"] - c["start"] for c in row["calls"]}
    frg = FRG.from_edges(wl.frg.ids, wl.frg.deps, wl.frg.kind, costs)
    return lower_bound(frg, release_times(cfg, wl), P)


def _stretch(wl: Workload, row: dict[str, Any]) -> float | None:
    """Measured / configured time of the compute calls (1.0: they got a core to themselves)."""
    calls = [c for c in row["calls"] if c["kind"] == "compute"]
    if not calls:
        return None
    return sum(c["end"] - c["start"] for c in calls) / sum(wl.frg.cost[c["id"]] for c in calls)


def _fmt(x: Any, spec: str = ".2f", suffix: str = "") -> str:
    return "" if x is None else f"{x:{spec}}{suffix}"


def tables(cfg: Config, rows: list[dict[str, Any]], systems: list[str]) -> str:
    """The markdown tables: a compact one (speedups) and a full one."""
    P = cfg.main_p
    names = list(dict.fromkeys(r["workload"] for r in rows))
    by = {(r["workload"], r["system"]): r for r in rows}
    head = ["workload"] + [LABELS[s] for s in systems] + ["ours / LB", "ours / LB (measured call times)"]
    out = [f"Speedup of latency vs ReAct-style (measured, P = {P}; latency in seconds in brackets):", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in names:
        cells = [cfg.workloads[n].title]
        for s in systems:
            r = by[(n, s)]
            cells.append(f"{_fmt(r['speedup'], '.2f', 'x')} ({r['latency']:.2f})")
        ours = by.get((n, OURS))
        cells.append(_fmt(ours and ours["vs_lb"], ".3f"))
        cells.append(_fmt(ours and ours["vs_lb_measured"], ".3f"))
        out.append("| " + " | ".join(cells) + " |")
    out += ["", f"Every system, P = {P}:", "",
            "| workload | system | latency (s) | speedup vs ReAct | LLM requests | tokens | tokens / ReAct | simulated (s) | LB (s) | / LB | compute stretch |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(
            f"| {r['title']} | {LABELS[r['system']]} | {r['latency']:.2f} | {_fmt(r['speedup'], '.2f', 'x')} | "
            f"{r['round_trips']} | {r['tokens']} | {_fmt(r['token_ratio'], '.2f')} | {r['simulated']:.2f} | "
            f"{r['lower_bound']:.2f} | {_fmt(r['vs_lb'], '.3f')} | {_fmt(r['compute_stretch'], '.2f')} |"
        )
    return "\n".join(out)


def claims(cfg: Config, rows: list[dict[str, Any]]) -> list[tuple[str, bool, str]]:
    """The issue's claims, checked on the measured numbers (P = main)."""
    by = {(r["workload"], r["system"]): r for r in rows}
    out = []
    for name in ("kitti", "agnews"):
        if (name, OURS) not in by:
            continue
        ours = by[(name, OURS)]
        title = cfg.workloads[name].title
        for other in ("llmcompiler", "parallel-fc"):
            if (name, other) in by:
                o = by[(name, other)]
                out.append((f"{title}: ours beats {LABELS[other]}", ours["latency"] < o["latency"],
                            f"{ours['latency']:.2f} s vs {o['latency']:.2f} s"))
        out.append((f"{title}: ours within 10% of the lower bound", ours["vs_lb"] <= 1.10,
                    f"{ours['latency']:.2f} s / {ours['lower_bound']:.2f} s = {ours['vs_lb']:.3f}"))
        if (name, NOLIMIT) in by:
            n = by[(name, NOLIMIT)]
            out.append((f"{title} (diagnostic): ours without the global concurrency limit within 10% of the lower bound",
                        n["vs_lb"] <= 1.10, f"{n['latency']:.2f} s / {n['lower_bound']:.2f} s = {n['vs_lb']:.3f}"))
    return out


def plot_speedup(cfg: Config, results: dict[str, Any], systems: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in cfg.scaling if n in results]
    fig, axes = plt.subplots(1, len(names), figsize=(6.5 * len(names), 4.8), squeeze=False)
    Ps = list(range(1, cfg.simulated + 1))
    colors = {"parallel-fc": "tab:orange", "llmcompiler": "tab:red", "llmcompiler-processes": "tab:pink",
              "llmorch-paper": "tab:blue", "llmorch-critical-path": "tab:green", "react": "tab:gray",
              NOLIMIT: "yellowgreen"}
    for ax, name in zip(axes[0], names):
        wl = cfg.workloads[name]
        react_sim = simulated(cfg, wl, "react", 1)
        for system in [s for s in systems if s != "react"] + ["llmcompiler-processes"]:
            label = LABELS.get(system, "LLMCompiler-style, a process per call")
            ys = [react_sim / simulated(cfg, wl, system, P) for P in Ps]
            ax.plot(Ps, ys, "--" if system == "llmcompiler-processes" else "-", color=colors[system], alpha=0.8,
                    label=f"{label} (simulated)")
        for p, got in results[name].items():
            react = got.get("react") or results[name][str(cfg.main_p)]["react"]
            for system, r in got.items():
                if system == "react":
                    continue
                ax.plot(int(p), react["latency"] / r["latency"], "o", color=colors[system], markersize=8,
                        markeredgecolor="black", label=None)
        ax.plot([], [], "o", color="white", markeredgecolor="black", label="measured on this machine (2 cores)")
        ax.axvspan(0.5, os.cpu_count() + 0.5, color="0.92", zorder=0)
        ax.text(os.cpu_count() + 0.6, ax.get_ylim()[0] + 0.05, "above the machine's cores:\nsimulated only", fontsize=8, va="bottom")
        ax.set_title(f"{wl.title}: speedup vs ReAct-style")
        ax.set_xlabel("processors P")
        ax.set_ylabel("speedup of latency vs ReAct-style")
        ax.set_xticks(Ps)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gantt(cfg: Config, results: dict[str, Any], systems: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    name = cfg.gantt
    got = results[name][str(cfg.main_p)]
    wl = cfg.workloads[name]
    order = list(wl.frg.ids)
    fig, axes = plt.subplots(len(systems), 1, figsize=(11, 2.3 * len(systems)), sharex=True)
    color = {"compute": "tab:green", "inout": "tab:blue", "llm": "tab:purple"}
    for ax, system in zip(axes, systems):
        r = got[system]
        rows = ["LLM"] + order
        for s, e in r["llm"]:
            ax.barh(0, e - s, left=s, color=color["llm"], edgecolor="black", linewidth=0.4)
        for c in r["calls"]:
            y = rows.index(c["id"])
            ax.barh(y, c["end"] - c["start"], left=c["start"], color=color[c["kind"]], edgecolor="black", linewidth=0.4)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(rows, fontsize=6)
        ax.invert_yaxis()
        ax.set_title(f"{LABELS[system]}: latency {r['latency']:.2f} s", fontsize=9, loc="left")
        ax.grid(axis="x", alpha=0.3)
    axes[-1].set_xlabel("seconds from the first LLM request")
    fig.legend(handles=[Patch(color=color["llm"], label="LLM request (planner / step)"),
                        Patch(color=color["compute"], label="compute call"),
                        Patch(color=color["inout"], label="inout call")], loc="upper right", fontsize=8)
    fig.suptitle(f"{wl.title}, P = {cfg.main_p}, measured", fontsize=10, x=0.1, ha="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from baselines import SYSTEMS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=BENCH / "workloads.toml")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--only", nargs="*", default=None, help="workloads to run (default: all)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per system and workload (the median is kept)")
    parser.add_argument("--replot", action="store_true", help="no runs: tables and plots from the last report.json")
    args = parser.parse_args(argv)

    began = time.time()
    load_before = os.getloadavg()
    cfg = load_config(args.config)
    names = args.only or list(cfg.workloads)
    unknown = [n for n in names if n not in cfg.workloads]
    if unknown:
        parser.error(f"unknown workloads {unknown}; known: {', '.join(cfg.workloads)}")
    systems = list(SYSTEMS)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{len(names)} workloads x {len(systems)} systems, P = {cfg.main_p} (and {cfg.measured} for "
          f"{', '.join(cfg.scaling)}); LLM: {cfg.latency:g} s to first token, {cfg.token_delay:g} s per token", flush=True)
    if args.replot:
        saved = json.loads((args.out / "report.json").read_text())
        results, began = saved["results"], time.time() - saved["seconds"]
        names = list(results)
    else:
        results = run_all(cfg, systems, names, args.repeat, lambda s: print(s, flush=True))
    rows = summarize(cfg, results, systems)
    checked = claims(cfg, rows)
    elapsed = time.time() - began
    text = tables(cfg, rows, systems)
    print()
    print(text)
    print()
    for claim, ok, detail in checked:
        print(f"{'HOLDS' if ok else 'DOES NOT HOLD'}: {claim} ({detail})")
    print(f"\n{elapsed:.0f} s in all; load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")

    pngs = []
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plots")
    else:
        if any(n in results for n in cfg.scaling):
            plot_speedup(cfg, results, systems, args.out / "speedup_vs_p.png")
            pngs.append("speedup_vs_p.png")
        if cfg.gantt in results:
            plot_gantt(cfg, results, systems, args.out / "gantt.png")
            pngs.append("gantt.png")
    md = [
        "# LLMOrch vs baselines, measured side by side", "",
        f"Command: `python benchmarks/paper_tables.py{' --repeat ' + str(args.repeat) if args.repeat != 1 else ''}"
        f"{' --only ' + ' '.join(args.only) if args.only else ''}` ({elapsed:.0f} s). "
        f"Machine: {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, "
        f"load average {load_before[0]:.2f} before and {os.getloadavg()[0]:.2f} after. "
        f"Config: `{args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config}`; "
        f"LLM {cfg.latency:g} s to first token, {cfg.token_delay:g} s per token.", "",
        text, "",
        "Makespan: from the first LLM request to the end of the last call (Prefect flow start-up "
        "and tear-down are not in it). Simulated: the same systems with no overheads. LB: the lower "
        "bound for any system receiving the plan by the same stream (see `paper_tables.py`); "
        "LB (measured call times): the same bound with each call's time as measured in our run. "
        "Compute stretch: measured / configured time of the compute calls (above 1 when a call "
        "did not have a core to itself: the GIL, the Prefect server, other processes).", "",
        "## Claims (P = %d)" % cfg.main_p, "",
        *[f"- {'holds' if ok else '**does not hold**'}: {claim} ({detail})" for claim, ok, detail in checked], "",
        "## Workloads", "",
        *[f"- **{cfg.workloads[n].title}** ({len(cfg.workloads[n].plan)} calls, work {cfg.workloads[n].frg.work:.1f} s): "
          f"{cfg.workloads[n].about}" for n in names], "",
        *[f"![{p}]({p})" for p in pngs],
    ]
    (args.out / "report.md").write_text("\n".join(md) + "\n")
    (args.out / "report.json").write_text(json.dumps({"rows": rows, "claims": checked, "results": results, "seconds": elapsed}, indent=1, default=repr))
    print(f"wrote {args.out / 'report.md'}" + (f" and {', '.join(pngs)}" if pngs else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
