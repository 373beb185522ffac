"""One options model (`prefect_llmorch.options`): defaults and checks in one place, read by
`run_plan` / `ask_query`, the flows, the deployment forms and the CLI. Pure: no server."""

from __future__ import annotations

import inspect

import pytest
from pydantic import ValidationError

from prefect_llmorch.options import AskOptions, RunOptions, options_of


def test_defaults_differ_where_ask_and_run_differ() -> None:
    assert RunOptions().recovery_rounds == 0 and AskOptions().recovery_rounds == 3
    assert AskOptions().attempts == 3 and AskOptions().planner is None
    assert RunOptions().policy == "critical-path" and RunOptions().cache is True


def test_cancel_running_is_what_recovery_does_with_running_calls() -> None:
    assert RunOptions().running == "wait"
    assert RunOptions(cancel_running=True).running == "cancel"


@pytest.mark.parametrize(
    ("kind", "values", "message"),
    [
        (RunOptions, {"policy": "fifo"}, "unknown policy 'fifo'; valid: critical-path, paper"),
        (RunOptions, {"processors": 0}, "greater than or equal to 1"),
        (RunOptions, {"recovery_rounds": -1}, "greater than or equal to 0"),
        (RunOptions, {"costs": "learned"}, "costs must be one of declared, history"),
        (RunOptions, {"resources": {"processors": 2}}, "give processors as processors=P"),
        (RunOptions, {"resources": {"search-api": 0}}, "must be a number > 0"),
        (AskOptions, {"planner": "yaml"}, "unknown planner 'yaml'; valid: text, json"),
        (AskOptions, {"attempts": 0}, "greater than or equal to 1"),
        (RunOptions, {"attempts": 2}, "Extra inputs are not permitted"),
    ],
)
def test_a_bad_option_fails_at_construction_naming_it(kind: type, values: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as info:
        kind(**values)
    assert info.value.errors()[0]["loc"][0] == next(iter(values))


def test_options_are_frozen_and_merged_copies_are_checked_again() -> None:
    opts = RunOptions(processors=2)
    with pytest.raises(ValidationError):
        opts.processors = 3  # type: ignore[misc]
    assert opts.merged(processors=3).processors == 3 and opts.processors == 2
    with pytest.raises(ValidationError, match="unknown policy"):
        opts.merged(policy="fifo")


def test_keywords_lay_over_the_given_options_and_unknown_names_fail_like_keywords() -> None:
    base = RunOptions(processors=2, recovery_rounds=1)
    assert options_of(RunOptions, base, {"cache": False}) == RunOptions(processors=2, recovery_rounds=1, cache=False)
    assert options_of(RunOptions, None, {"processors": 4}) == RunOptions(processors=4)
    assert options_of(RunOptions, base, {}) is base
    with pytest.raises(TypeError, match="unknown option.*proccessors"):
        options_of(RunOptions, None, {"proccessors": 2})


def test_a_deployment_form_is_the_options_plus_what_to_run() -> None:
    from prefect_llmorch.flows.deploy import AskParameters, RunParameters

    form = RunParameters(plan="s1: f()", processors=2, cancel_running=True)
    assert type(form.options()) is RunOptions and form.options() == RunOptions(processors=2, cancel_running=True)
    ask = AskParameters(query="q", attempts=2)
    assert type(ask.options()) is AskOptions and ask.options().attempts == 2
    # the forms add fields, and take every option's field, default and description as is
    for form_kind, kind in ((RunParameters, RunOptions), (AskParameters, AskOptions)):
        for name, field in kind.model_fields.items():
            assert form_kind.model_fields[name].default == field.default
            assert form_kind.model_fields[name].description == field.description


def test_the_flows_take_the_options_object() -> None:
    from prefect_llmorch.flows.ask import ask
    from prefect_llmorch.flows.run import orchestrate

    assert list(inspect.signature(orchestrate.fn).parameters) == ["plan", "toolbox", "options"]
    assert list(inspect.signature(ask.fn).parameters) == ["query", "toolbox", "options"]
    assert inspect.signature(orchestrate.fn).parameters["options"].annotation in (RunOptions, "RunOptions")


def test_default_toolbox_has_one_owner() -> None:
    from prefect_llmorch import examples, options
    from prefect_llmorch.flows import ask, deploy

    assert options.DEFAULT_TOOLBOX is examples.DEFAULT_TOOLBOX
    assert ask.DEFAULT_TOOLBOX is examples.DEFAULT_TOOLBOX and deploy.DEFAULT_TOOLBOX is examples.DEFAULT_TOOLBOX
