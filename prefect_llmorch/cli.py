"""`llmorch`: check, graph, run, simulate, ask and plan from the command line.

Thin by design: each command parses options, calls the library, prints. Arguments are
checked before Prefect is imported (this module imports neither Prefect nor openai), so bad
input costs no server start: it gets one line naming the problem and the fix, and exit
code 2 (`--debug` adds the traceback). A bad plan exits with code 1 and its errors (line,
column, context). With `--json`, standard output carries the JSON object alone: whatever
the toolbox or its workers print goes to standard error.
"""

from __future__ import annotations

import io
import json
import os
import sys
import traceback
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NoReturn, Optional, TextIO

import typer
from rich.console import Console
from rich.table import Table

from prefect_llmorch import __version__
from prefect_llmorch.examples import DEFAULT_TOOLBOX, example_names, examples_help, open_plan_path

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
    help="Parallel LLM function calling on Prefect (LLMOrch).",
)
console = Console()
err_console = Console(stderr=True)


@dataclass(frozen=True)
class _Options:
    """The CLI's global options: read by `main` (where every error ends) and handed to the
    commands as typer's context object (`ctx.obj`)."""

    debug: bool = False


def _debug(ctx: typer.Context) -> bool:
    """Whether `--debug` was given (False when the app is called without `main`)."""
    return isinstance(ctx.obj, _Options) and ctx.obj.debug


class _Failure(RuntimeError):
    """An error the CLI said in one line on stderr (`_fail`): `main` exits `code`, and under
    `--debug` shows the traceback of `cause`, then the line again (the error stays the last
    line). A RuntimeError, as typer's `Exit` is: an `except Exception` catches both alike."""

    def __init__(self, message: str, cause: BaseException | None = None, code: int = 2) -> None:
        super().__init__(message)
        self.cause, self.code = cause, code


PROCESSORS_HELP = "P: compute calls at once (default: the machine's cores; more is capped unless --force-processors)"
FORCE_HELP = "use -P as given even when it is more than the machine's cores"


def _version(value: bool) -> None:
    if value:
        print(f"llmorch (prefect-llmorch) {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    debug: bool = typer.Option(False, "--debug", envvar="LLMORCH_DEBUG", help="show tracebacks of errors"),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit"),
) -> None:
    """Parallel LLM function calling on Prefect (LLMOrch)."""
    # `--debug` is read by `main`, where errors end, and handed to the commands in `ctx.obj`


def _fail(message: str, cause: BaseException | None = None, code: int = 2) -> NoReturn:
    """One line on stderr (then the traceback with --debug: `main`), and exit `code`."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise _Failure(message, cause, code)


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


def _prepare_env() -> None:
    """Ephemeral Prefect on a small machine needs time to start; no analytics offline."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # `module:attr` toolboxes are found relative to the current directory, like uvicorn apps.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _terminal_approvals() -> None:
    """Calls of `approve=True` functions are asked y/n on this terminal when standard input is
    one (the Prefect UI can answer too); otherwise only in the UI or through the API."""
    if sys.stdin is not None and sys.stdin.isatty():
        from prefect_llmorch import terminal_prompts

        terminal_prompts(True)


# ---------------------------------------------------------------- checking arguments


def _machine_cores() -> int:
    """The cores this process may run on (the affinity mask, not every core of the host)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _check_processors(value: Optional[int]) -> Optional[int]:
    if value is not None and value < 1:
        _fail(f"-P {value}: the number of processors must be at least 1; give e.g. -P {_machine_cores()}, or leave -P out")
    return value


def _processors(value: Optional[int], force: bool) -> int:
    """P for a real run: the machine's cores by default, and at most those unless forced."""
    cores = _machine_cores()
    if value is None:
        return cores
    _check_processors(value)
    if value > cores and not force:
        _note(f"-P {value} is more than this machine's {cores} cores: using -P {cores} (add --force-processors to use {value})")
        return cores
    return value


def _resources(options: Optional[list[str]]) -> dict[str, float | str]:
    """`--resource NAME=AMOUNT` options as capacities (exit 2 on a bad one)."""
    from prefect_llmorch.schedule.resources import parse_resource_options

    try:
        return parse_resource_options(options or [])
    except ValueError as exc:
        _fail(str(exc), exc)


def _check_capacities(tb: Any, processors: int, capacities: dict[str, float]) -> None:
    """Every function of the toolbox fits the capacities (`--resource`), or exit 2 saying
    which function needs what: before the LLM plans a call that could never start."""
    from prefect_llmorch.schedule.resources import Capacities, ResourceError, check_toolbox

    try:
        check_toolbox(tb, Capacities.of(processors, capacities or None))
    except ResourceError as exc:
        _fail(str(exc), exc)


def _check_policy(name: str, baselines: bool = False) -> str:
    from prefect_llmorch.schedule.policy import POLICIES
    from prefect_llmorch.schedule.simulator import BASELINES

    valid = POLICIES + (BASELINES if baselines else ())
    if name not in valid:
        _fail(f"unknown policy {name!r}; give --policy with one of: {', '.join(valid)}")
    return name


def _at_least(name: str, value: float | None, low: float) -> None:
    if value is not None and value < low:
        _fail(f"{name} {value:g}: must be at least {low:g}")


COSTS_HELP = ("declared (the decorators' cost=) or history (learned from Prefect's task-run history); "
              "default: history once there is one ($LLMORCH_COSTS overrides)")


