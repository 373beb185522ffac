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
- A reference with a path (`s1.data[0].id`) selects a part of the result, one step at a
  time, by reading data only (never calling anything, never `getattr` on user classes):
  a name step reads a mapping's key, a pydantic model's field (or extra), a dataclass's
  field, a named tuple's field, or a plain object's public instance attribute (names
  starting with `_` are never read from objects; mapping keys are data and may be any
  string); an index step reads a list or tuple item (negative counts from the end) or a
  mapping's integer key. Anything else raises `AccessError`, naming what is there:

    >>> resolve(parse('s1: f()\\ns2: g(origin=s1.skyId)')["s2"], {"s1": {"id": 1, "name": "x"}})
    Traceback (most recent call last):
    ...
    prefect_llmorch.plan.evaluate.AccessError: s2 argument 'origin': s1 has no field 'skyId'; it has: id, name
"""

from __future__ import annotations

import dataclasses
import difflib
import operator
from typing import Any, Callable, Mapping

from pydantic import BaseModel

from .model import BinOp, Call, DictExpr, Expr, ListExpr, Literal, Ref, Step, Template, chain, describe_path

__all__ = ["evaluate", "resolve", "select", "EvaluationError", "MissingResultError", "AccessError"]


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


class AccessError(EvaluationError):
    """A field or index that the result does not have (`s1.skyId` on a result without it).

    Attributes:
        ref: the reference as written, e.g. "s1.data[0].id".
        at: the part that exists, e.g. "s1.data[0]".
        step: the step that failed ("id", or an index).
        available: what is there instead (field names, or "0..2" for a list).
        call: the calling call's id, once `resolve` knows it ("" before).
        argument: the argument's name (or its 1-based position), once known.
    """

    def __init__(self, message: str, *, ref: str = "", at: str = "", step: Step = "",
                 available: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.ref = ref
        self.at = at
        self.step = step
        self.available = list(available or [])
        self.call = ""
        self.argument = ""

    def __str__(self) -> str:
        if not self.call:
            return self.message
        arg = f"'{self.argument}'" if isinstance(self.argument, str) else str(self.argument)
        return f"{self.call} argument {arg}: {self.message}"

    def __reduce__(self):  # type: ignore[no-untyped-def]
        # Prefect pickles exceptions into states: keep the fields.
        return (_rebuild_access, (self.__dict__.copy(),))


def _rebuild_access(fields: dict[str, Any]) -> "AccessError":
    err = AccessError.__new__(AccessError)
    err.__dict__.update(fields)
    Exception.__init__(err, fields.get("message", ""))
    return err


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
        value = results[ref.id]
    except KeyError:
        raise MissingResultError(ref.id) from None
    return select(value, ref.path, ref.id) if ref.path else value


_MAX_LISTED = 20


def _listing(names: list[str]) -> str:
    if not names:
        return "nothing"
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


def _fields(value: Any) -> dict[str, Any] | None:
    """The named data of a non-mapping value, read without calling any of its code;
    None when it has no named data (numbers, strings, lists, ...)."""
    if isinstance(value, BaseModel):
        data = {k: v for k, v in vars(value).items() if k in type(value).model_fields}
        data.update(value.__pydantic_extra__ or {})
        return data
    if isinstance(value, tuple) and hasattr(type(value), "_fields"):  # a named tuple
        return dict(zip(type(value)._fields, value))
    if isinstance(value, (str, bytes, bytearray, int, float, complex, list, tuple, set,
                          frozenset, type(None))) or isinstance(value, type) or callable(value):
        return None
    if dataclasses.is_dataclass(value):
        names = [f.name for f in dataclasses.fields(value)]
    else:
        names = list(getattr(value, "__dict__", {}))
        for klass in type(value).__mro__:
            slots = vars(klass).get("__slots__", ())
            names += [slots] if isinstance(slots, str) else list(slots)
    data: dict[str, Any] = {}
    instance = getattr(value, "__dict__", None)
    for name in names:
        if name.startswith("_") or name in data:
            continue
        if instance is not None and name in instance:
            data[name] = instance[name]
            continue
        for klass in type(value).__mro__:  # a slot: read its member descriptor directly
            member = vars(klass).get(name)
            if type(member).__name__ == "member_descriptor":
                try:
                    data[name] = member.__get__(value, type(value))
                except AttributeError:  # an unset slot
                    pass
                break
    return data


def _close(step: str, names: Any) -> str:
    close = difflib.get_close_matches(step, [str(n) for n in names], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _kind(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} item" + ("" if len(value) == 1 else "s")
    if value is None:
        return "None"
    return f"a {type(value).__name__}"


def select(value: Any, path: tuple[Step, ...], call_id: str = "result") -> Any:
    """The part of `value` that `path` names (see the module docstring).

    Raises:
        AccessError: a step names a field, key or index the value does not have.

    Examples:
        >>> select({"data": [{"id": 7}]}, ("data", 0, "id"), "s1")
        7
        >>> select([1, 2], (5,), "s1")
        Traceback (most recent call last):
        ...
        prefect_llmorch.plan.evaluate.AccessError: s1 has no index 5; it is a list of 2 items (0..1)
    """
    for i, step in enumerate(path):
        at = describe_path(call_id, path[:i])

        def fail(message: str, available: list[str]) -> AccessError:
            return AccessError(message, ref=describe_path(call_id, path), at=at, step=step,
                               available=available)

        if isinstance(value, Mapping):
            if step in value:
                value = value[step]
                continue
            keys = [str(k) for k in value]
            what = f"field {step!r}" if isinstance(step, str) else f"key {step}"
            hint = _close(step, keys) if isinstance(step, str) else ""
            raise fail(f"{at} has no {what}{hint}; it has: {_listing(keys)}", keys)
        if isinstance(step, int):
            if isinstance(value, (list, tuple)):
                if -len(value) <= step < len(value):
                    value = value[step]
                    continue
                span = f" (0..{len(value) - 1})" if value else ""
                raise fail(f"{at} has no index {step}; it is {_kind(value)}{span}",
                           [str(n) for n in range(len(value))])
            fields = _fields(value)
            hint = f"; it has: {_listing(list(fields))}" if fields else ""
            raise fail(f"{at} is {_kind(value)}, not a list: it has no index {step}{hint}",
                       list(fields or ()))
        fields = _fields(value)
        if fields is None:
            hint = f"; use an index like {at}[0]" if isinstance(value, (list, tuple)) else ""
            raise fail(f"{at} is {_kind(value)}: it has no field {step!r}{hint}", [])
        if step.startswith("_"):
            raise fail(f"{at}: field {step!r} is private (names starting with `_` are never "
                       f"read from objects); it has: {_listing(list(fields))}", list(fields))
        if step not in fields:
            raise fail(f"{at} has no field {step!r}{_close(step, fields)}; it has: "
                       f"{_listing(list(fields))}", list(fields))
        value = fields[step]
    return value


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
        first, rest = chain(expr)  # a loop, not recursion, along a flat chain
        value = evaluate(first, results)
        for op, right in rest:
            value = _binop(op, value, evaluate(right, results))
        return value
    raise TypeError(f"not a plan expression: {expr!r}")


def resolve(call: Call, results: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A call's positional and keyword argument values, ready for the function.

    Raises:
        MissingResultError, EvaluationError: as `evaluate`.
    Raises:
        AccessError: its message names the call and the argument:
            "s3 argument 'originSkyId': s1 has no field 'skyId'; it has: id, name, entityId"
            (positional arguments are numbered from 1).
    """
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    position = 0
    for arg in call.args:
        if arg.name is None:
            position += 1
        try:
            value = evaluate(arg.value, results)
        except AccessError as exc:
            exc.call = call.id if not call.id.isdigit() else f"${call.id}"
            exc.argument = arg.name if arg.name is not None else position  # type: ignore[assignment]
            raise
        if arg.name is None:
            args.append(value)
        else:
            kwargs[arg.name] = value
    return tuple(args), kwargs
