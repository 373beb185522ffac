"""Field and index access on references: syntax in both dialects and in strings, run-time
selection (never calling anything), messages naming call and argument, and plan-time
checks against declared result types."""

from __future__ import annotations

import pickle
from collections import namedtuple
from dataclasses import dataclass
from typing import Optional, TypedDict

import pytest
from pydantic import BaseModel, ConfigDict

from prefect_llmorch.functions import Toolbox, compute, inout
from prefect_llmorch.plan.errors import FieldError, PlanErrors, PlanSyntaxError
from prefect_llmorch.plan.evaluate import AccessError, evaluate, resolve, select
from prefect_llmorch.plan.model import Ref, Template
from prefect_llmorch.plan.parser import parse

# --------------------------------------------------------------------------- syntax


@pytest.mark.parametrize("text, ref", [
    ("s1: f()\ns2: g(s1.skyId)", Ref("s1", path=("skyId",))),
    ("s1: f()\ns2: g(s1.data[0].id)", Ref("s1", path=("data", 0, "id"))),
    ('s1: f()\ns2: g(s1["Exchange Rate"])', Ref("s1", path=("Exchange Rate",))),
    ("s1: f()\ns2: g(s1['key'][-1])", Ref("s1", path=("key", -1))),
    ("s1: f()\ns2: g(s1 . a [ 2 ])", Ref("s1", path=("a", 2))),
    ("1. f()\n2. g($1.skyId)", Ref("1", path=("skyId",))),
    ("1. f()\n2. g(${1}.items[2])", Ref("1", path=("items", 2))),
    ('s1: f()\ns2: g("{s1.name}")', Ref("s1", path=("name",))),
    ("s1: f()\ns2: g(\"{s1['a b'][0]}\")", Ref("s1", path=("a b", 0))),
    ('s1: f()\ns2: g("{s1[\\"k\\"]}")', Ref("s1", path=("k",))),
    ('s1: f()\ns2: g("${s1.x}")', Ref("s1", path=("x",))),
    ("1. f()\n2. g('$1.skyId')", Ref("1", path=("skyId",))),
    ("1. f()\n2. g('${1.items[2]}')", Ref("1", path=("items", 2))),
    ("1. f()\n2. g('$1[0]')", Ref("1", path=(0,))),
])
def test_access_parses_to_a_ref_with_a_path(text: str, ref: Ref) -> None:
    call = parse(text).calls[1]
    assert call.args[0].value == ref
    assert call.deps == {ref.id}


def test_def_use_edge_goes_to_the_base_call() -> None:
    plan = parse("s1: f()\ns2: f()\ns3: g(s1.a[0], t=\"{s2.name} and {s1[1]}\")")
    assert plan["s3"].deps == {"s1", "s2"}


def test_references_with_paths_inside_a_template_keep_the_text_between() -> None:
    value = parse('s1: f()\ns2: f()\ns3: g("{s1.name} and {s2[0]}")')["s3"].args[0].value
    assert value == Template((Ref("s1", path=("name",)), " and ", Ref("s2", path=(0,))))


@pytest.mark.parametrize("text, parts", [
    ("1. f()\n2. g('costs $1. Then')", ("costs ", Ref("1"), ". Then")),
    ("1. f()\n2. g('$1.5')", (Ref("1"), ".5")),
    ("1. f()\n2. g('${1}.txt')", (Ref("1"), ".txt")),
    ('s1: f()\ns2: g("{s1}.txt")', (Ref("s1"), ".txt")),
])
def test_text_after_a_reference_that_is_not_a_step_stays_text(text: str, parts: tuple) -> None:
    assert parse(text).calls[1].args[0].value == Template(parts)


def test_an_index_must_be_a_whole_number_with_line_and_column() -> None:
    with pytest.raises(PlanSyntaxError, match=r"whole number") as info:
        parse("s1: f()\ns2: g(s1[1.5])")
    assert (info.value.line, info.value.column) == (2, 10)


def test_a_step_needs_a_name_after_the_dot() -> None:
    with pytest.raises(PlanSyntaxError) as info:
        parse("s1: f()\ns2: g(s1.)")
    assert info.value.line == 2 and "a name" in info.value.expected


def test_access_on_an_undefined_reference_is_reported_at_the_reference() -> None:
    with pytest.raises(Exception) as info:
        parse("s1: f()\ns2: g(x=sl.skyId)")
    assert (info.value.line, info.value.column) == (2, 9)
    assert "undefined reference `sl`" in str(info.value)


# --------------------------------------------------------------------------- run time