#: The flag that sets each option (`prefect_llmorch.options`), for error messages.
FLAGS = {
    "processors": "-P", "policy": "--policy", "endpoint": "--endpoint", "recovery_rounds": "--recover",
    "cancel_running": "--cancel-running", "cache": "--no-cache", "costs": "--costs", "resources": "--resource",
    "attempts": "--attempts", "planner": "--planner", "joiner": "--joiner", "max_rounds": "--rounds",
    "max_tokens": "--max-tokens",
}


def _options(kind: str, **given: Any) -> Any:
    """The run's options (`RunOptions` / `AskOptions`, where the defaults and checks live)
    from the flags that were given (None: not given); a bad value exits 2 naming its flag."""
    from pydantic import ValidationError

    from prefect_llmorch import options

    values = {k: v for k, v in given.items() if v is not None}
    try:
        return getattr(options, kind)(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]) if err.get("loc") else ""
        flag, value, ctx = FLAGS.get(name, name), values.get(name), err.get("ctx") or {}
        if name == "costs":
            message = f"unknown --costs {value!r}; give --costs declared or --costs history"
        elif name == "joiner":
            message = f"--joiner {value!r}: must be auto, always or off"
        elif err["type"] == "value_error":
            message = str(ctx.get("error", err["msg"])).replace("; valid: ", f"; give {flag} with one of: ")
        elif "ge" in ctx or "le" in ctx:
            message = f"{flag} {value}: must be at {'least' if 'ge' in ctx else 'most'} {ctx.get('ge', ctx.get('le'))}"
        else:
            message = f"{flag} {value!r}: {err['msg']}"
        _fail(message, exc)


def _prediction(frg: Any, plan: Any, toolbox: Any, processors: int, costs: Optional[str]) -> tuple[Any, Any, Any]:
    """(FRG with the chosen costs, `Prediction`, `CostChoice`) for `plan` on P processors.

    Reads the Prefect API only when PREFECT_API_URL is set (no server is started for
    this); else the local history file, which every local run writes."""
    from prefect_llmorch.schedule.predict import predict
    from prefect_llmorch.storage.history import call_costs, choose_costs
    from prefect_llmorch.graph import FRG

    functions = {c.function for c in plan.calls}
    choice = choose_costs(functions, costs, api=bool(os.environ.get("PREFECT_API_URL")))
    if choice.costs:
        frg = FRG.build(plan, toolbox, costs=call_costs(plan, choice.costs))
    return frg, predict(frg, processors), choice


def _print_prediction(prediction: Any, choice: Any, functions: Any) -> None:
    from prefect_llmorch.report import estimate

    path = " -> ".join(prediction.critical_path)
    console.print(
        f"predicted latency on P={prediction.processors}: {estimate(prediction.latency)} ({prediction.policy} policy, "
        f"simulated with {choice.describe(functions)})", markup=False, highlight=False, soft_wrap=True,
    )
    console.print(f"critical path: {path} ({estimate(prediction.length)})", markup=False, highlight=False, soft_wrap=True)


def _prediction_json(prediction: Any, choice: Any) -> dict[str, Any]:
    out = prediction.to_json()
    out.update(costs=choice.used(), learned=dict(sorted(choice.costs.items())))
    return out


def _shipped() -> str:
    return ", ".join(example_names())


def _plan_path(arg: str) -> Path:
    """The path of a plan argument (`example:NAME` or a file); bad ones exit 2."""
    try:
        path = open_plan_path(arg)
    except FileNotFoundError as exc:
        _fail(str(exc), exc)
    if path.is_dir():
        _fail(f"{arg} is a folder, not a plan file; name a plan file in it, or a shipped example: {_shipped()}")
    if not path.exists():
        _fail(f"no such plan file: {arg}; give a plan file, - for standard input, or a shipped example: {_shipped()}")
    return path


def _read_plan(arg: str) -> str:
    """The text of a plan argument: a file, `example:NAME`, or `-` (standard input)."""
    if arg == "-":
        data, where = sys.stdin.buffer.read(), "standard input"
    else:
        path = _plan_path(arg)
        where = f"plan file {arg}"
        try:
            data = path.read_bytes()
        except PermissionError as exc:
            _fail(f"cannot read {where}: permission denied; check its permissions", exc)
        except OSError as exc:
            _fail(f"cannot read {where}: {exc.strerror or exc}; check the path", exc)
    if b"\0" in data:
        _fail(f"{where} is a binary file (it contains NUL bytes), not a plan; a plan is UTF-8 text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        _fail(f"{where} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); a plan is UTF-8 text", exc)


def _toolbox(path: str) -> Any:
    """Import the toolbox (`module:attr`); a bad path exits 2 with the problem and the fix."""
    from prefect_llmorch.functions import ToolboxNotFound, load_toolbox

    try:
        return load_toolbox(path)
    except ToolboxNotFound as exc:
        _fail(str(exc), exc)


# ---------------------------------------------------------------- output


@contextmanager
def _json_stdout(active: bool) -> Iterator[TextIO | None]:
    """While active, standard output (fd 1 and `sys.stdout`) goes to standard error, and the
    stream it gives is the real standard output, where the command's JSON goes (`_emit_json`):
    a tool's prints, in this process or in the worker processes started meanwhile (they
    inherit fd 1), cannot spoil the JSON. Not active: it gives None (the output is text)."""
    if not active:
        yield None
        return
    sys.stdout.flush()
    try:
        fd = sys.stdout.fileno()
        err_fd = sys.stderr.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):  # not a real file (e.g. captured)
        out = sys.stdout
        with redirect_stdout(sys.stderr):
            yield out
        return
    saved = os.dup(fd)
    os.dup2(err_fd, fd)
    real = os.fdopen(saved, "w", encoding="utf-8")
    try:
        with redirect_stdout(sys.stderr):
            yield real
    finally:
        sys.stdout.flush()
        real.flush()
        os.dup2(saved, fd)
        real.close()


