"""References' declared types against the parameters they are passed to (plan/ref_types.py):
the errors and hints of text and JSON plans, what passes, and two properties checked against
pydantic itself: a rejected pairing is one run-time validation rejects for every value, and
a suggested field validates."""

from __future__ import annotations

import collections.abc
import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Literal, Optional, Sequence, Union

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter, ValidationError
from typing_extensions import TypedDict  # pydantic validates typing.TypedDict on 3.12+ only

from prefect_llmorch.functions import Toolbox, compute, inout
from prefect_llmorch.plan.errors import ArgumentError, PlanError, PlanErrors
from prefect_llmorch.plan.parser import parse
from prefect_llmorch.plan.ref_types import fitting_paths, incompatible


class Quote(BaseModel):
    symbol: str
    price: float
    change_pct: float
    summary: str


@dataclass
class Frame:
    name: str
    objects: int


class Place(TypedDict):
    city: str
    population: int


class Report(BaseModel):
    quote: Quote
    note: Optional[str] = None


@inout
def quote(company: str) -> Quote:
    raise NotImplementedError


@inout
def maybe_quote(company: str) -> Optional[Quote]:
    raise NotImplementedError


@inout
def quotes(companies: list[str]) -> list[Quote]:
    raise NotImplementedError


@compute
def detect(image: str) -> Frame:
    raise NotImplementedError


@inout
def place(name: str) -> Place:
    raise NotImplementedError


@inout
def report(company: str) -> Report:
    raise NotImplementedError


@inout
def untyped(x):  # type: ignore[no-untyped-def]
    raise NotImplementedError


@inout
def anything(x: str) -> Any:
    raise NotImplementedError


@inout
def count(x: str) -> int:
    raise NotImplementedError


@inout
def text(x: str) -> str:
    raise NotImplementedError


@inout
def compare(a: str, b: str) -> str:
    raise NotImplementedError


@compute
def add(a: float, b: float) -> float:
    raise NotImplementedError


@compute
def twice(n: int) -> int:
    raise NotImplementedError


@inout
def summarize(q: Quote) -> str:
    raise NotImplementedError


@inout
def either(x: Union[str, Quote]) -> str:
    raise NotImplementedError


@inout
def optional_text(x: Optional[str] = None) -> str:
    raise NotImplementedError


@inout
def join(*parts: str) -> str:
    raise NotImplementedError


@inout
def total(values: list[float]) -> float:
    raise NotImplementedError


@inout
def loose(x, y: Any) -> str:  # type: ignore[no-untyped-def]
    raise NotImplementedError


TB = Toolbox(quote, maybe_quote, quotes, detect, place, report, untyped, anything, count, text, compare, add,
             twice, summarize, either, optional_text, join, total, loose)


def errors_of(plan: str) -> list[PlanError]:
    with pytest.raises(PlanError) as info:
        parse(plan, TB)
    return info.value.errors


# --------------------------------------------------------------------------- the issue's case


def test_a_model_passed_where_str_is_expected_is_an_error_at_the_reference_with_the_fields_that_fit() -> None:
    errs = errors_of('s1: quote("Apple")\ns2: quote("Microsoft")\ns3: compare(s1, s2)\n')
    assert [type(e) for e in errs] == [ArgumentError, ArgumentError]
    first, second = errs
    assert (first.line, first.column, second.line, second.column) == (3, 13, 3, 17)
    assert first.message == ("compare() argument `a` expects str, but s1 is a Quote; "
                             "did you mean s1.symbol (str) or s1.summary (str)?")
    assert "s2 is a Quote; did you mean s2.symbol (str) or s2.summary (str)?" in second.message
    assert first.context.splitlines() == ["s3: compare(s1, s2)", "            ^"]


def test_the_fixed_plan_passes() -> None:
    parse('s1: quote("Apple")\ns2: quote("Microsoft")\ns3: compare(s1.summary, s2.summary)\n', TB)


