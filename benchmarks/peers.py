"""`python benchmarks/peers.py` -- ours against agent frameworks a user would install, side by side.

    pip install -e ".[peers]"        # pydantic-ai-slim[openai,prefect], langchain, langgraph, langchain-openai
    python benchmarks/peers.py       # --repeat 5 (default), --only kitti|prices, --systems ...

Systems, all in this one warm process, against one Prefect server (`prefect_test_harness`:
a temporary SQLite database and its own API server):

- `ours`: `ask_query(question, "peers:toolbox", processors=2)` (the `llmorch-ask` flow): one
  streamed plan; calls start as their lines arrive; compute calls in 2 worker processes.
- `pydantic-ai PrefectAgent`: `PrefectAgent(Agent(OpenAIChatModel(...), tools=...)).run_sync(q)`
  (pydantic_ai.durable_exec.prefect, as its docs show): the run is a Prefect flow, every
  model request and every tool call an (async) Prefect task with the integration's default
  config (results persisted, cache keyed by inputs and flow run). Tool calls of one model
  turn run concurrently; a sync tool runs on a worker thread of the flow process (anyio).
- `pydantic-ai PrefectDurability`: the same agent with `capabilities=[PrefectDurability()]`,
  `agent.run_sync(q)` inside a `@flow` (what `PrefectAgent`'s deprecation message says to use).
- `langgraph create_agent`: `langchain.agents.create_agent(ChatOpenAI(...), tools=...)`
  (the current home of `langgraph.prebuilt.create_react_agent`, a LangGraph graph; falls
  back to that when `langchain` is absent), `.invoke(...)`: the tool node runs one turn's tool
  calls on a thread pool of this process. No Prefect.

The peers talk OpenAI tool calls to the same local scripted server (`FakeLLM`, 127.0.0.1) as
a parallel-function-calling model would: one turn answers every call that is ready at once
(KITTI-like: the 8 frames, then the 2 means, then the report, then the final answer), with
the arguments built from the tool results the client sent back. Ours gets the same calls as
one plan. Every system calls the same Python functions (`bench_toolbox.frame/mean/report`
and `price` below): compute calls burn `time.thread_time()`, so on threads of one process
they take turns on one core under the GIL; inout calls sleep.

Workloads (P = 2):

- `kitti`: 8 x `frame` (1 s CPU) -> 2 x `mean` (0.5 s wait, 4 frames each) -> `report` (0.5 s).
  Best schedule of the calls on 2 processors: 4 x 1 s + 0.5 s + 0.5 s = 5.0 s.
- `prices`: 6 x `price` (0.5 s wait, independent) -> `mean` of the six (0.5 s). I/O-bound;
  best schedule 1.0 s.

Measured per run: wall clock from the moment the question is asked (the call of `ask_query`,
`run_sync`, `invoke`) to its return with the final answer, which is checked against the
functions' own result. "best" = the calls' best schedule + the scripted LLM's own time for
that system: the sum over its LLM requests of the server's time from request received to last
byte sent (latency + token delay x tokens). A peer's turns are sequential and its calls need
the turn that names them, so nothing can do better with its protocol; ours streams one plan
and starts calls while it streams, so it can go below its "best". Printed: median and spread
(min-max) over `--repeat` runs (one unrecorded warm-up round first; system order rotates
every round), median / ours, median / best, LLM requests and their time, the time from asking
to the first LLM request and from the last call's end to the answer, the compute calls' span
and the cores they got (CPU seconds / span), their process ids, and the load average before
and after (other sessions on the machine take cores from every system, most from ours, which
needs 2). `--latency 0 --token-delay 0` gives an instant LLM. No thresholds are asserted.
"""

from __future__ import annotations

import _setup  # noqa: F401  (paths and Prefect settings, before Prefect is imported)

import argparse  # noqa: E402
import functools  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import tomllib  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any, Callable  # noqa: E402

import bench_toolbox as tb  # noqa: E402
from prefect_llmorch import Toolbox, inout  # noqa: E402
from prefect_llmorch.plan.model import ListExpr, Literal, Plan, Ref  # noqa: E402
from prefect_llmorch.testing.fake_llm import FakeLLM, ToolCall, ToolCalls, tool_results  # noqa: E402

