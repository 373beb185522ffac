"""Hints a small model's repair needs (issue 28): a name that is no call id, where text
was meant, is an undefined reference whose message shows the text in quotes; a function's
or its result type's name used as a reference names the calls' ids; a missing field that is
an argument of the call names its value."""

from __future__ import annotations

from typing import TypedDict

import pytest

from prefect_llmorch.functions import Toolbox, inout
from prefect_llmorch.plan.errors import PlanError
from prefect_llmorch.plan.parser import parse


@pytest.mark.parametrize("plan, hint", [
    ('s1: detect(frame_001.png, size=2000)', '"frame_001.png"'),      # the real model's KITTI plan
    ('s1: f()\ns2: reserve(type=Standard)', '"Standard"'),            # NESTFUL sgd_0's
])
def test_an_unquoted_text_is_an_undefined_reference_with_the_text_quoted_as_hint(plan, hint):
    with pytest.raises(PlanError) as info:
        parse(plan)
    assert str(info.value).endswith(f"if it is text, write it in double quotes: {hint}")


@pytest.mark.parametrize("plan", ['s1: f()\ns2: f(sl)', 's1: f(s3)', 's1: f()\ns2: f($4)'])
def test_a_mistyped_or_missing_id_gets_no_quote_hint(plan):
    with pytest.raises(PlanError) as info:
        parse(plan)
    assert "double quotes" not in str(info.value)


def test_a_name_in_braces_inside_a_string_gets_no_quote_hint():
    with pytest.raises(PlanError) as info:
        parse('s1: f(1)\ns2: g(["Fill in {name}"])')
    assert str(info.value).endswith("defined so far: s1")


@pytest.mark.parametrize("plan, hint", [
    # the real model's NESTFUL glaive_20: the result type's name, which the prompt shows
    ('s1: convert_currency(amount=100)\ns2: calculate_squared(convert_currency_result.squared_amount)',
     "a result is used by its call's id, not its function's name: `s1.squared_amount`"),
    ('s1: f(1)\ns2: f(2)\ns3: g(f.x)', "not its function's name: `s1.x` or `s2.x`"),
])
def test_a_function_or_result_type_name_used_as_a_reference_gets_the_calls_ids_as_hint(plan, hint):
    with pytest.raises(PlanError) as info:
        parse(plan)
    assert str(info.value).endswith(hint) and "double quotes" not in str(info.value)


class Profit(TypedDict):
    profit: float


@inout
def calculate_profit(revenue: float, expenses: float) -> Profit:
    return {"profit": revenue - expenses}


@inout
def calculate_gcd(num1: int, num2: int) -> int:
    return 1


@pytest.mark.parametrize("call", ["calculate_profit(revenue=7000, expenses=5000)", "calculate_profit(7000, 5000)"])
def test_a_missing_field_that_is_an_argument_of_the_call_gets_its_value_as_hint(call):
    # the real model's NESTFUL glaive_9: `s1.expenses` for the expenses it had passed to s1
    toolbox = Toolbox(calculate_profit, calculate_gcd)
    with pytest.raises(PlanError) as info:
        parse(f"s1: {call}\ns2: calculate_gcd(num1=s1.profit, num2=s1.expenses)", toolbox)
    assert str(info.value).endswith(
        "has no field 'expenses'; it has: profit; `expenses` is an argument of s1 (5000), "
        "not a field of its result: pass that value itself")
    with pytest.raises(PlanError) as info:  # a field that is no argument: no such hint
        parse(f"s1: {call}\ns2: calculate_gcd(num1=s1.profit, num2=s1.margin)", toolbox)
    assert str(info.value).endswith("it has: profit")
