"""Render: both dialects, renumbering, escaping; parse(render(p, d)) == p (hypothesis)."""

from __future__ import annotations

import keyword

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefect_llmorch.plan.model import Arg, BinOp, Call, DictExpr, ListExpr, Literal, Plan, Ref, Template
from prefect_llmorch.plan.parser import parse
from prefect_llmorch.plan.render import render

FIG2 = """s1: search(query="Apple stock")
s2: search("Microsoft stock")
s3: python("cmp.py", args=[s1, s2])
s4: chatbot("Summarize {s3}")"""


def test_paper_render_of_fig2_is_the_figure() -> None:
    assert render(parse(FIG2), "paper") == FIG2


def test_llmcompiler_render_renumbers_paper_ids_consistently_and_adds_join() -> None:
    text = render(parse(FIG2), "llmcompiler")
    assert text == (
        '1. search(query="Apple stock")\n2. search("Microsoft stock")\n'
        '3. python("cmp.py", args=[$1, $2])\n4. chatbot("Summarize $3")\n'
        "5. join()<END_OF_PLAN>"
    )
    assert [sorted(c.deps) for c in parse(text)] == [[], [], ["1", "2"], ["3"]]


def test_llmcompiler_ids_are_kept_when_numeric() -> None:
    plan = parse("2. f(1)\n7. g($2)")
    assert render(plan, "llmcompiler") == "2. f(1)\n7. g($2)\n8. join()<END_OF_PLAN>"


def test_plan_to_text_uses_render() -> None:
    plan = parse(FIG2)
    assert plan.to_text() == FIG2
    assert parse(plan.to_text("llmcompiler")).dialect == "llmcompiler"


@pytest.mark.parametrize("text", [
    "{s1} and ${s2} and $3 and {} and {\"a\": 1}", "back\\slash \"quote\" 'single'\nnew\tline",
    "$", "{", "}", "${", "\x00\x1f\x7f", "é ☃ 𝄞",
])
@pytest.mark.parametrize("dialect", ["paper", "llmcompiler"])
def test_text_that_looks_like_a_reference_is_escaped(text: str, dialect: str) -> None:
    plan = Plan((Call("1" if dialect == "llmcompiler" else "s1", "f", (Arg(None, Literal(text)),)),))
    assert parse(render(plan, dialect)) == plan  # type: ignore[arg-type]


def test_template_text_next_to_a_reference_is_escaped() -> None:
    plan = Plan((Call("s1", "f"), Call("s2", "g", (Arg(None, Template(("$", Ref("s1"), "0"))),))))
    for dialect in ("paper", "llmcompiler"):
        back = parse(render(plan, dialect))  # type: ignore[arg-type]
        assert back.calls[1].args[0].value.parts[0] == "$"
        assert back.calls[1].args[0].value.parts[2] == "0"


def test_nested_arithmetic_keeps_its_shape() -> None:
    expr = BinOp("-", Literal(1), BinOp("-", Literal(2), Literal(-3)))
    plan = Plan((Call("s1", "f", (Arg(None, expr),)),))
    assert render(plan, "paper") == "s1: f(1 - (2 - -3))"
    assert parse(render(plan, "paper")) == plan


def test_unknown_dialect_is_refused() -> None:
    with pytest.raises(ValueError, match="dialect"):
        render(parse(FIG2), "yaml")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- round trip

RESERVED = {"true", "false", "null", "True", "False", "None", "join", "Thought", "thought"}
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True).filter(
    lambda n: n not in RESERVED and not keyword.iskeyword(n))
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
)


# Field names: anything a reference inside a (double-quoted) string can hold: no backslash,
# newline or double quote (render refuses those with ValueError).
field_names = st.one_of(names, st.text(max_size=6)).filter(
    lambda k: "\\" not in k and "\n" not in k and '"' not in k)
paths = st.lists(st.one_of(st.integers(-3, 12), field_names), max_size=3).map(tuple)


def refs_to(ids: list[str]):
    return st.builds(lambda i, p: Ref(i, path=p), st.sampled_from(ids), paths)


def _template(ids: list[str]):
    text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=6)
    ref = refs_to(ids)

    def build(items: list) -> Template:
        parts: list = []
        for item in items:
            if isinstance(item, str) and parts and isinstance(parts[-1], str):
                parts[-1] += item
            else:
                parts.append(item)
        return Template(tuple(parts))

    return st.lists(st.one_of(text, ref), min_size=2, max_size=5).map(build).filter(
        lambda t: any(isinstance(p, Ref) for p in t.parts))


