"""Plan-time checks of references against the parameters they are passed to.

A reference's declared type is its function's return annotation, and through a field path
the field's type (`result_types`). Passed as an argument, it is checked against the
parameter's annotation the way literal arguments are: a `Quote` where `str` is expected is
an `ArgumentError` at the reference, with a hint naming the fields that fit.

    >>> from pydantic import BaseModel
    >>> class Quote(BaseModel):
    ...     symbol: str
    ...     price: float
    >>> incompatible(Quote, str), incompatible(int, float), incompatible(str, int)
    (True, False, False)
    >>> fitting_paths(Quote, str)
    [('symbol',)]

The check is conservative: it rejects only what the run-time validation (pydantic, lax
mode) rejects for every value of the declared type, so a plan that can run is never
refused. A model, dataclass or TypedDict where `str`, `int`, `float` or `bool` is expected
is rejected, and so are `str` where a model is expected, a number where `str` is expected
and `None` where a value is needed. `str` for `int` passes ("42" validates), as do `int` for
`float`, `Any`, unannotated parameters and results, and anything this module cannot
classify. In a union, a reference fails only when no member can take it; an optional
result (`Quote | None`) is judged by its value type.

No Prefect, no I/O. Annotations are the toolbox author's code, resolved as
`typing.get_type_hints` does; plan text is never evaluated.
"""

from __future__ import annotations

import collections.abc
import enum
import inspect
import types
import typing
from typing import Any, Callable, Mapping, Sequence

from .errors import ArgumentError, PlanError
from .model import Call, DictExpr, Expr, ListExpr, Ref, Step, describe_path
from .result_types import _ANY, _fields_of, _name, _step, _structured, _walk, declared_result

__all__ = ["incompatible", "fitting_paths", "declared_result", "reference_type_errors"]

# What a type is, for this check: a scalar kind, "none", "struct", "list", "mapping" or
# "any" (unknown: never rejected).
_SCALARS = {str: "str", bytes: "bytes", bool: "bool", int: "int", float: "float"}
#: For each expected kind, the declared kinds pydantic rejects whatever the value.
_REJECTS: dict[str, frozenset[str]] = {
    "str": frozenset({"int", "float", "bool", "none", "struct", "list", "mapping"}),
    "int": frozenset({"none", "struct", "list", "mapping"}),
    "float": frozenset({"none", "struct", "list", "mapping"}),
    "bool": frozenset({"none", "struct", "list", "mapping"}),
    "bytes": frozenset({"int", "float", "bool", "none", "struct", "list", "mapping"}),
    # a model is iterable: pydantic makes a list of its (field, value) pairs
    "list": frozenset({"str", "bytes", "int", "float", "bool", "none", "mapping"}),
    "mapping": frozenset({"str", "bytes", "int", "float", "bool", "none", "list"}),
    "struct": frozenset({"str", "bytes", "int", "float", "bool", "none", "list"}),
    # `None` takes only None: without this, the None of `list | None` took a float
    "none": frozenset({"str", "bytes", "int", "float", "bool", "struct", "list", "mapping"}),
}
# Sequence kinds pydantic validates from lists (not `Iterable`, which takes a str).
_LISTS = (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.MutableSequence,
          collections.abc.Set, collections.abc.MutableSet)


def _members(tp: Any) -> list[Any] | None:
    """The members of a union (Annotated unwrapped), or None for a non-union."""
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return list(typing.get_args(tp))
    return None