P = 2
KEY = "bench-key-not-secret"
MODEL = "fake-llm"


@inout(cost=0.5)
def price(ticker: str, seconds: float = 0.5) -> float:
    """Look up the last price of the stock `ticker` (a remote market-data API)."""
    time.sleep(seconds)
    return float(sum(map(ord, ticker)) % 97 + 100)


#: Every function of both workloads; our worker processes import it as `peers:toolbox`.
toolbox = Toolbox(tb.frame, tb.mean, tb.report, price)
TOOLBOX = "peers:toolbox"


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    question: str
    plan_text: str
    best_calls: float  # best schedule of the calls on P processors, seconds
    plan: Plan = field(init=False)

    def __post_init__(self) -> None:
        from prefect_llmorch.plan.parser import parse

        object.__setattr__(self, "plan", parse(self.plan_text, toolbox))


TICKERS = ("AAPL", "MSFT", "GOOG", "AMZN", "META", "NVDA")
WORKLOADS = {
    "kitti": Workload(
        "kitti", "KITTI-like (8 x 1 s CPU, 3 x 0.5 s wait)",
        "How many objects are there on average in frames 1-4 and in frames 5-8?",
        "\n".join(
            [f's{i}: frame("frame_{i:03d}", 1.0)' for i in range(1, 9)]
            + ["s9: mean([s1, s2, s3, s4], 0.5)", "s10: mean([s5, s6, s7, s8], 0.5)", "s11: report(s9, s10, 0.5)"]
        ) + "\n",
        best_calls=5.0,
    ),
    "prices": Workload(
        "prices", "I/O-bound (6 x 0.5 s price lookups, mean 0.5 s)",
        f"What is the average last price of {', '.join(TICKERS)}?",
        "\n".join([f's{i}: price("{t}", 0.5)' for i, t in enumerate(TICKERS, 1)] + ["s7: mean([s1, s2, s3, s4, s5, s6], 0.5)"]) + "\n",
        best_calls=1.0,
    ),
}

SYSTEM_PROMPT = "Answer the question with the tools. Call every tool you can call now at once."

#: How each system runs the tools (printed with the table).
HOW = {
    "ours": "Prefect task runs; compute calls in 2 worker processes, inout on threads",
    "pydantic-ai PrefectAgent": "Prefect async tasks in one process; sync tools on anyio threads (GIL);"
                                " deprecated in pydantic-ai 2.x for PrefectDurability",
    "pydantic-ai PrefectDurability": "same as PrefectAgent (capability API, agent.run_sync inside a @flow)",
    "langgraph create_agent": f"no Prefect; ToolNode runs a turn's calls on a thread pool (GIL;"
                              f" {min(32, (os.cpu_count() or 1) + 4)} threads by default here)",
}
SYSTEMS = tuple(HOW)


# -- the scripted tool-calling model -------------------------------------------------------


def _ranks(plan: Plan) -> list[list[Any]]:
    """The plan's calls grouped by rank: what a parallel-function-calling model calls per turn."""
    from prefect_llmorch.graph import FRG

    frg = FRG.build(plan)
    out: dict[int, list[Any]] = {}
    for call in plan.calls:
        out.setdefault(frg.rank[call.id], []).append(call)
    return [out[r] for r in sorted(out)]


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _resolve(expr: Any, results: dict[str, Any]) -> Any:
    if isinstance(expr, Literal):
        return expr.value
    if isinstance(expr, Ref) and not expr.path:
        return results[expr.id]
    if isinstance(expr, ListExpr):
        return [_resolve(e, results) for e in expr.items]
    raise ValueError(f"the peers' script handles literals, plain references and lists, not {expr!r}")


def _arguments(call: Any, results: dict[str, Any]) -> dict[str, Any]:
    """The call's arguments as a tool-calling model writes them: by name, results inlined."""
    params = list(inspect.signature(toolbox[call.function].fn).parameters)
    out = {}
    for k, arg in enumerate(call.args):
        out[arg.name or params[k]] = _resolve(arg.value, results)
    return out


