"""The `llmorch-ask` flow: a question in, an answer computed by a parallel plan out.

The planner is a Prefect task (`planner`, tagged `inout`) that streams the LLM's plan;
each call whose line is complete is handed to this flow, which adopts it into the
execution at once (streaming dispatch, `Execution.adopt`), so the first calls run while
the LLM is still writing. The worker processes are started, and the toolbox imported in
them, before the plan arrives. The rest is the execution `llmorch-run` uses too
(`prefect_llmorch.flows.execute`).
"""

from __future__ import annotations

import queue
import time
from typing import Any, Mapping

from prefect import flow

from prefect_llmorch.engine.runner import LLMOrchTaskRunner, default_processors
from prefect_llmorch.flows.execute import Execution, current_llmorch_runner
from prefect_llmorch.flows.planner import planner_task, resolve_client
from prefect_llmorch.flows.recovery import RecoveryConfig
from prefect_llmorch.flows.report import Planning, RunReport, publish_artifacts
from prefect_llmorch.storage.history import check_costs, remember_records
from prefect_llmorch.flows.run import _simple, conclude, learned_costs, local_runner, predicted, prepare, resolve_toolbox, run_flow
from prefect_llmorch.functions import SELF, Toolbox
from prefect_llmorch.llm.selfcall import TokenCounter, make_self_fn

__all__ = ["DEFAULT_TOOLBOX", "answer", "ask", "ask_query"]

DEFAULT_TOOLBOX = "prefect_llmorch.examples.toolbox:toolbox"
_DONE = object()


@flow(name="llmorch-ask", log_prints=False, task_runner=LLMOrchTaskRunner())
def ask(
    query: str,
    toolbox: str = DEFAULT_TOOLBOX,
    processors: int | None = None,
    policy: str = "critical-path",
    endpoint: str | None = None,
    attempts: int = 3,
    recovery_rounds: int = 3,
    cancel_running: bool = False,
    planner: str | None = None,
    cache: bool = True,
    costs: str | None = None,
    resources: dict[str, float] | None = None,
) -> RunReport:
    """Plan `query` with the LLM, run the plan on P processors, return the report.

    Args:
        query: the user's question.
        toolbox: `module:attr` naming a `Toolbox`.
        processors: P (defaults to the machine's cores, or the task runner's).
        policy: `critical-path` or `paper`.
        endpoint: name of a saved `LLMEndpoint` block; None reads OPENAI_BASE_URL,
            OPENAI_API_KEY and LLMORCH_MODEL from the environment.
        attempts: planner answers per round (first plan plus repairs).
        recovery_rounds: trace-back recovery rounds when calls fail at run time (0: off).
        cancel_running: when a call fails, cancel running calls that recovery will re-run
            anyway, instead of letting them end first.
        planner: "text" (the plan language) or "json" (the JSON plan form under a JSON
            schema built from the toolbox); None: the endpoint block's `planner` setting.
        cache: reuse stored results of `cache=True` functions (False: run every call).
        costs: `declared` or `history` (learned from Prefect's task-run history); None:
            `history` once this machine has a history, else `declared`.
        resources: capacities of resource classes beyond processors (`{"search-api": 2,
            "gpu_mem_gb": 80}`) for this run; None: the task runner's.
    """
    return answer(
        query, toolbox, processors=processors, policy=policy, endpoint=endpoint, attempts=attempts,
        recovery_rounds=recovery_rounds, cancel_running=cancel_running, planner=planner, cache=cache,
        costs=costs, resources=resources,
    )


