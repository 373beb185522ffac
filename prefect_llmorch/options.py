"""The options of a run and of an ask, with their defaults and checks in one place.

`RunOptions` (a plan's run) and `AskOptions` (a question: planning, then the run) are what
`run_plan` / `ask_query` build from their keyword arguments, what the `llmorch-run` /
`llmorch-ask` flows take as their `options` parameter, what the deployment forms
(`flows/deploy.py`) extend, and what the CLI builds from its flags:

    >>> RunOptions(processors=2, recovery_rounds=1, cancel_running=True).running
    'cancel'
    >>> AskOptions().recovery_rounds, RunOptions().recovery_rounds
    (3, 0)

Plain data only (the JSON schema is the UI's form): an LLM endpoint object (an `LLMClient`,
an `LLMEndpoint`) is passed beside the options, never inside. Pure: pydantic and the pure
parts of the package, no Prefect.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from prefect_llmorch.examples import DEFAULT_TOOLBOX
from prefect_llmorch.schedule.policy import POLICIES

__all__ = [
    "AskOptions", "DEFAULT_LIMIT", "DEFAULT_TOOLBOX", "Options", "RunOptions", "TOOLBOX_HELP", "TOOLBOX_PATTERN",
    "check_toolbox", "options_of",
]

#: The machine-wide global concurrency limit every run takes its processors from.
DEFAULT_LIMIT = "llmorch-processors"

#: `module:attr`, or `mcp:COMMAND` / `mcp:URL`, several joined by " + " (`functions.load_toolbox`),
#: for the forms: Prefect checks a deployment's parameters against their JSON schema (the UI's
#: form too), which knows patterns but not our validators.
_TOOLBOX_PART = r"(?:mcp:\S.*?|[A-Za-z_][\w.]*:[A-Za-z_]\w*)"
TOOLBOX_PATTERN = rf"^{_TOOLBOX_PART}(?: \+ {_TOOLBOX_PART})*$"
TOOLBOX_HELP = (f"`module:attr` naming a Toolbox, e.g. {DEFAULT_TOOLBOX}; or MCP servers `mcp:COMMAND` / `mcp:URL`, "
                "several joined by ' + '")


def check_toolbox(value: Any) -> Any:
    """A `module:attr` path, stripped; a clear error for one without a colon."""
    if not isinstance(value, str):
        return value  # pydantic says "should be a valid string"
    for part in value.split(" + "):
        module, sep, attr = part.partition(":")
        if not sep or not module.strip() or not attr.strip():
            raise ValueError(f"toolbox must be `module:attr` (or `mcp:COMMAND`, `mcp:URL`), e.g. {DEFAULT_TOOLBOX!r}; got {value!r}")
    return value.strip()


def _bound_beside_null(schema: dict[str, Any]) -> None:
    """The JSON schema of an optional number with its bound beside `anyOf`, not inside the
    number's branch: 0 for `processors` then fails the bound ("0 is less than the minimum of
    1" in the UI's form) instead of every branch ("0 is not valid under any of the given
    schemas"), and an empty field (null) stays valid."""
    for branch in schema.get("anyOf", []):
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if key in branch:
                schema[key] = branch.pop(key)


RESOURCES_HELP = (
    "Capacities of resource classes for this run, e.g. {\"search-api\": 2, \"gpu_mem_gb\": 80}, or rates "
    "(\"10/s\", \"4,10/min\": both) "
    "(default: the task runner's; a deployment's: the worker's LLMORCH_RESOURCES)"
)