def _call_id(call_id: str) -> str:
    return f"call_{call_id}"


def tool_script(plan: Plan) -> list[Callable[[dict[str, Any]], Any]]:
    """The replies of a parallel-function-calling model that runs `plan`: one turn per rank
    (every call of the rank at once, arguments from the tool results sent back so far), then
    a final text turn answering with the last call's result."""
    ranks = _ranks(plan)
    last = plan.calls[-1].id

    def results_of(body: dict[str, Any]) -> dict[str, Any]:
        sent = tool_results(body)
        return {c.id: _value(sent[_call_id(c.id)]) for c in plan.calls if _call_id(c.id) in sent}

    def turn(calls: list[Any]) -> Callable[[dict[str, Any]], Any]:
        def reply(body: dict[str, Any]) -> ToolCalls:
            results = results_of(body)
            return ToolCalls([ToolCall(c.function, _arguments(c, results), id=_call_id(c.id)) for c in calls])

        return reply

    def final(body: dict[str, Any]) -> str:
        return str(results_of(body)[last])

    return [turn(calls) for calls in ranks] + [final]


def expected_answer(wl: Workload) -> str:
    """The plan's answer computed by calling the functions directly with no waiting."""
    results: dict[str, Any] = {}
    for call in wl.plan.calls:
        args = _arguments(call, results)
        args["seconds"] = 0.0
        results[call.id] = toolbox[call.function].fn(**args)
    return str(results[wl.plan.calls[-1].id])


# -- the tools the peers call: the same functions, recording their own times --------------


class Records:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        kind = toolbox[fn.__name__].kind

        @functools.wraps(fn)
        def tool(*args: Any, **kwargs: Any) -> Any:
            start = time.time()
            value = fn(*args, **kwargs)
            with self._lock:
                self.rows.append({"function": fn.__name__, "kind": kind, "start": start, "end": time.time(),
                                  "pid": os.getpid(), "thread": threading.get_ident()})
            return value

        return tool

    def tools(self) -> list[Callable[..., Any]]:
        return [self.wrap(fn) for fn in (tb.frame, tb.mean, tb.report, price)]


# -- one run of each system ------------------------------------------------------------------


@dataclass
class Run:
    """One system answering one question.

    Attributes:
        wall: seconds from asking to the returned answer.
        first_llm: seconds from asking to the server receiving the first LLM request.
        tail: seconds from the last call's end to the returned answer (for the peers this
            holds their final LLM turn).
        llm_seconds: the server's time over all LLM requests (received to last byte).
        calls: each call's own record: function kind start end pid (epoch seconds).
        asked: when the question was asked (epoch seconds).
    """

    system: str
    wall: float
    first_llm: float
    tail: float
    answer: str
    llm_seconds: float
    llm_requests: int
    streamed: int
    calls: list[dict[str, Any]]
    asked: float = 0.0


def _server(script: list[Any], llm: dict[str, float]) -> FakeLLM:
    return FakeLLM(script, api_key=KEY, model=MODEL, latency=llm["latency"], token_delay=llm["token_delay"])


def _timed(system: str, server: FakeLLM, ask: Callable[[], tuple[str, list[dict[str, Any]]]]) -> Run:
    """Ask (the timed part: `ask()` returns the answer and the calls' records)."""
    t0, m0 = time.time(), time.monotonic()
    answer, calls = ask()
    wall = time.time() - t0
    reqs = server.chat_requests
    return Run(
        system, wall, first_llm=reqs[0].received_at - m0 if reqs else float("nan"),
        tail=t0 + wall - max((c["end"] for c in calls), default=t0), answer=answer,
        llm_seconds=sum(r.finished_at - r.received_at for r in reqs), llm_requests=len(reqs),
        streamed=sum(r.stream for r in reqs), calls=calls, asked=t0,
    )