def answer(
    query: str,
    toolbox: str | Toolbox,
    *,
    processors: int | None = None,
    policy: str = "critical-path",
    endpoint: Any = None,
    attempts: int = 3,
    recovery_rounds: int = 3,
    cancel_running: bool = False,
    planner: str | None = None,
    cache: bool = True,
    costs: str | None = None,
    resources: dict[str, float] | None = None,
) -> RunReport:
    """The body of `llmorch-ask` inside the current flow run (the deployable flows use it).

    `resources` (capacities of resource classes) replace the task runner's for this run.
    Raises `PlanRunFailed` (with the report) when calls failed, `PlanningFailed` when no
    valid plan came, `LLMError` when the endpoint failed.
    """
    tb = resolve_toolbox(toolbox)
    runner = current_llmorch_runner()
    if runner is not None:
        runner.policy = policy  # a deployment's runner is built at import: take the run's policy
        if resources is not None:
            runner.use_resources(resources)  # and the run's capacities
    elif resources:
        raise ValueError("resources= needs an LLMOrchTaskRunner (the flow's task runner is not one)")
    P = runner.processors if runner is not None else (processors or default_processors())
    client = resolve_client(endpoint)
    tokens = TokenCounter()
    recovery = None
    if recovery_rounds > 0:
        recovery = RecoveryConfig(client, max_rounds=recovery_rounds, running="cancel" if cancel_running else "wait")
    # The plan is not known yet: costs for every function of the toolbox (one lookup).
    choice = learned_costs({name for name in tb if name != SELF}, costs)
    ex = Execution(
        tb, processors=P, self_fn=make_self_fn(client, tokens, question=query), recovery=recovery, runner=runner, cache=cache,
        costs=choice.costs,
    )
    try:
        inbox: "queue.Queue[Any]" = queue.Queue()
        ex.recorder.t0 = time.time()  # latency counts from the first LLM request
        # Each call is stamped when the planner hands it over: what the flow's thread adds
        # after that (waking up, submitting) counts as our overhead, not as the LLM's time.
        planning = planner_task.submit(
            query, tb, client, attempts=attempts, on_call=lambda c: inbox.put((c, time.time())), mode=planner
        )
        planning.add_done_callback(lambda _f: inbox.put((_DONE, time.time())))
        while (item := _next(inbox))[0] is not _DONE:
            ex.adopt(item[0], at=item[1])  # streaming dispatch, from the flow's thread
        planned_at = item[1]
        planning.wait()
        if not planning.state.is_completed():
            ex.abandon()  # no plan: every streamed call is stale
            planning.result()  # raises PlanningFailed or LLMError, with its message
        result = planning.result()
        for attempt in result.attempts:
            tokens.add(attempt.prompt_tokens, attempt.completion_tokens)
        ex.start(result.plan, kept=result.dispatched, planned_at=planned_at)
        prediction = predicted(ex.frg, P, policy, choice, runner)
    except BaseException:
        ex.close()
        raise
    report = ex.finish()
    report.predicted = prediction
    remember_records(report.calls)
    report.planning = Planning(plan=result.text, attempts=len(result.attempts), tokens=tokens.to_dict())
    usage = (
        f"\n\n## LLM usage\n\nplanner attempts: {len(result.attempts)}; tokens: "
        f"{tokens.prompt} prompt + {tokens.completion} completion\n\n```text\n{result.text}\n```\n"
    )
    publish_artifacts(ex.frg, report, extra_markdown=usage)
    return conclude(report)


def ask_query(
    query: str,
    toolbox: Toolbox | str = DEFAULT_TOOLBOX,
    *,
    processors: int | None = None,
    policy: str = "critical-path",
    endpoint: Any = None,
    attempts: int = 3,
    concurrency_limit: str | None = "llmorch-processors",
    recovery_rounds: int = 3,
    cancel_running: bool = False,
    planner: str | None = None,
    cache: bool = True,
    costs: str | None = None,
    resources: Mapping[str, float] | None = None,
    gpus: Any = None,
) -> RunReport:
    """Run the `llmorch-ask` flow with a task runner for `processors` and `policy`.

    `endpoint` is a saved block's name, an `LLMEndpoint`, an `LLMClient`, or None (environment).
    `resources` are capacities of resource classes (`{"search-api": 2}`), `gpus` GPU devices
    (`[{"id": 0, "mem_gb": 80}]`): calls declaring `resources=` are admitted when their
    demand fits (checked before anything runs).
    Raises `PlanRunFailed` (with the report) when calls failed, `PlanningFailed` when no
    valid plan came, `LLMError` when the endpoint failed.
    """
    check_costs(costs)
    P = processors or default_processors()
    prepare(toolbox, P)
    runner = local_runner(toolbox, P, policy, concurrency_limit, resources, gpus)
    parameters = {
        "query": query, "toolbox": toolbox, "processors": P, "policy": policy,
        "endpoint": endpoint, "attempts": attempts, "recovery_rounds": recovery_rounds,
        "cancel_running": cancel_running, "planner": planner, "cache": cache, "costs": costs,
        "resources": dict(resources) if resources else None,
    }
    return run_flow(ask, runner, parameters, simple=_simple(toolbox, endpoint))


def _next(inbox: "queue.Queue[Any]") -> Any:
    """`inbox.get()` in short slices: a Ctrl-C the kernel hands to another thread does not
    wake a main thread blocked on a lock, and a script's KeyboardInterrupt would wait for
    the planner's LLM to finish writing."""
    while True:
        try:
            return inbox.get(timeout=0.2)
        except queue.Empty:
            continue