def _emit_json(doc: Any, out: TextIO) -> None:
    """Print one JSON document on `out` (the real standard output, from `_json_stdout`)."""
    out.write(json.dumps(doc, default=repr) + "\n")
    out.flush()


def _plan_errors(exc: Any, json_out: TextIO | None) -> NoReturn:
    if json_out is not None:
        doc = {"ok": False, "errors": [e.to_dict() for e in exc.errors]}  # line, column, kind, message, expected, pointer
        if getattr(exc, "omitted", 0):
            doc["omitted"] = exc.omitted  # errors past the first MAX_REPORTED, counted only
        _emit_json(doc, json_out)
    else:
        for e in exc.errors:
            err_console.print(str(e), style="red", markup=False, highlight=False, soft_wrap=True)
            if e.context:
                err_console.print(e.context, markup=False, highlight=False, soft_wrap=True)
        if getattr(exc, "omitted", 0):
            err_console.print(f"... and {exc.omitted} more errors", style="red", markup=False, highlight=False)
    raise typer.Exit(1)


def _parse(text: str, tb: Any, json_out: TextIO | None) -> Any:
    from prefect_llmorch.plan.errors import PlanError
    from prefect_llmorch.plan.parser import parse

    try:
        return parse(text, tb)
    except PlanError as exc:
        _plan_errors(exc, json_out)


PLAN_HELP = f"plan file (text, or JSON: NESTFUL or ours), example:NAME (a shipped example), or - for stdin; {examples_help()}"
TOOLBOX_HELP = (
    "module:attr naming a Toolbox (or a function `() -> Toolbox`); mcp:COMMAND or mcp:URL for an MCP "
    "server's tools; several joined with ' + ' (docs/mcp.md)"
)


@app.command()
def check(
    plan: str = typer.Argument(..., help=PLAN_HELP, metavar="PLAN"),
    toolbox: str = typer.Option(DEFAULT_TOOLBOX, "--toolbox", "-t", help=TOOLBOX_HELP),
    as_json: bool = typer.Option(False, "--json", help="print a JSON object"),
) -> None:
    """Parse and type-check a plan; exit 1 with every error."""
    _prepare_env()
    text = _read_plan(plan)
    with _json_stdout(as_json) as json_out:
        parsed = _parse(text, _toolbox(toolbox), json_out)
        if json_out is not None:
            _emit_json({"ok": True, "errors": [], "calls": len(parsed)}, json_out)
            return
    console.print(f"[green]ok[/green]: {len(parsed)} calls")


@app.command()
def graph(
    plan: str = typer.Argument(..., help=PLAN_HELP, metavar="PLAN"),
    toolbox: str = typer.Option(DEFAULT_TOOLBOX, "--toolbox", "-t", help=TOOLBOX_HELP),
    mermaid: bool = typer.Option(False, "--mermaid", help="print the FRG as mermaid"),
    dot: bool = typer.Option(False, "--dot", help="print the FRG as Graphviz DOT"),
    as_json: bool = typer.Option(False, "--json"),
    processors: Optional[int] = typer.Option(None, "--processors", "-P", help="P for the lower bound and the prediction (default: cores)"),
    costs: Optional[str] = typer.Option(None, "--costs", help=COSTS_HELP),
) -> None:
    """Show the Function-call Relation Graph: ranks, kinds, deps, mutual exclusion, and the
    predicted latency on P processors with its critical path."""
    _prepare_env()
    _check_processors(processors)
    costs = _options("RunOptions", costs=costs).costs
    text = _read_plan(plan)
    from prefect_llmorch.graph import FRG

    P = processors or _machine_cores()
    with _json_stdout(as_json) as json_out:
        tb = _toolbox(toolbox)
        parsed = _parse(text, tb, json_out)
        frg = FRG.build(parsed, tb)
        if as_json or not (mermaid or dot):  # (--json wins over --mermaid/--dot)
            frg, prediction, choice = _prediction(frg, parsed, tb, P, costs)
        if json_out is not None:
            _emit_json({**frg.to_json(), "prediction": _prediction_json(prediction, choice)}, json_out)
            return
    if mermaid:
        print(frg.to_mermaid())
        return
    if dot:
        print(frg.to_dot())
        return
    _print_frg(frg)
    from prefect_llmorch.report import estimate

    console.print(  # the same costs as the prediction below, which is never under this bound
        f"work {estimate(frg.work)}, critical path {estimate(frg.critical_path)}, "
        f"lower bound on P={P}: {estimate(frg.lower_bound(P))} ({choice.used()} costs)",
        markup=False, highlight=False, soft_wrap=True,
    )
    _print_prediction(prediction, choice, {c.function for c in parsed.calls})


def _print_frg(frg: Any) -> None:
    """The FRG as a table (`FRG.rows`: the UI's `llmorch-frg` artifact has the same)."""
    table = Table(title=f"FRG: {len(frg)} calls")
    for col in frg.COLUMNS:
        table.add_column(col)
    for row in frg.rows():
        table.add_row(*(row[c] for c in frg.COLUMNS))
    console.print(table, markup=False, highlight=False)


