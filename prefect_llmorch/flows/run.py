"""The `orchestrate` flow: plan -> FRG -> compiled task runs -> results and artifacts.

    >>> from prefect_llmorch import run_plan                        # doctest: +SKIP
    >>> report = run_plan("s1: burn(1.0)\\ns2: burn(1.0)", "prefect_llmorch.examples.toolbox:toolbox", processors=2)

The flow's final state tells the truth: `Failed` (with a message naming each failed call
and why) when any call failed, `Completed` otherwise. Results of the calls that completed
are kept in the report either way (`PlanRunFailed.report`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture, wait

from prefect_llmorch.engine.compiler import Compiler, Recorder, final_state
from prefect_llmorch.credentials import CredentialStore
from prefect_llmorch.flows.progress import RunProgress
from prefect_llmorch.functions import SELF, Toolbox, load_toolbox
from prefect_llmorch.graph import FRG
from prefect_llmorch.plan.model import Plan
from prefect_llmorch.plan.parser import parse
from prefect_llmorch.flows.recovery import RecoveryConfig, RecoveryController
from prefect_llmorch.engine.runner import LLMOrchTaskRunner, default_processors


@dataclass
class RunReport:
    """What a run did: the `llmorch run --json` object."""

    state: str
    makespan: float
    lower_bound: float
    processors: int
    calls: list[dict[str, Any]]
    result: Any
    results: dict[str, Any] = field(default_factory=dict)
    sequential: float = 0.0  # sum of the call times
    failed: list[str] = field(default_factory=list)
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    t0: float = 0.0  # wall-clock time that call start/end are relative to

    @property
    def speedup(self) -> float:
        return self.sequential / self.makespan if self.makespan > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        out = {
            "state": self.state,
            "makespan": self.makespan,
            "lower_bound": self.lower_bound,
            "processors": self.processors,
            "calls": [
                {k: c[k] for k in ("id", "function", "kind", "rank", "state", "start", "end", "pid")}
                for c in self.calls
            ],
            "result": _jsonable(self.result),
        }
        if self.message:
            out["message"] = self.message
        out.update(self.extra)
        return out


class PlanRunFailed(RuntimeError):
    """Some calls of the plan failed; `report` keeps everything that completed."""

    def __init__(self, message: str, report: RunReport) -> None:
        self.report = report
        super().__init__(message)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (PlanRunFailed, (str(self), self.report))


def _jsonable(value: Any) -> Any:
    import json

    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        if isinstance(value, dict):
            return {str(k): _jsonable(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [_jsonable(v) for v in value]
        return repr(value)


def resolve_toolbox(toolbox: Toolbox | str) -> Toolbox:
    return toolbox if isinstance(toolbox, Toolbox) else load_toolbox(toolbox)


def measured_lower_bound(frg: FRG, recorder: Recorder, processors: int) -> float:
    """max(critical path, compute work / P), with each call's *measured* duration."""
    costs = {}
    for cid in frg.ids:
        rec = recorder.records.get(cid)
        if rec and rec.start is not None and rec.end is not None:
            costs[cid] = max(rec.end - rec.start, 0.0)
        else:
            costs[cid] = 0.0
    measured = FRG.from_edges(frg.ids, frg.deps, frg.kind, costs, functions=frg.function)
    return round(measured.lower_bound(processors), 6)


def build_report(frg: FRG, recorder: Recorder, processors: int, futures: Mapping[str, PrefectFuture[Any]]) -> RunReport:
    calls = []
    for cid in frg.ids:
        rec = recorder.records[cid]
        fut = futures.get(cid)
        state = rec.state
        ended = final_state(fut) if fut is not None else None
        if ended is not None and ended.is_final() and not ended.is_completed() and state != "Failed":
            state = ended.name or ended.type.value.title()  # e.g. NotReady: upstream failed
            rec.state = state
        calls.append(rec.to_dict())
    ended = [c for c in calls if c["start"] is not None and c["end"] is not None]
    makespan = round(max((c["end"] for c in ended), default=0.0) - min((c["start"] for c in ended), default=0.0), 6)
    sequential = round(sum(c["end"] - c["start"] for c in ended), 6)
    failed = [c["id"] for c in calls if c["state"] != "Completed"]
    sinks = [s for s in frg.sinks if s in recorder.results]
    if len(frg.sinks) == 1:
        result = recorder.results.get(frg.sinks[0])
    else:
        result = {s: recorder.results[s] for s in sinks}
    return RunReport(
        state="Failed" if failed else "Completed",
        makespan=makespan,
        lower_bound=measured_lower_bound(frg, recorder, processors),
        processors=processors,
        calls=calls,
        result=result,
        results=dict(recorder.results),
        sequential=sequential,
        failed=failed,
        t0=recorder.t0,
    )


