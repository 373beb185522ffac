"""The `llmorch-ask` flow: a question in, an answer computed by a parallel plan out.

The planner is a Prefect task (`planner`, tagged `inout`) that streams the LLM's plan;
each call whose line is complete is handed to this flow, which submits it at once
(streaming dispatch), so the first calls run while the LLM is still writing. The worker
processes are started, and the toolbox imported in them, before the plan arrives.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture, wait

from prefect_llmorch.engine.compiler import Compiler, Recorder
from prefect_llmorch.credentials import CredentialStore
from prefect_llmorch.flows.progress import RunProgress
from prefect_llmorch.functions import Toolbox
from prefect_llmorch.graph import FRG
from prefect_llmorch.llm.client import LLMClient
from prefect_llmorch.flows.run import (
    PlanRunFailed,
    RunReport,
    build_report,
    current_llmorch_runner,
    _simple,
    failure_message,
    local_runner,
    publish_artifacts,
    resolve_toolbox,
    run_flow,
)
from prefect_llmorch.plan.model import Call, Plan
from prefect_llmorch.flows.planner import ask_self, planner_task, resolve_client
from prefect_llmorch.flows.recovery import RecoveryConfig, RecoveryController
from prefect_llmorch.engine.runner import LLMOrchTaskRunner, default_processors

DEFAULT_TOOLBOX = "prefect_llmorch.examples.toolbox:toolbox"
_DONE = object()


class TokenCounter:
    """Prompt/completion tokens summed over every LLM call of a run (thread-safe)."""

    def __init__(self) -> None:
        self.prompt = 0
        self.completion = 0
        self._lock = threading.Lock()

    def add(self, prompt: int, completion: int) -> None:
        with self._lock:
            self.prompt += prompt
            self.completion += completion

    def to_dict(self) -> dict[str, int]:
        return {"prompt": self.prompt, "completion": self.completion}


def make_self_fn(client: LLMClient, tokens: TokenCounter):  # type: ignore[no-untyped-def]
    """The body of the built-in `self(prompt)`: ask the LLM, count its tokens."""

    def self_fn(prompt: str) -> str:
        completion = ask_self(client, prompt)
        tokens.add(completion.prompt_tokens, completion.completion_tokens)
        return completion.text

    return self_fn


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
    """
    return _ask(query, toolbox, processors, endpoint, attempts, policy, recovery_rounds, cancel_running)


