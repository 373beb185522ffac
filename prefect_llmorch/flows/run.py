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
import threading
from typing import Any, Mapping

from prefect import flow, get_run_logger
from prefect.settings import get_current_settings

from prefect_llmorch.engine.compiler import Recorder
from prefect_llmorch.engine.runner import LLMOrchTaskRunner, default_processors
from prefect_llmorch.flows.execute import Execution, current_llmorch_runner, execute
from prefect_llmorch.host.server import EmbeddedServer, embedded_server, ensure_server
from prefect_llmorch.schedule.predict import predict
from prefect_llmorch.storage.history import CostChoice, check_costs, choose_costs, remember_records
from prefect_llmorch.storage.planref import plan_parameter, plan_text
from prefect_llmorch.flows.recovery import RecoveryConfig
from prefect_llmorch.flows.report import PlanRunFailed, RunReport, plan_failed, publish_artifacts
from prefect_llmorch.functions import SELF, Toolbox, load_toolbox
from prefect_llmorch.llm.selfcall import TokenCounter, make_self_fn
from prefect_llmorch.plan.errors import PlanError
from prefect_llmorch.plan.model import Plan
from prefect_llmorch.plan.parser import parse

__all__ = [
    "PlanRunFailed", "RunReport", "conclude", "current_llmorch_runner", "execute", "local_runner",
    "orchestrate", "resolve_toolbox", "run_flow", "run_plan",
]


def resolve_toolbox(toolbox: Toolbox | str) -> Toolbox:
    """A `Toolbox`, or the one `module:attr` names."""
    return toolbox if isinstance(toolbox, Toolbox) else load_toolbox(toolbox)


def conclude(report: RunReport) -> Any:
    """Return the report of a run whose calls all completed; raise `PlanRunFailed` otherwise.

    A run stopped by Ctrl-C / SIGTERM (`interrupt.mark`) returns a `Cancelled` state
    instead, whose result is the report."""
    if report.state == "Cancelled":
        from prefect_llmorch.host.interrupt import cancelled

        return cancelled(report)
    if report.failed:
        raise PlanRunFailed(report.message, report)
    return report


@flow(name="llmorch-run", log_prints=False, task_runner=LLMOrchTaskRunner())
def orchestrate(
    plan: str,
    toolbox: str,
    processors: int | None = None,
    policy: str = "critical-path",
    endpoint: str | None = None,
    recovery_rounds: int = 0,
    cancel_running: bool = False,
    cache: bool = True,
    costs: str | None = None,
    resources: dict[str, float | str] | None = None,
) -> RunReport:
    """Run a plan on P processors; returns the `RunReport` (`.to_json()` for the CLI).

    Use `run_plan` from Python: it sets the task runner for `processors` and `policy`.
    A plan with errors ends the flow run `Failed` with every error as its message and the
    `PlanError` as its result (`report.plan_failed`), which `run_plan` raises.

    Args:
        plan: the plan text (either dialect), or a reference to a stored one: `run_plan`
            passes plans over `storage.planref.PLAN_PARAMETER_LIMIT` that way (the API refuses
            large parameters).
        toolbox: `module:attr` naming a `Toolbox`.
        processors: P; defaults to the machine's core count.
        policy: `critical-path` (default) or `paper`.
        endpoint: a saved `LLMEndpoint` block's name for `self` calls and recovery; None
            reads OPENAI_BASE_URL / OPENAI_API_KEY / LLMORCH_MODEL when an LLM is needed.
        recovery_rounds: trace-back recovery rounds for calls failing at run time (0: off).
        cancel_running: when a call fails, cancel running calls that recovery will re-run
            anyway, instead of letting them end first.
        cache: reuse stored results of `cache=True` functions (False: run every call).
        costs: `declared` (the decorators' `cost=`) or `history` (learned from Prefect's
            task-run history, `storage/history.py`, declared where there is none); None:
            `history` once this machine has a history, else `declared` (`choose_costs`).
        resources: capacities of resource classes (`{"search-api": 2}`) for this run,
            replacing the task runner's; None: the runner's.
    """
    recorder = Recorder()  # t0: the flow starts executing, the plan is available
    logger = get_run_logger()
    tb = resolve_toolbox(toolbox)
    try:
        parsed = _parsed(plan_text(plan), tb)  # a large plan comes as a reference (`storage/planref.py`)
    except PlanError as err:
        return plan_failed(err)
    P = processors or default_processors()
    runner = current_llmorch_runner()
    if runner is not None:
        runner.policy = policy  # a deployment's runner is built at import: take the run's policy
        if resources is not None:
            runner.use_resources(resources)  # and the run's capacities
    elif resources:
        raise ValueError("resources= needs an LLMOrchTaskRunner (the flow's task runner is not one)")
    llm, self_fn, recovery = _llm_for(parsed, endpoint, recovery_rounds, cancel_running)
    if runner is not None and runner.processors != P:
        logger.warning("task runner has %s processors, flow asked for %s: using the runner's", runner.processors, P)
        P = runner.processors
    logger.info("plan of %s calls on %s processors (policy %s)", len(parsed), P, policy)
    choice = learned_costs({c.function for c in parsed.calls}, costs)
    ex = Execution(
        tb, processors=P, self_fn=self_fn, recorder=recorder, recovery=recovery, runner=runner,
        cache=cache, costs=choice.costs,
    )
    try:
        ex.start(parsed)
        prediction = predicted(ex.frg, P, policy, choice, runner)
    except BaseException:
        ex.close()
        raise
    report = ex.finish()
    report.predicted = prediction
    remember_records(report.calls)
    publish_artifacts(ex.frg, report)
    return conclude(report)