def _print_report(report: Any, json_out: TextIO | None) -> None:
    if json_out is not None:
        _emit_json(report.to_json(), json_out)
        return
    table = Table(title=f"{report.state}: schedule on P = {report.processors}")
    for col in ("call", "function", "kind", "rank", "processor", "start (s)", "end (s)", "state"):
        table.add_column(col)
    for c in report.calls:
        fmt = lambda t: "" if t is None else f"{t:.3f}"  # noqa: E731
        state = c.state if c.state == "Completed" else f"[red]{c.state}[/red]"
        table.add_row(c.id, c.function, c.kind, str(c.rank), "" if c.processor is None else str(c.processor), fmt(c.start), fmt(c.end), state)
    console.print(table)
    for c in report.calls:
        if c.reason:
            console.print(f"{c.id}: {c.state}: {c.reason}", markup=False, highlight=False)
    console.print(report.summary(), markup=False, highlight=False)
    console.print(report.measured_line(), markup=False, highlight=False)
    if report.message:
        err_console.print(report.message, markup=False)
    console.print(f"result: {report.result!r}", markup=False, highlight=False)


# ---------------------------------------------------------------- running flows


def _start_prefect(toolbox: str, processors: int) -> Any:
    """The process's embedded Prefect server when no PREFECT_API_URL is set (the workers warm
    up meanwhile), None when a server is configured: the library's `prepare`."""
    from prefect_llmorch.flows.run import prepare

    return prepare(toolbox, processors)


class _Clock:
    """Where the command's wall time went, printed as one line on stderr (stdout stays
    for the report / the JSON): Prefect start, flow (to the last call's end), teardown
    (from there until the flow call returned)."""

    def __init__(self, started: Any) -> None:
        import time

        self.prefect = started.seconds if started is not None else None
        self.flow_start = time.time()

    def report(self, report: Any) -> None:
        import time

        import psutil

        now = time.time()
        ends = [c.end for c in getattr(report, "calls", []) if c.end is not None]
        last = report.t0 + max(ends) if ends else now
        flow, teardown = max(0.0, last - self.flow_start), max(0.0, now - last)
        prefect = "Prefect start " + (f"{self.prefect:.1f} s" if self.prefect is not None else "0 s (server at PREFECT_API_URL)")
        wall = now - psutil.Process().create_time()
        print(
            f"time: {wall:.1f} s so far: {prefect}, flow {flow:.1f} s (to the last call's end), "
            f"teardown {teardown:.1f} s, the rest {max(0.0, wall - (self.prefect or 0) - flow - teardown):.1f} s "
            "(imports, checks)", file=sys.stderr, flush=True,
        )


def _no_report(state: str, message: str) -> dict[str, Any]:
    """The JSON report of a run that ended before any call finished (planning failed, the
    LLM unreachable, the flow run crashed): the same keys as a report, nothing finished."""
    return {"state": state, "message": message, "result": {}, "calls": [], "latency": None}


def _ended_without_report(exc: BaseException, json_out: TextIO | None, debug: bool, state: str = "Crashed") -> NoReturn:
    """A run that ended with an error of its own instead of a report: the report that says
    so (JSON with `--json`), one line on stderr otherwise, exit 1."""
    message = f"{type(exc).__name__}: {exc}" if state == "Crashed" else str(exc)
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    if json_out is not None:
        _emit_json(_no_report(state, message), json_out)
    else:
        err_console.print(f"the run {'crashed' if state == 'Crashed' else 'failed'}: {message}", markup=False)
    raise typer.Exit(1)


def _interrupted_without_report(exc: BaseException, json_out: TextIO | None, debug: bool) -> NoReturn:
    """A Ctrl-C / SIGTERM run that ended with an error instead of a report (e.g. before the
    plan came): say so and exit with the signal's code."""
    from prefect_llmorch.host import interrupt

    message = f"stopped by {interrupt.received()}; the run ended without a report: {type(exc).__name__}: {exc}"
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    if json_out is not None:
        _emit_json(_no_report("Cancelled", message), json_out)
    else:
        err_console.print(message, markup=False)
    _exit_now(interrupt.exit_code(), json_out)