class Options(BaseModel):
    """What every run takes: processors, policy, LLM endpoint, recovery, cache, costs,
    capacities. Bad values fail at construction, naming the field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    processors: Optional[int] = Field(
        default=None, ge=1, json_schema_extra=_bound_beside_null,
        description="P, at least 1 (empty: the task runner's: the machine's cores, or a worker's LLMORCH_PROCESSORS)",
    )
    policy: Literal["critical-path", "paper"] = Field(
        default="critical-path", description="Which ready compute call starts first"
    )
    endpoint: Optional[str] = Field(
        default=None,
        description="Name of an LLMEndpoint block, for planning, `self` calls and recovery "
        "(default: OPENAI_BASE_URL, OPENAI_API_KEY, LLMORCH_MODEL)",
    )
    recovery_rounds: int = Field(default=0, ge=0, le=10, description="Trace-back recovery rounds (0: off)")
    cancel_running: bool = Field(
        default=False, description="On a failure, cancel running calls that recovery will re-run anyway (instead of waiting)"
    )
    cache: bool = Field(default=True, description="Reuse stored results of cache=True functions (off: run every call)")
    costs: Optional[Literal["declared", "history"]] = Field(
        default=None, description="Costs for the policy: declared, or history (learned); default: history once there is one"
    )
    resources: Optional[dict[str, Union[float, str]]] = Field(default=None, description=RESOURCES_HELP)

    @field_validator("policy", mode="before")
    @classmethod
    def _policy(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in POLICIES:
            raise ValueError(f"unknown policy {value!r}; valid: {', '.join(POLICIES)}")
        return value

    @field_validator("costs", mode="before")
    @classmethod
    def _costs(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in ("declared", "history"):
            raise ValueError(f"costs must be one of declared, history (or None: history once there is one), got {value!r}")
        return value

    @field_validator("resources")
    @classmethod
    def _capacities(cls, value: Optional[dict[str, Union[float, str]]]) -> Optional[dict[str, Union[float, str]]]:
        if not value:
            return None  # {} and None both mean the task runner's
        from prefect_llmorch.schedule.resources import Capacities

        Capacities.of(1, value)  # type: ignore[arg-type]  # a bad name, amount or rate ("10/s"): the message says which
        return {k: v if isinstance(v, str) else float(v) for k, v in value.items()}

    @property
    def running(self) -> Literal["wait", "cancel"]:
        """What recovery does with running calls it will re-run (`RecoveryConfig.running`)."""
        return "cancel" if self.cancel_running else "wait"

    def merged(self, **changes: Any) -> "Options":
        """A copy with `changes`, checked again (`model_copy` would skip the checks)."""
        return type(self).model_validate({**self.model_dump(), **changes})


class RunOptions(Options):
    """The options of a plan's run (`run_plan`, `llmorch-run`, `llmorch run`)."""


class AskOptions(Options):
    """The options of an ask (`ask_query`, `llmorch-ask`, `llmorch ask`): the run's, a
    planner, and recovery on by default."""

    attempts: int = Field(default=3, ge=1, le=10, description="Planner answers per round (first plan + repairs)")
    recovery_rounds: int = Field(default=3, ge=0, le=10, description="Trace-back recovery rounds (0: off)")
    planner: Optional[Literal["text", "json"]] = Field(
        default=None,
        description="How the LLM writes the plan: the plan language (text) or JSON under a schema (default: the endpoint's setting)",
    )

    joiner: Optional[Literal["off", "auto", "always"]] = Field(
        default=None, description="The join step after a plan: auto (when the plan ends with join()), always, off "
        "(default: the endpoint's setting, else auto)",
    )
    max_rounds: Optional[int] = Field(default=None, ge=0, le=10, description="Continuations the joiner may write (default: 2)")
    max_tokens: Optional[int] = Field(
        default=None, ge=1, description="Token budget of the whole ask (planner, repairs, self calls, joins; default: none)",
    )

    @field_validator("planner", mode="before")
    @classmethod
    def _planner(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in ("text", "json"):
            raise ValueError(f"unknown planner {value!r}; valid: text, json")
        return value

    @field_validator("joiner", mode="before")
    @classmethod
    def _joiner(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in ("off", "auto", "always"):
            raise ValueError(f"joiner must be one of off, auto, always, got {value!r}")
        return value


def options_of(kind: type[Options], given: Optional[Options], overrides: dict[str, Any]) -> Any:
    """The options a library call runs with: `given` (or the defaults) with `overrides` laid
    over it, checked. `run_plan(plan, tb, processors=2)` and `run_plan(plan, tb,
    RunOptions(processors=2))` mean the same; an unknown name fails like a bad keyword.

    Raises:
        TypeError: a name that is no option of `kind`.
        ValueError: a bad value (pydantic's `ValidationError`, naming the field).
    """
    fields = kind.model_fields
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(fields)}")
    if given is None:
        return kind.model_validate(overrides)
    if type(given) is not kind:  # e.g. a deployment form (a subclass with more fields)
        given = kind.model_validate(given.model_dump(include=set(fields) & set(type(given).model_fields)))
    return given.merged(**overrides) if overrides else given
