"""JSON Schema -> Python types, so an MCP tool is checked at plan time like a Python function.

An MCP tool declares its parameters (`inputSchema`) and, optionally, its result
(`outputSchema`) in JSON Schema. `signature_of` turns the parameters into an
`inspect.Signature` whose annotations are Python types (`str`, `int`, `list[str]`,
`Literal["a", "b"]`, a `TypedDict` for an object with properties), and `result_type_of` the
result into such a type: `FunctionSpec.check` (arity, keywords, types of known arguments)
and `plan.result_types` (field access: `s1.title`) then work on MCP tools unchanged.

    >>> sig, names = signature_of({"type": "object", "properties": {
    ...     "query": {"type": "string"}, "limit": {"type": "integer", "default": 5}},
    ...     "required": ["query"]}, "search")
    >>> str(sig)
    '(query: str, limit: int = 5)'

What JSON Schema says that Python types cannot (`minimum`, `pattern`, ...) is left to the
server, which checks it when the call runs. No I/O.
"""

from __future__ import annotations

import inspect
import keyword
import re
import typing
from typing import Any, Literal, Mapping

from typing_extensions import NotRequired, Required, TypedDict

__all__ = ["python_type", "result_type_of", "signature_of", "unwrap_result"]

#: FastMCP wraps a result that is not an object as `{"result": value}` and marks the schema so.
WRAP_MARK = "x-fastmcp-wrap-result"
_SCALARS: dict[str, Any] = {"string": str, "integer": int, "number": float, "boolean": bool, "null": type(None)}
_MAX_DEPTH = 8  # recursive schemas ($ref to itself) stop being checked below this


def python_type(schema: Any, defs: Mapping[str, Any] | None = None, name: str = "Result", _depth: int = 0) -> Any:
    """The Python type a JSON Schema describes (`Any` for what it does not pin down).

    >>> python_type({"type": "array", "items": {"type": "string"}})
    list[str]
    >>> python_type({"enum": ["asc", "desc"]})
    typing.Literal['asc', 'desc']
    >>> python_type({"anyOf": [{"type": "integer"}, {"type": "null"}]})
    typing.Optional[int]
    """
    if not isinstance(schema, Mapping) or _depth > _MAX_DEPTH:
        return Any
    defs = defs if defs is not None else schema.get("$defs", schema.get("definitions", {}))
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target = ref.rsplit("/", 1)[-1]
        return python_type(defs.get(target), defs, target, _depth + 1) if target in defs else Any
    if "const" in schema and _literal_ok([schema["const"]]):
        return Literal[schema["const"]]  # type: ignore[valid-type]
    if isinstance(schema.get("enum"), list) and schema["enum"] and _literal_ok(schema["enum"]):
        return Literal[tuple(schema["enum"])]  # type: ignore[valid-type]
    for union in ("anyOf", "oneOf"):
        options = schema.get(union)
        if isinstance(options, list) and options:
            members = [python_type(o, defs, name, _depth + 1) for o in options]
            if any(m is Any for m in members):
                return Any
            return typing.Union[tuple(members)]  # type: ignore[return-value]
    kind = schema.get("type")
    if isinstance(kind, list):
        members = [python_type({**schema, "type": k}, defs, name, _depth + 1) for k in kind]
        return Any if any(m is Any for m in members) else typing.Union[tuple(members)]
    if kind in _SCALARS:
        return _SCALARS[kind]
    if kind == "array":
        items = schema.get("items")
        return list[python_type(items, defs, name + "Item", _depth + 1)] if isinstance(items, Mapping) else list
    if kind == "object" or "properties" in schema:
        props = schema.get("properties")
        if not isinstance(props, Mapping) or not props:
            extra = schema.get("additionalProperties")
            value = python_type(extra, defs, name + "Value", _depth + 1) if isinstance(extra, Mapping) else Any
            return dict[str, value]  # type: ignore[valid-type]
        required = set(schema.get("required") or ())
        fields = {
            key: (Required if key in required else NotRequired)[python_type(sub, defs, _class_name(name, key), _depth + 1)]
            for key, sub in props.items()
        }
        # a TypedDict: `plan.result_types` checks `s1.field` against its keys (field names
        # need not be identifiers in the functional form)
        shape = TypedDict(name if name.isidentifier() else _class_name(name, ""), fields)  # type: ignore[operator]
        shape.__module__ = "builtins"  # shown as `LookupResult` in the planner's prompt, not a module path
        return shape
    return Any


def _literal_ok(values: list[Any]) -> bool:
    return all(v is None or isinstance(v, (str, int, bool)) for v in values)


def _class_name(base: str, key: str) -> str:
    text = re.sub(r"[^0-9A-Za-z]+", " ", f"{base} {key}").title().replace(" ", "")
    return text if text and text[0].isalpha() else "T" + text


def identifier(name: str) -> str:
    """A Python parameter name for a JSON property name (`max-results` -> `max_results`,
    `from` -> `from_`)."""
    text = re.sub(r"\W", "_", name)
    if not text or text[0].isdigit():
        text = "_" + text
    return text + "_" if keyword.iskeyword(text) else text


def signature_of(input_schema: Mapping[str, Any], tool: str) -> tuple[inspect.Signature, dict[str, str]]:
    """The signature of a tool's parameters, and each Python parameter's JSON property name.

    Required properties come first (in the schema's order), then the optional ones: an
    optional property without a default defaults to None (the call then leaves it out).
    All are keyword-or-positional, in that order.

    Raises:
        ValueError: two properties map to the same Python name.
    """
    props = input_schema.get("properties") or {}
    if not isinstance(props, Mapping):
        props = {}
    required = [k for k in props if k in set(input_schema.get("required") or ())]
    optional = [k for k in props if k not in required]
    defs = input_schema.get("$defs", input_schema.get("definitions", {}))
    params: list[inspect.Parameter] = []
    names: dict[str, str] = {}
    for key in required + optional:
        py = identifier(key)
        if py in names:
            raise ValueError(f"tool {tool}: properties {names[py]!r} and {key!r} both become parameter {py!r}")
        names[py] = key
        sub = props[key]
        tp = python_type(sub, defs, _class_name(tool, key))
        if key in required:
            default: Any = inspect.Parameter.empty
        else:
            default = sub.get("default") if isinstance(sub, Mapping) else None
            if default is None and tp is not Any:
                tp = typing.Optional[tp]
        params.append(inspect.Parameter(py, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=tp))
    return inspect.Signature(params), names


def result_type_of(output_schema: Mapping[str, Any] | None, tool: str) -> Any:
    """The result's Python type from a tool's output schema (FastMCP's `{"result": ...}`
    wrapper taken off); `str` without a schema (the tool's text content)."""
    if not isinstance(output_schema, Mapping):
        return str
    if output_schema.get(WRAP_MARK):
        inner = (output_schema.get("properties") or {}).get("result")
        defs = output_schema.get("$defs", {})
        return python_type(inner, defs, _class_name(tool, "result"))
    return python_type(output_schema, None, _class_name(tool, "result"))


def unwrap_result(output_schema: Mapping[str, Any] | None, structured: Any) -> Any:
    """The value a plan sees for structured content: FastMCP's wrapper taken off."""
    if isinstance(output_schema, Mapping) and output_schema.get(WRAP_MARK) and isinstance(structured, Mapping):
        return structured.get("result")
    return structured