def _exit_now(code: int, json_out: TextIO | None) -> NoReturn:
    """Exit at once after a Ctrl-C / SIGTERM run printed its report: threads of abandoned
    inout calls would hold a normal exit; the embedded server's watchdog stops the server."""
    for stream in (json_out, sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


@app.command()
def run(
    ctx: typer.Context,
    plan: str = typer.Argument(..., help=PLAN_HELP, metavar="PLAN"),
    toolbox: str = typer.Option(DEFAULT_TOOLBOX, "--toolbox", "-t", help=TOOLBOX_HELP),
    processors: Optional[int] = typer.Option(None, "--processors", "-P", help=PROCESSORS_HELP),
    force_processors: bool = typer.Option(False, "--force-processors", help=FORCE_HELP),
    policy: Optional[str] = typer.Option(None, "--policy", help="critical-path (default) or paper"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object (tools' prints go to stderr)"),
    no_limit: bool = typer.Option(False, "--no-global-limit", help="do not use the machine-wide llmorch-* concurrency limits (processors and resource classes): this run is bounded on its own only"),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="LLMEndpoint block for `self` calls and recovery (default: environment)"),
    recover: Optional[int] = typer.Option(None, "--recover", help="trace-back recovery rounds with the LLM when calls fail (default 0: off)"),
    cancel_running: bool = typer.Option(False, "--cancel-running", help="on a failure, cancel running calls that recovery will re-run anyway"),
    no_cache: bool = typer.Option(False, "--no-cache", help="run every call: do not reuse stored results of cache=True functions"),
    resource: Optional[list[str]] = typer.Option(None, "--resource", help="capacity or rate of a resource class, NAME=AMOUNT (repeatable), e.g. search-api=2, search-api=10/s, search-api=2,10/s"),
    costs: Optional[str] = typer.Option(None, "--costs", help=COSTS_HELP),
) -> None:
    """Run a plan on Prefect (ephemeral unless PREFECT_API_URL is set) and print the schedule."""
    _prepare_env()
    P = _processors(processors, force_processors)
    options = _options(
        "RunOptions", processors=P, policy=policy, endpoint=endpoint, recovery_rounds=recover,
        cancel_running=cancel_running, cache=not no_cache, costs=costs, resources=_resources(resource) or None,
    )
    text = _read_plan(plan)
    debug = _debug(ctx)
    with _json_stdout(as_json) as json_out:
        parsed = _parse(text, _toolbox(toolbox), json_out)  # every error before Prefect starts
        from prefect_llmorch.host import interrupt
        from prefect_llmorch.flows.run import PlanRunFailed, run_plan
        from prefect_llmorch.options import DEFAULT_LIMIT

        _terminal_approvals()
        with interrupt.stop_on_signals():
            clock = _Clock(_start_prefect(toolbox, P))
            try:
                # the parsed plan: `run_plan` does not parse it again
                report = run_plan(parsed, toolbox, options, concurrency_limit=None if no_limit else DEFAULT_LIMIT)
            except PlanRunFailed as exc:
                _print_report(exc.report, json_out)
                clock.report(exc.report)
                raise typer.Exit(1) from None
            except RuntimeError as exc:  # e.g. the plan calls `self` and no LLM is configured
                if interrupt.received():
                    _interrupted_without_report(exc, json_out, debug)
                if json_out is not None:
                    _emit_json(_no_report("Failed", str(exc)), json_out)
                _fail(str(exc), exc)
            except BaseException as exc:
                if interrupt.received():
                    _interrupted_without_report(exc, json_out, debug)
                if not isinstance(exc, Exception):
                    raise
                _ended_without_report(exc, json_out, debug)
            if interrupt.received():
                _print_report(report, json_out)
                clock.report(report)
                _exit_now(interrupt.exit_code(), json_out)
        if json_out is not None:
            _print_report(report, json_out)
            clock.report(report)
            return
    _print_report(report, None)
    clock.report(report)


@app.command()
def simulate(
    graph_file: str = typer.Argument(..., help="an STG file (.stg), a plan file, or example:NAME"),
    processors: int = typer.Option(2, "--processors", "-P", help="P (simulated: any number)"),
    policy: str = typer.Option("critical-path", "--policy", help="critical-path, paper, or a baseline: sequential, eager, rank-barrier"),
    toolbox: str = typer.Option(DEFAULT_TOOLBOX, "--toolbox", "-t", help="for plan files"),
    as_json: bool = typer.Option(False, "--json"),
    resource: Optional[list[str]] = typer.Option(None, "--resource", help="capacity or rate of a resource class, NAME=AMOUNT (repeatable), e.g. search-api=10/s"),
) -> None:
    """Simulate a schedule (no execution): makespan, lower bound and their ratio."""
    _prepare_env()
    capacities = _resources(resource)
    _check_processors(processors)
    _check_policy(policy, baselines=True)
    from prefect_llmorch.graph import FRG
    from prefect_llmorch.schedule.simulator import read_stg, simulate_file

    with _json_stdout(as_json) as json_out:
        if graph_file.endswith(".stg"):
            if not os.path.isfile(graph_file):
                _fail(f"no such STG file: {graph_file}; give the path of a Standard Task Graph (.stg) file")
            try:
                target = read_stg(graph_file)
            except (ValueError, OSError, UnicodeDecodeError) as exc:
                _fail(f"cannot read STG file {graph_file}: {exc}; give a Standard Task Graph file", exc)
        else:
            text = _read_plan(graph_file)
            tb = _toolbox(toolbox)
            target = FRG.build(_parse(text, tb, json_out), tb)
        try:
            out = simulate_file(target, processors, policy, resources=capacities or None)
        except ValueError as exc:  # a call that can never fit, an unknown resource
            _fail(f"{exc}; give its capacity with --resource NAME=AMOUNT", exc)
        if json_out is not None:
            _emit_json(out, json_out)
            return
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
    except LLMConfigError as exc:
        _fail(f"{exc}. {_no_llm_hint()}", exc)
    except (LLMError, ValueError) as exc:
        _fail(str(exc), exc)


def _no_llm_hint() -> str:
    """What a newcomer without an LLM can do instead (`llmorch plan` / `ask` with none configured)."""
    return ("No LLM at hand: `llmorch demo` runs the whole loop with no API key (a scripted local LLM), and "
            '`llmorch local-llm start` serves a real model on this machine (README: "Offline, with a real model")')


PLANNER_HELP = ("how plans are asked for: text (the plan language) or json (the JSON plan form under a "
                "JSON schema built from the toolbox); default: the endpoint block's setting, else text")


def _ask_and_print(question: str, toolbox: str, options: Any, client: Any, json_out: TextIO | None, debug: bool) -> None:
    from prefect_llmorch.flows.ask import ask_query
    from prefect_llmorch.llm.client import LLMError
    from prefect_llmorch.flows.run import PlanRunFailed
    from prefect_llmorch.flows.planner import PlanningFailed
    from prefect_llmorch.llm.joining import JoinFailed

    from prefect_llmorch.host import interrupt

    _terminal_approvals()
    with interrupt.stop_on_signals():
        clock = _Clock(_start_prefect(toolbox, options.processors))
        try:
            report = ask_query(question, toolbox, options, endpoint=client)
        except PlanRunFailed as exc:
            _print_report(exc.report, json_out)
            clock.report(exc.report)
            raise typer.Exit(1) from None
        except (PlanningFailed, LLMError, JoinFailed) as exc:
            if interrupt.received():
                _interrupted_without_report(exc, json_out, debug)
            _ended_without_report(exc, json_out, debug, state="Failed")
        except BaseException as exc:  # e.g. stopped before the plan came: no report to print
            if interrupt.received():
                _interrupted_without_report(exc, json_out, debug)
            if not isinstance(exc, Exception):
                raise
            _ended_without_report(exc, json_out, debug)
        if interrupt.received():
            if json_out is None:
                console.print(report.extra.get("plan", ""), markup=False, highlight=False)
            _print_report(report, json_out)
            clock.report(report)
            _exit_now(interrupt.exit_code(), json_out)
    if json_out is None:
        console.print("plan:", style="bold")
        console.print(report.extra.get("plan", ""), markup=False, highlight=False)
        tokens = report.extra.get("tokens", {})
        console.print(f"planner attempts: {report.extra.get('attempts')} | tokens: {tokens.get('prompt', 0)} prompt + {tokens.get('completion', 0)} completion")
        joined = report.extra.get("joiner")
        if joined:
            decisions = ", ".join(f"round {j['round']}: {j['decision']}" for j in joined["joins"]) or "none"
            console.print(f"joiner ({joined['mode']}): {decisions}" + (f" | {joined['stopped']}" if joined["stopped"] else ""),
                          markup=False, highlight=False)
    _print_report(report, json_out)
    clock.report(report)


@app.command()
def ask(
    ctx: typer.Context,
    question: str = typer.Argument(..., help="the question to answer"),
    toolbox: str = typer.Option(DEFAULT_TOOLBOX, "--toolbox", "-t", help=TOOLBOX_HELP),
    processors: Optional[int] = typer.Option(None, "--processors", "-P", help=PROCESSORS_HELP),
    force_processors: bool = typer.Option(False, "--force-processors", help=FORCE_HELP),
    policy: Optional[str] = typer.Option(None, "--policy", help="critical-path (default) or paper"),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="name of a saved LLMEndpoint block (default: OPENAI_BASE_URL, OPENAI_API_KEY, LLMORCH_MODEL)"),
    attempts: Optional[int] = typer.Option(None, "--attempts", help="planner answers per round (first plan + repairs; default 3)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object (tools' prints go to stderr)"),
    cancel_running: bool = typer.Option(False, "--cancel-running", help="on a failure, cancel running calls that recovery will re-run anyway"),
    planner: Optional[str] = typer.Option(None, "--planner", help=PLANNER_HELP),
    no_cache: bool = typer.Option(False, "--no-cache", help="run every call: do not reuse stored results of cache=True functions"),
    costs: Optional[str] = typer.Option(None, "--costs", help=COSTS_HELP),
    resource: Optional[list[str]] = typer.Option(None, "--resource", help="capacity or rate of a resource class, NAME=AMOUNT (repeatable), e.g. search-api=2, search-api=10/s, search-api=2,10/s"),
    joiner: Optional[str] = typer.Option(None, "--joiner", help="the join step after a plan: auto (when the plan ends with join()), always, off (default: the endpoint block's, else auto)"),
    rounds: Optional[int] = typer.Option(None, "--rounds", help="continuations the joiner may write (default: the block's, else 2)"),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="token budget of the whole ask (planner, repairs, self calls, joins); at the budget the joiner answers with what it has"),
) -> None:
    """Plan the question with the LLM, run the plan in parallel on Prefect, print the answer."""
    _prepare_env()
    capacities = _resources(resource)
    P = _processors(processors, force_processors)
    options = _options(
        "AskOptions", processors=P, policy=policy, attempts=attempts, cancel_running=cancel_running,
        planner=planner, cache=not no_cache, costs=costs, resources=capacities or None,
        joiner=joiner, max_rounds=rounds, max_tokens=max_tokens,
    )
    with _json_stdout(as_json) as json_out:
        _check_capacities(_toolbox(toolbox), P, capacities)
        # the endpoint as a client: a bad one fails here, before Prefect starts
        _ask_and_print(question, toolbox, options, _endpoint(endpoint), json_out, _debug(ctx))