class Airport(BaseModel):
    id: str
    name: str
    entityId: str


class Loose(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: int


@dataclass
class Point:
    x: int
    y: int


@dataclass
class Slotted:
    __slots__ = ("a",)
    a: int


Pair = namedtuple("Pair", "left right")


class Plain:
    def __init__(self) -> None:
        self.visible = 1
        self._hidden = 2

    def method(self) -> int:  # pragma: no cover - must never be called
        raise AssertionError("access called a method")


class WithProperty:
    calls = 0

    @property
    def computed(self) -> int:  # pragma: no cover - must never be called
        WithProperty.calls += 1
        return 1


@pytest.mark.parametrize("value, path, expected", [
    ({"a": {"b": [10, 20]}}, ("a", "b", 1), 20),
    ([1, 2, 3], (-1,), 3),
    ((1, (2, 3)), (1, 0), 2),
    ({0: "zero"}, (0,), "zero"),
    ({"_id": 5}, ("_id",), 5),
    (Airport(id="JFK", name="New York", entityId="27537542"), ("entityId",), "27537542"),
    (Loose(id=1, extra_field="x"), ("extra_field",), "x"),
    (Point(1, 2), ("y",), 2),
    (Slotted(7), ("a",), 7),
    (Pair(1, 2), ("right",), 2),
    (Pair(1, 2), (0,), 1),
    (Plain(), ("visible",), 1),
    ({"items": [Airport(id="a", name="b", entityId="c")]}, ("items", 0, "name"), "b"),
])
def test_select_reads_data(value: object, path: tuple, expected: object) -> None:
    assert select(value, path, "s1") == expected


def test_a_missing_field_names_the_call_the_argument_and_what_is_there() -> None:
    call = parse("s1: f()\ns3: g(originSkyId=s1.skyId)")["s3"]
    with pytest.raises(AccessError) as info:
        resolve(call, {"s1": {"id": 1, "name": "JFK", "entityId": 2}})
    assert str(info.value) == (
        "s3 argument 'originSkyId': s1 has no field 'skyId'; it has: id, name, entityId")
    err = info.value
    assert (err.call, err.argument, err.ref, err.at, err.step) == (
        "s3", "originSkyId", "s1.skyId", "s1", "skyId")
    assert err.available == ["id", "name", "entityId"]


def test_positional_arguments_are_numbered_from_one() -> None:
    call = parse("1. f()\n2. g(1, $1.data[3])")["2"]
    with pytest.raises(AccessError) as info:
        resolve(call, {"1": {"data": [1, 2]}})
    assert str(info.value) == "$2 argument 2: $1.data has no index 3; it is a list of 2 items (0..1)"


def test_a_missing_model_field_lists_the_model_fields() -> None:
    with pytest.raises(AccessError, match=r"s1 has no field 'skyId'; it has: id, name, entityId"):
        select(Airport(id="a", name="b", entityId="c"), ("skyId",), "s1")


@pytest.mark.parametrize("value, path, message", [
    ("text", (0,), "s1 is a str, not a list: it has no index 0"),
    ([1], ("x",), "s1 is a list of 1 item: it has no field 'x'; use an index like s1[0]"),
    (5, ("x",), "s1 is a int: it has no field 'x'"),
    (None, ("x",), "s1 is None: it has no field 'x'"),
    (Plain(), ("_hidden",), "field '_hidden' is private"),
    (Plain(), ("method",), "s1 has no field 'method'; it has: visible"),
    (Plain(), ("__class__",), "private"),
    ({"a": 1}, (0,), "s1 has no key 0; it has: a"),
])
def test_what_cannot_be_selected_is_an_access_error(value: object, path: tuple, message: str) -> None:
    with pytest.raises(AccessError) as info:
        select(value, path, "s1")
    assert message in str(info.value)


def test_access_never_calls_a_property() -> None:
    with pytest.raises(AccessError, match="no field 'computed'"):
        select(WithProperty(), ("computed",), "s1")
    assert WithProperty.calls == 0


def test_template_formats_the_selected_part() -> None:
    expr = parse('s1: f()\ns2: g("{s1.name} flies from {s1.codes[0]}")')["s2"].args[0].value
    assert evaluate(expr, {"s1": {"name": "JFK", "codes": ["NYC"]}}) == "JFK flies from NYC"


def test_access_error_survives_pickling_with_its_fields() -> None:
    call = parse("s1: f()\ns3: g(x=s1.skyId)")["s3"]
    with pytest.raises(AccessError) as info:
        resolve(call, {"s1": {"id": 1}})
    back = pickle.loads(pickle.dumps(info.value))
    assert str(back) == str(info.value) and back.available == ["id"] and back.call == "s3"


# --------------------------------------------------------------------------- plan time


class Hotel(TypedDict):
    geoId: str
    name: str


@dataclass
class Flight:
    price: float
    legs: list[Airport]


@inout
def search_airport(query: str) -> Airport:
    """Find an airport."""
    raise NotImplementedError


@inout
def search_airports(query: str) -> list[Airport]:
    raise NotImplementedError


@inout
def search_hotel(query: str) -> Optional[Hotel]:
    raise NotImplementedError


@compute
def cheapest(origin: str) -> Flight:
    raise NotImplementedError


@inout
def untyped(query: str) -> dict:
    raise NotImplementedError


@inout
def book(x: object = None, y: object = None) -> str:
    raise NotImplementedError


TOOLS = Toolbox(search_airport, search_airports, search_hotel, cheapest, untyped, book)


@pytest.mark.parametrize("ref", [
    "s1.skyId", "s2[0].skyId", "s2.id", "s3.geoid", "s4.legs[0].nope", "s4.price.x", "s1[0]",
])
def test_a_field_the_declared_result_type_lacks_is_a_plan_error(ref: str) -> None:
    text = ('s1: search_airport("a")\ns2: search_airports("a")\ns3: search_hotel("a")\n'
            f's4: cheapest("x")\ns5: book(x={ref})')
    with pytest.raises(FieldError) as info:
        parse(text, TOOLS)
    assert (info.value.line, info.value.column) == (5, 12)
    assert info.value.kind == "field" and f"`{ref}`" in info.value.message


def test_the_field_error_says_what_the_type_has() -> None:
    with pytest.raises(FieldError) as info:
        parse('s1: search_airport("a")\ns2: book(x=s1.skyId)', TOOLS)
    assert str(info.value) == ("line 2, column 12: `s1.skyId`: s1 (search_airport returns Airport) "
                               "has no field 'skyId'; it has: id, name, entityId")
    assert info.value.context.endswith("^")


def test_a_field_error_inside_a_string_points_at_the_reference() -> None:
    with pytest.raises(FieldError) as info:
        parse('s1: search_airport("a")\ns2: book(x="from {s1.code}")', TOOLS)
    assert (info.value.line, info.value.column) == (2, 18)


@pytest.mark.parametrize("ref", [
    "s2.anything.at[3].all", "s3.id", "s4.geoId", "s5.legs[1].entityId", "s5.price",
])
def test_fields_are_not_checked_where_no_shape_is_declared_or_the_field_exists(ref: str) -> None:
    fields = {"s2.anything.at[3].all": "s2"}
    text = ('s1: book("a")\ns2: untyped("a")\ns3: search_airport("a")\ns4: search_hotel("a")\n'
            f's5: cheapest("x")\ns6: book(x={ref})')
    assert parse(text, TOOLS)["s6"].deps == {fields.get(ref, ref.split(".")[0])}


def test_a_field_of_a_result_declared_as_a_scalar_or_a_list_is_a_plan_error() -> None:
    """`book -> str`, `search_airports -> list[...]`: a field of such a result fails at run
    time (trace-back recovery cannot repair the call that made it, issue 28), so it is a
    plan error, in text and JSON plans (a real model wrote `{"ref": "s4", "path": ["value"]}`
    on `add -> float`)."""
    with pytest.raises(FieldError) as info:
        parse('s1: book("a")\ns2: book(x=s1.skyId)', TOOLS)
    assert str(info.value).startswith("line 2, column 12: `s1.skyId`: s1 (book returns str) is a str: it has no field 'skyId'")
    with pytest.raises(FieldError) as info:
        parse('{"calls": [{"id": "s1", "function": "book", "args": ["a"]}, '
              '{"id": "s2", "function": "book", "kwargs": {"x": {"ref": "s1", "path": ["skyId"]}}}]}', TOOLS)
    assert "s1 (book returns str) is a str: it has no field 'skyId'" in str(info.value)
    with pytest.raises(FieldError, match="is a list: it has no field 'id'; use an index like"):
        parse('s1: search_airports("a")\ns2: book(x=s1.id)', TOOLS)


def test_several_field_errors_are_all_reported() -> None:
    with pytest.raises(PlanErrors) as info:
        parse('s1: search_airport("a")\ns2: book(x=s1.a, y=s1.b)', TOOLS)
    assert [e.kind for e in info.value.errors] == ["field", "field"]