def run_ours(wl: Workload, llm: dict[str, float]) -> Run:
    from prefect_llmorch.flows.ask import ask_query
    from prefect_llmorch.llm.client import LLMClient

    def ask() -> tuple[str, list[dict[str, Any]]]:
        report = ask_query(wl.question, TOOLBOX, processors=P, endpoint=client)
        calls = [{"function": c["function"], "kind": c["kind"], "start": report.t0 + c["start"],
                  "end": report.t0 + c["end"], "pid": c["pid"]} for c in report.calls]
        return str(report.result), calls

    with _server([wl.plan.to_text()], llm) as server:
        with LLMClient(server.base_url, MODEL, api_key=KEY) as client:
            return _timed("ours", server, ask)


def _pydantic_agent(server: FakeLLM, records: Records, **kwargs: Any) -> Any:
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    model = OpenAIChatModel(MODEL, provider=OpenAIProvider(base_url=server.base_url, api_key=KEY))
    return Agent(model, name="peers_agent", system_prompt=SYSTEM_PROMPT, tools=records.tools(), **kwargs)


def run_prefect_agent(wl: Workload, llm: dict[str, float]) -> Run:
    from pydantic_ai.durable_exec.prefect import PrefectAgent

    records = Records()
    with _server(tool_script(wl.plan), llm) as server:
        agent = PrefectAgent(_pydantic_agent(server, records))
        return _timed("pydantic-ai PrefectAgent", server, lambda: (str(agent.run_sync(wl.question).output), records.rows))


def run_prefect_durability(wl: Workload, llm: dict[str, float]) -> Run:
    from prefect import flow
    from pydantic_ai.durable_exec.prefect import PrefectDurability

    records = Records()
    with _server(tool_script(wl.plan), llm) as server:
        agent = _pydantic_agent(server, records, capabilities=[PrefectDurability()])

        @flow(name="peers-durability")
        def ask(question: str) -> str:
            return str(agent.run_sync(question).output)

        return _timed("pydantic-ai PrefectDurability", server, lambda: (ask(wl.question), records.rows))


def run_langgraph(wl: Workload, llm: dict[str, float]) -> Run:
    from langchain_openai import ChatOpenAI

    records = Records()
    with _server(tool_script(wl.plan), llm) as server:
        model = ChatOpenAI(model=MODEL, base_url=server.base_url, api_key=KEY, max_retries=0)
        try:
            from langchain.agents import create_agent

            agent = create_agent(model, tools=records.tools(), system_prompt=SYSTEM_PROMPT)
        except ImportError:
            from langgraph.prebuilt import create_react_agent

            agent = create_react_agent(model, tools=records.tools(), prompt=SYSTEM_PROMPT)

        def ask() -> tuple[str, list[dict[str, Any]]]:
            out = agent.invoke({"messages": [{"role": "user", "content": wl.question}]})
            return str(out["messages"][-1].content), records.rows

        return _timed("langgraph create_agent", server, ask)


RUNNERS: dict[str, Callable[[Workload, dict[str, float]], Run]] = {
    "ours": run_ours,
    "pydantic-ai PrefectAgent": run_prefect_agent,
    "pydantic-ai PrefectDurability": run_prefect_durability,
    "langgraph create_agent": run_langgraph,
}


def checked(run: Run, wl: Workload, expected: str) -> Run:
    """The run, after checking it answered right and ran every call exactly once."""
    if run.answer != expected:
        raise RuntimeError(f"{run.system} on {wl.name}: answered {run.answer!r}, expected {expected!r}")
    want = sorted(c.function for c in wl.plan.calls)
    got = sorted(c["function"] for c in run.calls)
    if got != want:
        raise RuntimeError(f"{run.system} on {wl.name}: ran {got}, the plan has {want}")
    return run


def _compute_cpu(wl: Workload) -> float:
    """CPU seconds of the plan's compute calls (their `seconds` arguments)."""
    total = 0.0
    for call in wl.plan.calls:
        if toolbox[call.function].kind == "compute":
            total += float(_arguments(call, {c.id: None for c in wl.plan.calls}).get("seconds", 0.0))
    return total