@app.command("plan")
def plan_cmd(
    question: str = typer.Argument(..., help="the question to plan"),
    toolbox: str = typer.Option(DEFAULT_TOOLBOX, "--toolbox", "-t", help=TOOLBOX_HELP),
    endpoint: Optional[str] = typer.Option(None, "--endpoint"),
    attempts: Optional[int] = typer.Option(None, "--attempts", help="planner answers per round (first plan + repairs; default 3)"),
    as_json: bool = typer.Option(False, "--json"),
    planner: Optional[str] = typer.Option(None, "--planner", help=PLANNER_HELP),
    processors: Optional[int] = typer.Option(None, "--processors", "-P", help="P for the predicted latency (default: cores)"),
    costs: Optional[str] = typer.Option(None, "--costs", help=COSTS_HELP),
) -> None:
    """Only plan: print the LLM's plan, its FRG and its predicted latency on P processors
    with the critical path (nothing runs)."""
    _prepare_env()
    _check_processors(processors)
    options = _options("AskOptions", processors=processors, attempts=attempts, planner=planner, costs=costs)
    with _json_stdout(as_json) as json_out:
        tb = _toolbox(toolbox)
        from prefect_llmorch.graph import FRG
        from prefect_llmorch.llm.client import LLMError
        from prefect_llmorch.flows.planner import PlanningFailed, plan_query

        client = _endpoint(endpoint)
        try:
            result = plan_query(question, tb, client, attempts=options.attempts, mode=options.planner)
        except (PlanningFailed, LLMError) as exc:
            err_console.print(str(exc), markup=False)
            raise typer.Exit(1) from None
        frg, prediction, choice = _prediction(FRG.build(result.plan, tb), result.plan, tb, processors or _machine_cores(), costs)
        if json_out is not None:
            _emit_json({
                "plan": result.text, "attempts": len(result.attempts),
                "tokens": {"prompt": result.prompt_tokens, "completion": result.completion_tokens},
                "graph": frg.to_json(), "prediction": _prediction_json(prediction, choice),
            }, json_out)
            return
    console.print(result.text, markup=False, highlight=False)
    _print_frg(frg)
    console.print(f"planner attempts: {len(result.attempts)} | tokens: {result.prompt_tokens} prompt + {result.completion_tokens} completion")
    _print_prediction(prediction, choice, {c.function for c in result.plan.calls})


