"""`llmorch`: check, graph, run, simulate, ask and plan from the command line.

Thin by design: each command parses options, calls the library, prints. A bad plan exits
with code 1 and its errors (line, column, context), never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Parallel LLM function calling on Prefect (LLMOrch).")
console = Console()
err_console = Console(stderr=True)

DEFAULT_TOOLBOX = "prefect_llmorch.examples.toolbox:toolbox"


def _prepare_env() -> None:
    """Ephemeral Prefect on a small machine needs time to start; no analytics offline."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # `module:attr` toolboxes are found relative to the current directory, like uvicorn apps.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _read_plan(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    p = Path(path)
    if not p.is_file():
        err_console.print(f"[red]no such plan file: {path}[/red]")
        raise typer.Exit(2)
    return p.read_text()


def _toolbox(path: str) -> Any:
    from prefect_llmorch.functions import load_toolbox

    try:
        return load_toolbox(path)
    except ValueError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _plan_errors(exc: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"ok": False, "errors": [{"line": e.line, "column": e.column, "message": e.message} for e in exc.errors]}))
    else:
        for e in exc.errors:
            err_console.print(f"[red]{e}[/red]")
            if e.context:
                err_console.print(e.context, markup=False, highlight=False)
    raise typer.Exit(1)


def _parse(path: str, toolbox: str, as_json: bool) -> tuple[Any, Any]:
    from prefect_llmorch.plan.errors import PlanError
    from prefect_llmorch.plan.parser import parse

    text = _read_plan(path)
    tb = _toolbox(toolbox)
    try:
        return parse(text, tb), tb
    except PlanError as exc:
        _plan_errors(exc, as_json)
        raise  # unreachable


@app.command()
def check(
    plan: str = typer.Argument(..., help="plan file (either dialect), or - for stdin"),
    toolbox: str = typer.Option(DEFAULT_TOOLBOX, "--toolbox", "-t", help="module:attr naming a Toolbox"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON object"),
) -> None:
    """Parse and type-check a plan; exit 1 with every error."""
    _prepare_env()
    parsed, _ = _parse(plan, toolbox, as_json)
    if as_json:
        print(json.dumps({"ok": True, "errors": [], "calls": len(parsed)}))
    else:
        console.print(f"[green]ok[/green]: {len(parsed)} calls")


@app.command()
def graph(
    plan: str = typer.Argument(..., help="plan file, or - for stdin"),
    toolbox: str = typer.Option(DEFAULT_TOOLBOX, "--toolbox", "-t"),
    mermaid: bool = typer.Option(False, "--mermaid", help="print the FRG as mermaid"),
    dot: bool = typer.Option(False, "--dot", help="print the FRG as Graphviz DOT"),
    as_json: bool = typer.Option(False, "--json"),
    processors: int = typer.Option(0, "--processors", "-P", help="P for the lower bound (default: cores)"),
) -> None:
    """Show the Function-call Relation Graph: ranks, kinds, deps, mutual exclusion."""
    _prepare_env()
    from prefect_llmorch.graph import FRG

    parsed, tb = _parse(plan, toolbox, as_json)
    frg = FRG.build(parsed, tb)
    if as_json:
        print(json.dumps(frg.to_json()))
        return
    if mermaid:
        print(frg.to_mermaid())
        return
    if dot:
        print(frg.to_dot())
        return
    groups: dict[str, str] = {}
    for cid in frg.ids:
        if frg.kind[cid] == "compute":
            groups[cid] = f"rank {frg.rank[cid]}" if any(cid in pair for pair in frg.mutex) else ""
    table = Table(title=f"FRG: {len(frg)} calls")
    for col in ("call", "function", "kind", "rank", "deps", "mutex group"):
        table.add_column(col)
    for cid in frg.ids:
        table.add_row(cid, frg.function[cid], frg.kind[cid], str(frg.rank[cid]), ", ".join(frg.ordered(frg.deps[cid])), groups.get(cid, ""))
    console.print(table)
    P = processors or (os.cpu_count() or 1)
    console.print(f"work {frg.work:g}, critical path {frg.critical_path:g}, lower bound on P={P}: {frg.lower_bound(P):g}")


def _print_report(report: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.to_json(), default=repr))
        return
    table = Table(title=f"{report.state}: schedule on P = {report.processors}")
    for col in ("call", "function", "kind", "rank", "processor", "start", "end", "state"):
        table.add_column(col)
    for c in report.calls:
        fmt = lambda t: "" if t is None else f"{t:.3f}"  # noqa: E731
        state = c["state"] if c["state"] == "Completed" else f"[red]{c['state']}[/red]"
        table.add_row(c["id"], c["function"], c["kind"], str(c["rank"]), "" if c["processor"] is None else str(c["processor"]), fmt(c["start"]), fmt(c["end"]), state)
    console.print(table)
    console.print(
        f"makespan {report.makespan:.3f} s | lower bound {report.lower_bound:.3f} s "
        f"(ratio {report.makespan / report.lower_bound if report.lower_bound else float('nan'):.3f}) | "
        f"sum of call times {report.sequential:.3f} s | speedup {report.speedup:.2f}x"
    )
    if report.message:
        err_console.print(report.message, markup=False)
    console.print(f"result: {report.result!r}", markup=False, highlight=False)


