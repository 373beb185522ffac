"""Evaluate: argument values from results by walking the tree."""

from __future__ import annotations

import pytest

from prefect_llmorch.plan.evaluate import EvaluationError, MissingResultError, evaluate, resolve
from prefect_llmorch.plan.model import BinOp, DictExpr, ListExpr, Literal, Ref, Template
from prefect_llmorch.plan.parser import parse


@pytest.mark.parametrize("result", [42, 2.5, "text", [1, 2], {"a": 1}, None, object()])
def test_reference_gives_the_result_itself(result: object) -> None:
    assert evaluate(Ref("s1"), {"s1": result}) is result


def test_string_that_is_one_reference_keeps_the_result_type() -> None:
    call = parse("1. f(1)\n2. g('$1', ['$1'])")["2"]
    assert resolve(call, {"1": {"k": [1]}}) == (({"k": [1]}, [{"k": [1]}]), {})


def test_template_formats_each_result_with_str() -> None:
    expr = Template(("a=", Ref("1"), ", b=", Ref("2"), ", c=", Ref("3")))
    assert evaluate(expr, {"1": 1.5, "2": "x", "3": {"k": [1]}}) == "a=1.5, b=x, c={'k': [1]}"


@pytest.mark.parametrize("op, left, right, value", [
    ("+", 1, 2, 3), ("-", 1, 2.5, -1.5), ("*", 3, 4, 12), ("/", 1, 4, 0.25),
    ("+", "ab", "cd", "abcd"), ("+", [1], [2], [1, 2]),
])
def test_binop(op: str, left: object, right: object, value: object) -> None:
    assert evaluate(BinOp(op, Ref("l"), Ref("r")), {"l": left, "r": right}) == value


def test_division_by_zero_is_a_clear_error() -> None:
    with pytest.raises(EvaluationError, match="division by zero") as info:
        evaluate(BinOp("/", Ref("1"), Literal(0)), {"1": 3})
    assert (info.value.op, info.value.left, info.value.right) == ("/", 3, 0)


@pytest.mark.parametrize("op, left, right", [
    ("+", "a", 1), ("-", "a", "b"), ("*", "a", 3), ("+", [1], "a"), ("+", True, 1), ("/", None, 1),
])
def test_operator_type_mismatch_is_an_evaluation_error(op: str, left: object, right: object) -> None:
    with pytest.raises(EvaluationError, match="cannot compute"):
        evaluate(BinOp(op, Literal(left), Literal(right)), {})  # type: ignore[arg-type]


def test_overflow_is_an_evaluation_error() -> None:
    with pytest.raises(EvaluationError):
        evaluate(BinOp("*", Literal(1.5), Literal(10**400)), {})


def test_missing_result_names_the_id() -> None:
    with pytest.raises(KeyError) as info:
        evaluate(ListExpr((Literal(1), Ref("s7"))), {"s1": 1})
    assert isinstance(info.value, MissingResultError) and info.value.id == "s7"
    assert "`s7`" in str(info.value)


def test_lists_and_dicts_evaluate_recursively_into_new_objects() -> None:
    expr = DictExpr((("xs", ListExpr((Ref("1"), BinOp("*", Ref("1"), Literal(2))))), (3, Literal(None))))
    assert evaluate(expr, {"1": 5}) == {"xs": [5, 10], 3: None}


def test_resolve_splits_positional_and_keyword_arguments() -> None:
    plan = parse('s1: f(1)\ns2: f(2)\ns3: python("cmp.py", args=[s1, s2], note="diff {s1}-{s2}")')
    assert resolve(plan["s3"], {"s1": 10, "s2": 4}) == (("cmp.py",), {"args": [10, 4], "note": "diff 10-4"})