#: Plans `run_plan` is parsing while Prefect creates their flow runs, by (text, toolbox).
_AHEAD: dict[tuple[str, int], concurrent.futures.Future[Plan]] = {}
_AHEAD_LOCK = threading.Lock()


def _parse_ahead(text: str, toolbox: Toolbox | str) -> tuple[str, int] | None:
    """Start parsing `text` on a thread while Prefect creates the flow run (mostly waiting on
    the API); the flow's body takes the result (`_parsed`), an error included, so a bad plan
    still fails its flow run with the parser's message. Returns the key to drop it by."""
    try:
        tb = resolve_toolbox(toolbox)
    except Exception:  # the flow reports it, as it would have
        return None
    key = (text, id(tb))
    future: concurrent.futures.Future[Plan] = concurrent.futures.Future()

    def work() -> None:
        try:
            future.set_result(parse(text, tb))
        except BaseException as exc:
            future.set_exception(exc)

    with _AHEAD_LOCK:
        if key in _AHEAD:
            return None
        _AHEAD[key] = future
    threading.Thread(target=work, daemon=True, name="llmorch-parse-ahead").start()
    return key


def _parsed(text: str, tb: Toolbox) -> Plan:
    """The plan parsed ahead by `run_plan` for this text and toolbox, else parsed now."""
    with _AHEAD_LOCK:
        future = _AHEAD.pop((text, id(tb)), None)
    return future.result() if future is not None else parse(text, tb)


