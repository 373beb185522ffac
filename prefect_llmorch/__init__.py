"""prefect-llmorch: parallel LLM function calling on Prefect 3 (LLMOrch).

The public API. Names are imported lazily (a module `__getattr__`, as `concurrent.futures`
does) so that worker processes importing a toolbox (`from prefect_llmorch import compute`)
do not import Prefect.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "inout": "functions",
    "compute": "functions",
    "Toolbox": "functions",
    "FunctionSpec": "functions",
    "load_toolbox": "functions",
    "Plan": "plan.model",
    "Call": "plan.model",
    "PlanError": "plan.errors",
    "parse": "plan.parser",
    "FRG": "graph",
    "simulate": "schedule.simulator",
    "LLMOrchTaskRunner": "engine.runner",
    "LLMOrchDaskTaskRunner": "engine.dask",
    "terminal_prompts": "engine.approval",
    "pending_approvals": "engine.approval",
    "ask_query": "flows.ask",
    "orchestrate": "flows.run",
    "run_plan": "flows.run",
    "RunReport": "report",
    "PlanRunFailed": "report",
    "PlanRunServerGone": "flows.run",
    "ServerGone": "host.server",
    "LLMEndpoint": "blocks",
    "ToolCredentials": "blocks",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'prefect_llmorch' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from prefect_llmorch.blocks import LLMEndpoint, ToolCredentials
    from prefect_llmorch.functions import FunctionSpec, Toolbox, compute, inout, load_toolbox
    from prefect_llmorch.graph import FRG
    from prefect_llmorch.flows.run import PlanRunServerGone, orchestrate, run_plan
    from prefect_llmorch.report import PlanRunFailed, RunReport
    from prefect_llmorch.host.server import ServerGone
    from prefect_llmorch.plan.errors import PlanError
    from prefect_llmorch.plan.model import Call, Plan
    from prefect_llmorch.plan.parser import parse
    from prefect_llmorch.flows.ask import ask_query
    from prefect_llmorch.engine.approval import pending_approvals, terminal_prompts
    from prefect_llmorch.engine.dask import LLMOrchDaskTaskRunner
    from prefect_llmorch.engine.runner import LLMOrchTaskRunner
    from prefect_llmorch.schedule.simulator import simulate
