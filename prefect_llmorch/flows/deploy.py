"""Deployable flows: `llmorch-run` (run a plan) and `llmorch-ask` (plan a question with the
LLM, then run it), each taking one pydantic model so the Prefect UI shows a form.

    prefect deploy --all --prefect-file flows/prefect.yaml   # from the repository root
    llmorch serve                                             # or: serve both, no work pool

They are thin: they check the parameters, fit the task runner to them and call the
library (`orchestrate` / `answer`), which compiles the plan into task runs (FRG edges; kind and rank
in each call's identity, not in Prefect tags), loads the tool credentials blocks the plan's functions
declare, and publishes the FRG, schedule, progress and result artifacts.

The task runner is built when this file is imported (a deployment's flow is loaded by the
worker): its P is `LLMORCH_PROCESSORS` or the machine's cores. A run that asks for fewer
processors uses fewer; one that asks for more is capped at P (the warning says so).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

from pydantic import BeforeValidator, Field, model_validator

# The checkout's root (or site-packages, for an installed wheel): a worker loads this file by
# path, so make `prefect_llmorch` and the checkout's toolboxes importable here and (sys.path is
# passed on to spawned processes) in the compute worker processes.
REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from prefect import State, flow, get_run_logger  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402

from prefect_llmorch.engine.runner import LLMOrchTaskRunner, default_processors  # noqa: E402
from prefect_llmorch.flows.ask import answer  # noqa: E402
from prefect_llmorch.flows.execute import current_llmorch_runner  # noqa: E402
from prefect_llmorch.report import RunReport, jsonable  # noqa: E402
from prefect_llmorch.flows.run import orchestrate  # noqa: E402
from prefect_llmorch.options import (  # noqa: E402
    DEFAULT_LIMIT, DEFAULT_TOOLBOX, TOOLBOX_HELP, TOOLBOX_PATTERN, AskOptions, RunOptions, check_toolbox, options_of,
)

#: Example toolbox modules the compute workers import at start (before any plan arrives).
PRELOAD = ("prefect_llmorch.examples.toolbox",)


def _env_processors() -> int | None:
    value = os.environ.get("LLMORCH_PROCESSORS", "").strip()
    return int(value) if value else None


def _env_resources() -> dict[str, float] | None:
    """`LLMORCH_RESOURCES`: capacities as `NAME=AMOUNT` separated by commas (`llmorch serve
    --resource` sets it), e.g. `search-api=2,gpu_mem_gb=80`."""
    from prefect_llmorch.schedule.resources import parse_resource_options

    value = os.environ.get("LLMORCH_RESOURCES", "").strip()
    return parse_resource_options(v for v in value.split(",") if v.strip()) if value else None


#: A form's toolbox: checked by us before the pattern (our message, not the regex's); the
#: pattern is for the JSON schema, which Prefect and the UI's form check against.
ToolboxPath = Annotated[
    str, Field(default=DEFAULT_TOOLBOX, pattern=TOOLBOX_PATTERN, description=TOOLBOX_HELP), BeforeValidator(check_toolbox),
]


def make_task_runner() -> LLMOrchTaskRunner:
    """P = `LLMORCH_PROCESSORS` or the cores; capacities `LLMORCH_RESOURCES`; the global
    limit is `LLMORCH_CONCURRENCY_LIMIT` (default `llmorch-processors`; `none` turns it off)."""
    limit = os.environ.get("LLMORCH_CONCURRENCY_LIMIT", DEFAULT_LIMIT).strip()
    return LLMOrchTaskRunner(
        processors=_env_processors(), preload=PRELOAD,
        concurrency_limit=None if limit.lower() in ("", "none", "off") else limit,
        resources=_env_resources(),
    )


class RunParameters(RunOptions):
    """Run a plan: give its text, or a plan file of this repository (and the run's options)."""

    plan: Optional[str] = Field(
        default=None,
        title="Plan",
        description="The plan text, in either dialect (`s1: f(...)` or `1. f(...)`). Overrides plan_file.",
    )
    plan_file: Optional[str] = Field(
        default="example:kitti",
        title="Plan file",
        description="A shipped example (`example:NAME`) or a plan file, relative to the repository root; used when `plan` is empty.",
    )
    toolbox: ToolboxPath

    @model_validator(mode="after")
    def _has_plan(self) -> "RunParameters":
        if not (self.plan and self.plan.strip()) and not self.plan_file:
            raise ValueError("give the plan text (`plan`) or a plan file (`plan_file`)")
        return self

    def options(self) -> RunOptions:
        """The run's options alone (what `orchestrate` takes)."""
        return options_of(RunOptions, self, {})

    def plan_text(self) -> str:
        if self.plan and self.plan.strip():
            return self.plan
        if (self.plan_file or "").startswith("example:"):
            from prefect_llmorch.examples import open_plan_path

            return open_plan_path(self.plan_file or "").read_text()
        path = Path(self.plan_file or "")
        if not path.is_absolute():
            path = REPO / path
        if not path.is_file():
            raise FileNotFoundError(f"plan file {self.plan_file!r} not found (looked at {path})")
        return path.read_text()


class AskParameters(AskOptions):
    """Ask a question: the LLM plans function calls, which run in parallel (and the ask's options)."""

    query: str = Field(..., min_length=1, description="The question to answer")
    toolbox: ToolboxPath

    def options(self) -> AskOptions:
        """The ask's options alone (what `answer` takes)."""
        return options_of(AskOptions, self, {})


def fit_runner(processors: int | None, toolbox: str) -> int:
    """Fit the flow run's task runner to the run's parameters; returns P.

    The worker processes exist already (started with the runner): fewer processors
    leave some idle; the toolbox's module is imported in them in the background.
    """
    runner = current_llmorch_runner()
    if runner is None:
        return processors or default_processors()
    if processors is not None and processors != runner.processors:
        if processors < runner.processors:
            runner.processors = processors  # the runner reads it on every dispatch
        else:
            get_run_logger().warning(
                "asked for %s processors; this worker's task runner has %s (set LLMORCH_PROCESSORS): using %s",
                processors, runner.processors, runner.processors,
            )
    if runner.pool is not None:
        runner.pool.warm([toolbox.split(":", 1)[0]])
    return runner.processors


def publish_result(report: RunReport) -> dict[str, Any]:
    """The answer as a markdown artifact (`llmorch-result`); returns the report as JSON."""
    out = report.to_json()
    create_markdown_artifact(
        key="llmorch-result",
        markdown="## Result\n\n```json\n" + json.dumps(jsonable(report.result), indent=2, default=repr) + "\n```\n",
        description=f"{report.state}: {report.summary()}",
    )
    return out


@flow(name="llmorch-run", task_runner=make_task_runner(), log_prints=False, persist_result=True)
def llmorch_run(parameters: RunParameters = RunParameters()) -> dict[str, Any] | State:
    """Run a plan (text or file) on P processors; the UI shows its FRG, schedule and progress."""
    text = parameters.plan_text()
    P = fit_runner(parameters.processors, parameters.toolbox)
    report = orchestrate.fn(text, parameters.toolbox, parameters.options().merged(processors=P))
    if isinstance(report, State):
        return report  # a plan with errors: Failed, with its errors as the message (`plan_failed`)
    return publish_result(report)


@flow(name="llmorch-ask", task_runner=make_task_runner(), log_prints=False, persist_result=True)
def llmorch_ask(parameters: AskParameters) -> dict[str, Any] | State:
    """Plan the question with the LLM, run the plan on P processors, return the answer."""
    P = fit_runner(parameters.processors, parameters.toolbox)
    report = answer(parameters.query, parameters.toolbox, parameters.options().merged(processors=P))
    if isinstance(report, State):  # Cancelled, or Completed named JoinFailed: the report is its data
        return report.model_copy(update={"data": publish_result(report.data)})
    return publish_result(report)


def deployments(
    run_cron: str | None = None, run_interval: float | None = None, run_parameters: RunParameters | None = None,
) -> list[Any]:
    """`RunnerDeployment`s of both flows for `prefect.serve` (what `llmorch serve` runs)."""
    run_params = {"parameters": (run_parameters or RunParameters()).model_dump()}
    return [
        llmorch_run.to_deployment(
            name="llmorch-run", cron=run_cron, interval=run_interval, parameters=run_params,
            tags=["llmorch"], description="Run a plan on P processors (prefect-llmorch)",
        ),
        llmorch_ask.to_deployment(
            name="llmorch-ask", tags=["llmorch"], description="Answer a question with a parallel plan (prefect-llmorch)",
        ),
    ]


if __name__ == "__main__":  # python prefect_llmorch/flows/deploy.py: serve both flows
    from prefect import serve

    serve(*deployments())