def failure_message(report: RunReport) -> str:
    lines = []
    for c in report.calls:
        if c["state"] == "Failed":
            lines.append(f"{c['id']} · {c['function']} failed: {c['error']}")
        elif c["state"] != "Completed" and c.get("error"):  # e.g. cancelled, and why
            lines.append(f"{c['id']} · {c['function']} ended {c['state']}: {c['error']}")
        elif c["state"] != "Completed":
            lines.append(f"{c['id']} · {c['function']} did not run ({c['state']}: an input failed)")
    done = sum(1 for c in report.calls if c["state"] == "Completed")
    return f"{len(report.failed)} of {len(report.calls)} calls did not complete ({done} completed, results kept):\n" + "\n".join(lines)


def publish_artifacts(frg: FRG, report: RunReport, extra_markdown: str = "") -> None:
    """The FRG as mermaid and the schedule as a table, shown on the flow run's page."""
    create_markdown_artifact(
        key="llmorch-frg",
        markdown="## Function-call Relation Graph\n\n```mermaid\n" + frg.to_mermaid() + "\n```\n" + extra_markdown,
        description="The plan's FRG: def-use edges, ranks, mutual exclusion of compute calls",
    )
    rows = [
        {
            "call": c["id"], "function": c["function"], "kind": c["kind"], "rank": c["rank"],
            "processor": "" if c["processor"] is None else c["processor"], "pid": c["pid"],
            "start": c["start"], "end": c["end"], "state": c["state"],
        }
        for c in report.calls
    ]
    create_table_artifact(
        key="llmorch-schedule",
        table=rows,
        description=(
            f"makespan {report.makespan:.3f} s, lower bound {report.lower_bound:.3f} s, "
            f"P = {report.processors}, speedup vs sum of call times {report.speedup:.2f}x"
        ),
    )


def current_llmorch_runner() -> LLMOrchTaskRunner | None:
    ctx = FlowRunContext.get()
    runner = getattr(ctx, "task_runner", None) if ctx else None
    return runner if isinstance(runner, LLMOrchTaskRunner) else None


def execute(
    plan: Plan,
    toolbox: Toolbox,
    *,
    processors: int,
    self_fn: Callable[[str], Any] | None = None,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
    recorder: Recorder | None = None,
    recovery: RecoveryConfig | None = None,
) -> tuple[FRG, Recorder, RunReport]:
    """Run a checked plan inside the current flow run; returns the FRG, records and report.

    With `recovery`, calls that finally fail are repaired by trace-back recovery
    (`prefect_llmorch.flows.recovery`); the report then carries `extra["recovery"]`.
    """
    frg = FRG.build(plan, toolbox)
    runner = current_llmorch_runner()
    if runner is not None:
        runner.use_graph(frg)
    recorder = recorder or Recorder()
    if secrets is None:  # the ToolCredentials blocks the plan's functions declare; fails early if one is missing
        secrets = CredentialStore(toolbox)
        secrets.require(plan.calls)
    progress = RunProgress.start(recorder)  # the `llmorch-progress` artifact, updated as calls finish
    try:
        compiler = Compiler(frg=frg, toolbox=toolbox, recorder=recorder, self_fn=self_fn, secrets=secrets)
        futures: dict[str, PrefectFuture[Any]] = {}
        # -- trace-back recovery (recovery.py): hooks before submitting, rounds after -----
        controller = RecoveryController(recovery, plan, toolbox, compiler, runner) if recovery is not None else None
        compiler.submit(plan.calls, futures)
        if runner is not None:
            runner.no_more_submissions()
        if controller is not None:
            frg = controller.run(futures)  # resubmits repaired calls into `futures`
        # Bounded when recovery gave up waiting on a round: never hang on a stuck call.
        timed_out = controller is not None and controller.outcome == "timed out"
        wait(list(futures.values()), timeout=0 if timed_out else None)
        report = build_report(frg, recorder, processors, futures)
    finally:
        progress.close()
    if controller is not None:
        controller.annotate(report)
    return frg, recorder, report