def _kind(tp: Any) -> str:
    """The kind of a non-union type; "any" when unknown."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif isinstance(tp, typing.NewType):
            tp = tp.__supertype__
        elif origin is typing.Literal:
            kinds = {_kind(type(v)) for v in typing.get_args(tp)}
            return kinds.pop() if len(kinds) == 1 else "any"
        else:
            break
    if tp is None or tp is type(None):
        return "none"
    if _structured(tp):
        return "struct"
    origin = typing.get_origin(tp) or tp
    if not isinstance(origin, type) or issubclass(origin, enum.Enum):
        return "any"  # TypeVar, Any, forward references, enums (validated from their values)
    for scalar, kind in _SCALARS.items():  # bool before int: it is one
        if origin is scalar:
            return kind
    if issubclass(origin, (str, bytes)):
        return "any"  # a str subclass with its own validation
    if issubclass(origin, collections.abc.Mapping):
        return "mapping"
    if origin in _LISTS:
        return "list"
    return "any"


def incompatible(declared: Any, expected: Any) -> bool:
    """Whether a value declared as `declared` can never be valid for a parameter annotated
    `expected` (True only when run-time validation would reject every such value)."""
    expected_members = _members(expected)
    if expected_members is not None:
        return all(incompatible(declared, m) for m in expected_members)
    declared_members = _members(declared)
    if declared_members is not None:
        # each member, None too: an Optional result may be None, which `x: list | None` takes
        return all(incompatible(m, expected) for m in declared_members)
    return _kind(declared) in _REJECTS.get(_kind(expected), frozenset())


def _fits(declared: Any, expected: Any) -> bool:
    """Whether `declared` is what `expected` asks for (for hints: stricter than not
    `incompatible`): the same kind, or int for float."""
    expected_members = _members(expected)
    if expected_members is not None:
        return any(_fits(declared, m) for m in expected_members if m is not type(None))
    declared_members = _members(declared)
    if declared_members is not None:
        values = [m for m in declared_members if m is not type(None)]
        return bool(values) and all(_fits(m, expected) for m in values)
    have, want = _kind(declared), _kind(expected)
    if have == "any" or want == "any":
        return False
    return have == want or (have, want) in {("int", "float"), ("bool", "int")}


def fitting_paths(declared: Any, expected: Any, depth: int = 2) -> list[tuple[Step, ...]]:
    """Field paths into a `declared` value whose types fit `expected`, shortest first:
    fields of models, dataclasses and TypedDicts, `[0]` of lists, up to `depth` steps."""
    found: list[tuple[Step, ...]] = []
    frontier: list[tuple[tuple[Step, ...], Any]] = [((), declared)]
    for _ in range(depth):
        nxt: list[tuple[tuple[Step, ...], Any]] = []
        for path, tp in frontier:
            for step in _steps(tp):
                sub, problem = _step(tp, step)
                if problem or sub is _ANY:
                    continue
                if _fits(sub, expected):
                    found.append(path + (step,))
                else:
                    nxt.append((path + (step,), sub))
        frontier = nxt
    return found


def _steps(tp: Any) -> list[Step]:
    members = _members(tp)
    if members is not None:
        values = [m for m in members if m is not type(None)]
        if len(values) != 1:
            return []
        tp = values[0]
    if _structured(tp):
        return list(_fields_of(tp) or ())
    if _kind(tp) == "list" and typing.get_args(tp):
        return [0]
    return []


def _parameter_types(spec: Any) -> dict[str, Any]:
    """Parameter name -> resolved annotation (unannotated and unresolvable ones left out)."""
    from ..functions import eval_annotation

    out: dict[str, Any] = {}
    try:
        params = spec.signature.parameters
    except Exception:
        return out
    for name, p in params.items():
        ann = p.annotation
        if ann is inspect.Parameter.empty:
            continue
        if isinstance(ann, str):
            try:
                ann = eval_annotation(ann, spec.fn)
            except Exception:
                continue
        out[name] = ann
    return out


def _element(tp: Any) -> Any:
    """The item type of a homogeneous list/set/sequence annotation, else `_ANY`."""
    if _members(tp) is not None or _kind(tp) != "list":
        return _ANY
    args = [a for a in typing.get_args(tp) if a is not Ellipsis]
    return args[0] if len(args) == 1 else _ANY


def reference_type_errors(calls: Sequence[Call], toolbox: Mapping[str, Any],
                          context: Callable[[int, int], str] | None = None) -> list[PlanError]:
    """An `ArgumentError` for every reference whose declared type a parameter cannot take,
    at the reference's line and column. `context(line, column)` gives the caret context.

    Arguments that do not bind (arity, keywords) are reported by `FunctionSpec.check`
    and skipped here, as are references to calls outside `calls`."""
    function_of = {c.id: c.function for c in calls}
    results: dict[str, Any] = {}
    errors: list[PlanError] = []

    def result_of(fn: str) -> Any:
        if fn not in results:
            spec = toolbox.get(fn)
            results[fn] = declared_result(spec) if spec is not None else _ANY
        return results[fn]

    def check(call: Call, param: str, expr: Expr, expected: Any) -> None:
        if expected is _ANY:
            return
        if isinstance(expr, ListExpr):
            for item in expr.items:
                check(call, param, item, _element(expected))
        elif isinstance(expr, DictExpr) and _members(expected) is None and _kind(expected) == "mapping":
            args = typing.get_args(expected)
            for _, value in expr.items:
                check(call, param, value, args[1] if len(args) == 2 else _ANY)
        elif isinstance(expr, Ref) and expr.id in function_of:
            ret = result_of(function_of[expr.id])
            if ret is _ANY:
                return
            declared = _declared_at(ret, expr.path)
            if declared is not _ANY and incompatible(declared, expected):
                errors.append(_error(call, param, expr, function_of[expr.id], ret, declared, expected, context))

    for call in calls:
        spec = toolbox.get(call.function)
        if spec is None:
            continue
        types_ = _parameter_types(spec)
        if not types_:
            continue
        try:
            bound = spec.signature.bind(*call.positional, **call.keywords)
        except TypeError:
            continue  # reported by FunctionSpec.check
        for param, value in bound.arguments.items():
            if param not in types_:
                continue
            kind = spec.signature.parameters[param].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                for item in value:
                    check(call, param, item, types_[param])
            elif kind is inspect.Parameter.VAR_KEYWORD:
                for item in value.values():
                    check(call, param, item, types_[param])
            else:
                check(call, param, value, types_[param])
    return errors


def _declared_at(tp: Any, path: tuple[Step, ...]) -> Any:
    """The declared type at `path` in a value of type `tp` (`_ANY` when the path leaves
    what is declared, or is wrong: `field_errors` reports that)."""
    if not path:
        return tp
    at, problem = _walk(tp, path)
    if problem or at < len(path):
        return _ANY
    for step in path:
        tp, _ = _step(tp, step)
    return tp


def _error(call: Call, param: str, ref: Ref, fn: str, ret: Any, declared: Any, expected: Any,
           context: Callable[[int, int], str] | None) -> ArgumentError:
    what = ref.display()
    origin = f" ({fn} returns {_name(ret)})" if ref.path else ""
    message = (f"{call.function}() argument `{param}` expects {_name(expected)}, "
               f"but {what} is {_article(_name(declared))}{origin}")
    paths = fitting_paths(declared, expected)
    named = [(ref.id, ref.path)] if ref.path else []
    if paths:
        shown = [f"{describe_path(ref.id, ref.path + p)} ({_name(_declared_at(declared, p))})" for p in paths[:3]]
        message += f"; did you mean {' or '.join(shown)}?"
        named += [(ref.id, ref.path + p) for p in paths[:3]]
    elif _structured(_strip_optional(declared)) and _kind(expected) in _SCALARS.values():
        message += f"; it has no field of type {_name(expected)}: pass a field or use a function that takes a {_name(declared)}"
    ctx = context(ref.line, ref.column) if context and ref.line else ""
    return ArgumentError(message, line=ref.line, column=ref.column, context=ctx, refs=named)


def _strip_optional(tp: Any) -> Any:
    members = _members(tp)
    if members is None:
        return tp
    values = [m for m in members if m is not type(None)]
    return values[0] if len(values) == 1 else tp


def _article(name: str) -> str:
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"

