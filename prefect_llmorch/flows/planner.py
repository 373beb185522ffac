"""The planner as a Prefect task: `planner_task` around `prefect_llmorch.llm.planning`.

The prompts, the streaming dispatch and compile-time recovery (repair, re-plan) live in
`prefect_llmorch.llm.planning` and know nothing of Prefect; this module makes planning a
task run named `planner` (untagged) with one task run per attempt inside it, logs to
Prefect's run logger, and turns an endpoint (a client, a block or its name, or the
environment) into an `LLMClient`. The planning names are re-exported here.
"""

from __future__ import annotations

import logging
import queue
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

from prefect import Task
from prefect.cache_policies import NO_CACHE

from prefect_llmorch.functions import Toolbox
from prefect_llmorch.llm.client import LLMClient
from prefect_llmorch.llm.planning import (
    EXAMPLES,
    Attempt,
    AttemptOutcome,
    OnCall,
    PlannerResult,
    PlanningFailed,
    build_system_prompt,
    plan_messages,
    plan_query,
    repair_messages,
)
from prefect_llmorch.llm.selfcall import ask_self
from prefect_llmorch.plan.errors import PlanErrors
from prefect_llmorch.plan.model import Call

if TYPE_CHECKING:
    from prefect.futures import PrefectFuture

    from prefect_llmorch.blocks import LLMEndpoint

__all__ = [
    "Attempt",
    "EXAMPLES",
    "Inbox",
    "PlannerResult",
    "PlanningFailed",
    "ask_self",
    "build_system_prompt",
    "plan_messages",
    "plan_query",
    "planner_task",
    "repair_messages",
    "resolve_client",
]


def run_logger(fallback: str) -> logging.Logger | logging.LoggerAdapter:  # type: ignore[type-arg]
    """Prefect's run logger inside a flow or task run, else the logger named `fallback`."""
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.logging import get_run_logger

    if TaskRunContext.get() or FlowRunContext.get():
        return get_run_logger()
    return logging.getLogger(fallback)


def _as_task_run(name: str, attempt: Callable[[], AttemptOutcome]) -> AttemptOutcome:
    """Run one planner attempt as its own Prefect task run (inside the `planner` task run),
    so that each attempt shows in the UI with its logs; an answer with plan errors ends
    `Failed` with those errors. Outside a Prefect task run: just run it."""
    from prefect.context import TaskRunContext

    if TaskRunContext.get() is None:
        return attempt()
    box: dict[str, AttemptOutcome] = {}

    def body() -> int:
        box["out"] = out = attempt()
        if out[2]:
            raise PlanErrors(list(out[2]))  # the task run ends Failed, listing the errors
        return len(out[1] or ())

    task = Task(
        fn=body, name="planner attempt", task_run_name=name,
        cache_policy=NO_CACHE, persist_result=False, log_prints=False,
    )
    state = task(return_state=True)
    if "out" not in box:
        state.result()  # the attempt itself raised (e.g. LLMError): raise it here
    return box["out"]


def resolve_client(llm: "LLMClient | LLMEndpoint | str | None") -> LLMClient:
    """An `LLMClient` from a client, an `LLMEndpoint` block, a saved block's name, or
    (None) the environment (`OPENAI_BASE_URL`, `OPENAI_API_KEY`, `LLMORCH_MODEL`)."""
    if isinstance(llm, LLMClient):
        return llm
    if llm is None:
        return LLMClient.from_env()
    from prefect_llmorch.blocks import LLMEndpoint

    if isinstance(llm, str):
        llm = LLMEndpoint.load(llm)
    if isinstance(llm, LLMEndpoint):
        return llm.llm_client()
    raise TypeError(f"expected an LLMClient, LLMEndpoint or block name, got {type(llm).__name__}")


def _planner(
    query: str,
    toolbox: Toolbox,
    llm: "LLMClient | LLMEndpoint | str | None" = None,
    *,
    attempts: int = 3,
    replans: int = 1,
    temperature: float = 0.0,
    replan_temperature: float = 0.7,
    on_call: OnCall | None = None,
    mode: str | None = None,
    join: bool = False,
) -> PlannerResult:
    """Prefect task (`planner`; untagged, so Prefect's engine makes no tag-slot request
    for it: see engine/compiler.py) around `plan_query` (`mode`: "text",
    "json", or None for the endpoint's `planner` setting).

    `llm` is an `LLMClient`, an `LLMEndpoint` block, the name of a saved one, or None for
    the environment; the key never becomes a task parameter value in the API (task run
    parameters are not stored, and the block masks it). Each attempt is a task run of
    its own inside this one (`planner · attempt 2 (repair)`), Failed when its plan had
    errors, with the errors and the answer in its log. Not cached: every run asks the LLM.
    """
    return plan_query(
        query, toolbox, resolve_client(llm),
        attempts=attempts, replans=replans, temperature=temperature,
        replan_temperature=replan_temperature, on_call=on_call,
        run_attempt=_as_task_run, log=run_logger("prefect_llmorch.llm.planning"), mode=mode, join=join,
    )


planner_task = Task(fn=_planner, name="planner", task_run_name="planner", cache_policy=NO_CACHE, persist_result=False)


class Inbox:
    """The calls an LLM task run (the planner, a join) streams (`on_call=inbox.put`), for the
    flow's thread to adopt as they come (`for call, at in inbox.until(future)`)."""

    _DONE = object()

    def __init__(self) -> None:
        self._queue: "queue.Queue[tuple[Any, float]]" = queue.Queue()
        self.done_at: float | None = None

    def put(self, call: Call) -> None:
        """The task's `on_call`. Each call is stamped when the task hands it over: what
        the flow's thread adds after that (waking up, submitting) counts as our overhead, not
        as the LLM's time."""
        self._queue.put((call, time.time()))

    def until(self, future: "PrefectFuture[Any]") -> Iterator[tuple[Call, float]]:
        """(call, when it came) as they come, until `future` is done (`done_at`).

        Waits in short slices: a Ctrl-C the kernel hands to another thread does not wake a
        main thread blocked on a lock, and a script's KeyboardInterrupt would wait for the
        LLM to finish writing."""
        future.add_done_callback(lambda _f: self._queue.put((self._DONE, time.time())))
        while True:
            try:
                item, at = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is self._DONE:
                self.done_at = at
                return
            yield item, at