def _span(calls: list[dict[str, Any]]) -> float:
    return max((c["end"] for c in calls), default=0.0) - min((c["start"] for c in calls), default=0.0)


def peak_compute(calls: list[dict[str, Any]]) -> int:
    """Most compute calls running at once (by their own start/end records)."""
    events = sorted([(c["start"], 1) for c in calls if c["kind"] == "compute"]
                    + [(c["end"], -1) for c in calls if c["kind"] == "compute"], key=lambda e: (e[0], e[1]))
    now = peak = 0
    for _, d in events:
        now += d
        peak = max(peak, now)
    return peak


# -- the table ----------------------------------------------------------------------------------


def summarize(wl: Workload, runs: dict[str, list[Run]]) -> list[dict[str, Any]]:
    ours = statistics.median(r.wall for r in runs["ours"]) if runs.get("ours") else None
    rows = []
    for system, rs in runs.items():
        walls = [r.wall for r in rs]
        med = statistics.median(walls)
        llm_s = statistics.median(r.llm_seconds for r in rs)
        best = wl.best_calls + llm_s
        compute = [c for r in rs for c in r.calls if c["kind"] == "compute"]
        rows.append({
            "workload": wl.name, "system": system, "runs": len(rs), "median": med, "min": min(walls),
            "max": max(walls), "vs_ours": None if ours is None else med / ours, "best": best,
            "vs_best": med / best, "llm_seconds": llm_s, "llm_requests": rs[0].llm_requests,
            "streamed": rs[0].streamed, "first_llm": statistics.median(r.first_llm for r in rs),
            "tail": statistics.median(r.tail for r in rs),
            "compute_span": statistics.median(_span([c for c in r.calls if c["kind"] == "compute"]) for r in rs),
            "compute_cpu": _compute_cpu(wl),
            "compute_pids": max((len({c["pid"] for c in r.calls if c["kind"] == "compute"}) for r in rs), default=0),
            "peak_compute": max((peak_compute(r.calls) for r in rs), default=0) if compute else 0,
            "runs": [{"wall": r.wall, "first_llm": r.first_llm, "tail": r.tail, "llm_seconds": r.llm_seconds,
                      "calls": [{**c, "start": c["start"] - r.asked, "end": c["end"] - r.asked} for c in r.calls]}
                     for r in rs],
        })
    return rows


