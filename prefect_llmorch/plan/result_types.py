"""Plan-time checks of field and index access against declared result types.

A function whose return annotation is, or contains, a pydantic model, a TypedDict or a
dataclass declares the shape of its result. Then `s1.skyId`, where `s1` calls it, is
checked before anything runs: a field the type does not have is a `FieldError` at the
reference's line and column. Other annotations (`str`, `dict`, `Any`, none) declare no
shape and their fields are checked at run time only (`evaluate.select`).

    >>> from typing import TypedDict
    >>> class Airport(TypedDict):
    ...     skyId: str
    ...     entityId: str
    >>> path_problem(list[Airport], (0, "skyid"))
    "has no field 'skyid' (did you mean 'skyId'?); it has: skyId, entityId"
    >>> path_problem(list[Airport], (0, "skyId")) is None
    True

No Prefect, no I/O. Annotations are the toolbox author's code, resolved the way
`typing.get_type_hints` does; plan text is never evaluated.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import types
import typing
from typing import Any, Mapping, Sequence

import typing_extensions
from pydantic import BaseModel

from .errors import FieldError, PlanError
from .model import Call, Literal, Ref, Step, describe_path, refs

__all__ = ["result_type", "path_problem", "field_errors", "describe_results"]

_ANY = object()  # "no declared shape here": stop checking


def declared_result(spec: Any) -> Any:
    """A `FunctionSpec`'s return annotation, resolved; `_ANY` when it declares none."""
    fn = getattr(spec, "fn", None)
    if fn is None:
        return _ANY
    try:
        tp = typing.get_type_hints(fn, include_extras=True).get("return", _ANY)
    except Exception:
        return _ANY
    return _ANY if tp is inspect.Signature.empty else tp


def result_type(spec: Any) -> Any:
    """The declared result type of a `FunctionSpec` when it has a shape (what the planner
    prompt describes), else None."""
    tp = declared_result(spec)
    return tp if tp is not _ANY and _has_shape(tp, depth=0) else None


def _structured(tp: Any) -> bool:
    return isinstance(tp, type) and (
        # typing_extensions' test knows both TypedDicts (pydantic wants its on Python < 3.12)
        issubclass(tp, BaseModel) or typing_extensions.is_typeddict(tp) or dataclasses.is_dataclass(tp)
    )


def _has_shape(tp: Any, depth: int) -> bool:
    if depth > 5:
        return False
    if _structured(tp):
        return True
    return any(_has_shape(a, depth + 1) for a in typing.get_args(tp) if a is not Ellipsis)


def _fields_of(tp: type) -> dict[str, Any] | None:
    """Field name -> annotation; None when extra fields are allowed (no closed shape)."""
    if issubclass(tp, BaseModel):
        if tp.model_config.get("extra") == "allow":
            return None
        return {name: f.annotation for name, f in tp.model_fields.items()}
    try:
        hints = typing.get_type_hints(tp)
    except Exception:
        return None
    if dataclasses.is_dataclass(tp):
        return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(tp)}
    return dict(hints)