DEMO_QUESTION = "Did Apple or Microsoft stock do better today, and how busy is the traffic in frames 1-4?"
# `quote` returns a structured result (a pydantic `Quote`): the plan selects its fields.
DEMO_PLAN = """s1: quote("Apple")
s2: quote("Microsoft")
s3: compare(s1.summary, s2.summary)
s4: detect("frame_001.png")
s5: detect("frame_002.png")
s6: detect("frame_003.png")
s7: detect("frame_004.png")
s8: average([s4, s5, s6, s7])
s9: self("Answer in one sentence: {s3} ({s1.symbol} {s1.change_pct}% vs {s2.symbol} {s2.change_pct}%) Frames 1-4 show {s8} objects on average.")
"""


def _demo_plan(planner: Optional[str]) -> str:
    """The demo's scripted plan, in the JSON form for `--planner json`."""
    if planner != "json":
        return DEMO_PLAN
    from prefect_llmorch.functions import load_toolbox
    from prefect_llmorch.plan.parser import parse
    from prefect_llmorch.plan.schema import with_keywords

    tb = load_toolbox(DEFAULT_TOOLBOX)
    return with_keywords(parse(DEMO_PLAN, tb), tb).to_text("json")


def _demo_answer(request: dict[str, Any]) -> str:
    prompt = str(request.get("messages", [{}])[-1].get("content", ""))
    return "Demo answer, from the local scripted LLM: " + " ".join(prompt.split()[-24:])


@app.command()
def demo(
    ctx: typer.Context,
    processors: int = typer.Option(2, "--processors", "-P", help="P (at most the machine's cores unless --force-processors)"),
    force_processors: bool = typer.Option(False, "--force-processors", help=FORCE_HELP),
    token_delay: float = typer.Option(0.02, "--token-delay", help="seconds per token of the scripted LLM"),
    as_json: bool = typer.Option(False, "--json"),
    planner: Optional[str] = typer.Option(None, "--planner", help="text (default) or json: the scripted LLM streams the plan in that form"),
) -> None:
    """The whole loop with no API key: a local OpenAI-compatible server (real HTTP) streams a
    scripted plan for the example toolbox; llmorch runs it on ephemeral Prefect."""
    _prepare_env()
    P = _processors(processors, force_processors)
    options = _options("AskOptions", processors=P, planner=planner)
    _at_least("--token-delay", token_delay, 0)
    with _json_stdout(as_json) as json_out:
        from prefect_llmorch.llm.client import LLMClient
        from prefect_llmorch.testing.fake_llm import FakeLLM

        with FakeLLM([_demo_plan(planner)], default=_demo_answer, token_delay=token_delay, model="demo") as server:
            if not as_json:
                console.print(f"scripted LLM at {server.base_url}; question: {DEMO_QUESTION}")
            client = LLMClient(server.base_url, "demo", api_key="demo-key-not-secret")
            _ask_and_print(DEMO_QUESTION, DEFAULT_TOOLBOX, options, client, json_out, _debug(ctx))