@app.command()
def run(
    plan: str = typer.Argument(..., help="plan file, or - for stdin"),
    toolbox: str = typer.Option(DEFAULT_TOOLBOX, "--toolbox", "-t"),
    processors: int = typer.Option(0, "--processors", "-P", help="P (default: the machine's cores)"),
    policy: str = typer.Option("critical-path", "--policy", help="critical-path or paper"),
    as_json: bool = typer.Option(False, "--json"),
    no_limit: bool = typer.Option(False, "--no-global-limit", help="do not use the llmorch-processors concurrency limit"),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="LLMEndpoint block for `self` calls and recovery (default: environment)"),
    recover: int = typer.Option(0, "--recover", help="trace-back recovery rounds with the LLM when calls fail (0: off)"),
    cancel_running: bool = typer.Option(False, "--cancel-running", help="on a failure, cancel running calls that recovery will re-run anyway"),
) -> None:
    """Run a plan on Prefect (ephemeral unless PREFECT_API_URL is set) and print the schedule."""
    _prepare_env()
    from prefect_llmorch.flows.run import PlanRunFailed, run_plan

    text = _read_plan(plan)
    parsed, _ = _parse(plan if plan != "-" else "-", toolbox, as_json) if plan != "-" else (None, None)
    try:
        report = run_plan(
            parsed if parsed is not None else text, toolbox, processors=processors or None, policy=policy,
            concurrency_limit=None if no_limit else "llmorch-processors",
            endpoint=endpoint, recovery_rounds=recover, cancel_running=cancel_running,
        )
    except PlanRunFailed as exc:
        _print_report(exc.report, as_json)
        raise typer.Exit(1) from None
    except RuntimeError as exc:  # e.g. the plan calls `self` and no LLM is configured
        err_console.print(str(exc), markup=False)
        raise typer.Exit(2) from None
    _print_report(report, as_json)


