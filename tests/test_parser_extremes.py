"""Parser extremes (issue 13): long literal lists, thousands of errors, long flat operator
chains, deep nesting, huge templates. Sizes are bounded so this stays fast; the checks are
invariants (shapes, counts, round trips), never timings."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefect_llmorch.plan.common import Pos, context, line_text
from prefect_llmorch.plan.errors import MAX_REPORTED, PlanError, PlanErrors, PlanReferenceError, PlanSyntaxError
from prefect_llmorch.plan.evaluate import evaluate
from prefect_llmorch.plan.model import Arg, Call, DictExpr, ListExpr, Literal, Plan, Ref, Template, chain
from prefect_llmorch.plan.parser import MAX_NESTING, _PARSER, parse
from prefect_llmorch.plan.render import render


# --------------------------------------------------------------------------- literal lists


def test_long_literal_list_is_one_token_and_parses_to_its_items() -> None:
    items = [str(i) for i in range(20_000)] + ["1.5", "-3", "2e3", "true", "None", '"a b"', "'c'"]
    text = f"s1: f([{', '.join(items)}])\n"
    tree = _PARSER.parse(text)
    assert [t.data for t in tree.iter_subtrees()].count("literal_list") == 1
    assert [t.data for t in tree.iter_subtrees()].count("number") == 0  # no per-item parser work
    value = parse(text)["s1"].args[0].value
    assert isinstance(value, ListExpr) and len(value.items) == len(items)
    assert value.items[:3] == (Literal(0), Literal(1), Literal(2))
    assert value.items[-7:] == (Literal(1.5), Literal(-3), Literal(2000.0), Literal(True),
                                Literal(None), Literal("a b"), Literal("c"))
    assert [type(x.value) for x in value.items[-7:-3]] == [float, int, float, bool]


_ITEM = st.one_of(
    st.integers(-10**12, 10**12).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["true", "True", "false", "False", "null", "None", "1e999", "-0.0", "007"]),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=8).map(lambda s: '"' + s.replace("\\", "").replace('"', "") + '"'),
    st.text(max_size=5).map(lambda s: "'" + s.replace("\\", "").replace("'", "") + "'"),
    st.sampled_from(['"a{s0}"', '"$1"', '"x\\ny"', "s0", "s0[0]", "[1, 2]", "-1", "- 1", "1 + 2"]),
)
_SEP = st.sampled_from([",", ", ", " ,\n  ", ",  # note, 5\n", ",\t"])


def _fast_and_general(plain: str, forced: str) -> tuple[Any, Any] | None:
    """s1's first argument parsed from `plain` (a plain literal: the one-token path) and from
    `forced` (the same with a reference added: the general rule); None when `plain` is not a
    plan, after checking that `forced` is not one either."""
    try:
        fast = parse(plain)["s1"].args[0].value
    except PlanError:
        with pytest.raises(PlanError):
            parse(forced)
        return None
    return fast, parse(forced)["s1"].args[0].value


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_ITEM, _SEP), max_size=12), st.booleans())
def test_literal_list_fast_path_reads_like_the_general_rule(items: list[tuple[str, str]], trailing: bool) -> None:
    """The same items parsed as a plain list and with a reference appended (which forces
    the general `[ ... ]` rule) give the same values."""
    body = "".join(item + sep for item, sep in items)
    if items and not trailing:
        body = body[: len(body) - len(items[-1][1])]
    both = _fast_and_general(
        f's0: g()\ns1: f([{body}])\n', f's0: g()\ns1: f([{body}{"" if not items or trailing else ","} s0])\n'
    )
    if both is None:
        return
    fast, slow = both
    assert isinstance(fast, ListExpr) and isinstance(slow, ListExpr)
    assert slow.items[-1] == Ref("s0")
    assert fast.items == slow.items[:-1]
    assert [type(getattr(x, "value", x)) for x in fast.items] == [type(getattr(x, "value", x)) for x in slow.items[:-1]]


_KEY = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.sampled_from(["1.5", "-2e3", "007", "true", "- 1", '"a b"', "'c'", '"x\\ny"', '"{s0}"', "s0"]),
    st.text(max_size=5).map(lambda s: '"' + s.replace("\\", "").replace('"', "") + '"'),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_KEY, _ITEM, _SEP), max_size=8), st.booleans())
def test_literal_dict_fast_path_reads_like_the_general_rule(pairs: list[tuple[str, str, str]], trailing: bool) -> None:
    body = "".join(f"{k}: {v}{sep}" for k, v, sep in pairs)
    if pairs and not trailing:
        body = body[: len(body) - len(pairs[-1][2])]
    both = _fast_and_general(
        f's0: g()\ns1: f({{{body}}})\n', f's0: g()\ns1: f({{{body}{"" if not pairs or trailing else ","} "zz": s0}})\n'
    )
    if both is None:
        return
    fast, slow = both
    assert isinstance(fast, DictExpr) and isinstance(slow, DictExpr)
    assert slow.items[-1] == ("zz", Ref("s0"))
    assert fast.items == slow.items[:-1]
    assert [(type(k), type(getattr(v, "value", v))) for k, v in fast.items] == \
        [(type(k), type(getattr(v, "value", v))) for k, v in slow.items[:-1]]


def test_list_of_plain_dicts_is_one_token_per_dict() -> None:
    rows = [f'{{"id": {i}, "name": "n{i}", "ok": true}}' for i in range(2000)]
    text = f"s1: f([{', '.join(rows)}])\n"
    kinds = [t.data for t in _PARSER.parse(text).iter_subtrees()]
    assert kinds.count("literal_dict") == 2000 and "pair" not in kinds
    value = parse(text)["s1"].args[0].value
    assert value.items[7] == DictExpr((("id", Literal(7)), ("name", Literal("n7")), ("ok", Literal(True))))


def test_index_step_is_not_a_literal_list() -> None:
    plan = parse("s1: f()\ns2: g(s1[0], s1 [1], x=[0])")
    assert plan["s2"].args[0].value == Ref("s1", path=(0,))
    assert plan["s2"].args[1].value == Ref("s1", path=(1,))
    assert plan["s2"].args[2].value == ListExpr((Literal(0),))


def test_unfinished_literal_list_is_a_syntax_error_at_its_start() -> None:
    with pytest.raises(PlanSyntaxError) as info:
        parse("s1: f([1, 2, 3\ns2: g()\n")
    assert info.value.line == 1


# --------------------------------------------------------------------------- many errors


def test_thousands_of_undefined_references_report_a_capped_list() -> None:
    text = "s1: f(" + ", ".join(f"x{i}" for i in range(5000)) + ")\n"
    with pytest.raises(PlanErrors) as info:
        parse(text)
    err = info.value
    assert err.total == 5000 and len(err.errors) == MAX_REPORTED and err.omitted == 5000 - MAX_REPORTED
    assert all(isinstance(e, PlanReferenceError) for e in err.errors)
    assert [e.message.split("`")[1] for e in err.errors] == [f"x{i}" for i in range(MAX_REPORTED)]
    assert str(err).startswith("5000 errors in plan:\n")
    assert str(err).endswith(f"... and {5000 - MAX_REPORTED} more errors")
    assert err.report().endswith(f"... and {5000 - MAX_REPORTED} more errors")
    assert len(str(err)) < 100 * MAX_REPORTED and len(err.report()) < 400 * MAX_REPORTED
    back = pickle.loads(pickle.dumps(err))  # Prefect pickles exceptions into states
    assert back.total == 5000 and len(back.errors) == MAX_REPORTED


def test_errors_in_a_long_plan_list_a_bounded_few_defined_ids_and_the_right_lines() -> None:
    text = "".join(f"s{i}: f(s{i - 1}, x{i})\n" for i in range(1, 3001))
    with pytest.raises(PlanErrors) as info:
        parse(text)
    err = info.value
    assert err.total == 3001  # `s0` and every x
    last = err.errors[-1]
    assert last.message.startswith("undefined reference `x")
    so_far = last.message.split("defined so far: ")[1]
    assert so_far.count(", ") <= 12
    for e in err.errors:
        assert e.context.splitlines()[0] == text.splitlines()[e.line - 1]


def test_few_errors_are_all_kept() -> None:
    with pytest.raises(PlanErrors) as info:
        parse("s1: f(a)\ns2: f(b)\n")
    assert info.value.total == 2 and info.value.omitted == 0
    assert "more error" not in str(info.value)


def test_line_text_and_context() -> None:
    text = "a\nbc\r\n\nlast"
    assert [line_text(text, n) for n in range(0, 6)] == [None, "a", "bc\r", "", "last", None]
    assert context(text, Pos(2, 2)) == "bc\n ^"
    assert context(text, Pos(9, 1)) == ""


# --------------------------------------------------------------------------- operator chains


def test_flat_ten_thousand_term_sum_parses_evaluates_renders_and_pickles() -> None:
    n = 10_000
    plan = parse("s1: f(" + " + ".join(["1"] * n) + ")")
    expr = plan["s1"].args[0].value
    first, rest = chain(expr)
    assert first == Literal(1) and len(rest) == n - 1 and {op for op, _ in rest} == {"+"}
    assert evaluate(expr, {}) == n
    back = parse(render(plan))  # ((1 + 1) + 1) ...: 10,000 parentheses, still no nesting
    assert back == plan and hash(back["s1"].args[0].value) == hash(expr)
    assert pickle.loads(pickle.dumps(plan)) == plan
    assert repr(expr).count("BinOp(") == n - 1
    with pytest.raises(ValueError, match="nests too deeply for the JSON form"):
        plan.to_text("json")  # nested {"op", "left", "right"} objects: a clear refusal


def test_long_mixed_chain_keeps_precedence_and_left_to_right_order() -> None:
    terms = 1500  # past Python's recursion limit along the spine
    text = "s0: g()\ns1: f(" + " - ".join(f"s0 * {i}" for i in range(terms)) + ")"
    expr = parse(text)["s1"].args[0].value
    assert evaluate(expr, {"s0": 2}) == 0 - sum(2 * i for i in range(1, terms))
    assert parse(render(parse(text))) == parse(text)


def test_deep_nesting_is_a_clear_error() -> None:
    ok = "s1: f(" + "[" * MAX_NESTING + "1" + "]" * MAX_NESTING + ")"
    assert parse(ok).ids == ("s1",)
    for deep in (
        "s1: f(" + "[" * (MAX_NESTING + 1) + "1" + "]" * (MAX_NESTING + 1) + ")",
        "s1: f(" + "[" * 5000 + "1" + "]" * 5000 + ")",
        "s1: f(x=" + "{'a': " * 3000 + "1" + "}" * 3000 + ")",
        "s1: f(" + "1 - (" * 3000 + "1" + ")" * 3000 + ")",
    ):
        with pytest.raises(PlanSyntaxError) as info:
            parse(deep)
        assert f"nested more than {MAX_NESTING} levels deep" in info.value.message
        assert (info.value.line, info.value.column) in ((1, 7), (1, 9))


def test_many_redundant_parentheses_are_no_nesting() -> None:
    plan = parse("s1: f(" + "(" * 5000 + "1" + ")" * 5000 + ", " + "-" * 3000 + "1)")
    assert plan["s1"].args[0].value == Literal(1)
    assert evaluate(plan["s1"].args[1].value, {}) == 1


# --------------------------------------------------------------------------- templates


def test_template_with_many_references_round_trips() -> None:
    n = 50_000
    text = 's1: f("a")\ns2: g("' + "{s1}" * n + ' and {s1} \\{s1}")\n'
    plan = parse(text)
    value = plan["s2"].args[0].value
    assert isinstance(value, Template)
    assert sum(isinstance(p, Ref) for p in value.parts) == n + 1
    assert value.parts[-1] == " {s1}"
    assert parse(plan.to_text()) == plan
    assert parse(plan.to_text("llmcompiler")).ids == ("1", "2")
    refs = [p for p in value.parts if isinstance(p, Ref)]
    assert (refs[0].line, refs[0].column) == (2, 8) and refs[n - 1].column == 8 + 4 * (n - 1)


def test_reference_positions_in_multiline_strings() -> None:
    plan = parse('s1: f()\ns2: g("""a\nbb {s1}\n  x {s1}""")')
    refs = [p for p in plan["s2"].args[0].value.parts if isinstance(p, Ref)]
    assert [(r.line, r.column) for r in refs] == [(3, 4), (4, 5)]


def test_escaping_looks_past_what_follows() -> None:
    # Text parts next to references, with a long tail after them: escaping stays exact.
    expr = Template(("{", Ref("s1"), "} ${", Ref("s1"), "}" + "y" * 10_000))
    plan = Plan((Call("s1", "f"), Call("s2", "g", (Arg(None, expr),))))
    assert parse(render(plan)) == plan


def test_cli_check_reports_the_first_errors_and_counts_the_rest() -> None:
    from test_cli_json import llmorch

    plan = "s1: f(" + ", ".join(f"x{i}" for i in range(500)) + ")\n"  # and `f` is unknown
    out = llmorch("check", "-", "--json", stdin=plan)
    assert out.returncode == 1
    doc = json.loads(out.stdout)
    assert len(doc["errors"]) == MAX_REPORTED and doc["omitted"] == 501 - MAX_REPORTED
    human = llmorch("check", "-", stdin=plan)
    assert human.returncode == 1 and "Traceback" not in human.stderr
    assert human.stderr.count("line 1, column") == MAX_REPORTED
    assert f"... and {501 - MAX_REPORTED} more errors" in human.stderr