@app.command()
def serve(
    cron: Optional[str] = typer.Option(None, "--cron", help="schedule llmorch-run with this cron string, e.g. '0 * * * *'"),
    interval: Optional[float] = typer.Option(None, "--interval", help="schedule llmorch-run every N seconds"),
    plan_file: str = typer.Option("example:kitti", "--plan-file", help="llmorch-run's default plan: example:NAME or a file"),
    toolbox: str = typer.Option(DEFAULT_TOOLBOX, "--toolbox", "-t", help="llmorch-run's default toolbox"),
    processors: Optional[int] = typer.Option(None, "--processors", "-P", help=PROCESSORS_HELP),
    force_processors: bool = typer.Option(False, "--force-processors", help=FORCE_HELP),
    limit: Optional[int] = typer.Option(None, "--limit", help="most flow runs at once"),
    resource: Optional[list[str]] = typer.Option(None, "--resource", help="capacity of a resource class, NAME=AMOUNT (repeatable): the served runs' default"),
) -> None:
    """Serve the `llmorch-run` and `llmorch-ask` deployments from this process (no work pool).

    Needs a Prefect server (PREFECT_API_URL); trigger runs from the UI, with
    `prefect deployment run llmorch-run/llmorch-run`, or by the schedule.
    """
    _prepare_env()
    capacities = _resources(resource)
    P = _processors(processors, force_processors)
    if cron and interval:
        _fail("give --cron or --interval, not both")
    _at_least("--interval", interval, 1e-3)
    _at_least("--limit", limit, 1)
    if not plan_file.startswith("example:"):
        plan_file = str(_plan_path(plan_file).resolve())  # the served flow may run elsewhere
    else:
        _plan_path(plan_file)
    _check_capacities(_toolbox(toolbox), P, capacities)
    # Read when prefect_llmorch.flows.deploy builds its task runner (on import, below).
    os.environ["LLMORCH_PROCESSORS"] = str(P)
    if capacities:
        os.environ["LLMORCH_RESOURCES"] = ",".join(f"{name}={amount!r}" for name, amount in capacities.items())
    from prefect import serve as prefect_serve
    from prefect_llmorch.flows import deploy

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

    _at_least("--repeat", repeat, 1)
    script = Path.cwd() / "benchmarks" / "paper_tables.py"
    if not script.is_file():
        _fail(f"{script} not found; run this from a clone of the repository")
    spec = importlib.util.spec_from_file_location("paper_tables", script)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    argv = ["--repeat", str(repeat)] + (["--only", *only] if only else [])
    raise typer.Exit(module.main(argv))


local_llm_app = typer.Typer(no_args_is_help=True, help=(
    "A real small LLM on this machine (Qwen2.5-Coder-1.5B-Instruct behind llama.cpp's OpenAI-compatible "
    "server on 127.0.0.1), from the `local-llm` extra: pip install 'prefect-llmorch[local-llm]'."))
app.add_typer(local_llm_app, name="local-llm")
PORT_HELP = "TCP port on 127.0.0.1 (0: a free one)"


@local_llm_app.command("start")
def local_llm_start(
    port: int = typer.Option(8765, "--port", help=PORT_HELP),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: LLMORCH_LOCAL_LLM_THREADS, else all cores)"),
    n_ctx: int = typer.Option(4096, "--n-ctx", help="context length in tokens"),
    timeout: float = typer.Option(300.0, "--timeout", help="seconds to wait for the server to answer"),
) -> None:
    """Assemble the model from the installed parts (once; size and sha256 checked), start the
    server in the background and print its base URL."""
    from prefect_llmorch.llm import local

    _at_least("--threads", threads, 1)
    _at_least("--n-ctx", n_ctx, 256)
    try:
        server = local.start(port, n_ctx=n_ctx, timeout=timeout, threads=threads)
    except local.LocalLLMUnavailable as exc:
        _fail(str(exc), exc)
    how = f"started in {server.started_in:.1f} s, pid {server.pid}, log {server.log}" if server.started_in else "already running"
    _note(f"{how}; use it with: " + " ".join(f"{k}={v}" for k, v in server.env.items()))
    print(server.base_url, flush=True)


@local_llm_app.command("stop")
def local_llm_stop(port: int = typer.Option(8765, "--port", help=PORT_HELP)) -> None:
    """Stop the server `llmorch local-llm start` started on the port."""
    from prefect_llmorch.llm import local

    pid = local.stop(port)
    print(f"stopped pid {pid}" if pid else f"no server of ours on port {port}", flush=True)


@local_llm_app.command("status")
def local_llm_status(
    port: int = typer.Option(8765, "--port", help=PORT_HELP),
    as_json: bool = typer.Option(False, "--json", help="print a JSON object"),
) -> None:
    """Whether the server answers on the port, its pid, the model file and missing packages;
    exits 1 when nothing answers."""
    from prefect_llmorch.llm import local

    info = local.status(port)
    if as_json:
        _emit_json(info, sys.stdout)
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    if not info["answers"]:
        raise typer.Exit(1)


def main(argv: Optional[list[str]] = None) -> None:
    """The `llmorch` console script: `app` with `--debug` accepted anywhere, and no
    traceback for an unexpected error unless `--debug` is given."""
    args = list(sys.argv[1:] if argv is None else argv)
    # as typer reads the option (click's booleans), for every error and the commands (`ctx.obj`)
    debug = "--debug" in args or os.environ.get("LLMORCH_DEBUG", "").strip().lower() in ("1", "true", "t", "yes", "y", "on")
    if "--debug" in args:  # a global option; let `llmorch run x --debug` mean it too
        args = ["--debug"] + [a for a in args if a != "--debug"]
    try:
        app(args=args, prog_name="llmorch", obj=_Options(debug=debug))
    except _Failure as failure:  # said by `_fail`
        if debug and failure.cause is not None:
            traceback.print_exception(failure.cause, file=sys.stderr)
            print(f"error: {failure}", file=sys.stderr, flush=True)
        sys.exit(failure.code)
    except Exception as exc:
        if debug:
            raise
        print(f"error: {type(exc).__name__}: {exc} (llmorch --debug shows the traceback)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