@app.command()
def simulate(
    graph_file: str = typer.Argument(..., help="an STG file (.stg) or a plan file"),
    processors: int = typer.Option(2, "--processors", "-P"),
    policy: str = typer.Option("critical-path", "--policy", help="critical-path, paper, or a baseline: sequential, eager, rank-barrier"),
    toolbox: str = typer.Option(DEFAULT_TOOLBOX, "--toolbox", "-t", help="for plan files"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Simulate a schedule (no execution): makespan, lower bound and their ratio."""
    _prepare_env()
    from prefect_llmorch.graph import FRG
    from prefect_llmorch.schedule.simulator import simulate_file

    if graph_file.endswith(".stg"):
        target: Any = graph_file
    else:
        parsed, tb = _parse(graph_file, toolbox, as_json)
        target = FRG.build(parsed, tb)
    try:
        out = simulate_file(target, processors, policy)
    except (ValueError, OSError) as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps(out))
    else:
        ratio = out["makespan"] / out["lower_bound"] if out["lower_bound"] else float("nan")
        console.print(
            f"{policy} on P={processors}: makespan {out['makespan']:g}, lower bound {out['lower_bound']:g} "
            f"(ratio {ratio:.3f}), work {out['work']:g}, critical path {out['critical_path']:g}"
        )


def _endpoint(endpoint: Optional[str]) -> Any:
    """An LLMClient from a saved LLMEndpoint block's name, or from the environment."""
    from prefect_llmorch.llm.client import LLMConfigError, LLMError
    from prefect_llmorch.flows.planner import resolve_client

    try:
        return resolve_client(endpoint)
    except (LLMConfigError, LLMError, ValueError) as exc:
        err_console.print(f"[red]{exc}[/red]", markup=False)
        raise typer.Exit(2) from None


def _ask_and_print(
    question: str, toolbox: str, processors: int, policy: str, client: Any, as_json: bool, attempts: int,
    cancel_running: bool = False,
) -> None:
    from prefect_llmorch.flows.ask import ask_query
    from prefect_llmorch.llm.client import LLMError
    from prefect_llmorch.flows.run import PlanRunFailed
    from prefect_llmorch.flows.planner import PlanningFailed

    try:
        report = ask_query(
            question, toolbox, processors=processors or None, policy=policy, endpoint=client, attempts=attempts,
            cancel_running=cancel_running,
        )
    except PlanRunFailed as exc:
        _print_report(exc.report, as_json)
        raise typer.Exit(1) from None
    except (PlanningFailed, LLMError) as exc:
        if as_json:
            print(json.dumps({"state": "Failed", "message": str(exc)}))
        else:
            err_console.print(str(exc), markup=False)
        raise typer.Exit(1) from None
    if not as_json:
        console.print("plan:", style="bold")
        console.print(report.extra.get("plan", ""), markup=False, highlight=False)
        tokens = report.extra.get("tokens", {})
        console.print(f"planner attempts: {report.extra.get('attempts')} | tokens: {tokens.get('prompt', 0)} prompt + {tokens.get('completion', 0)} completion")
    _print_report(report, as_json)


@app.command()
def ask(
    question: str = typer.Argument(..., help="the question to answer"),
    toolbox: str = typer.Option(DEFAULT_TOOLBOX, "--toolbox", "-t"),
    processors: int = typer.Option(0, "--processors", "-P"),
    policy: str = typer.Option("critical-path", "--policy"),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="name of a saved LLMEndpoint block (default: OPENAI_BASE_URL, OPENAI_API_KEY, LLMORCH_MODEL)"),
    attempts: int = typer.Option(3, "--attempts", help="planner answers per round (first plan + repairs)"),
    as_json: bool = typer.Option(False, "--json"),
    cancel_running: bool = typer.Option(False, "--cancel-running", help="on a failure, cancel running calls that recovery will re-run anyway"),
) -> None:
    """Plan the question with the LLM, run the plan in parallel on Prefect, print the answer."""
    _prepare_env()
    _ask_and_print(question, toolbox, processors, policy, _endpoint(endpoint), as_json, attempts, cancel_running)


@app.command("plan")
def plan_cmd(
    question: str = typer.Argument(..., help="the question to plan"),
    toolbox: str = typer.Option(DEFAULT_TOOLBOX, "--toolbox", "-t"),
    endpoint: Optional[str] = typer.Option(None, "--endpoint"),
    attempts: int = typer.Option(3, "--attempts"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Only plan: print the LLM's plan and its FRG (nothing runs)."""
    _prepare_env()
    from prefect_llmorch.graph import FRG
    from prefect_llmorch.llm.client import LLMError
    from prefect_llmorch.flows.planner import PlanningFailed, plan_query

    tb = _toolbox(toolbox)
    client = _endpoint(endpoint)
    try:
        result = plan_query(question, tb, client, attempts=attempts)
    except (PlanningFailed, LLMError) as exc:
        err_console.print(str(exc), markup=False)
        raise typer.Exit(1) from None
    frg = FRG.build(result.plan, tb)
    if as_json:
        print(json.dumps({"plan": result.text, "attempts": len(result.attempts), "tokens": {"prompt": result.prompt_tokens, "completion": result.completion_tokens}, "graph": frg.to_json()}))
        return
    console.print(result.text, markup=False, highlight=False)
    console.print(frg.to_mermaid(), markup=False, highlight=False)
    console.print(f"planner attempts: {len(result.attempts)} | tokens: {result.prompt_tokens} prompt + {result.completion_tokens} completion")


DEMO_QUESTION = "Did Apple or Microsoft stock do better today, and how busy is the traffic in frames 1-4?"
DEMO_PLAN = """s1: search("Apple stock")
s2: search("Microsoft stock")
s3: compare(s1, s2)
s4: detect("frame_001.png")
s5: detect("frame_002.png")
s6: detect("frame_003.png")
s7: detect("frame_004.png")
s8: average([s4, s5, s6, s7])
s9: self("Answer in one sentence: {s3} Frames 1-4 show {s8} objects on average.")
"""


def _demo_answer(request: dict[str, Any]) -> str:
    prompt = str(request.get("messages", [{}])[-1].get("content", ""))
    return "Demo answer, from the local scripted LLM: " + " ".join(prompt.split()[-24:])


@app.command()
def demo(
    processors: int = typer.Option(2, "--processors", "-P"),
    token_delay: float = typer.Option(0.02, "--token-delay", help="seconds per token of the scripted LLM"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The whole loop with no API key: a local OpenAI-compatible server (real HTTP) streams a
    scripted plan for the example toolbox; llmorch runs it on ephemeral Prefect."""
    _prepare_env()
    from prefect_llmorch.llm.client import LLMClient
    from prefect_llmorch.testing.fake_llm import FakeLLM

    with FakeLLM([DEMO_PLAN], default=_demo_answer, token_delay=token_delay, model="demo") as server:
        if not as_json:
            console.print(f"scripted LLM at {server.base_url}; question: {DEMO_QUESTION}")
        client = LLMClient(server.base_url, "demo", api_key="demo-key-not-secret")
        _ask_and_print(DEMO_QUESTION, DEFAULT_TOOLBOX, processors, "critical-path", client, as_json, 3)


def _deploy_module() -> Any:
    """`prefect_llmorch/flows/deploy.py` of this checkout (the deployable flows live next to the examples)."""
    import importlib

    try:
        return importlib.import_module("prefect_llmorch.flows.deploy")
    except ImportError:
        repo = Path(__file__).resolve().parent.parent
        if not (repo / "flows" / "deploy.py").is_file():
            err_console.print("[red]prefect_llmorch/flows/deploy.py not found: run `llmorch serve` from the prefect-llmorch repository root[/red]")
            raise typer.Exit(2) from None
        sys.path.insert(0, str(repo))
        return importlib.import_module("prefect_llmorch.flows.deploy")


@app.command()
def serve(
    cron: Optional[str] = typer.Option(None, "--cron", help="schedule llmorch-run with this cron string, e.g. '0 * * * *'"),
    interval: Optional[float] = typer.Option(None, "--interval", help="schedule llmorch-run every N seconds"),
    plan_file: str = typer.Option("prefect_llmorch/examples/kitti.plan", "--plan-file", help="llmorch-run's default plan file"),
    toolbox: str = typer.Option(DEFAULT_TOOLBOX, "--toolbox", "-t", help="llmorch-run's default toolbox"),
    processors: int = typer.Option(0, "--processors", "-P", help="P of the served flows' task runner (default: cores)"),
    limit: Optional[int] = typer.Option(None, "--limit", help="most flow runs at once"),
) -> None:
    """Serve the `llmorch-run` and `llmorch-ask` deployments from this process (no work pool).

    Needs a Prefect server (PREFECT_API_URL); trigger runs from the UI, with
    `prefect deployment run llmorch-run/llmorch-run`, or by the schedule.
    """
    _prepare_env()
    if processors:
        os.environ["LLMORCH_PROCESSORS"] = str(processors)  # read when prefect_llmorch/flows/deploy.py builds the runner
    if cron and interval:
        err_console.print("[red]give --cron or --interval, not both[/red]")
        raise typer.Exit(2)
    from prefect import serve as prefect_serve

    deploy = _deploy_module()
    run_defaults = deploy.RunParameters(plan_file=plan_file, toolbox=toolbox)
    deployments = deploy.deployments(run_cron=cron, run_interval=interval, run_parameters=run_defaults)
    prefect_serve(*deployments, limit=limit)


bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (run from a clone of the repository).")
app.add_typer(bench_app, name="bench")


@bench_app.command("paper")
def bench_paper(
    repeat: int = typer.Option(1, "--repeat", help="runs per system and workload (the median is kept)"),
    only: Optional[list[str]] = typer.Option(None, "--only", help="a workload of benchmarks/workloads.toml (repeatable)"),
) -> None:
    """The paper's tables: ReAct-style, parallel FC, LLMCompiler-style and ours, measured side
    by side (benchmarks/paper_tables.py; report in benchmarks/out/report.md)."""
    _prepare_env()
    import importlib.util

    script = Path.cwd() / "benchmarks" / "paper_tables.py"
    if not script.is_file():
        err_console.print(f"[red]{script} not found: run this from a clone of the repository[/red]")
        raise typer.Exit(2)
    spec = importlib.util.spec_from_file_location("paper_tables", script)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    argv = ["--repeat", str(repeat)] + (["--only", *only] if only else [])
    raise typer.Exit(module.main(argv))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