def exprs(ids: list[str]):
    leaves = [scalars.map(Literal)]
    if ids:
        leaves += [refs_to(ids), _template(ids)]
    return st.recursive(
        st.one_of(*leaves),
        lambda inner: st.one_of(
            st.lists(inner, max_size=3).map(lambda xs: ListExpr(tuple(xs))),
            st.lists(st.tuples(st.one_of(st.text(max_size=5), st.integers(-5, 5)), inner),
                     max_size=3).map(lambda kv: DictExpr(tuple(kv))),
            st.tuples(st.sampled_from("+-*/"), inner, inner).map(lambda t: BinOp(*t)),
        ),
        max_leaves=6,
    )


@st.composite
def plans(draw, dialect: str) -> Plan:
    n = draw(st.integers(1, 5))
    if dialect == "paper":
        ids = draw(st.lists(names, min_size=n, max_size=n, unique=True))
    else:
        ids = [str(i) for i in range(1, n + 1)]
    calls = []
    for i, call_id in enumerate(ids):
        positional = draw(st.lists(exprs(ids[:i]), max_size=3))
        kw_names = draw(st.lists(names, max_size=2, unique=True))
        args = [Arg(None, e) for e in positional] + [Arg(k, draw(exprs(ids[:i]))) for k in kw_names]
        calls.append(Call(call_id, draw(names), tuple(args)))
    return Plan(tuple(calls), dialect)  # type: ignore[arg-type]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans("paper"))
def test_paper_round_trip(plan: Plan) -> None:
    assert parse(render(plan, "paper")) == plan


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans("llmcompiler"))
def test_llmcompiler_round_trip(plan: Plan) -> None:
    text = render(plan, "llmcompiler")
    back = parse(text)
    assert back == plan and back.dialect == "llmcompiler"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans("paper"))
def test_paper_plan_rendered_as_llmcompiler_keeps_its_graph(plan: Plan) -> None:
    back = parse(render(plan, "llmcompiler"))
    number = {c.id: str(i) for i, c in enumerate(plan.calls, 1)}
    assert [c.function for c in back] == [c.function for c in plan]
    assert [c.deps for c in back] == [frozenset(number[d] for d in c.deps) for c in plan]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans("paper"))
def test_json_round_trip_and_back_to_text(plan: Plan) -> None:
    back = parse(render(plan, "json"))
    assert back == plan and back.dialect == "json"
    assert parse(render(back, "paper")) == plan


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans("llmcompiler"))
def test_llmcompiler_text_to_json_and_back(plan: Plan) -> None:
    text = render(plan, "llmcompiler")
    assert parse(render(parse(text), "json")) == plan
    assert parse(render(parse(render(parse(text), "json")), "llmcompiler")) == plan


def test_field_access_renders_in_both_text_dialects() -> None:
    plan = parse('s1: f()\ns2: g(s1.data[0]["Exchange Rate"], t="{s1.name} and {s1[\'a b\']}")')
    assert render(plan, "paper") == (
        's1: f()\ns2: g(s1.data[0]["Exchange Rate"], t="{s1.name} and {s1[\'a b\']}")')
    assert render(plan, "llmcompiler") == (
        '1. f()\n2. g($1.data[0]["Exchange Rate"], t="${1.name} and ${1[\'a b\']}")\n'
        "3. join()<END_OF_PLAN>")


def test_a_reference_followed_by_step_like_text_is_braced_in_llmcompiler() -> None:
    plan = Plan((Call("1", "f"), Call("2", "g", (Arg(None, Template((Ref("1"), ".txt"))),))))
    assert render(plan, "llmcompiler").splitlines()[1] == '2. g("${1}.txt")'
    assert parse(render(plan, "llmcompiler")) == plan


@pytest.mark.parametrize("key", ["a'\"", '"', "back\\slash"])
def test_a_field_name_a_string_cannot_hold_is_refused_inside_a_string(key: str) -> None:
    plan = Plan((Call("s1", "f"), Call("s2", "g", (Arg(None, Template(("x", Ref("s1", path=(key,))))),))))
    with pytest.raises(ValueError, match="no written form inside a string"):
        render(plan, "paper")
    assert parse(render(plan, "json")) == plan


def test_function_names_the_text_dialects_cannot_write_are_refused() -> None:
    plan = parse('[{"name": "Sky:search", "arguments": {}, "label": "var1"}]')
    with pytest.raises(ValueError, match="json"):
        render(plan, "paper")