def table(wl: Workload, rows: list[dict[str, Any]]) -> str:
    head = (f"{'system':<30} {'median':>7} {'min-max':>13} {'/ours':>6} {'best':>6} {'/best':>6}"
            f" {'LLM req (s)':>12} {'to 1st LLM':>10} {'tail':>6} {'compute span (cores)':>20} {'pids':>4} {'at once':>7}")
    lines = [f"{wl.title}; best schedule of the calls on P = {P}: {wl.best_calls:.1f} s", head]
    for r in rows:
        vs_ours = "-" if r["vs_ours"] is None else f"{r['vs_ours']:.2f}"
        span = f"{r['compute_span']:.2f}s ({r['compute_cpu'] / r['compute_span']:.2f})" if r["compute_pids"] else "-"
        lines.append(
            f"{r['system']:<30} {r['median']:>6.2f}s {r['min']:>5.2f}-{r['max']:<5.2f}s {vs_ours:>6} {r['best']:>5.2f}s"
            f" {r['vs_best']:>6.2f} {r['llm_requests']:>3} ({r['llm_seconds']:4.2f}) {r['first_llm']:>9.2f}s"
            f" {r['tail']:>5.2f}s {span:>20} {r['compute_pids'] or '-':>4}"
            f" {r['peak_compute'] or '-':>7}"
        )
    return "\n".join(lines)


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("prefect", "pydantic-ai-slim", "langgraph", "langchain", "langchain-openai", "openai"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg} (not installed)")
    return ", ".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="recorded runs per system and workload (default 5)")
    parser.add_argument("--only", choices=sorted(WORKLOADS), action="append", help="workload(s) to run (default all)")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS), metavar="SYSTEM",
                        help=f"systems to run (default all: {', '.join(SYSTEMS)})")
    parser.add_argument("--latency", type=float, help="LLM seconds to first token (default: workloads.toml)")
    parser.add_argument("--token-delay", type=float, help="LLM seconds per token (default: workloads.toml)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    cfg = tomllib.loads((_setup.HERE / "workloads.toml").read_text())["llm"]
    llm = {"latency": cfg["latency"] if args.latency is None else args.latency,
           "token_delay": cfg["token_delay"] if args.token_delay is None else args.token_delay}
    systems = list(dict.fromkeys(["ours", *args.systems]))  # ours always: the ratios need it
    missing = _missing(systems)
    if missing:
        print("cannot run: " + "; ".join(missing) + '\ninstall the peers with: pip install -e ".[peers]"')
        return 2
    # PrefectAgent (pydantic-ai 2.x) and create_react_agent (langgraph 1.x) are deprecated: said once below
    warnings.filterwarnings("ignore", message=r"`?(PrefectAgent|create_react_agent)`? (is deprecated|has been moved)")
    from prefect.testing.utilities import prefect_test_harness

    print(f"load average before: {_load()}")
    print(f"peers, P = {P}; LLM: {llm['latency']} s to first token, {llm['token_delay']} s per token; {versions()}")
    for s in systems:
        print(f"  {s}: {HOW[s]}")
    t = time.time()
    rows: list[dict[str, Any]] = []
    with prefect_test_harness(server_startup_timeout=120):
        print(f"server: prefect_test_harness (temporary SQLite), started in {time.time() - t:.1f} s", flush=True)
        for name in args.only or list(WORKLOADS):
            wl = WORKLOADS[name]
            expected = expected_answer(wl)
            runs: dict[str, list[Run]] = {s: [] for s in systems}
            for s in systems:  # warm-up, not recorded
                checked(RUNNERS[s](wl, llm), wl, expected)
            for rep in range(args.repeat):
                order = systems[rep % len(systems):] + systems[: rep % len(systems)]
                for s in order:
                    r = checked(RUNNERS[s](wl, llm), wl, expected)
                    runs[s].append(r)
                    print(f"  {wl.name} round {rep + 1}: {s:<30} {r.wall:6.2f} s", flush=True)
            got = summarize(wl, runs)
            rows += got
            print("\n" + table(wl, got) + "\n", flush=True)
    print(f"load average after: {_load()} (other work on the machine's {os.cpu_count()} cores slows every system)")
    print(
        "median/min-max: wall clock from asking to the final answer over the recorded runs;\n"
        "best = best schedule of the calls + that system's LLM time (sum over its requests of the\n"
        "server's time, received to last byte; LLM req (s) = requests and that time); ours streams\n"
        "its plan and starts calls before the reply ends, so it can be under its best.\n"
        "to 1st LLM: asking to the server receiving the first LLM request; tail: last call's end\n"
        "to the answer (the peers' final LLM turn is in it); medians.\n"
        "compute span: first compute call's start to the last one's end, with the cores the compute\n"
        "calls got on average in brackets (their CPU seconds / span; at best 2.00 on P = 2, 1.00 on\n"
        "threads of one process); pids / at once: processes that ran compute calls, most compute calls running\n"
        "at once (their own records); on threads of one process they share one core under the GIL."
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"llm": llm, "repeat": args.repeat, "versions": versions(), "rows": rows}, fh, indent=1)
    return 0


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _missing(systems: list[str]) -> list[str]:
    """What is not installed for `systems`, as pip would name it."""
    import importlib.util

    need = {
        "pydantic-ai PrefectAgent": [("pydantic_ai", "pydantic-ai-slim[openai,prefect]")],
        "pydantic-ai PrefectDurability": [("pydantic_ai", "pydantic-ai-slim[openai,prefect]")],
        "langgraph create_agent": [("langgraph", "langgraph"), ("langchain_openai", "langchain-openai")],
    }
    out = {pkg for s in systems for module, pkg in need.get(s, []) if importlib.util.find_spec(module) is None}
    return sorted(f"{pkg} is not installed" for pkg in out)


if __name__ == "__main__":
    raise SystemExit(main())