def _ask(
    query: str, toolbox: str | Toolbox, processors: int | None, endpoint: Any, attempts: int,
    policy: str = "critical-path", recovery_rounds: int = 3, cancel_running: bool = False,
) -> RunReport:
    logger = get_run_logger()
    tb = resolve_toolbox(toolbox)
    runner = current_llmorch_runner()
    if runner is not None:
        runner.policy = policy  # a deployment's runner is built at import: take the run's policy
    P = runner.processors if runner is not None else (processors or default_processors())
    client = resolve_client(endpoint)
    tokens = TokenCounter()
    recorder = Recorder()
    progress = RunProgress.start(recorder)  # the `llmorch-progress` artifact, updated as calls finish
    try:
        calls: list[Call] = []
        futures: dict[str, PrefectFuture[Any]] = {}
        secrets = CredentialStore(tb)  # ToolCredentials blocks, loaded as calls that need them arrive
        compiler = Compiler(frg=FRG.build(Plan(()), tb), toolbox=tb, recorder=recorder, self_fn=make_self_fn(client, tokens), secrets=secrets)
        # Calls start while the plan streams, before the recovery controller exists: make
        # their inout calls cancellable from the start when recovery may cancel them.
        compiler.interruptible = cancel_running and recovery_rounds > 0
        inbox: "queue.Queue[Any]" = queue.Queue()
        # Trace-back recovery needs the final plan, but calls start while the plan streams:
        # failures of those early calls are kept here until the controller exists.
        early_failures: list[tuple[Any, ...]] = []
        controller: list[RecoveryController] = []
        guard = threading.Lock()

        def early_hook(*args: Any) -> None:
            if id(getattr(args[0], "llmorch_call", None)) in compiler.stale:
                return  # a call of a draft plan, dropped by the planner: not the plan's failure
            with guard:
                if not controller:
                    early_failures.append(args)
                    return
            controller[0]._on_failure(*args)

        if recovery_rounds > 0:
            compiler.on_failure.append(early_hook)

        def submit(call: Call) -> None:
            # Ranks of earlier calls never change when a later call arrives: rebuild the FRG of
            # the calls so far (tiny) so the policy sees the current critical paths.
            secrets.require([call])
            calls.append(call)
            compiler.frg = FRG.build(Plan(tuple(calls)), tb)
            if runner is not None:
                runner.use_graph(compiler.frg)
            compiler.submit([call], futures)

        planner = planner_task.submit(query, tb, client, attempts=attempts, on_call=inbox.put)
        planner.add_done_callback(lambda _f: inbox.put(_DONE))
        while (item := inbox.get()) is not _DONE:
            submit(item)  # streaming dispatch, from the flow's thread
        planner.wait()
        state = planner.state
        if not state.is_completed():
            compiler.stale.update(id(c) for c in calls)  # no plan: every streamed call is stale
            wait(list(futures.values()))
            planner.result()  # raises PlanningFailed or LLMError, with its message
        result = planner.result()
        for attempt in result.attempts:
            tokens.add(attempt.prompt_tokens, attempt.completion_tokens)
        kept = set(result.dispatched)
        stale_calls = [c for c in calls if c.id not in kept]  # streamed, then changed or dropped
        if stale_calls:
            compiler.stale.update(id(c) for c in stale_calls)
            logger.warning(
                "calls %s were started from a draft plan that was repaired: not started if they had "
                "not started, their results ignored", ", ".join(c.id for c in stale_calls),
            )
        plan = result.plan
        final_frg = FRG.build(plan, tb)
        compiler.frg = final_frg
        if runner is not None:
            runner.use_graph(final_frg)
        if recovery_rounds > 0:
            compiler.on_failure.remove(early_hook)  # later task runs get the controller's own hook
            with guard:
                controller.append(RecoveryController(
                    RecoveryConfig(client, max_rounds=recovery_rounds, running="cancel" if cancel_running else "wait"),
                    plan, tb, compiler, runner,
                ))
                replay, early_failures[:] = list(early_failures), []
            for args in replay:
                if id(getattr(args[0], "llmorch_call", None)) not in compiler.stale:
                    controller[0]._on_failure(*args)
        todo = [c for c in plan.calls if c.id not in kept]
        secrets.require(todo)
        compiler.submit(todo, futures)
        for cid in [cid for cid in futures if cid not in final_frg.rank]:
            futures.pop(cid)  # a stale call the final plan dropped: the runner lets it end
        if runner is not None:
            runner.no_more_submissions()
        if controller:
            final_frg = controller[0].run(futures)  # resubmits repaired calls into `futures`
        # Bounded when recovery gave up waiting on a round: never hang on a stuck call.
        timed_out = bool(controller) and controller[0].outcome == "timed out"
        wait(list(futures.values()), timeout=0 if timed_out else None)
        report = build_report(final_frg, recorder, P, futures)
    finally:
        progress.close()
    report.extra = {"plan": result.text, "attempts": len(result.attempts), "tokens": tokens.to_dict()}
    usage = (
        f"\n\n## LLM usage\n\nplanner attempts: {len(result.attempts)}; tokens: "
        f"{tokens.prompt} prompt + {tokens.completion} completion\n\n```text\n{result.text}\n```\n"
    )
    publish_artifacts(final_frg, report, extra_markdown=usage)
    if report.failed:
        report.message = failure_message(report)
    if controller:
        controller[0].annotate(report)  # the rounds, in the report and an artifact
    if report.failed:
        raise PlanRunFailed(report.message, report)
    return report


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
) -> RunReport:
    """Run the `llmorch-ask` flow with a task runner for `processors` and `policy`.

    `endpoint` is a saved block's name, an `LLMEndpoint`, an `LLMClient`, or None (environment).
    Raises `PlanRunFailed` (with the report) when calls failed, `PlanningFailed` when no
    valid plan came, `LLMError` when the endpoint failed.
    """
    P = processors or default_processors()
    runner = local_runner(toolbox, P, policy, concurrency_limit)
    parameters = {
        "query": query, "toolbox": toolbox, "processors": P, "policy": policy,
        "endpoint": endpoint, "attempts": attempts, "recovery_rounds": recovery_rounds,
        "cancel_running": cancel_running,
    }
    return run_flow(ask, runner, parameters, simple=_simple(toolbox, endpoint))
