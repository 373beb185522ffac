"""The `llmorch-ask` flow: a question in, an answer computed by a parallel plan out.

The planner is a Prefect task (`planner`, untagged) that streams the LLM's plan;
each call whose line is complete is handed to this flow, which adopts it into the
execution at once (streaming dispatch, `Execution.adopt`), so the first calls run while
the LLM is still writing. The worker processes are started, and the toolbox imported in
them, before the plan arrives. The rest is the execution `llmorch-run` uses too
(`prefect_llmorch.flows.execute`).
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow
from prefect.cache_policies import CacheKeyFnPolicy

from prefect_llmorch.engine.runner import LLMOrchTaskRunner
from prefect_llmorch.flows.execute import Execution
from prefect_llmorch.flows.handoff import Handoff, handed, handing
from prefect_llmorch.flows.planner import Inbox, planner_task, resolve_client
from prefect_llmorch.flows.joiner import JoinSettings, join_rounds, replay_key
from prefect_llmorch.flows.recovery import RecoveryConfig
from prefect_llmorch.flows.report import report_artifacts
from prefect_llmorch.report import Planning, RunReport
from prefect_llmorch.flows.run import (
    _simple, call_options, earlier_records_sent, fitted_runner, learned_costs, local_runner, predicted, prepare,
    resolve_toolbox, run_flow, with_endpoint,
)
from prefect_llmorch.functions import SELF, Toolbox
from prefect_llmorch.llm.selfcall import TokenCounter, make_self_fn
from prefect_llmorch.options import DEFAULT_LIMIT, DEFAULT_TOOLBOX, AskOptions

__all__ = ["AskOptions", "DEFAULT_TOOLBOX", "answer", "ask", "ask_query"]


@flow(name="llmorch-ask", log_prints=False, task_runner=LLMOrchTaskRunner())
def ask(query: str, toolbox: str = DEFAULT_TOOLBOX, options: AskOptions = AskOptions()) -> RunReport:
    """Plan `query` with the LLM, run the plan on P processors, return the report.

    Args:
        query: the user's question.
        toolbox: `module:attr` naming a `Toolbox`.
        options: processors, policy, endpoint, attempts, recovery, planner, cache, costs,
            resources (`prefect_llmorch.options.AskOptions`: each field's default and meaning).
    """
    return answer(query, toolbox, options)


def answer(
    query: str, toolbox: str | Toolbox, options: AskOptions | None = None, *, endpoint: Any = None, **overrides: Any,
) -> RunReport:
    """The body of `llmorch-ask` inside the current flow run (the deployable flows use it).

    `options` and `**overrides` as for `ask_query`. `endpoint`: a block's name (into the
    options), or an `LLMEndpoint` / `LLMClient` object replacing `options.endpoint`; by
    default the client the caller handed over (`flows/handoff.py`: `ask_query`'s, whose
    planner request is already on its way), else the options' endpoint.
    `options.resources` (capacities of resource classes) replace the task runner's for this run.
    Raises `PlanRunFailed` (with the report) when calls failed, `PlanningFailed` when no
    valid plan came, `LLMError` when the endpoint failed while planning. When the join step
    fails (no usable reply, or the endpoint failed), nothing computed is lost: the answer is
    the last result, the report's `message` and `joiner["failed"]` say why, and the flow
    run ends `Completed` named `JoinFailed` (`execute.conclude`).
    """
    options, client = with_endpoint(AskOptions, options, overrides, endpoint)
    tb = resolve_toolbox(toolbox)
    runner, P = fitted_runner(options)
    given = handed()
    ahead = given.client_for(query) if client is None else None
    endpoint, joining = _joining(client if client is not None else given.endpoint_for(query, options.endpoint), options)
    client = ahead if ahead is not None else resolve_client(endpoint)
    tokens = TokenCounter()
    # The plan is not known yet: costs for every function of the toolbox (one lookup).
    choice = learned_costs({name for name in tb if name != SELF}, options.costs)
    with Execution(
        tb, processors=P, self_fn=make_self_fn(client, tokens, question=query),
        recovery=RecoveryConfig.of(client, options, tokens=tokens), runner=runner, cache=options.cache,
        costs=choice.costs,
    ) as ex:
        # latency counts from the first LLM request: sent ahead by `ask_query` (`llm/ahead.py`), or now
        ex.recorder.t0 = getattr(client, "sent_at", None) or time.time()
        inbox = Inbox()
        join = joining.joiner != "off"
        planning = planner_task.with_options(
            task_run_name="planner · round 1" if join else "planner",
            # a retry of this flow run replays the plan (and `join_rounds` each join decision)
            cache_policy=CacheKeyFnPolicy(
                cache_key_fn=replay_key("planner", "query", "toolbox", "llm", "attempts", "mode", "join")),
            persist_result=True,
        ).submit(
            query, tb, client, attempts=options.attempts, on_call=inbox.put, mode=options.planner, join=join,
        )
        for call, at in inbox.until(planning):
            ex.adopt(call, at=at)  # streaming dispatch, from the flow's thread
        planning.wait()
        if not planning.state.is_completed():
            ex.abandon()  # no plan: every streamed call is stale
            planning.result()  # raises PlanningFailed or LLMError, with its message
        result = planning.result()
        for attempt in result.attempts:
            tokens.add(attempt.prompt_tokens, attempt.completion_tokens)
        ex.start(result.plan, kept=result.dispatched, planned_at=inbox.done_at)
        prediction = predicted(ex.frg, P, options.policy, choice, runner)
        rounds = join_rounds(
            ex, query, tb, client, result.text, joining, tokens, mode=options.planner or client.planner or "text",
        )
        report = ex.finish()
    report.predicted = prediction
    assert ex.plan is not None
    whole = ex.plan.to_text("paper") if rounds.continued else result.text
    report.planning = Planning(plan=whole, attempts=len(result.attempts), tokens=tokens.to_dict())
    if rounds.joins or rounds.continued:
        report.joiner = rounds.to_dict()
        if not report.failed and rounds.answered is not None:
            report.result = rounds.answered.value(report.results)
        elif not report.failed:  # the last continuation's last call answers
            report.result = report.results.get(ex.plan.calls[-1].id)
    usage = (
        f"\n\n## LLM usage\n\nplanner attempts: {len(result.attempts)}; tokens: "
        f"{tokens.prompt} prompt + {tokens.completion} completion\n\n```text\n{result.text}\n```\n"
    )
    if rounds.joins:
        usage += rounds.to_markdown(tokens)
    if rounds.stopped and rounds.failed:
        report.message = "\n".join(m for m in (report.message, rounds.stopped) if m)
    return ex.end(report, report_artifacts(ex.frg, report, extra_markdown=usage))


def ask_query(
    query: str,
    toolbox: Toolbox | str = DEFAULT_TOOLBOX,
    options: AskOptions | None = None,
    *,
    endpoint: Any = None,
    concurrency_limit: str | None = DEFAULT_LIMIT,
    gpus: Any = None,
    **overrides: Any,
) -> RunReport:
    """Run the `llmorch-ask` flow with a task runner for the options' `processors` and `policy`.

        ask_query("How busy are frames 1-4?", processors=2, attempts=2)
        ask_query("How busy are frames 1-4?", options=AskOptions(processors=2, attempts=2))

    Args:
        query: the question.
        toolbox: a `Toolbox` or `module:attr` naming one.
        options: the ask's options (`AskOptions`); default: its defaults.
        endpoint: a saved block's name, an `LLMEndpoint`, an `LLMClient`, or None (environment).
        concurrency_limit: the global concurrency limit guarding the machine (None: off).
        gpus: GPU devices (`[{"id": 0, "mem_gb": 80}]`) for calls declaring `gpu_mem_gb`.
        **overrides: fields of `AskOptions` laid over `options`: `processors`, `policy`,
            `attempts` (planner answers per round), `recovery_rounds` (default 3),
            `cancel_running`, `planner` (`text` or `json`), `cache`, `costs`, `resources`
            (capacities of resource classes, `{"search-api": 2}`: calls declaring
            `resources=` are admitted when their demand fits, checked before anything runs).

    Raises:
        PlanRunFailed: calls failed (with the report).
        PlanningFailed: no valid plan came.
        LLMError: the endpoint failed.
        ValueError: a bad option (before a flow run exists).
    """
    opts, client = call_options(AskOptions, options, overrides, endpoint)
    prepare(toolbox, opts.processors)
    # The planner's request leaves now, while Prefect creates the flow run and its task runs.
    ahead, source = _plan_ahead(query, toolbox, opts, client)
    earlier_records_sent()  # then earlier runs' records, before this run's writes
    try:
        runner = local_runner(toolbox, opts, concurrency_limit, gpus)
        parameters = {"query": query, "toolbox": toolbox, "options": opts}
        with handing(Handoff(client=ahead, endpoint=source, text=query)):
            return run_flow(ask, runner, parameters, simple=_simple(toolbox, client))
    finally:
        if ahead is not None:
            ahead.close()  # a request the planner never took (e.g. the run failed first)


def _plan_ahead(query: str, toolbox: Toolbox | str, options: AskOptions, client: Any) -> tuple[Any, Any]:
    """(a `PlanningAhead` for this ask, its first planner request sent; the endpoint: the
    caller's object, or the block `options.endpoint` names, loaded once). (None, `client`)
    when the toolbox or the endpoint cannot be had here: then the flow run fails with the
    reason, as it would have. The request is exactly the planner's first: the same join
    setting (`_joining`, as `answer`'s), mode and toolbox."""
    from prefect_llmorch.llm.ahead import PlanningAhead

    try:
        source, joining = _joining(client if client is not None else options.endpoint, options)
        tb = resolve_toolbox(toolbox)
        ahead = PlanningAhead(resolve_client(source), query, tb, options.planner, join=joining.joiner != "off")
        return ahead, source
    except Exception:
        return None, client


def _joining(endpoint: Any, options: AskOptions) -> tuple[Any, JoinSettings]:
    """The endpoint (a block's name loaded once: its join settings and its client) and the
    ask's join settings over the block's."""
    if isinstance(endpoint, str):
        from prefect_llmorch.blocks import LLMEndpoint

        endpoint = LLMEndpoint.load(endpoint)
    return endpoint, JoinSettings.resolve(endpoint, options.joiner, options.max_rounds, options.max_tokens)
