"""The `llmorch-run` flow (`orchestrate`): plan text -> FRG -> task runs -> `RunReport`.

    >>> from prefect_llmorch import run_plan                        # doctest: +SKIP
    >>> report = run_plan("s1: burn(1.0)\\ns2: burn(1.0)", "prefect_llmorch.examples.toolbox:toolbox", processors=2)

The flow's final state tells the truth: `Failed` (with a message naming each failed call
and why) when any call failed, `Completed` otherwise. Results of the calls that completed
are kept in the report either way (`PlanRunFailed.report`). The execution itself (shared
with `llmorch-ask`) is `prefect_llmorch.flows.execute`; the report `prefect_llmorch.flows.report`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from prefect import flow, get_run_logger
from prefect.settings import get_current_settings

from prefect_llmorch.engine.compiler import Recorder
from prefect_llmorch.engine.runner import LLMOrchTaskRunner, default_processors
from prefect_llmorch.flows.execute import Execution, conclude, current_llmorch_runner, execute, mark_gone
from prefect_llmorch.host.server import EmbeddedServer, ServerGone, embedded_server, ensure_server, server_gone, serves
from prefect_llmorch.schedule.predict import predict
from prefect_llmorch.storage.history import CostChoice, choose_costs
from prefect_llmorch.storage.planref import plan_parameter, plan_text
from prefect_llmorch.flows.handoff import Handoff, handed, handing
from prefect_llmorch.flows.recovery import RecoveryConfig
from prefect_llmorch.flows.report import plan_failed, records_sent, report_artifacts
from prefect_llmorch.report import PlanRunFailed, RunReport
from prefect_llmorch.functions import SELF, Toolbox, load_toolbox
from prefect_llmorch.llm.selfcall import TokenCounter, make_self_fn
from prefect_llmorch.options import DEFAULT_LIMIT, AskOptions, RunOptions, options_of
from prefect_llmorch.plan.errors import PlanError
from prefect_llmorch.plan.model import Plan
from prefect_llmorch.plan.parser import parse

__all__ = [
    "PlanRunFailed", "PlanRunServerGone", "RunReport", "conclude", "current_llmorch_runner", "execute", "local_runner",
    "orchestrate", "resolve_toolbox", "run_flow", "run_plan", "RunOptions",
]


class PlanRunServerGone(PlanRunFailed, ServerGone):
    """The run's Prefect server (this process's embedded one) died under it: the run was
    stopped; `report` keeps the calls that completed, with their results."""


def resolve_toolbox(toolbox: Toolbox | str) -> Toolbox:
    """A `Toolbox`, or the one `module:attr` names."""
    return toolbox if isinstance(toolbox, Toolbox) else load_toolbox(toolbox)


@flow(name="llmorch-run", log_prints=False, task_runner=LLMOrchTaskRunner())
def orchestrate(plan: str, toolbox: str, options: RunOptions = RunOptions()) -> RunReport:
    """Run a plan on P processors; returns the `RunReport` (`.to_json()` for the CLI).

    Use `run_plan` from Python: it sets the task runner for the options' `processors` and
    `policy`. A plan with errors ends the flow run `Failed` with every error as its message
    and the `PlanError` as its result (`report.plan_failed`), which `run_plan` raises.

    Args:
        plan: the plan text (either dialect), or a reference to a stored one: `run_plan`
            passes plans over `storage.planref.PLAN_PARAMETER_LIMIT` that way (the API refuses
            large parameters).
        toolbox: `module:attr` naming a `Toolbox`.
        options: processors, policy, endpoint, recovery, cache, costs, resources
            (`prefect_llmorch.options.RunOptions`: each field's default and meaning).
    """
    recorder = Recorder()  # t0: the flow starts executing, the plan is available
    tb = resolve_toolbox(toolbox)
    text = plan_text(plan)  # a large plan comes as a reference (`storage/planref.py`)
    given = handed()
    try:
        parsed = given.parsed(text, tb)  # parsed once: by the caller, if it did
        if parsed is None:
            parsed = parse(text, tb)
    except PlanError as err:
        return plan_failed(err)
    runner, P = fitted_runner(options)
    self_fn, recovery = _llm_for(parsed, options, given.client_for(text))
    get_run_logger().info("plan of %s calls on %s processors (policy %s)", len(parsed), P, options.policy)
    choice = learned_costs({c.function for c in parsed.calls}, options.costs)
    with Execution(
        tb, processors=P, self_fn=self_fn, recorder=recorder, recovery=recovery, runner=runner,
        cache=options.cache, costs=choice.costs,
    ) as ex:
        ex.start(parsed)
        prediction = predicted(ex.frg, P, options.policy, choice, runner)
        report = ex.finish()
    report.predicted = prediction
    return ex.end(report, report_artifacts(ex.frg, report))


def fitted_runner(options: RunOptions | AskOptions) -> tuple[Any, int]:
    """The flow's `LLMOrchTaskRunner` (None for another runner) with this run's policy and
    resource capacities (a deployment's runner is built at import, before any run's
    options), and P: the runner's, else the options' (or the machine's cores)."""
    runner = current_llmorch_runner()
    if runner is None:
        if options.resources:
            raise ValueError("resources= needs an LLMOrchTaskRunner (the flow's task runner is not one)")
        return None, options.processors or default_processors()
    runner.policy = options.policy
    if options.resources is not None:
        runner.use_resources(options.resources)
    if options.processors is not None and options.processors != runner.processors:
        get_run_logger().warning(
            "task runner has %s processors, flow asked for %s: using the runner's", runner.processors, options.processors,
        )
    return runner, runner.processors


def _parse_ahead(text: str, tb: Toolbox) -> "concurrent.futures.Future[Plan]":
    """Parse `text` on a thread while Prefect creates the flow run (mostly waiting on the
    API); the flow's body takes the result (`Handoff.parsed`), an error included, so a bad
    plan still fails its flow run with the parser's message."""
    future: concurrent.futures.Future[Plan] = concurrent.futures.Future()

    def work() -> None:
        try:
            future.set_result(parse(text, tb))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=work, daemon=True, name="llmorch-parse-ahead").start()
    return future


def _done(plan: Plan) -> "concurrent.futures.Future[Plan]":
    future: concurrent.futures.Future[Plan] = concurrent.futures.Future()
    future.set_result(plan)
    return future


def _llm_for(plan: Plan, options: RunOptions, client: Any = None) -> tuple[Any, RecoveryConfig | None]:
    """(the body of `self`, recovery's settings) when a `run` needs an LLM: for `self` calls
    and for trace-back recovery (`client` when the caller handed one over, else
    `options.endpoint` or the environment).

    Raises before anything runs when one is needed and none is configured.
    """
    uses_self = any(c.function == SELF for c in plan.calls)
    if not uses_self and options.recovery_rounds <= 0 and options.endpoint is None and client is None:
        return None, None
    from prefect_llmorch.flows.planner import resolve_client

    try:
        client = resolve_client(client if client is not None else options.endpoint)
    except Exception as exc:
        why = "the plan calls `self`" if uses_self else "recovery is on"
        raise RuntimeError(f"{why}, so an LLM endpoint is needed: {exc}") from None
    return make_self_fn(client, TokenCounter()), RecoveryConfig.of(client, options)


def learned_costs(functions: set[str], costs: str | None) -> CostChoice:
    """`choose_costs` for these functions, logged on the flow run (which costs, and how long
    choosing took)."""
    choice = choose_costs(functions, costs)
    get_run_logger().info("%s, chosen in %.1f ms", choice.describe(functions), choice.seconds * 1000)
    return choice


def predicted(frg: Any, processors: int, policy: str, choice: CostChoice, runner: Any = None) -> dict[str, Any] | None:
    """The report's `predicted`: the plan simulated with the costs the policy was given."""
    try:
        resources = getattr(runner, "resources", None)
        gpus = getattr(runner, "gpus", None)
        out = predict(frg, processors, policy, resources=resources or None, gpus=gpus or None).to_json()
    except ValueError as exc:  # e.g. capacities the simulator cannot model: no prediction
        get_run_logger().warning("no predicted latency: %s", exc)
        return None
    # `history` only when a function of this plan had a learned cost (ask looks up the whole
    # toolbox's), and then which of its functions kept their declared cost
    functions = set(frg.function.values())
    learned = functions & set(choice.costs) if choice.source == "history" else set()
    out["costs"] = "history" if learned else "declared"
    if learned and functions - learned:
        out["declared"] = sorted(functions - learned)
    return out


def run_plan(
    plan: str | Plan,
    toolbox: Toolbox | str,
    options: RunOptions | None = None,
    *,
    endpoint: Any = None,
    concurrency_limit: str | None = DEFAULT_LIMIT,
    task_runner: Any = None,
    gpus: Any = None,
    **overrides: Any,
) -> RunReport:
    """Run a plan as an `llmorch-run` flow; returns the report, raises `PlanRunFailed`.

        run_plan(text, "prefect_llmorch.examples.toolbox:toolbox", processors=2, recovery_rounds=1)
        run_plan(text, toolbox, RunOptions(processors=2, recovery_rounds=1))    # the same

    Args:
        plan: plan text, or a parsed `Plan` (not parsed again).
        toolbox: a `Toolbox` or `module:attr` naming one (a path is what the UI shows).
        options: the run's options (`RunOptions`); default: its defaults.
        endpoint: the LLM for `self` calls and recovery: a saved `LLMEndpoint` block's
            name, an `LLMEndpoint`, an `LLMClient`, or None (the environment, when needed).
        concurrency_limit: the global concurrency limit guarding the machine (None: off).
        task_runner: run on this task runner instead of a local `LLMOrchTaskRunner` (e.g.
            `prefect_llmorch.engine.dask.LLMOrchDaskTaskRunner`); P is then the runner's, and
            `processors`, `policy` and `concurrency_limit` are its settings, not these.
        gpus: GPU devices, `[{"id": 0, "mem_gb": 80}]`, for calls declaring `gpu_mem_gb`.
        **overrides: fields of `RunOptions` laid over `options`: `processors` (P; default
            the machine's cores), `policy` (`critical-path` or `paper`), `recovery_rounds`
            (0: off), `cancel_running` (on a failure, cancel running calls recovery will
            re-run), `cache` (False: run every call), `costs` (`declared` or `history`;
            None: history once there is one), `resources` (capacities of resource classes,
            `{"search-api": 2}`).

    Raises:
        PlanRunFailed: a call failed (the report is `exc.report`).
        ValueError: a bad option (before a flow run exists).
    """
    opts, client = call_options(RunOptions, options, overrides, endpoint)
    if task_runner is None:
        prepare(toolbox, opts.processors)
    else:
        ensure_server()  # one server for everything below (the take-ahead's client, the flow run)
    given = isinstance(plan, Plan)
    text = plan.to_text() if given else plan  # type: ignore[union-attr]
    runner = task_runner if task_runner is not None else local_runner(toolbox, opts, concurrency_limit, gpus)
    simple = _simple(toolbox, client)
    # Parameters go to the API (which refuses large ones) only when simple.
    parameters = {"plan": plan_parameter(text) if simple else text, "toolbox": toolbox, "options": opts}
    handoff = Handoff(client=client, text=text)
    try:
        tb = resolve_toolbox(toolbox)
    except Exception:  # the flow reports it, as it would have
        pass
    else:
        handoff = Handoff(
            toolbox=tb, client=client, text=text, plan=_done(plan) if given else _parse_ahead(text, tb),  # type: ignore[arg-type]
        )
    earlier_records_sent()  # before this run's first writes
    if task_runner is None and concurrency_limit:
        from prefect_llmorch.engine.guard import take_ahead_unless_kept

        take_ahead_unless_kept(concurrency_limit, opts.processors)  # the lease write while Prefect creates the flow run
    with handing(handoff):
        return run_flow(orchestrate, runner, parameters, simple=simple)


#: How long a run waits for the records of the process's earlier runs before it starts
#: (`report.send_records` sends them after their answers). Their writes beside a new run's
#: flow-run creation made a SQLite server refuse one with 503, after which Prefect's client
#: waits 2 s before it tries again; in a process running one run after another they take
#: tens of milliseconds, on the next run's way instead of the answer's.
EARLIER_RECORDS_SECONDS = 10.0


def earlier_records_sent() -> None:
    """Wait (up to `EARLIER_RECORDS_SECONDS`) for earlier runs' records, except against this
    process's embedded server: it tries a write SQLite refused again itself (`host/app.py`),
    so both may go at once (back-to-back runs start their first call ~90 ms sooner)."""
    from prefect.settings import get_current_settings

    if not serves(get_current_settings().api.url):
        records_sent(EARLIER_RECORDS_SECONDS)


def with_endpoint(kind: Any, options: Any, overrides: dict[str, Any], endpoint: Any) -> tuple[Any, Any]:
    """(options, client object or None): a block name goes into the options (a flow
    parameter the UI shows), an `LLMEndpoint` / `LLMClient` object is handed over beside."""
    if isinstance(endpoint, str):
        overrides = {**overrides, "endpoint": endpoint}
        endpoint = None
    return options_of(kind, options, overrides), endpoint


def call_options(kind: Any, options: Any, overrides: dict[str, Any], endpoint: Any) -> tuple[Any, Any]:
    """`with_endpoint` for `run_plan` / `ask_query`, with P set (default: the machine's
    cores): the runner they build has it, and the flow run's parameters show it."""
    opts, client = with_endpoint(kind, options, overrides, endpoint)
    return opts.merged(processors=opts.processors or default_processors()), client


def prepare(toolbox: Toolbox | str, processors: int) -> EmbeddedServer | None:
    """Before a process's first run: start its embedded Prefect server (when no
    `PREFECT_API_URL` is set) and, meanwhile, the compute workers the run's runner will take
    (they import the toolbox while the server starts). Nothing to start later: a no-op.
    Returns the embedded server (None when a server is configured)."""
    if embedded_server() is None and not get_current_settings().api.url:
        from prefect_llmorch.procs.workers import prestart_pool

        prestart_pool(processors, preload=_preload(toolbox))
    return ensure_server()


def _preload(toolbox: Toolbox | str) -> list[str]:
    """The module a toolbox path names, for the compute workers to import ahead."""
    return [toolbox.split(":", 1)[0]] if isinstance(toolbox, str) else []


def local_runner(
    toolbox: Toolbox | str, options: RunOptions | AskOptions, concurrency_limit: str | None, gpus: Any = None,
) -> LLMOrchTaskRunner:
    """The runner `run_plan` and `ask_query` use (P, policy and capacities from `options`);
    a toolbox path is imported in the workers before the plan arrives."""
    return LLMOrchTaskRunner(
        processors=options.processors, policy=options.policy, concurrency_limit=concurrency_limit,
        preload=_preload(toolbox), resources=options.resources, gpus=gpus,
    )


def _simple(toolbox: Any, client: Any) -> bool:
    """Whether every parameter is plain data (a path, the options) that Prefect may store:
    a `Toolbox` or an LLM client object is not."""
    return isinstance(toolbox, str) and client is None


def run_flow(flow_obj: Any, runner: Any, parameters: dict[str, Any], *, simple: bool) -> Any:
    """Run `flow_obj` on `runner`; return its value or raise its exception.

    Objects (a `Toolbox`, an `LLMClient`) are never sent to the API as flow-run parameters:
    then the flow's function runs inside an unparameterised flow of the same name.

    Raises `PlanRunServerGone` (the last report the body made: what completed) or
    `ServerGone` (none yet) when this process's embedded Prefect server died under the run,
    instead of whatever Prefect's engine raised when it could not record the run's end.
    """
    answered = threading.Event()  # the run's records are sent once its answer is here
    reports: list[Any] = []
    try:
        with handing(dataclasses.replace(handed(), answered=answered, reports=reports)), _own_heartbeats():
            try:
                return _run_flow(flow_obj, runner, parameters, simple=simple)
            except Exception as exc:
                gone = server_gone(str(get_current_settings().api.url or ""))
                if gone is None:
                    raise
                if reports:  # what completed (`Execution.finish` marked it, if the death came first)
                    report = mark_gone(reports[-1], gone)
                    raise PlanRunServerGone(report.message, report) from exc
                raise ServerGone(str(gone)) from exc
    finally:
        answered.set()


def _without_heartbeats(settings: Any) -> Any:
    """`settings` with Prefect's flow heartbeats off: a copy with one value changed, not
    validated again (`copy_with_update` or `temporary_settings` validate a whole `Settings`
    anew, every run), equal to what `copy_with_update` builds (tests/test_heartbeats.py)."""
    return settings.model_copy(update={"flows": settings.flows.model_copy(update={"heartbeat_frequency": None})})


@contextmanager
def _own_heartbeats() -> Iterator[None]:
    """The flow run's heartbeats are the body's own (`execute.heartbeats`), not Prefect's.

    Heartbeats let a server mark the runs of a process that died as Crashed. Prefect's thread
    sleeps in 1 s steps, and the engine joins it before the flow call returns: 0-1 s at the
    end of every answer. So Prefect's are off for the runs this process calls and waits for,
    and the flow's body sends the same events from a thread that stops at once
    (`Handoff.heartbeats`). Against this process's embedded server, none at all: it dies with
    the process, so they could tell it nothing."""
    from prefect.context import SettingsContext
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    seconds = settings.flows.heartbeat_frequency
    if seconds is None:
        yield
        return
    embedded = serves(settings.api.url)
    with (
        SettingsContext(profile=SettingsContext.get().profile, settings=_without_heartbeats(settings)),
        handing(dataclasses.replace(handed(), heartbeats=None if embedded else seconds)),
    ):
        yield


def _run_flow(flow_obj: Any, runner: Any, parameters: dict[str, Any], *, simple: bool) -> Any:
    if simple:
        state = flow_obj.with_options(task_runner=runner)(**parameters, return_state=True)
    else:
        @flow(name=flow_obj.name, task_runner=runner, validate_parameters=False, log_prints=False)
        def _inline() -> Any:
            return flow_obj.fn(**parameters)  # an LLM client object comes by the handoff

        state = _inline(return_state=True)
    value = state.result(raise_on_failure=False)
    if isinstance(value, BaseException):
        raise value
    return value