def test_json_plans_get_the_same_error_with_the_json_pointer() -> None:
    doc = {"calls": [{"id": "s1", "function": "quote", "args": ["Apple"]},
                     {"id": "s2", "function": "compare", "kwargs": {"a": {"ref": "s1"}, "b": "x"}}]}
    (err,) = errors_of(json.dumps(doc, indent=1))
    assert err.pointer == "/calls/1/kwargs/a" and err.line > 1
    assert "s1 is a Quote; did you mean s1.symbol (str) or s1.summary (str)?" in err.message
    nestful = [{"name": "quote", "arguments": {"company": "Apple"}, "label": "var1"},
               {"name": "compare", "arguments": {"a": "$var1$", "b": "$var1.summary$"}, "label": "var2"}]
    (err,) = errors_of(json.dumps(nestful))
    assert err.pointer == "/1/arguments/a" and "var1 is a Quote" in err.message


# --------------------------------------------------------------------------- kinds of results


@pytest.mark.parametrize("plan, wrong, hint", [
    ('s1: detect("f.png")\ns2: text(s1)', "s1 is a Frame", "did you mean s1.name (str)?"),
    ('s1: detect("f.png")\ns2: twice(s1)', "s1 is a Frame", "did you mean s1.objects (int)?"),
    ('s1: place("Oslo")\ns2: add(s1, 1)', "s1 is a Place", "did you mean s1.population (int)?"),
    ('s1: report("Apple")\ns2: text(s1.quote)', "s1.quote is a Quote (report returns Report)",
     "did you mean s1.quote.symbol (str) or s1.quote.summary (str)?"),
    ('s1: report("Apple")\ns2: text(s1)', "s1 is a Report", "did you mean s1.note (str | None) or s1.quote.symbol (str)"),
    ('s1: quotes(["a"])\ns2: text(s1)', "s1 is a list[Quote]", "did you mean s1[0].symbol (str) or s1[0].summary (str)?"),
    ('s1: maybe_quote("a")\ns2: text(s1)', "s1 is a Quote | None", "did you mean s1.symbol (str)"),
    ('s1: text("a")\ns2: summarize(s1)', "s1 is a str", ""),
    ('s1: count("a")\ns2: text(s1)', "s1 is an int", ""),
    ('s1: quote("a")\ns2: join("x", s1.summary, s1)', "join() argument `parts` expects str, but s1 is a Quote", "s1.symbol"),
    ('s1: quote("a")\ns2: total([1, s1.price, s1])', "total() argument `values` expects float, but s1 is a Quote",
     "did you mean s1.price (float) or s1.change_pct (float)?"),
])
def test_clearly_wrong_references_are_errors(plan: str, wrong: str, hint: str) -> None:
    (err,) = errors_of(plan)
    assert isinstance(err, ArgumentError) and wrong in err.message and hint in err.message
    assert err.line == plan.count("\n") + 1 and err.column > 0


@pytest.mark.parametrize("plan", [
    's1: count("a")\ns2: add(s1, 2.5)',             # int -> float
    's1: text("42")\ns2: twice(s1)',                 # str -> int: "42" validates
    's1: untyped(1)\ns2: text(s1)',                  # unannotated result
    's1: anything("a")\ns2: twice(s1)',              # Any result
    's1: quote("a")\ns2: untyped(s1)\ns3: loose(s1, s1)',  # unannotated / Any parameters
    's1: quote("a")\ns2: summarize(s1)',             # the model where the model is expected
    's1: quote("a")\ns2: either(s1)\ns3: either(s1.summary)',  # a union takes either
    's1: text("a")\ns2: optional_text(s1)',          # Optional[str] takes str
    's1: maybe_quote("a")\ns2: summarize(s1)',       # None is a run-time matter
    's1: quote("a")\ns2: text("{s1} is the quote")',  # a template is text
    's1: quote("a")\ns2: text(s1.sumary)',          # a wrong field: a FieldError only (below)
    's1: place("Oslo")\ns2: summarize(s1)',          # a dict may validate as a model
])
def test_what_may_be_valid_passes(plan: str) -> None:
    try:
        parse(plan, TB)
    except PlanError as exc:
        assert all(e.kind == "field" for e in exc.errors), exc.report()


