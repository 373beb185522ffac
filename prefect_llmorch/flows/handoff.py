"""What `run_plan` / `ask_query` hand the flow's body in this process, beside its parameters.

The caller often holds more than a flow run's parameters (plain data the API stores): the
plan already parsed, an `LLMClient`, a planner request on its way (`llm/ahead.py`). A context
variable hands them over (Prefect runs a sync flow on the calling thread), so nothing is done
twice and no process-global registry is needed; each names what it was made for, and a
deployment's run finds nothing and does the work itself (CONTRIBUTING.md, "flows/handoff.py").
"""

from __future__ import annotations

import concurrent.futures
import threading
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Iterator

from prefect_llmorch.functions import Toolbox
from prefect_llmorch.plan.model import Plan

__all__ = ["Handoff", "handed", "handing"]


@dataclass(frozen=True)
class Handoff:
    """Objects and work done ahead for one flow run.

    Attributes:
        toolbox: the caller's toolbox (what `plan` was parsed against).
        client: the LLM client to use (an `LLMClient`, or one whose planner request is
            already on its way), instead of resolving `options.endpoint` again.
        endpoint: where `client` came from: the caller's `LLMEndpoint` / `LLMClient`, or the
            block `options.endpoint` names, loaded once (its join settings).
        text: the plan text (run) or the query (ask) these were made for.
        plan: the plan parsed from `text` (done, or being done on a thread).
        heartbeats: seconds between the flow run's heartbeats, which its body sends
            (`execute.heartbeats`) because `run_flow` turned Prefect's off; None: none here.
        answered: set by `run_flow` once the flow call returned (the caller, in this process,
            has the answer): the run's artifacts are sent then (`report.send_records`), not
            on the answer's way; None (a deployment's run): before the run ends.
        reports: `run_flow`'s list, where the body's `Execution.finish` puts each report it
            makes: a run whose end Prefect could not record (its server died) still gives
            the caller what completed.
    """

    toolbox: Toolbox | None = None
    client: Any = None
    endpoint: Any = None
    text: str | None = None
    plan: "concurrent.futures.Future[Plan] | None" = None
    answered: threading.Event | None = None
    heartbeats: int | None = None
    reports: list[Any] | None = None

    def parsed(self, text: str, toolbox: Toolbox) -> Plan | None:
        """The plan parsed ahead for this text and toolbox (its error raised), else None."""
        if self.plan is None or self.text != text or self.toolbox is not toolbox:
            return None
        return self.plan.result()

    def client_for(self, text: str) -> Any:
        """The client handed over for this plan text or query, else None."""
        return self.client if self.text == text else None

    def endpoint_for(self, text: str, default: Any) -> Any:
        """The endpoint handed over for this query, else `default` (`options.endpoint`)."""
        return self.endpoint if self.text == text and self.endpoint is not None else default


_HANDOFF: ContextVar[Handoff] = ContextVar("llmorch_handoff", default=Handoff())


def handed() -> Handoff:
    """What the caller handed over (an empty `Handoff` when nothing, e.g. in a deployment)."""
    return _HANDOFF.get()


@contextmanager
def handing(handoff: Handoff) -> Iterator[Handoff]:
    """Hand `handoff` to the flow run started inside this block (and to nothing after it)."""
    token = _HANDOFF.set(handoff)
    try:
        yield handoff
    finally:
        _HANDOFF.reset(token)
