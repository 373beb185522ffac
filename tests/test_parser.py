"""Parser: both dialects, references, values, every error kind with line and column,
toolbox checks, streaming, and fuzzing (parse raises nothing but PlanError)."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefect_llmorch.functions import Toolbox, compute, inout
from prefect_llmorch.plan.errors import (
    ArgumentError,
    DuplicateIdError,
    EmptyPlanError,
    PlanError,
    PlanErrors,
    PlanReferenceError,
    PlanSyntaxError,
    UnknownFunctionError,
)
from prefect_llmorch.plan.model import (
    Arg,
    BinOp,
    Call,
    DictExpr,
    ListExpr,
    Literal,
    Plan,
    Ref,
    Template,
)
from prefect_llmorch.plan.parser import PlanStream, check, parse

FIG2 = """s1: search(query="Apple stock")
s2: search("Microsoft stock")
s3: python("cmp.py", args=[s1, s2])
s4: chatbot("Summarize {s3}")
"""


def only_arg(text: str):
    """The value of the single argument of the single call in `text`."""
    (call,) = parse(text).calls
    (arg,) = call.args
    return arg.value


# --------------------------------------------------------------------------- dialects


def test_paper_dialect_fig2_parses_to_calls_with_def_use_deps() -> None:
    plan = parse(FIG2)
    assert plan.dialect == "paper"
    assert plan == Plan((
        Call("s1", "search", (Arg("query", Literal("Apple stock")),)),
        Call("s2", "search", (Arg(None, Literal("Microsoft stock")),)),
        Call("s3", "python", (Arg(None, Literal("cmp.py")),
                              Arg("args", ListExpr((Ref("s1"), Ref("s2")))))),
        Call("s4", "chatbot", (Arg(None, Template(("Summarize ", Ref("s3")))),)),
    ))
    assert [(c.line, c.column) for c in plan] == [(1, 1), (2, 1), (3, 1), (4, 1)]


def test_llmcompiler_dialect_drops_thought_join_and_end_marker() -> None:
    plan = parse("Thought: I need both prices.\n1. search(\"Apple stock\")\n"
                 "2: search('Microsoft stock')\n3. math('$1 / ${2}', ['$1'])\n"
                 "4. join()\n<END_OF_PLAN>\n")
    assert plan.dialect == "llmcompiler"
    assert plan.ids == ("1", "2", "3")
    assert plan["3"].args == (Arg(None, Template((Ref("1"), " / ", Ref("2")))),
                              Arg(None, ListExpr((Ref("1"),))))
    assert plan["3"].deps == {"1", "2"}


def test_join_followed_directly_by_end_marker_is_not_a_call() -> None:
    assert parse('1. search("a")\n2. join()<END_OF_PLAN>').ids == ("1",)


def test_join_with_arguments_is_an_ordinary_call() -> None:
    assert parse('1. join("a", "b")').calls[0].function == "join"


def test_comments_and_blank_lines_are_ignored() -> None:
    assert parse("\n# a plan\n\ns1: f(1)  # trailing\n\n").ids == ("s1",)


def test_call_may_span_lines() -> None:
    plan = parse('s1: f(1)\ns2: g(\n    s1,\n    k=[1,\n       2],\n)\n')
    assert plan["s2"].args == (Arg(None, Ref("s1")), Arg("k", ListExpr((Literal(1), Literal(2)))))
    assert (plan["s2"].line, plan["s2"].column) == (2, 1)


# --------------------------------------------------------------------------- references


@pytest.mark.parametrize("text, expected", [
    ("s1: f(1)\ns2: g(s1)", Ref("s1")),
    ("1. f(1)\n2. g($1)", Ref("1")),
    ("1. f(1)\n2. g(${1})", Ref("1")),
    ("1. f(1)\n2. g('$1')", Ref("1")),
    ("1. f(1)\n2. g(\"${ 1 }\")", Ref("1")),
    ("s1: f(1)\ns2: g(\"{s1}\")", Ref("s1")),
    ("s1: f(1)\ns2: g(\"{ s1 }\")", Ref("s1")),
    ("s1: f(1)\ns2: g(\"${s1}\")", Ref("s1")),
    ("s1: f(1)\ns2: g(${s1})", Ref("s1")),
])
def test_reference_forms(text: str, expected: Ref) -> None:
    assert parse(text).calls[1].args[0].value == expected


def test_dollar_number_never_guesses_a_paper_id() -> None:
    with pytest.raises(PlanReferenceError, match="undefined reference `1`; defined so far: s1"):
        parse("s1: f(1)\ns2: g($1)")


def test_reference_with_text_around_is_a_template() -> None:
    plan = parse("1. f(1)\n2. f(2)\n3. g('max($1, ${2})!')")
    assert plan["3"].args[0].value == Template(("max(", Ref("1"), ", ", Ref("2"), ")!"))


def test_leading_zeros_in_numeric_ids_are_normalised() -> None:
    plan = parse("01. f(1)\n2. g($01)")
    assert plan.ids == ("1", "2") and plan["2"].deps == {"1"}


@pytest.mark.parametrize("text", [
    '{}', '{"a": 1}', "{a b}", "{1.5}", "{ }", "{{", "}", "price $5", "$ 1", "${}",
])
def test_braces_that_are_not_an_id_stay_text_in_paper_dialect(text: str) -> None:
    src = 's1: f("' + text.replace('"', '\\"') + '")'
    assert only_arg(src) == Literal(text)


def test_braces_are_text_in_llmcompiler_dialect() -> None:
    assert only_arg('1. f("{1} and {s1}")') == Literal("{1} and {s1}")


def test_escaped_brace_and_dollar_are_text() -> None:
    assert only_arg('s1: f("\\{s1} \\$\\{s1}")') == Literal("{s1} ${s1}")
    assert only_arg('1. f("\\$1")') == Literal("$1")


def test_brace_id_is_a_reference_even_if_undefined() -> None:
    with pytest.raises(PlanReferenceError) as info:
        parse('s1: f(1)\ns2: g("Fill in {name}")')
    assert (info.value.line, info.value.column) == (2, 16)
    assert info.value.message == "undefined reference `name`; defined so far: s1"


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("src, value", [
    ("42", Literal(42)), ("-7", Literal(-7)), ("3.5", Literal(3.5)), ("-2.5e3", Literal(-2500.0)),
    ("1E2", Literal(100.0)), ("true", Literal(True)), ("True", Literal(True)),
    ("false", Literal(False)), ("False", Literal(False)), ("null", Literal(None)),
    ("None", Literal(None)), ("'single'", Literal("single")), ('"dou\\"ble"', Literal('dou"ble')),
    ("'a\\nb\\t\\\\ \\u00e9 \\q'", Literal("a\nb\t\\ é \\q")),
    ('"line one\nline two"', Literal("line one\nline two")),
    ('"""tri "ple" \n quoted"""', Literal('tri "ple" \n quoted')),
    ("'''it's'''", Literal("it's")),
    ("[]", ListExpr(())), ("[1, 'a', [true],]", ListExpr((Literal(1), Literal("a"), ListExpr((Literal(True),))))),
    ('{"a": 1, 2: [null], -1: "x"}', DictExpr((("a", Literal(1)), (2, ListExpr((Literal(None),))), (-1, Literal("x"))))),
    ("1 + 2 * 3", BinOp("+", Literal(1), BinOp("*", Literal(2), Literal(3)))),
    ("(1 + 2) * 3", BinOp("*", BinOp("+", Literal(1), Literal(2)), Literal(3))),
    ("8 - 4 - 2", BinOp("-", BinOp("-", Literal(8), Literal(4)), Literal(2))),
    ("8 / 4 / 2", BinOp("/", BinOp("/", Literal(8), Literal(4)), Literal(2))),
    ("1 - -2", BinOp("-", Literal(1), Literal(-2))),
    ("-(1 + 2)", BinOp("-", Literal(0), BinOp("+", Literal(1), Literal(2)))),
    ('"a" + "b"', BinOp("+", Literal("a"), Literal("b"))),
])
def test_values(src: str, value: object) -> None:
    assert only_arg(f"s1: f({src})") == value


def test_arithmetic_on_references() -> None:
    plan = parse("s1: f(1)\ns2: f(2)\ns3: g((s1 + ${s2}) / 2)")
    assert plan["s3"].args[0].value == BinOp("/", BinOp("+", Ref("s1"), Ref("s2")), Literal(2))


def test_references_inside_dicts_and_nested_lists_are_deps() -> None:
    plan = parse('s1: f(1)\ns2: f(2)\ns3: g({"x": [s1, {"y": "{s2}"}]})')
    assert plan["s3"].deps == {"s1", "s2"}


def test_dict_key_strings_never_hold_references() -> None:
    assert only_arg('s1: f({"{s1}": 1})') == DictExpr((("{s1}", Literal(1)),))


# --------------------------------------------------------------------------- errors


def test_undefined_reference_message_has_line_column_and_defined_ids() -> None:
    text = 's1: search(query="Apple stock")\ns2: search("Microsoft stock")\ns3: python("cmp.py", args=[s1, sl])\n'
    with pytest.raises(PlanReferenceError) as info:
        parse(text)
    err = info.value
    assert str(err) == "line 3, column 32: undefined reference `sl`; defined so far: s1, s2"
    assert err.kind == "reference" and (err.line, err.column) == (3, 32)
    assert err.context.splitlines()[-1] == " " * 31 + "^"


def test_forward_reference_is_rejected_with_line_and_column() -> None:
    with pytest.raises(PlanReferenceError) as info:
        parse('1. f("$2")\n2. g(1)')
    assert (info.value.line, info.value.column) == (1, 7)
    assert "forward reference `2` (defined on line 2)" in info.value.message


def test_self_reference_is_rejected() -> None:
    with pytest.raises(PlanReferenceError, match="refers to its own result"):
        parse("s1: f(s1)")


def test_duplicate_id_is_rejected_at_its_label() -> None:
    with pytest.raises(DuplicateIdError) as info:
        parse("s1: f(1)\n  s1: g(2)")
    assert (info.value.line, info.value.column) == (2, 3)
    assert info.value.message == "duplicate id `s1`; already used on line 1"


@pytest.mark.parametrize("text", ["", "   \n\n", "Thought: nothing to do\n", "1. join()<END_OF_PLAN>", "# just a comment"])
def test_plan_without_calls_is_empty_plan_error(text: str) -> None:
    with pytest.raises(EmptyPlanError):
        parse(text)


def test_unquoted_text_argument_is_a_syntax_error_with_hint() -> None:
    with pytest.raises(PlanSyntaxError) as info:
        parse("1. search(Austin Powers)")
    err = info.value
    assert (err.line, err.column) == (1, 18)
    assert "unexpected `Powers`" in err.message and "must be quoted" in err.message
    assert "`)`" in err.expected and "`,`" in err.expected


def test_missing_close_paren_points_at_end_of_the_unfinished_line() -> None:
    with pytest.raises(PlanSyntaxError) as info:
        parse('1. math("x", ["$1"]\n2. search("y")')
    err = info.value
    assert (err.line, err.column) == (1, 20)
    assert "not finished" in err.message and "`)`" in err.expected


def test_text_ending_inside_a_call_reports_end_of_text() -> None:
    with pytest.raises(PlanSyntaxError) as info:
        parse('s1: f("a",\n   [1, 2  \n\n')
    assert (info.value.line, info.value.column) == (2, 9)
    assert "ends too early" in info.value.message


def test_unterminated_string_is_reported_at_its_quote() -> None:
    with pytest.raises(PlanSyntaxError) as info:
        parse('s1: f(1)\ns2: g("abc)\n')
    assert (info.value.line, info.value.column) == (2, 7)
    assert "unterminated string" in info.value.message


def test_unexpected_character() -> None:
    with pytest.raises(PlanSyntaxError) as info:
        parse("s1: f(1 @ 2)")
    assert (info.value.line, info.value.column) == (1, 9)
    assert "'@'" in info.value.message


def test_every_syntax_error_is_collected_by_resyncing_at_the_next_call() -> None:
    text = 's1: f(a b)\ns2: g("ok")\ns3: h(1,, 2)\ns4: k(s2, s9)\n'
    with pytest.raises(PlanErrors) as info:
        parse(text)
    got = [(e.kind, e.line, e.column) for e in info.value.errors]
    assert got == [("syntax", 1, 9), ("syntax", 3, 9), ("reference", 4, 11)]
    assert info.value.kind == "syntax" and (info.value.line, info.value.column) == (1, 9)
    assert "3 errors in plan" in str(info.value)


def test_references_to_calls_with_syntax_errors_are_not_reported_twice() -> None:
    with pytest.raises(PlanSyntaxError) as info:
        parse("s1: f(a b)\ns2: g(s1)\n")
    assert len(info.value.errors) == 1


def test_positional_after_keyword_and_repeated_keyword() -> None:
    with pytest.raises(PlanErrors) as info:
        parse("s1: f(a=1, 2, a=3)")
    assert [(e.kind, e.column) for e in info.value.errors] == [("arguments", 12), ("arguments", 15)]


@pytest.mark.parametrize("bad", [None, 42, b"s1: f()"])
def test_non_string_input_is_a_plan_error(bad: object) -> None:
    with pytest.raises(PlanSyntaxError):
        parse(bad)  # type: ignore[arg-type]


def test_deep_nesting_is_a_plan_error_not_a_recursion_error() -> None:
    try:
        parse("s1: f(" + "[" * 3000 + "]" * 3000 + ")")
    except PlanError:
        pass


def test_grammar_has_no_lalr_conflicts() -> None:
    from lark import Lark
    from lark.exceptions import LexError

    import prefect_llmorch.plan.parser as parser_module

    try:  # strict=True raises GrammarError on a shift/reduce conflict
        Lark.open("grammar.lark", rel_to=parser_module.__file__, parser="lalr", strict=True)
    except LexError as exc:  # only the optional regex-collision check may be missing
        assert "interegular" in str(exc)


# --------------------------------------------------------------------------- toolbox


@inout
def search(query: str) -> str:
    return query


@compute
def math(problem: str, context: list[str] | None = None) -> float:
    return 0.0


@compute
def scale(x: float, factor: int = 2) -> float:
    return x * factor


TOOLS = Toolbox(search, math, scale)


def test_unknown_function_suggests_the_closest_name() -> None:
    with pytest.raises(UnknownFunctionError) as info:
        parse('s1: serach("x")', TOOLS)
    assert "unknown function `serach`; did you mean `search`?" in info.value.message
    assert (info.value.line, info.value.column) == (1, 5)  # the function name
    assert "search" in info.value.expected


def test_wrong_arity_keyword_and_literal_type_are_argument_errors() -> None:
    text = 's1: search("a", "b")\ns2: search(q="a")\ns3: scale("big")\n'
    with pytest.raises(PlanErrors) as info:
        parse(text, TOOLS)
    errors = info.value.errors
    assert [(e.kind, e.line, e.column) for e in errors] == [
        ("arguments", 1, 1), ("arguments", 2, 1), ("arguments", 3, 1)]
    assert "`x`" in errors[2].message


def test_arguments_from_references_are_not_type_checked_at_plan_time() -> None:
    plan = parse('1. search("a")\n2. scale($1, factor=3)\n3. math("$1 / 2", ["$1", "$2"])', TOOLS)
    assert plan.ids == ("1", "2", "3")


def test_constant_division_by_zero_is_an_argument_error() -> None:
    with pytest.raises(ArgumentError, match="division by zero"):
        parse("s1: scale(1 / 0)", TOOLS)


def test_check_alone_validates_a_plan() -> None:
    plan = parse('s1: search("a")\ns2: nope(s1)')
    with pytest.raises(UnknownFunctionError) as info:
        check(plan, TOOLS)
    assert info.value.line == 2
    check(parse('s1: search("a")'), TOOLS)


def test_syntax_and_toolbox_errors_are_reported_together_in_order() -> None:
    with pytest.raises(PlanErrors) as info:
        parse('s1: serach("x")\ns2: search(a b)\n', TOOLS)
    assert [e.kind for e in info.value.errors] == ["unknown_function", "syntax"]


# --------------------------------------------------------------------------- streaming


def test_stream_returns_each_call_when_its_line_ends() -> None:
    stream = PlanStream()
    got: list[list[str]] = []
    for ch in FIG2:
        got.append([c.id for c in stream.feed(ch)])
    newlines = [i for i, ch in enumerate(FIG2) if ch == "\n"]
    assert [i for i, ids in enumerate(got) if ids] == newlines
    assert [ids for ids in got if ids] == [["s1"], ["s2"], ["s3"], ["s4"]]
    assert stream.close() == parse(FIG2)


def test_stream_waits_for_multi_line_strings_and_calls() -> None:
    stream = PlanStream()
    assert stream.feed('s1: f(1)\ns2: chatbot("Summarize\n') == [Call("s1", "f", (Arg(None, Literal(1)),))]
    assert stream.feed("{s1}\n") == []
    assert [c.id for c in stream.feed('and more")\ns3: g(\n')] == ["s2"]
    assert [c.id for c in stream.feed("s2)\n")] == ["s3"]
    assert stream.close().ids == ("s1", "s2", "s3")


def test_stream_stops_at_an_error_and_close_raises_it() -> None:
    stream = PlanStream()
    assert [c.id for c in stream.feed('s1: f(1)\ns2: g(sl)\ns3: h(s1)\n')] == ["s1"]
    with pytest.raises(PlanReferenceError):
        stream.close()


def test_stream_with_toolbox_does_not_return_calls_that_fail_the_check() -> None:
    stream = PlanStream(TOOLS)
    assert [c.id for c in stream.feed('1. search("a")\n2. serach("b")\n')] == ["1"]
    with pytest.raises(UnknownFunctionError):
        stream.close()


def test_stream_feed_after_close_is_refused() -> None:
    stream = PlanStream()
    stream.feed("s1: f(1)")
    assert stream.close().ids == ("s1",)
    with pytest.raises(RuntimeError, match="closed"):
        stream.feed("x")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(0, 400), max_size=8))
def test_stream_calls_equal_final_plan_calls_however_text_is_chunked(cuts: list[int]) -> None:
    text = FIG2 + '1. x(1)\n' * 0 + 's5: chatbot("multi\nline {s4}",\n  k=[s1,\n s2])\ns6: f(s5)\n'
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    stream = PlanStream()
    fed: list[Call] = []
    for a, b in zip(bounds, bounds[1:]):
        fed += stream.feed(text[a:b])
    plan = stream.close()
    assert fed == list(plan.calls)
    assert [c.id for c in fed] == ["s1", "s2", "s3", "s4", "s5", "s6"]


# --------------------------------------------------------------------------- fuzzing

PLAN_ALPHABET = st.sampled_from(list("s1$:.()[]{},=+-*/\"' \n\tabcxyz0123456789#\\") + [
    "search", "join()", "<END_OF_PLAN>", "Thought: ", "s2", "${1}", "true", "\"\"\"", "1. "])


def _assert_only_plan_errors(text: str) -> None:
    try:
        parse(text)
    except PlanError as err:
        for e in err.errors:
            assert isinstance(e, PlanError)
            assert "internal error" not in e.message, e.message
            if e.kind == "syntax" and e.line:
                assert 1 <= e.line <= text.count("\n") + 1 and e.column >= 1


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=80))
def test_fuzz_random_text_raises_only_plan_errors(text: str) -> None:
    _assert_only_plan_errors(text)


@settings(max_examples=150, deadline=None)
@given(st.lists(PLAN_ALPHABET, max_size=40).map("".join))
def test_fuzz_plan_like_text_raises_only_plan_errors(text: str) -> None:
    _assert_only_plan_errors(text)


VALID = [FIG2, "Thought: go\n1. search('a')\n2. math('$1 / ${2}', ['$1'])\n3. join()<END_OF_PLAN>\n",
         's1: f({"a": [1, -2.5e3, true, null]}, x=(s0 - 1) * 2)\ns2: g("""multi\n{s1}""")\n']


@settings(max_examples=200, deadline=None)
@given(base=st.sampled_from(VALID), edits=st.lists(
    st.tuples(st.integers(0, 10_000), st.booleans(), PLAN_ALPHABET), min_size=1, max_size=4))
def test_fuzz_mutated_valid_plans_raise_only_plan_errors(base: str, edits: list[tuple[int, bool, str]]) -> None:
    text = base
    for where, delete, piece in edits:
        i = where % (len(text) + 1)
        text = text[:i] + text[i + 1:] if delete else text[:i] + piece + text[i:]
    _assert_only_plan_errors(text)


def test_no_grammar_token_name_reaches_an_error_message() -> None:
    from prefect_llmorch.plan.parser import _PARSER, _readable

    for terminal in _PARSER.terminals:
        for words in _readable({terminal.name}):
            assert not re.fullmatch(r"[A-Z_$]+", words), (terminal.name, words)
    with pytest.raises(PlanSyntaxError) as info:
        parse("s1: f(0.1, value=)")
    assert info.value.expected[0].startswith("a value (a string, a number, a list, a dict")
    assert "LITERAL" not in str(info.value)