def test_every_wrong_reference_of_a_plan_is_reported_in_order() -> None:
    with pytest.raises(PlanErrors) as info:
        parse('s1: quote("a")\ns2: detect("b")\ns3: compare(s1, s2.name)\ns4: twice(s1)\ns5: text(s2)', TB)
    assert [(e.line, e.column) for e in info.value.errors] == [(3, 13), (4, 11), (5, 10)]


def test_the_cli_check_shows_the_error_and_hint(tmp_path: Any) -> None:
    plan = tmp_path / "p.plan"
    plan.write_text('s1: quote("Apple")\ns2: quote("Microsoft")\ns3: compare(s1, s2)\n')
    out = subprocess.run([sys.executable, "-m", "prefect_llmorch.cli", "check", str(plan), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    doc = json.loads(out.stdout)
    errors = doc["errors"]
    assert [(e["line"], e["column"], e["kind"]) for e in errors] == [(3, 13, "arguments"), (3, 17, "arguments")]
    assert "did you mean s1.symbol (str) or s1.summary (str)?" in errors[0]["message"]


# --------------------------------------------------------------------------- properties, against pydantic

SCALARS = [str, int, float, bool, bytes, type(None), Any, Literal["a", "b"], Literal[1, 2]]
STRUCTS = [Quote, Frame, Place]


def types_() -> st.SearchStrategy[Any]:
    def extend(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(
            inner.map(lambda t: list[t]),  # type: ignore[valid-type]
            inner.map(lambda t: tuple[t, ...]),  # type: ignore[valid-type]
            inner.map(lambda t: Sequence[t]),  # type: ignore[valid-type]
            inner.map(lambda t: dict[str, t]),  # type: ignore[valid-type]
            inner.map(lambda t: Optional[t]),
            st.tuples(inner, inner).map(lambda ts: Union[ts[0], ts[1]]),
        )
    return st.recursive(st.sampled_from(SCALARS + STRUCTS), extend, max_leaves=3)


def values(tp: Any) -> st.SearchStrategy[Any]:
    """Values of a declared type, as a function that returns it may return them."""
    import typing

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return st.one_of(st.integers(), st.text(max_size=3), st.none())
    if tp in (type(None), None):
        return st.none()
    if origin is Literal:
        return st.sampled_from(args)
    if origin is Union:
        return st.one_of(*(values(a) for a in args))
    if origin in (list, collections.abc.Sequence):
        return st.lists(values(args[0]), max_size=3)
    if origin is tuple:
        return st.lists(values(args[0]), max_size=3).map(tuple)
    if origin is dict:
        return st.dictionaries(st.text(max_size=3), values(args[1]), max_size=2)
    simple = {
        # values lax validation converts ("1" to an int, 1.0 to a bool) are drawn often: a
        # rule that rejects a pairing they validate for must fail here
        str: st.one_of(st.sampled_from(["1", "0", "2.5", "true", "no", "", "[]", "{}"]), st.text(max_size=4)),
        int: st.integers(-3, 3), float: st.one_of(st.sampled_from([0.0, 1.0, 2.0]), st.floats(-3, 3)),
        bool: st.booleans(), bytes: st.one_of(st.sampled_from([b"1", b"true", b"x"]), st.binary(max_size=3)),
        Quote: st.builds(Quote, symbol=st.text(max_size=3), price=st.floats(0, 9),
                         change_pct=st.floats(-9, 9), summary=st.text(max_size=3)),
        Frame: st.builds(Frame, name=st.text(max_size=3), objects=st.integers(0, 9)),
        Place: st.fixed_dictionaries({"city": st.text(max_size=3), "population": st.integers(0, 9)}),
    }
    return simple[tp]


def valid(value: Any, tp: Any) -> bool:
    try:
        TypeAdapter(tp).validate_python(value)
    except ValidationError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(st.data(), types_(), types_())
def test_a_rejected_pairing_is_one_pydantic_rejects_for_every_value(data: st.DataObject, declared: Any,
                                                                    expected: Any) -> None:
    if incompatible(declared, expected):
        for _ in range(5):
            value = data.draw(values(declared))
            assert not valid(value, expected), f"{value!r} ({declared}) validates as {expected}"


@settings(max_examples=200, deadline=None)
@given(st.data(), st.sampled_from(STRUCTS + [list[Quote], Optional[Quote]]),
       st.sampled_from([str, int, float, Optional[str]]))
def test_a_suggested_field_holds_a_value_the_parameter_takes(data: st.DataObject, declared: Any,
                                                             expected: Any) -> None:
    value = data.draw(values(declared))
    for path in fitting_paths(declared, expected):
        part = value
        for step in path:
            if part is None or (isinstance(step, int) and not part):
                part = None  # an empty list or a None result: nothing to select at run time
                break
            part = part[step] if isinstance(step, int) or isinstance(part, dict) else getattr(part, step)
        assert part is None or valid(part, expected), (path, part, expected)


LEAVES = SCALARS + STRUCTS + [list, list[str], dict[str, int], tuple[int, ...], Optional[int], Union[int, Quote]]


@pytest.mark.parametrize("declared", LEAVES, ids=str)
def test_each_rejection_of_simple_types_holds_for_the_values_lax_validation_converts(declared: Any) -> None:
    """Every pairing of simple types, each with the values that lax validation converts
    most readily (drawn first by hypothesis's `example`s are not enough: all of them here)."""
    samples = {
        str: ["1", "0", "2.5", "true", "no", "", "[]", "{}", "x"], int: [0, 1, -2], float: [0.0, 1.0, 2.5],
        bool: [True, False], bytes: [b"1", b"true", b""], type(None): [None], Any: [None, 1, "1"],
        Literal["a", "b"]: ["a"], Literal[1, 2]: [1, 2],
        Quote: [Quote(symbol="1", price=1.0, change_pct=0.0, summary="1")], Frame: [Frame("1", 1)],
        Place: [{"city": "1", "population": 1}], list[str]: [[], ["1"]], dict[str, int]: [{}, {"a": 1}],
        list: [[], [1]], tuple[int, ...]: [(), (1,)], Optional[int]: [None, 0, 1], Union[int, Quote]: [1],
    }[declared]
    for expected in LEAVES:
        if incompatible(declared, expected):
            passing = [v for v in samples if valid(v, expected)]
            assert not passing, f"{declared} rejected for {expected}, yet {passing} validate"


def test_the_rejections_the_issue_names() -> None:
    for struct in STRUCTS:
        for scalar in (str, int, float, bool):
            assert incompatible(struct, scalar)
    for struct in (Quote, Frame, Place):
        assert incompatible(str, struct)
    assert not incompatible(int, float) and not incompatible(Quote, Any) and not incompatible(Any, str)
    assert not incompatible(Optional[Quote], Quote) and incompatible(Optional[Quote], str)
    assert not incompatible(Quote, Union[str, Quote]) and not incompatible(Quote, Optional[Any])


def test_the_none_of_an_optional_parameter_takes_only_none() -> None:
    # NESTFUL glaive_13's gold passes an age (a number) to `arguments: list | None`
    assert incompatible(float, Optional[list]) and incompatible(Quote, Optional[int]) and incompatible(int, type(None))
    assert not incompatible(type(None), Optional[list]) and not incompatible(Optional[list], Optional[list])
    assert not incompatible(str, Optional[int]) and not incompatible(Any, type(None))


class Car(TypedDict):
    type: Literal["Compact", "Full-size"]
    seats: Literal[2, 4]


@inout
def rent_car(city: str) -> Car:
    return {"type": "Compact", "seats": 4}


@compute
def count_seats(seats: int) -> int:
    return seats


def test_literal_fields_show_text_in_double_quotes_in_the_results_lines_and_the_hints():
    # as `FunctionSpec.render` does: shown `Literal[Compact, Full-size]`, a small model writes
    # `type=Compact`, an undefined name (NESTFUL sgd_0)
    from prefect_llmorch.plan.result_types import describe_results

    toolbox = Toolbox(rent_car, count_seats)
    assert 'Car: type: Literal["Compact", "Full-size"], seats: Literal[2, 4]' in describe_results(toolbox)
    with pytest.raises(PlanError) as info:
        parse('s1: rent_car("SF")\ns2: count_seats(s1)', toolbox)
    assert 'did you mean s1.seats (Literal[2, 4])?' in str(info.value)
