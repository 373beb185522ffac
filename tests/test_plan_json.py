"""The JSON plan dialects: NESTFUL and our JSON form, read by the same `parse`, written by
`render`, errors with JSON pointer and line/column, streamed by `PlanStream`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from prefect_llmorch.functions import Toolbox, inout
from prefect_llmorch.plan.errors import (
    ArgumentError, EmptyPlanError, FieldError, PlanError, PlanErrors, PlanReferenceError,
    PlanSyntaxError, UnknownFunctionError,
)
from prefect_llmorch.plan.model import Arg, BinOp, Call, DictExpr, ListExpr, Literal, Plan, Ref, Template
from prefect_llmorch.plan.parser import PlanStream, parse
from prefect_llmorch.plan.render import render

PLANS = Path(__file__).parent / "plans"


def test_nestful_sample_parses_to_calls_deps_paths_and_answer() -> None:
    plan = parse((PLANS / "nestful_flights.json").read_text())
    assert plan.dialect == "nestful"
    assert [(c.id, c.function, sorted(c.deps)) for c in plan] == [
        ("var1", "SkyScrapperSearchAirport", []),
        ("var2", "SkyScrapperSearchAirport", []),
        ("var3", "SkyScrapperFlightSearch", ["var1", "var2"]),
        ("var4", "TripadvisorSearchLocation", []),
        ("var5", "TripadvisorSearchHotels", ["var4"]),
    ]
    assert plan["var3"].keywords["originSkyId"] == Ref("var1", path=("skyId",))
    assert plan["var3"].keywords["date"] == Literal("2024-08-15")
    assert plan.answer == DictExpr((("flights", Ref("var3")), ("hotels", Ref("var5"))))


def test_nestful_reference_inside_text_is_formatted_and_field_names_may_have_spaces() -> None:
    plan = parse((PLANS / "nestful_exchange.json").read_text())
    assert plan["var2"].keywords["numbers"] == Template(("5 * ", Ref("var1", path=("Exchange Rate",))))
    assert plan.answer == DictExpr((("exchange_rate", Ref("var1", path=("Exchange Rate",))),
                                    ("calculated_value", Ref("var2", path=("answer",)))))


@pytest.mark.parametrize("value, expr", [
    ('"$var1$"', Ref("var1")),
    ('"$var1.field[0].sub$"', Ref("var1", path=("field", 0, "sub"))),
    ('["$var1.a$", {"k": "$var1[1]$"}]', ListExpr((Ref("var1", path=("a",)),
                                                   DictExpr((("k", Ref("var1", path=(1,))),))))),
    ('"costs $5 and $var1$"', Template(("costs $5 and ", Ref("var1")))),
    ('"plain $ text"', Literal("plain $ text")),
    ("3.5", Literal(3.5)),
    ("null", Literal(None)),
])
def test_nestful_values(value: str, expr: object) -> None:
    text = ('[{"name": "f", "arguments": {}, "label": "var1"},'
            f' {{"name": "g", "arguments": {{"x": {value}}}, "label": "var2"}}]')
    assert parse(text)["var2"].keywords["x"] == expr


def test_nestful_labels_may_carry_dollars() -> None:
    plan = parse('[{"name": "f", "label": "$var1"}, {"name": "g", "arguments": {"a": "$var1$"}, "label": "$var2"}]')
    assert plan.ids == ("var1", "var2") and plan["var2"].deps == {"var1"}


@pytest.mark.parametrize("value, expr", [
    ('{"ref": "s1"}', Ref("s1")),
    ('{"ref": "s1", "path": ["data", 0, "id"]}', Ref("s1", path=("data", 0, "id"))),
    ('{"template": ["Summarize ", {"ref": "s1"}, "."]}', Template(("Summarize ", Ref("s1"), "."))),
    ('{"template": [{"ref": "s1", "path": ["x"]}]}', Ref("s1", path=("x",))),
    ('{"template": ["a", "b"]}', Literal("ab")),
    ('{"op": "*", "left": {"ref": "s1"}, "right": 2}', BinOp("*", Ref("s1"), Literal(2))),
    ('{"dict": [[1, "one"], ["ref", {"ref": "s1"}]]}', DictExpr(((1, Literal("one")), ("ref", Ref("s1"))))),
    ('{"a": 1, "ref": "s1"}', DictExpr((("a", Literal(1)), ("ref", Literal("s1"))))),
    ('"{s1} is text here"', Literal("{s1} is text here")),
    ('[true, false, 1e999]', ListExpr((Literal(True), Literal(False), Literal(float("inf"))))),
])
def test_json_form_values(value: str, expr: object) -> None:
    text = ('{"calls": [{"id": "s1", "function": "f"},'
            f' {{"id": "s2", "function": "g", "args": [{value}]}}]}}')
    assert parse(text)["s2"].args == (Arg(None, expr),)  # type: ignore[arg-type]


def test_json_form_may_be_a_bare_array_and_keeps_positional_then_named_arguments() -> None:
    plan = parse('[{"id": "s1", "function": "f", "args": [1], "kwargs": {"k": 2}}, {"id": 2, "function": "g"}]')
    assert plan == Plan((Call("s1", "f", (Arg(None, Literal(1)), Arg("k", Literal(2)))), Call("2", "g")))
    assert plan.dialect == "json"


def test_json_form_answer() -> None:
    plan = parse('{"calls": [{"id": "s1", "function": "f"}], "answer": {"ref": "s1", "path": ["x"]}}')
    assert plan.answer == Ref("s1", path=("x",))


# --------------------------------------------------------------------------- errors


def _errors(text: str, toolbox: object = None) -> list[PlanError]:
    with pytest.raises(PlanError) as info:
        parse(text, toolbox)  # type: ignore[arg-type]
    return info.value.errors


def test_json_syntax_error_has_line_and_column() -> None:
    [err] = _errors('[\n  {"name": "f", "arguments": {"x": 1 "y": 2}, "label": "var1"}\n]')
    assert isinstance(err, PlanSyntaxError)
    assert (err.line, err.column) == (2, 38) and "`,`" in err.expected
    assert err.context.splitlines()[1].index("^") == 37


def test_json_plan_that_ends_early_says_so() -> None:
    [err] = _errors('[{"name": "f", "arguments": {')
    assert "ends too early" in err.message and err.line == 1


def test_undefined_reference_carries_pointer_line_and_column() -> None:
    [err] = _errors('[{"name": "f", "label": "var1"},\n {"name": "g", "arguments": {"a": "$var3.x$"}, "label": "var2"}]')
    assert isinstance(err, PlanReferenceError)
    column = ' {"name": "g", "arguments": {"a": "$'.index("$") + 1
    assert (err.pointer, err.line, err.column) == ("/1/arguments/a", 2, column)
    assert str(err).startswith(f"line 2, column {column} (/1/arguments/a): undefined reference `var3`")


def test_unknown_key_suggests_the_right_one_with_a_pointer() -> None:
    errors = _errors('[{"name": "f", "arguments": {}, "lable": "var1"}]')
    assert [e.pointer for e in errors] == ["/0", "/0/lable"]
    assert "did you mean 'label'?" in errors[1].message


def test_forward_and_duplicate_labels_are_reported() -> None:
    errors = _errors('[{"name": "f", "arguments": {"a": "$var2$"}, "label": "var1"},'
                     ' {"name": "g", "label": "var2"}, {"name": "h", "label": "var2"}]')
    kinds = sorted(e.kind for e in errors)
    assert kinds == ["duplicate_id", "reference"]


def test_var_result_must_come_last() -> None:
    [err] = _errors('[{"name": "var_result", "arguments": {}}, {"name": "f", "label": "var1"}]')
    assert err.pointer == "/0" and "last" in err.message


def test_answer_must_refer_to_calls() -> None:
    [err] = _errors('{"calls": [{"id": "s1", "function": "f"}], "answer": {"ref": "s9"}}')
    assert isinstance(err, PlanReferenceError) and err.pointer == "/answer"


@pytest.mark.parametrize("text, pointer", [
    ('{"calls": [{"id": "s1", "function": "f", "args": [{"ref": "s0"}]}]}', "/calls/0/args/0"),
    ('{"calls": [{"id": "s1", "function": "f", "args": {"a": 1}}]}', "/calls/0/args"),
    ('{"calls": [{"id": "s 1", "function": "f"}]}', "/calls/0/id"),
    ('{"calls": [{"id": "s1", "function": "f", "args": [{"op": "%", "left": 1, "right": 2}]}]}',
     "/calls/0/args/0/op"),
    ('{"calls": [{"id": "s1", "function": "f", "args": [{"ref": "s1", "path": [1.5]}]}]}',
     "/calls/0/args/0/path/0"),
    ('{"calls": [{"id": "s1"}]}', "/calls/0"),
    ('{"cals": []}', "/cals"),
    ('[1]', "/0"),
])
def test_json_form_errors_point_at_the_value(text: str, pointer: str) -> None:
    assert pointer in [e.pointer for e in _errors(text)]


def test_an_empty_json_plan_is_an_empty_plan_error() -> None:
    assert isinstance(_errors("[]")[0], EmptyPlanError)


class Airport(BaseModel):
    skyId: str
    entityId: str


@inout
def search_airport(query: str) -> Airport:
    raise NotImplementedError


@inout
def search_flights(originSkyId: str, date: str = "") -> list[str]:
    raise NotImplementedError


TOOLS = Toolbox(search_airport, search_flights)


def test_toolbox_errors_in_a_json_plan_point_at_the_call() -> None:
    errors = _errors('[{"name": "search_airport", "arguments": {"query": "a"}, "label": "var1"},\n'
                     ' {"name": "search_flight", "arguments": {"originSkyId": "$var1.skyId$"}, "label": "var2"},\n'
                     ' {"name": "search_flights", "arguments": {"origin": "x"}, "label": "var3"}]', TOOLS)
    assert [(type(e), e.pointer, e.line) for e in errors] == [
        (UnknownFunctionError, "/1", 2), (ArgumentError, "/2", 3)]
    assert "did you mean `search_flights`?" in errors[0].message


def test_field_error_in_a_json_plan_has_pointer_line_and_column() -> None:
    [err] = _errors('[{"name": "search_airport", "arguments": {"query": "a"}, "label": "var1"},\n'
                    ' {"name": "search_flights", "arguments": {"originSkyId": "$var1.skyid$"}, "label": "var2"}]',
                    TOOLS)
    assert isinstance(err, FieldError)
    column = ' {"name": "search_flights", "arguments": {"originSkyId": "$var1'.index("$") + 1
    assert (err.pointer, err.line, err.column) == ("/1/arguments/originSkyId", 2, column)
    assert "has no field 'skyid' (did you mean 'skyId'?); it has: skyId, entityId" in err.message


def test_a_good_json_plan_checks_against_the_toolbox() -> None:
    plan = parse('[{"name": "search_airport", "arguments": {"query": "a"}, "label": "var1"},'
                 ' {"name": "search_flights", "arguments": {"originSkyId": "$var1.skyId$"}, "label": "var2"},'
                 ' {"name": "var_result", "arguments": {"flights": "$var2$"}}]', TOOLS)
    assert plan["var2"].deps == {"var1"}


# --------------------------------------------------------------------------- render


def test_render_nestful_writes_the_benchmark_form_back() -> None:
    text = (PLANS / "nestful_flights.json").read_text()
    plan = parse(text)
    assert json.loads(render(plan, "nestful")) == json.loads(text)
    assert parse(plan.to_text("nestful")) == plan
    assert parse(plan.to_text("json")) == plan


def test_render_json_one_call_per_line() -> None:
    plan = parse('s1: f("a", k=1)\ns2: g(s1.x, t="{s1[0]}!")')
    assert plan.to_text("json") == (
        '{"calls": [\n'
        '  {"id": "s1", "function": "f", "args": ["a"], "kwargs": {"k": 1}},\n'
        '  {"id": "s2", "function": "g", "args": [{"ref": "s1", "path": ["x"]}], '
        '"kwargs": {"t": {"template": [{"ref": "s1", "path": [0]}, "!"]}}}\n'
        "]}")


def test_numeric_ids_become_var_labels_in_nestful() -> None:
    plan = parse("1. f(q='a')\n2. g(x=$1.id)")
    back = parse(plan.to_text("nestful"))
    assert back.ids == ("var1", "var2") and back["var2"].keywords["x"] == Ref("var1", path=("id",))


@pytest.mark.parametrize("text, match", [
    ('s1: f("positional")', "positional"),
    ("s1: f(x=1 + 2)", "arithmetic"),
    ('s1: f(x="$var1$ as text")', "would read as a reference"),
    ('s1: f()\ns2: g(x="a$b{s1}")', "would not read back"),
])
def test_nestful_refuses_what_it_cannot_write(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        render(parse(text), "nestful")


def test_the_text_dialects_drop_the_answer() -> None:
    plan = parse((PLANS / "nestful_flights.json").read_text())
    back = parse(plan.to_text("paper"))
    assert back.calls == plan.calls and back.answer is None


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("name", ["nestful_flights.json", "nestful_exchange.json"])
def test_stream_returns_each_call_when_its_object_closes(name: str) -> None:
    text = (PLANS / name).read_text()
    plan = parse(text)
    stream = PlanStream()
    seen: list[tuple[int, str]] = []
    for i, ch in enumerate(text):
        seen += [(i, c.id) for c in stream.feed(ch)]
    assert [c for _, c in seen] == list(plan.ids)
    for (at, call_id) in seen:
        index = plan.ids.index(call_id)
        # the call is returned at the `}` that closes its object
        assert text[at] == "}" and text[: at + 1].count('"label"') == index + 1
    assert stream.close() == plan


def test_stream_of_the_json_form_with_braces_inside_strings() -> None:
    text = ('{"calls": [\n  {"id": "s1", "function": "f", "args": ["} ] { [ \\" \\\\"]},\n'
            '  {"id": "s2", "function": "g", "args": [{"ref": "s1"}]}\n], "answer": {"ref": "s2"}}')
    stream = PlanStream()
    got = [[c.id for c in stream.feed(text[i:i + 3])] for i in range(0, len(text), 3)]
    assert [x for x in got if x] == [["s1"], ["s2"]]
    assert stream.close().answer == Ref("s2")


def test_stream_stops_at_an_error_and_close_raises_it() -> None:
    stream = PlanStream(TOOLS)
    calls = stream.feed('[{"name": "search_airport", "arguments": {"query": "a"}, "label": "var1"},'
                        ' {"name": "nope", "arguments": {}, "label": "var2"},'
                        ' {"name": "search_flights", "arguments": {"originSkyId": "x"}, "label": "var3"}]')
    assert [c.id for c in calls] == ["var1"]
    with pytest.raises(UnknownFunctionError):
        stream.close()


# --------------------------------------------------------------------------- round trips

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="$"), max_size=8)
_key = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters=".[]$"),
               min_size=1, max_size=6)
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-10**9, 10**9),
                    st.floats(allow_nan=False, allow_infinity=False), _text)


def _nestful_exprs(ids: list[str]):  # type: ignore[no-untyped-def]
    leaves = [_scalar.map(Literal)]
    if ids:
        ref = st.builds(lambda i, p: Ref(i, path=tuple(p)), st.sampled_from(ids),
                        st.lists(st.one_of(_key, st.integers(-2, 9)), max_size=3))
        text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="$"),
                       min_size=1, max_size=5)
        template = st.tuples(text, ref, text).map(lambda t: Template(t))
        leaves += [ref, template]
    return st.recursive(st.one_of(*leaves), lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda xs: ListExpr(tuple(xs))),
        st.dictionaries(_key, inner, max_size=3).map(lambda d: DictExpr(tuple(d.items()))),
    ), max_leaves=5)


@st.composite
def nestful_plans(draw) -> Plan:  # type: ignore[no-untyped-def]
    n = draw(st.integers(1, 4))
    ids = [f"var{i}" for i in range(1, n + 1)]
    calls = []
    for i, cid in enumerate(ids):
        names = draw(st.lists(st.from_regex(r"[a-z][a-zA-Z]{0,5}", fullmatch=True), max_size=3, unique=True))
        args = tuple(Arg(k, draw(_nestful_exprs(ids[:i]))) for k in names)
        calls.append(Call(cid, draw(st.sampled_from(["search", "Sky:lookup", "f_1"])), args))
    answer = draw(st.one_of(st.none(), st.lists(st.sampled_from(ids), min_size=1, max_size=2, unique=True).map(
        lambda xs: DictExpr(tuple((f"r{j}", Ref(x)) for j, x in enumerate(xs))))))
    return Plan(tuple(calls), "nestful", answer)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=nestful_plans())
def test_nestful_and_json_round_trips(plan: Plan) -> None:
    back = parse(render(plan, "nestful"))
    assert back == plan and back.dialect == "nestful"
    assert parse(render(plan, "json")) == plan


def test_repairs_show_json_plans_as_paper_text_or_json_when_text_cannot_write_them() -> None:
    from prefect_llmorch.llm.repair import call_text, plan_text

    plan = parse((PLANS / "nestful_flights.json").read_text())
    assert plan_text(plan).splitlines()[2].startswith("var3: SkyScrapperFlightSearch(originSkyId=var1.skyId")
    odd = parse('[{"name": "Sky:search", "arguments": {"q": "a"}, "label": "var1"}]')
    assert json.loads(call_text(odd.calls[0]))["calls"][0]["function"] == "Sky:search"
    assert plan_text(parse("1. f()\n2. g($1.x)")).startswith("1. f()")  # text plans keep their dialect