def _unwrap(tp: Any) -> Any:
    """Annotated[X, ...] -> X; Optional[X] -> X; a union of several -> _ANY."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
            continue
        if origin in (typing.Union, types.UnionType):
            rest = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(rest) != 1:
                return _ANY
            tp = rest[0]
            continue
        return tp


def _name(tp: Any) -> str:
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else _name(a) for a in args)
    if origin is typing.Literal:
        # text in double quotes, as a plan writes it (as `FunctionSpec.render` does): shown
        # `Literal[Compact, Standard]`, a small model writes `type=Standard`, an undefined name
        return "Literal[" + ", ".join(json.dumps(a, ensure_ascii=False) if isinstance(a, str) else repr(a)
                                      for a in args) + "]"
    if origin is not None and args:
        inner = ", ".join("..." if a is Ellipsis else _name(a) for a in args)
        return f"{_name(origin)}[{inner}]"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _step(tp: Any, step: Step) -> tuple[Any, str | None]:
    """The type after one step, or a problem."""
    tp = _unwrap(tp)
    if tp is _ANY or tp is Any or isinstance(tp, typing.TypeVar):
        return _ANY, None
    origin = typing.get_origin(tp) or tp
    args = typing.get_args(tp)
    if _structured(tp):
        fields = _fields_of(tp)
        if fields is None:
            return _ANY, None
        if isinstance(step, int):
            return _ANY, f"is a {_name(tp)}, not a list: it has no index {step}"
        if step not in fields:
            close = difflib.get_close_matches(step, list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return _ANY, f"has no field {step!r}{hint}; it has: {', '.join(fields) or 'nothing'}"
        return fields[step], None
    if not isinstance(origin, type):
        return _ANY, None
    if issubclass(origin, Mapping):
        return (args[1] if len(args) == 2 else _ANY), None
    if issubclass(origin, (str, bytes, int, float, bool, type(None))):
        what = f"no field {step!r}" if isinstance(step, str) else f"no index {step}"
        return _ANY, f"is a {origin.__name__}: it has {what}"
    if issubclass(origin, tuple) and args and args[-1] is not Ellipsis:
        if isinstance(step, str):
            return _ANY, f"is a tuple: it has no field {step!r}"
        if not -len(args) <= step < len(args):
            return _ANY, f"is a tuple of {len(args)} items: it has no index {step}"
        return args[step], None
    if issubclass(origin, Sequence):
        if isinstance(step, str):
            return _ANY, f"is a list: it has no field {step!r}; use an index like [0]"
        return (args[0] if args else _ANY), None
    return _ANY, None


def path_problem(tp: Any, path: tuple[Step, ...]) -> str | None:
    """What is wrong with selecting `path` from a value of type `tp` (None if nothing is
    known to be wrong). The message starts after the part that exists."""
    return _walk(tp, path)[1]


def _walk(tp: Any, path: tuple[Step, ...]) -> tuple[int, str | None]:
    for i, step in enumerate(path):
        tp, problem = _step(tp, step)
        if problem:
            return i, problem
        if tp is _ANY:
            return i, None
    return len(path), None


def field_errors(calls: Sequence[Call], toolbox: Mapping[str, Any],
                 context: Any = None) -> list[PlanError]:
    """A `FieldError` for every reference whose path its call's declared result type
    does not have. `context(line, column) -> str` gives the caret context."""
    function_of = {c.id: c.function for c in calls}
    call_of = {c.id: c for c in calls}
    types_: dict[str, Any] = {}
    errors: list[PlanError] = []
    for call in calls:
        for arg in call.args:
            for ref in refs(arg.value):
                if not ref.path or ref.id not in function_of:
                    continue
                fn = function_of[ref.id]
                if fn not in types_:  # any declared type: `add -> float` has no field either
                    spec = toolbox.get(fn)
                    types_[fn] = declared_result(spec) if spec is not None else _ANY
                tp = types_[fn]
                if tp is _ANY:
                    continue
                at, problem = _walk(tp, ref.path)
                if problem:
                    if at == 0:
                        problem += _given(call_of[ref.id], ref.path[0], toolbox.get(fn))
                    errors.append(_error(ref, fn, tp, at, problem, context))
    return errors


def _given(call: Call, step: Step, spec: Any) -> str:
    """A hint when the missing field is an argument the call was given (`s1.expenses`
    for `s1: calculate_profit(revenue=7000, expenses=5000)`): its value is in the plan."""
    given = dict(call.keywords)
    signature = getattr(spec, "signature", None)
    if signature is not None:
        try:
            given = dict(signature.bind_partial(*call.positional, **call.keywords).arguments)
        except TypeError:
            pass
    value = given.get(step) if isinstance(step, str) else None
    if not isinstance(value, Literal):
        return ""
    return (f"; `{step}` is an argument of {call.id} ({json.dumps(value.value)}), "
            "not a field of its result: pass that value itself")


def _error(ref: Ref, fn: str, tp: Any, at: int, problem: str, context: Any) -> FieldError:
    where = describe_path(ref.id, ref.path[:at])
    message = (f"`{ref.display()}`: {where} ({fn} returns {_name(tp)}) {problem}"
               if at == 0 else f"`{ref.display()}`: {where} {problem} ({fn} returns {_name(tp)})")
    ctx = context(ref.line, ref.column) if context and ref.line else ""
    return FieldError(message, line=ref.line, column=ref.column, context=ctx,
                      refs=[(ref.id, ref.path), *([(ref.id, ref.path[:at])] if at else [])])


def describe_results(toolbox: Mapping[str, Any]) -> str:
    """One line per function with a declared result shape, and one per structured type
    in it, for a planner prompt ("" when none has one):

        quote -> Quote
          Quote: symbol: str, price: float, change_pct: float, summary: str
    """
    lines: list[str] = []
    seen: set[Any] = set()

    def shapes(tp: Any, depth: int = 0) -> None:
        if depth > 4:
            return
        tp = _unwrap(tp)
        if _structured(tp):
            if tp in seen:
                return
            seen.add(tp)
            fields = _fields_of(tp)
            if fields is not None:
                lines.append(f"  {_name(tp)}: " + ", ".join(f"{k}: {_name(v)}" for k, v in fields.items()))
                for v in fields.values():
                    shapes(v, depth + 1)
            return
        for arg in typing.get_args(tp):
            if arg is not Ellipsis:
                shapes(arg, depth + 1)

    for name, spec in toolbox.items():
        tp = result_type(spec)
        if tp is not None:
            lines.append(f"{name} -> {_name(tp)}")
            shapes(tp)
    return "\n".join(lines)
