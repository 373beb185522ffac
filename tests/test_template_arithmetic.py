"""Arithmetic in braces inside a string (`self("... {s1 / s2} ...")`, issue 28): the paper
dialect fills in only references, so the function would get the text; it is a plan error at
the brace, naming the values to insert instead. Text that only looks like it passes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefect_llmorch.plan.errors import ArgumentError, PlanError
from prefect_llmorch.plan.model import Arg, Call, Literal, Plan
from prefect_llmorch.plan.parser import parse


@pytest.mark.parametrize("plan, column, inner, values", [
    ('s1: f()\ns2: f()\ns3: self("Oslo is {s1 / s2} times larger")', 19, "s1 / s2", "({s1} and {s2})"),
    ('s1: f()\ns2: self("up {s1.change_pct*100} %")', 14, "s1.change_pct*100", "({s1.change_pct})"),
    ('s1: f()\ns2: self(prompt="twice: { 2 * s1 }")', 25, "2 * s1", "({s1})"),
    ('s1: f()\ns2: g(["a", "x {s1[0] - 1}"])', 16, "s1[0] - 1", "({s1[0]})"),
])
def test_arithmetic_on_results_in_a_string_is_an_error_at_the_brace(plan: str, column: int, inner: str,
                                                                   values: str) -> None:
    with pytest.raises(ArgumentError) as info:
        parse(plan)
    err = info.value
    assert (err.line, err.column) == (plan.count("\n") + 1, column)
    assert err.message.startswith(f"`{{{inner}}}` in a string is not computed") and err.message.endswith(values)


@pytest.mark.parametrize("plan", [
    's1: f()\ns2: self("code: {a + b} and {s1}")',     # no call's result in it: text
    's1: f()\ns2: self("literal \\{s1 / 2}")',         # escaped: text, as written
    '1. f()\n2. math("$1 / 2")',                        # LLMCompiler's math takes the expression as text
    's1: f()\ns2: self("{s1} / {s1}")',                 # the values, inserted
    's1: f()\ns2: g(s1 / 2)',                           # arithmetic as an argument: computed
])
def test_what_is_not_arithmetic_on_results_passes(plan: str) -> None:
    parse(plan)


_OPERANDS = st.sampled_from(["s1", "s1.a", "s1[0]", "2", "x", "s2"])
_BRACES = st.builds(lambda pre, a, op, b, post: f"{pre}{{{a}{op}{b}}}{post}", st.text(alphabet="{} x", max_size=3),
                    _OPERANDS, st.sampled_from([" / ", "*", " - ", "+"]), _OPERANDS, st.text(alphabet="{} x", max_size=3))


@given(st.one_of(_BRACES, st.text(alphabet="s1{}/ *+-.2x", max_size=16)))
def test_a_string_literal_written_by_render_reads_back_the_same(value: str) -> None:
    plan = Plan((Call("s1", "f"), Call("s2", "self", (Arg(None, Literal(value)),))))
    try:
        again = parse(plan.to_text())
    except PlanError as exc:
        raise AssertionError(f"{plan.to_text()!r}: {exc}") from None
    assert again == plan