@flow(name="llmorch-run", log_prints=False, task_runner=LLMOrchTaskRunner())
def orchestrate(
    plan: str,
    toolbox: str,
    processors: int | None = None,
    policy: str = "critical-path",
    endpoint: str | None = None,
    recovery_rounds: int = 0,
    cancel_running: bool = False,
) -> RunReport:
    """Run a plan on P processors; returns the `RunReport` (`.to_json()` for the CLI).

    Use `run_plan` from Python: it sets the task runner for `processors` and `policy`.

    Args:
        plan: the plan text (either dialect).
        toolbox: `module:attr` naming a `Toolbox`.
        processors: P; defaults to the machine's core count.
        policy: `critical-path` (default) or `paper`.
        endpoint: a saved `LLMEndpoint` block's name for `self` calls and recovery; None
            reads OPENAI_BASE_URL / OPENAI_API_KEY / LLMORCH_MODEL when an LLM is needed.
        recovery_rounds: trace-back recovery rounds for calls failing at run time (0: off).
        cancel_running: when a call fails, cancel running calls that recovery will re-run
            anyway, instead of letting them end first.
    """
    logger = get_run_logger()
    tb = resolve_toolbox(toolbox)
    parsed = parse(plan, tb)
    P = processors or default_processors()
    runner = current_llmorch_runner()
    if runner is not None:
        runner.policy = policy  # a deployment's runner is built at import: take the run's policy
    llm, self_fn, recovery = _llm_for(parsed, endpoint, recovery_rounds, cancel_running)
    if runner is not None and runner.processors != P:
        logger.warning("task runner has %s processors, flow asked for %s: using the runner's", runner.processors, P)
        P = runner.processors
    logger.info("plan of %s calls on %s processors (policy %s)", len(parsed), P, policy)
    frg, _, report = execute(parsed, tb, processors=P, self_fn=self_fn, recovery=recovery)
    publish_artifacts(frg, report)
    if report.failed:
        if not report.message:
            report.message = failure_message(report)
        raise PlanRunFailed(report.message, report)
    return report


def _llm_for(plan: Plan, endpoint: str | None, recovery_rounds: int, cancel_running: bool = False) -> tuple[Any, Any, RecoveryConfig | None]:
    """The LLM a `run` needs, if any: for `self` calls and for trace-back recovery.

    Raises before anything runs when one is needed and none is configured.
    """
    uses_self = any(c.function == SELF for c in plan.calls)
    if not uses_self and recovery_rounds <= 0 and endpoint is None:
        return None, None, None
    from prefect_llmorch.flows.ask import TokenCounter, make_self_fn
    from prefect_llmorch.flows.planner import resolve_client

    try:
        client = resolve_client(endpoint)
    except Exception as exc:
        why = "the plan calls `self`" if uses_self else "recovery is on"
        raise RuntimeError(f"{why}, so an LLM endpoint is needed: {exc}") from None
    running = "cancel" if cancel_running else "wait"
    recovery = RecoveryConfig(client, max_rounds=recovery_rounds, running=running) if recovery_rounds > 0 else None
    return client, make_self_fn(client, TokenCounter()), recovery


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
    """
    text = plan.to_text() if isinstance(plan, Plan) else plan
    P = processors or default_processors()
    runner = task_runner if task_runner is not None else local_runner(toolbox, P, policy, concurrency_limit)
    parameters: dict[str, Any] = {
        "plan": text, "toolbox": toolbox, "processors": P, "policy": policy,
        "endpoint": endpoint, "recovery_rounds": recovery_rounds, "cancel_running": cancel_running,
    }
    return run_flow(orchestrate, runner, parameters, simple=_simple(toolbox, endpoint))


def local_runner(toolbox: Toolbox | str, processors: int, policy: str, concurrency_limit: str | None) -> LLMOrchTaskRunner:
    """The runner `run_plan` and `ask_query` use; a toolbox path is imported in the workers
    before the plan arrives."""
    preload = [toolbox.split(":", 1)[0]] if isinstance(toolbox, str) else []
    return LLMOrchTaskRunner(processors=processors, policy=policy, concurrency_limit=concurrency_limit, preload=preload)


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
