"""Argument values from earlier results, by walking the expression tree (never `eval`).

    >>> from prefect_llmorch.plan.parser import parse
    >>> call = parse('s1: f(1)\\ns2: g(s1 * 2, note="got {s1}", xs=[s1, "a"])')["s2"]
    >>> resolve(call, {"s1": 21})
    ((42,), {'note': 'got 21', 'xs': [21, 'a']})

Rules:

- `Ref` gives the referenced result itself, whatever its type.
- `Template` gives a string: each reference is replaced by `str(result)` (so a dict
  result reads `{'a': 1}`, Python's repr, not JSON; a string result is inserted as is).
- `BinOp`: `+ - * /` on numbers (`/` is true division; bools are not numbers here),
  `+` on two strings or two lists. Anything else, and division by zero, raises
  `EvaluationError` naming the operation.
- Lists and dicts are evaluated item by item into new `list`/`dict` objects.
- A reference with no result raises `MissingResultError` (a `KeyError`) naming the id.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Mapping

from .model import BinOp, Call, DictExpr, Expr, ListExpr, Literal, Ref, Template

__all__ = ["evaluate", "resolve", "EvaluationError", "MissingResultError"]


class EvaluationError(ValueError):
    """An argument expression cannot be computed (type mismatch, division by zero).

    Attributes:
        op: the operator, e.g. "/".
        left: the left operand's value.
        right: the right operand's value.
    """

    def __init__(self, message: str, op: str = "", left: Any = None, right: Any = None) -> None:
        super().__init__(message)
        self.op = op
        self.left = left
        self.right = right


class MissingResultError(KeyError):
    """A reference names a call that has no result (yet).

    Attributes:
        id: the call id.
    """

    def __init__(self, call_id: str) -> None:
        super().__init__(call_id)
        self.id = call_id

    def __str__(self) -> str:
        return f"no result for call `{self.id}` (referenced but not computed)"


_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _binop(op: str, left: Any, right: Any) -> Any:
    fn = _OPS.get(op)
    if fn is None:
        raise EvaluationError(f"unknown operator `{op}`", op, left, right)
    ok = (_is_number(left) and _is_number(right)) or (
        op == "+" and type(left) is type(right) and isinstance(left, (str, list))
    )
    if not ok:
        raise EvaluationError(
            f"cannot compute {left!r} {op} {right!r}: `{op}` needs two numbers"
            + (" (or two strings, or two lists)" if op == "+" else ""),
            op, left, right,
        )
    if op == "/" and right == 0:
        raise EvaluationError(f"division by zero in {left!r} / {right!r}", op, left, right)
    try:
        return fn(left, right)
    except ArithmeticError as exc:  # OverflowError: int too large for a float, say
        raise EvaluationError(f"cannot compute {left!r} {op} {right!r}: {exc}", op, left, right) from None


def _lookup(ref: Ref, results: Mapping[str, Any]) -> Any:
    try:
        return results[ref.id]
    except KeyError:
        raise MissingResultError(ref.id) from None


def evaluate(expr: Expr, results: Mapping[str, Any]) -> Any:
    """The value of an argument expression, given the results of earlier calls.

    Args:
        expr: an expression from a parsed plan.
        results: call id -> that call's result.

    Raises:
        MissingResultError: a referenced id has no result.
        EvaluationError: an operator cannot be applied (types, division by zero).

    Examples:
        >>> evaluate(BinOp("/", Ref("1"), Literal(4)), {"1": 10})
        2.5
        >>> evaluate(Template(("max(", Ref("1"), ")")), {"1": [1, 2]})
        'max([1, 2])'
    """
    if isinstance(expr, Literal):
        return expr.value
    if isinstance(expr, Ref):
        return _lookup(expr, results)
    if isinstance(expr, Template):
        return "".join(p if isinstance(p, str) else str(_lookup(p, results)) for p in expr.parts)
    if isinstance(expr, ListExpr):
        return [evaluate(item, results) for item in expr.items]
    if isinstance(expr, DictExpr):
        return {key: evaluate(value, results) for key, value in expr.items}
    if isinstance(expr, BinOp):
        return _binop(expr.op, evaluate(expr.left, results), evaluate(expr.right, results))
    raise TypeError(f"not a plan expression: {expr!r}")


def resolve(call: Call, results: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A call's positional and keyword argument values, ready for the function.

    Raises:
        MissingResultError, EvaluationError: as `evaluate`.
    """
    args = tuple(evaluate(a.value, results) for a in call.args if a.name is None)
    kwargs = {a.name: evaluate(a.value, results) for a in call.args if a.name is not None}
    return args, kwargs
