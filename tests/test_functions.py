"""@inout / @compute, FunctionSpec checks, Toolbox."""

from __future__ import annotations

import pickle

import pytest

from prefect_llmorch.functions import SELF, ArgumentsInvalid, Toolbox, compute, inout, load_toolbox, spec_of


@inout(description="Search the web.", cost=0.4, retries=2)
def search(query: str, k: int = 3) -> list[str]:
    return [query] * k


@compute
def analyse(*values: float, scale: float = 1.0) -> float:
    """Sum, scaled."""
    return sum(values) * scale


def test_decorators_keep_the_function_and_attach_a_spec() -> None:
    assert search("x", 2) == ["x", "x"]  # still the plain function
    spec = spec_of(search)
    assert (spec.name, spec.kind, spec.cost, spec.retries, spec.description) == ("search", "inout", 0.4, 2, "Search the web.")
    assert spec_of(analyse).kind == "compute" and spec_of(analyse).description == "Sum, scaled."
    assert pickle.loads(pickle.dumps(analyse)) is analyse  # ships to worker processes by reference


def test_validate_coerces_and_check_reports_every_problem() -> None:
    spec = spec_of(search)
    assert spec.validate(("q",), {"k": "2"}) == {"query": "q", "k": 2}
    with pytest.raises(ArgumentsInvalid, match="missing a required argument: 'query'"):
        spec.validate((), {})
    with pytest.raises(ArgumentsInvalid, match="unexpected keyword argument 'limit'"):
        spec.check(("q",), {"limit": 3})
    with pytest.raises(ArgumentsInvalid) as info:
        spec.check((1.5,), {"k": "many"})
    assert [p for p, _ in info.value.problems] == ["query", "k"]


def test_unknown_values_are_skipped_at_plan_time() -> None:
    unknown = object()
    spec_of(search).check((unknown,), {"k": 1}, unknown=unknown)  # a reference: checked later


def test_var_positional_arguments_round_trip_to_a_call() -> None:
    spec = spec_of(analyse)
    validated = spec.validate((1, "2", 3.5), {"scale": 2})
    args, kwargs = spec.call_args(validated)
    assert analyse(*args, **kwargs) == 13.0


def test_toolbox_has_self_and_renders_for_a_prompt() -> None:
    tb = Toolbox(search, analyse)
    assert list(tb) == ["search", "analyse", SELF]
    text = tb.describe()
    assert "search(query: str, k: int = 3) -> list[str]  [inout]" in text and "[compute]" in text
    with pytest.raises(ValueError, match="two functions are named 'search'"):
        Toolbox(search, search)
    with pytest.raises(TypeError, match="not marked @inout or @compute"):
        Toolbox(len)


def test_bad_decorator_settings_fail_at_once() -> None:
    with pytest.raises(ValueError, match="cost must be >= 0"):
        compute(cost=-1)
    with pytest.raises(TypeError, match="has no `credentials` parameter"):
        inout(credentials="api")(lambda q: q)

    async def coro() -> None: ...

    with pytest.raises(TypeError, match="is async"):
        inout(coro)


def test_load_toolbox_errors_are_clear() -> None:
    assert "detect" in load_toolbox("prefect_llmorch.examples.toolbox:toolbox")
    with pytest.raises(ValueError, match="module:attr"):
        load_toolbox("prefect_llmorch.examples.toolbox")
    with pytest.raises(ValueError, match="cannot import toolbox module"):
        load_toolbox("no_such_module_xyz:toolbox")
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        load_toolbox("prefect_llmorch.examples.toolbox:nope")
    with pytest.raises(ValueError, match="not a Toolbox"):
        load_toolbox("prefect_llmorch.examples.toolbox:_FACTS")
