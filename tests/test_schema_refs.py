"""The plan schema forbids the references the plan-time type check forbids, as far as a JSON
schema can say it (per parameter, not per call: see `plan.schema._References`), and never
refuses a plan the check accepts."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import sys
from pathlib import Path
from typing import Any, Literal as Lit, TypedDict

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from prefect_llmorch.functions import FunctionSpec, Toolbox
from prefect_llmorch.plan.errors import PlanError
from prefect_llmorch.plan.model import Arg, Call, DictExpr, Expr, ListExpr, Literal, Plan, Ref, Template
from prefect_llmorch.plan.parser import parse
from prefect_llmorch.plan.schema import plan_schema


class Joke(TypedDict):
    joke: str
    id: int


class Quote(BaseModel):
    symbol: str
    price: float
    tags: list[str]


@dataclasses.dataclass
class Trip:
    distance: float
    stops: list[Joke]
    extra: Any


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str


_EMPTY = inspect.Parameter.empty


def spec(name: str, params: dict[str, Any], result: Any = _EMPTY, required: bool = True) -> FunctionSpec:
    """A toolbox function from types alone (never called): how benchmarks/nestful.py builds
    its toolboxes."""
    def fn(*args: Any, **kwargs: Any) -> Any:  # pragma: no cover - plans are only checked
        raise NotImplementedError

    fn.__annotations__ = {} if result is _EMPTY else {"return": result}
    fn.__name__ = name
    parameters = [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=tp,
                                    default=_EMPTY if required else None)
                  for p, tp in params.items()]
    return FunctionSpec(name=name, kind="inout", fn=fn,
                        _signature=inspect.Signature(parameters, return_annotation=result))


def validator(toolbox: Toolbox) -> jsonschema.Draft202012Validator:
    schema = plan_schema(toolbox)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def doc(*calls: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    return {"calls": [{"id": i, "function": f, "kwargs": kw} for i, f, kw in calls]}


JOKE = spec("get_random_joke", {}, Joke)
SMS = spec("send_sms", {"phone": str, "message": str}, TypedDict("SmsStatus", {"sms_status": str}))  # type: ignore[operator]
TOTAL = spec("total", {"values": list[float]}, TypedDict("Sum", {"sum": float}))  # type: ignore[operator]
QUOTE = spec("quote", {"symbol": str}, Quote)


# -- what the schema refuses, and what it still admits ------------------------------------


def test_a_whole_typeddict_result_where_text_is_wanted_is_refused_a_field_that_fits_is_not() -> None:
    v = validator(Toolbox(JOKE, SMS))
    joke = ("s1", "get_random_joke", {})

    def sms(message: Any) -> dict[str, Any]:
        return doc(joke, ("s2", "send_sms", {"phone": "555", "message": message}))

    assert not v.is_valid(sms({"ref": "s1"}))  # the glaive mistake: the plan check refuses it too
    assert not v.is_valid(sms({"ref": "s1", "path": []}))
    assert v.is_valid(sms({"ref": "s1", "path": ["joke"]}))
    assert v.is_valid(sms({"ref": "s1", "path": ["sms_status"]}))  # a str field of another result
    assert not v.is_valid(sms({"ref": "s1", "path": ["id"]}))  # an int is never valid text
    assert not v.is_valid(sms({"ref": "s1", "path": ["jokes"]}))  # no result has that field
    assert not v.is_valid(sms({"ref": "s1", "path": ["joke", "x"]}))  # a str has no fields
    # text around a whole result, and a whole `self` result written as a one-part template
    assert v.is_valid(sms({"template": ["Joke: ", {"ref": "s1"}]}))
    assert v.is_valid(sms({"template": [{"ref": "s1"}]}))
    for refused in (sms({"ref": "s1"}), sms({"ref": "s1", "path": ["id"]})):
        with pytest.raises(PlanError):
            parse(json.dumps(refused), Toolbox(JOKE, SMS))


def test_a_whole_result_passes_where_some_function_s_result_can_fit() -> None:
    message = doc(("s1", "get_random_joke", {}), ("s2", "send_sms", {"phone": "1", "message": {"ref": "s1"}}))
    for other in (spec("echo", {"text": str}, str),  # a str result fits text
                  spec("count", {"text": str}, int),  # an int does not, but the check lets "42"-like
                  spec("untyped", {"text": str})):  # no declared result: the check does not judge it
        fits = other.name != "count"
        assert validator(Toolbox(JOKE, SMS, other)).is_valid(message) is fits, other.name


def test_list_items_are_judged_against_the_element_type() -> None:
    v = validator(Toolbox(QUOTE, TOTAL))
    quotes = [("s1", "quote", {"symbol": "A"}), ("s2", "quote", {"symbol": "B"})]
    fields = [{"ref": "s1", "path": ["price"]}, {"ref": "s2", "path": ["price"]}]
    assert v.is_valid(doc(*quotes, ("s3", "total", {"values": fields})))
    assert not v.is_valid(doc(*quotes, ("s3", "total", {"values": [{"ref": "s1"}, {"ref": "s2"}]})))
    assert not v.is_valid(doc(*quotes, ("s3", "total", {"values": [{"ref": "s1", "path": ["tags"]}]})))
    assert v.is_valid(doc(*quotes, ("s3", "total", {"values": [{"ref": "s1", "path": ["symbol"]}]})))  # "42" is a float
    # with a function that returns a float, a whole result may be an item (s3 could be a mean)
    mean = spec("mean", {"values": list[float]}, float)
    assert validator(Toolbox(QUOTE, TOTAL, mean)).is_valid(doc(*quotes, ("s3", "total", {"values": [{"ref": "s1"}]})))


def test_a_list_of_results_is_indexed_then_selected() -> None:
    search = spec("search", {"q": str}, list[Joke])
    v = validator(Toolbox(search, SMS))
    def message(path: list[Any]) -> dict[str, Any]:
        return doc(("s1", "search", {"q": "x"}), ("s2", "send_sms", {"phone": "1", "message": {"ref": "s1", "path": path}}))
    assert v.is_valid(message([0, "joke"]))
    assert not v.is_valid(message([]))
    parse(json.dumps(message([0, "joke"])), Toolbox(search, SMS))


def test_a_mapping_result_is_indexed_by_any_key_zero_included() -> None:
    by_symbol = spec("by_symbol", {"q": str}, dict[str, Quote])
    first = spec("first", {"quotes": list[Quote]}, int)
    plan = doc(("s1", "by_symbol", {"q": "x"}), ("s2", "first", {"quotes": {"ref": "s1", "path": [0]}}))
    parse(json.dumps(plan), Toolbox(by_symbol, first))  # the check looks up the key 0: a Quote is iterable
    assert validator(Toolbox(by_symbol, first)).is_valid(plan)


def test_the_schema_stays_small_when_nothing_is_restricted() -> None:
    """No declared results (BFCL's toolboxes, MCP tools): the schema is what it was, one
    generic reference."""
    schema = plan_schema(Toolbox(spec("a", {"x": str}), spec("b", {"y": list[int]})))
    assert sorted(schema["$defs"]) == ["ref", "template"]


# -- never refuses a plan the check accepts -----------------------------------------------

RESULTS: list[Any] = [Joke, Quote, Trip, Open, list[Joke], Joke | None, Joke | Quote, dict[str, Quote],
                      tuple[int, str], str, int, float, bool, list[float], type(None), Any, _EMPTY]
PARAMS: list[Any] = [str, int, float, bool, list[float], list[str], dict[str, float], Joke, Quote,
                     Quote | None, int | str, Lit["a", "b"], Any, _EMPTY, list[Joke], tuple[int, str],
                     dict[str, list[float]], list[Quote]]
LITERALS: dict[int, Expr] = {}  # index in PARAMS -> a literal the type takes (built below)


def _literal_for(tp: Any) -> Expr:
    table: list[tuple[Any, Expr]] = [
        (str, Literal("x")), (int, Literal(3)), (float, Literal(2.5)), (bool, Literal(True)),
        (list[float], ListExpr((Literal(1.5),))), (list[str], ListExpr((Literal("a"),))),
        (dict[str, float], DictExpr((("k", Literal(1.5)),))),
        (Joke, DictExpr((("joke", Literal("j")), ("id", Literal(1))))),
        (Quote, DictExpr((("symbol", Literal("A")), ("price", Literal(1.0)), ("tags", ListExpr(()))))),
        (Quote | None, Literal(None)), (int | str, Literal(3)), (Lit["a", "b"], Literal("a")),
        (list[Joke], ListExpr(())), (tuple[int, str], ListExpr((Literal(1), Literal("a")))),
        (dict[str, list[float]], DictExpr((("k", ListExpr((Literal(1.0),))),))), (list[Quote], ListExpr(())),
    ]
    for t, expr in table:
        if t == tp:
            return expr
    return Literal("x")


PATHS: list[tuple[Any, ...]] = [
    (), ("joke",), ("id",), ("symbol",), ("price",), ("tags",), ("tags", 0), ("distance",), ("stops", 0, "joke"),
    ("stops",), ("extra", "x"), ("name",), ("other",), (0,), (0, "joke"), (1,), ("k",), ("k", "price"),
    ("nosuch",), ("joke", "x"),
]


@st.composite
def toolbox_and_plan(draw: st.DrawFn) -> tuple[Toolbox, Plan, set[str]]:
    n_functions = draw(st.integers(1, 4))
    specs = []
    for f in range(n_functions):
        n_params = draw(st.integers(1, 3))
        params = {f"p{k}": draw(st.sampled_from(PARAMS)) for k in range(n_params)}
        specs.append(spec(f"f{f}", params, draw(st.sampled_from(RESULTS)), required=draw(st.booleans())))
    toolbox = Toolbox(*specs)
    calls: list[Call] = []
    selves: set[str] = set()

    def value(tp: Any, ids: list[str]) -> Expr:
        kind = draw(st.sampled_from(["literal", "ref", "ref", "ref", "list", "dict", "template"]))
        if kind in ("list", "dict") and not _takes(tp, kind):
            kind = "ref"  # a list or dict holding references is not type-checked at plan time (see the docs)
        if not ids or kind == "literal":
            return _literal_for(tp)
        ref = Ref(draw(st.sampled_from(ids)), path=draw(st.sampled_from(PATHS)))
        if kind == "list":
            return ListExpr((ref, Ref(draw(st.sampled_from(ids)), path=draw(st.sampled_from(PATHS)))))
        if kind == "dict":  # one item a reference, the others literals of their declared types
            from prefect_llmorch.plan.ref_types import _members

            base = next((b for b in map(_literal_for, _members(tp) or [tp]) if isinstance(b, DictExpr)), None)
            if base is not None and base.items:
                return DictExpr(((base.items[0][0], ref),) + base.items[1:])
            return DictExpr((("k", ref),))
        if kind == "template":
            return Template(("Say ", ref))
        return ref

    for i in range(1, draw(st.integers(1, 5)) + 1):
        ids = [c.id for c in calls]
        if draw(st.integers(0, 4)) == 0:
            selves.add(f"s{i}")
            prompt = Template(("Summarize ", Ref(ids[-1]))) if ids else Literal("hi")
            calls.append(Call(f"s{i}", "self", (Arg("prompt", prompt),)))
            continue
        s = draw(st.sampled_from(specs))
        args = tuple(Arg(name, value(p.annotation, ids)) for name, p in s.signature.parameters.items()
                     if p.default is _EMPTY or draw(st.booleans()))
        calls.append(Call(f"s{i}", s.name, args))
    return toolbox, Plan(tuple(calls), "json"), selves


def _takes(tp: Any, container: str) -> bool:
    """Whether a parameter of type `tp` can take a list ("list") or an object ("dict")."""
    from prefect_llmorch.plan.ref_types import _kind, _members

    kinds = {_kind(m) for m in (_members(tp) or [tp])} if tp is not _EMPTY else {"any"}
    return "any" in kinds or bool(kinds & ({"list"} if container == "list" else {"mapping", "struct"}))


def _self_spelling(node: Any, selves: set[str]) -> Any:
    """A whole `self` result written as a one-reference template (the same plan: the JSON
    form reads `{"template": [{"ref": "s2"}]}` as `s2`)."""
    if isinstance(node, list):
        return [_self_spelling(x, selves) for x in node]
    if isinstance(node, dict):
        if set(node) == {"ref"} and node["ref"] in selves:
            return {"template": [node]}
        if set(node) == {"template"}:
            return node
        return {k: _self_spelling(v, selves) for k, v in node.items()}
    return node


ACCEPTED = {"plans": 0, "refs": 0}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(toolbox_and_plan())
def test_every_plan_the_check_accepts_fits_the_schema(case: tuple[Toolbox, Plan, set[str]]) -> None:
    toolbox, plan, selves = case
    text = plan.to_text("json")
    try:
        checked = parse(text, toolbox)
    except PlanError:
        return  # refused at plan time: the schema may refuse it too
    if any(r.path and r.id in selves for c in checked for a in c.args for r in _refs(a.value)):
        return  # a field of `self`'s text: not checked at plan time, fails at run time (see the docs)
    ACCEPTED["plans"] += 1
    ACCEPTED["refs"] += sum(1 for c in checked for a in c.args for _ in _refs(a.value))
    v = validator(toolbox)
    written = _self_spelling(json.loads(text), selves)
    errors = [e.message[:300] for e in v.iter_errors(written)]
    assert not errors, (text, errors, {n: str(s.signature) for n, s in toolbox.items()})


def _refs(expr: Expr) -> list[Ref]:
    from prefect_llmorch.plan.model import refs

    return list(refs(expr))


def test_the_generated_plans_the_check_accepts_do_use_references() -> None:
    """The property above is not vacuous: run after it (same module, file order), it saw
    accepted plans with references."""
    if ACCEPTED["plans"] == 0:
        pytest.skip("run with the property test above")
    assert ACCEPTED["plans"] >= 50 and ACCEPTED["refs"] >= 50, ACCEPTED


BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.skipif(importlib.util.find_spec("data_v1") is None,
                    reason="nestful-wrapper is not installed (pip install --no-deps nestful-wrapper==0.1.7)")
@pytest.mark.parametrize("source", ["glaive", "sgd"])
def test_every_nestful_gold_fits_its_toolbox_s_schema(source: str) -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import nestful
    finally:
        sys.path.remove(str(BENCHMARKS))
    questions, catalog = nestful.load(source, 10_000)
    restricted = lenient = 0
    for index, _sample, gold in questions:
        toolbox = nestful.toolbox_of(nestful.offered(gold, catalog, index))
        if _container_where_none_goes(gold, toolbox):
            lenient += 1  # `attendees=[$var1.contact_id$]` for a str: see `_takes`
            continue
        schema = plan_schema(toolbox)
        restricted += any(name.startswith("ref_with_path") for name in schema["$defs"])
        written = json.loads(Plan(tuple(_as_declared(c, toolbox) for c in gold.calls), "json").to_text("json"))
        parse(json.dumps(written), toolbox)  # the check accepts it
        errors = [e.message[:200] for e in jsonschema.Draft202012Validator(schema).iter_errors(written)]
        assert not errors, (f"{source}_{index}", errors)
    print(source, len(questions), "golds,", lenient, "with a container the type does not take,", restricted, "restricted")
    assert len(questions) - lenient > 30 and restricted > len(questions) // 2 and lenient < 5, lenient


def _container_where_none_goes(plan: Plan, toolbox: Toolbox) -> bool:
    for call in plan.calls:
        params = toolbox[call.function].signature.parameters
        for arg in call.args:
            if isinstance(arg.value, (ListExpr, DictExpr)) and _refs(arg.value) and arg.name in params:
                if not _takes(params[arg.name].annotation, "list" if isinstance(arg.value, ListExpr) else "dict"):
                    return True
    return False


def _as_declared(call: Call, toolbox: Toolbox) -> Call:
    """`call` with its literal arguments as their declared types make them (sgd and glaive
    write `"2010"` for an int: the check takes it, as pydantic's lax mode does, the schema
    asks for the JSON type; that is about literals, not what this file tests)."""
    from pydantic import TypeAdapter

    params = toolbox[call.function].signature.parameters
    args = []
    for arg in call.args:
        value = arg.value
        if isinstance(value, Literal) and arg.name in params and params[arg.name].annotation is not _EMPTY:
            adapter = TypeAdapter(params[arg.name].annotation)
            value = Literal(adapter.dump_python(adapter.validate_python(value.value), mode="json"))
        args.append(Arg(arg.name, value))
    return Call(call.id, call.function, tuple(args))