def _llm_for(plan: Plan, endpoint: str | None, recovery_rounds: int, cancel_running: bool = False) -> tuple[Any, Any, RecoveryConfig | None]:
    """The LLM a `run` needs, if any: for `self` calls and for trace-back recovery.

    Raises before anything runs when one is needed and none is configured.
    """
    uses_self = any(c.function == SELF for c in plan.calls)
    if not uses_self and recovery_rounds <= 0 and endpoint is None:
        return None, None, None
    from prefect_llmorch.flows.planner import resolve_client

    try:
        client = resolve_client(endpoint)
    except Exception as exc:
        why = "the plan calls `self`" if uses_self else "recovery is on"
        raise RuntimeError(f"{why}, so an LLM endpoint is needed: {exc}") from None
    running = "cancel" if cancel_running else "wait"
    recovery = RecoveryConfig(client, max_rounds=recovery_rounds, running=running) if recovery_rounds > 0 else None
    return client, make_self_fn(client, TokenCounter()), recovery


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
    *,
    processors: int | None = None,
    policy: str = "critical-path",
    concurrency_limit: str | None = "llmorch-processors",
    task_runner: Any = None,
    endpoint: Any = None,
    recovery_rounds: int = 0,
    cancel_running: bool = False,
    cache: bool = True,
    costs: str | None = None,
    resources: Mapping[str, float | str] | None = None,
    gpus: Any = None,
) -> RunReport:
    """Run a plan as an `llmorch-run` flow; returns the report, raises `PlanRunFailed`.

    Args:
        plan: plan text (or a parsed `Plan`).
        toolbox: a `Toolbox` or `module:attr` naming one (a path is what the UI shows).
        processors: P; defaults to the machine's core count.
        policy: `critical-path` or `paper`.
        concurrency_limit: the global concurrency limit guarding the machine (None: off).
        task_runner: run on this task runner instead of a local `LLMOrchTaskRunner` (e.g.
            `prefect_llmorch.engine.dask.LLMOrchDaskTaskRunner`); P is then the runner's, and
            `processors`, `policy` and `concurrency_limit` are its settings, not these.
        endpoint: the LLM for `self` calls and recovery: a saved `LLMEndpoint` block's
            name, an `LLMEndpoint`, an `LLMClient`, or None (the environment, when needed).
        recovery_rounds: trace-back recovery rounds for calls failing at run time (0: off).
        cancel_running: when a call fails, cancel running calls that recovery will re-run
            anyway (killing their worker processes) instead of letting them end first.
        cache: reuse stored results of `cache=True` functions (False: `--no-cache`).
        costs: `declared` or `history` (costs learned from Prefect's task-run history);
            None (default): `history` once this machine has a history, else `declared`.
        resources: capacities of resource classes beyond processors (`{"search-api": 2}`);
            calls declaring `resources=` are admitted when their demand fits (local runner).
        gpus: GPU devices, `[{"id": 0, "mem_gb": 80}]`, for calls declaring `gpu_mem_gb`.
    """
    check_costs(costs)  # before a flow run exists
    if task_runner is None:
        prepare(toolbox, processors or default_processors())
    else:
        ensure_server()  # one server for everything below (the take-ahead's client, the flow run)
    text = plan.to_text() if isinstance(plan, Plan) else plan
    P = processors or default_processors()
    runner = task_runner if task_runner is not None else local_runner(toolbox, P, policy, concurrency_limit, resources, gpus)
    simple = _simple(toolbox, endpoint)
    parameters: dict[str, Any] = {
        # Parameters go to the API (which refuses large ones) only when simple.
        "plan": plan_parameter(text) if simple else text, "toolbox": toolbox, "processors": P, "policy": policy,
        "endpoint": endpoint, "recovery_rounds": recovery_rounds, "cancel_running": cancel_running,
        "cache": cache, "costs": costs, "resources": dict(resources) if resources else None,
    }
    ahead = _parse_ahead(text, toolbox)
    if task_runner is None and concurrency_limit:
        from prefect_llmorch.engine.guard import take_ahead_unless_kept

        take_ahead_unless_kept(concurrency_limit, P)  # the lease write while Prefect creates the flow run
    try:
        return run_flow(orchestrate, runner, parameters, simple=simple)
    finally:
        if ahead is not None:
            with _AHEAD_LOCK:
                _AHEAD.pop(ahead, None)  # the flow never got to it


def prepare(toolbox: Toolbox | str, processors: int) -> EmbeddedServer | None:
    """Before a process's first run: start its embedded Prefect server (when no
    `PREFECT_API_URL` is set) and, meanwhile, the compute workers the run's runner will take
    (they import the toolbox while the server starts). Nothing to start later: a no-op.
    Returns the embedded server (None when a server is configured)."""
    if embedded_server() is None and not get_current_settings().api.url:
        from prefect_llmorch.engine.workers import prestart_pool

        prestart_pool(processors, preload=[toolbox.split(":", 1)[0]] if isinstance(toolbox, str) else [])
    return ensure_server()


def local_runner(
    toolbox: Toolbox | str, processors: int, policy: str, concurrency_limit: str | None,
    resources: Mapping[str, float | str] | None = None, gpus: Any = None,
) -> LLMOrchTaskRunner:
    """The runner `run_plan` and `ask_query` use; a toolbox path is imported in the workers
    before the plan arrives."""
    preload = [toolbox.split(":", 1)[0]] if isinstance(toolbox, str) else []
    return LLMOrchTaskRunner(
        processors=processors, policy=policy, concurrency_limit=concurrency_limit, preload=preload,
        resources=resources, gpus=gpus,
    )


def _simple(toolbox: Any, endpoint: Any) -> bool:
    """Whether every parameter is plain data (a path, a block name) that Prefect may store."""
    return isinstance(toolbox, str) and (endpoint is None or isinstance(endpoint, str))


def run_flow(flow_obj: Any, runner: Any, parameters: dict[str, Any], *, simple: bool) -> Any:
    """Run `flow_obj` on `runner`; return its value or raise its exception.

    Objects (a `Toolbox`, an `LLMClient`) are never sent to the API as flow-run parameters:
    then the flow's function runs inside an unparameterised flow of the same name.
    """
    if simple:
        state = flow_obj.with_options(task_runner=runner)(**parameters, return_state=True)
    else:
        @flow(name=flow_obj.name, task_runner=runner, validate_parameters=False, log_prints=False)
        def _inline() -> Any:
            return flow_obj.fn(**parameters)

        state = _inline(return_state=True)
    value = state.result(raise_on_failure=False)
    if isinstance(value, BaseException):
        raise value
    return value
