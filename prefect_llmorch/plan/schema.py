"""The JSON schema of a plan in our JSON form, built from a toolbox, for LLMs that decode
under a schema (OpenAI-compatible `response_format={"type": "json_schema", ...}`: OpenAI,
vLLM, Ollama, llama.cpp).

    >>> from prefect_llmorch.functions import Toolbox, inout
    >>> @inout
    ... def search(query: str, limit: int = 3) -> list[str]:
    ...     "Search the web."
    ...     return []
    >>> schema = plan_schema(Toolbox(search))
    >>> [c["properties"]["function"]["enum"] for c in schema["properties"]["calls"]["items"]["anyOf"]]
    [['search'], ['self']]
    >>> call = schema["properties"]["calls"]["items"]["anyOf"][0]["properties"]["kwargs"]
    >>> call["required"], sorted(call["properties"])
    (['query'], ['limit', 'query'])

Each call is `{"id", "function", "kwargs"}` with `function` one of the toolbox's names
(one `anyOf` branch per function, its name as a one-value enum) and `kwargs` that
function's arguments by name, each either its declared type (pydantic's JSON schema of the
annotation) or a reference `{"ref": "s1", "path": [...]}` or a template
`{"template": ["text", {"ref": ...}]}`. Functions with positional-only or `*args`
parameters also take `"args"`. The answer of the plan may be named in `"answer"`.

References are constrained by the declared types, as the plan-time check
(`ref_types.incompatible`) judges them, as far as a JSON schema can say it. It cannot tie
`{"ref": "s3"}` to the function `s3` calls (another item of the array), so the rule is per
parameter, over the whole toolbox: where no function's declared result can fit the
parameter as a whole, a reference needs a `path`, and a one-step path is one of the fields
(of any function's result) whose type can fit. `send_sms(message={"ref": "s3"})` is then
refused while decoding when every function returns a TypedDict, and `{"ref": "s3", "path":
["joke"]}` is what is left to write. The built-in `self` is left out of that judgement (its
text would fit almost everywhere and undo the rule): its whole result is written
`{"template": [{"ref": "s2"}]}`, which reads as the same plan. So every plan the check
accepts has a spelling the schema admits, with two exceptions that fail at run time anyway:
a field path into `self`'s text, and a list or dict literal holding references where the
parameter takes no list or dict (the check does not look inside those; the schema follows
the type). Literals follow pydantic's JSON schema of the type, which is stricter than the
check's lax validation (`"42"` for an `int`).

`response_format(toolbox)` wraps it the way the chat completions API wants it. Pure: no
Prefect, no I/O.
"""

from __future__ import annotations

import collections.abc
import inspect
import json
import typing
from typing import Any, Mapping

from pydantic import TypeAdapter

from .ref_types import _element, _kind, _members, declared_result, incompatible
from .result_types import _ANY, _fields_of, _has_shape, _structured, _unwrap

__all__ = ["plan_schema", "response_format", "with_keywords", "SCHEMA_NAME", "JSON_FORM_HELP"]

SCHEMA_NAME = "llmorch_plan"

_REF = {
    "type": "object",
    "properties": {
        "ref": {"type": "string", "description": "id of an earlier call"},
        "path": {
            "type": "array",
            "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            "description": "fields and indexes to select from its result, e.g. [\"data\", 0]",
        },
    },
    "required": ["ref"],
    "additionalProperties": False,
}
_TEMPLATE = {
    "type": "object",
    "properties": {
        "template": {
            "type": "array",
            "items": {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/ref"}]},
            "description": "text parts and references, joined into one string",
        },
    },
    "required": ["template"],
    "additionalProperties": False,
}

#: How the JSON form reads, for a planner prompt.
JSON_FORM_HELP = """\
Write the plan as one JSON object: {"calls": [call, ...]}. Each call is
{"id": "s1", "function": "<name>", "kwargs": {"<argument>": <value>, ...}}, in order; ids are
s1, s2, ... A value is a JSON value, or the result of an earlier call {"ref": "s1"}, or a
part of it {"ref": "s1", "path": ["data", 0, "id"]}, or text with results inside
{"template": ["Summarize ", {"ref": "s3"}]}; the text of a self call is passed whole as
{"template": [{"ref": "s2"}]}. A call may only use results of earlier calls.
Calls that do not depend on each other run in parallel."""


_GENERIC_REF = {"$ref": "#/$defs/ref"}
_TEMPLATE_REF = {"$ref": "#/$defs/template"}
_STEP = {"anyOf": [{"type": "string"}, {"type": "integer"}]}


class _References:
    """Which references a parameter of a given type can take, judged the way the plan-time
    check judges them (`ref_types.incompatible` on the toolbox's declared results), and the
    `$defs` entries that say it.

    A JSON schema cannot tie `{"ref": "s1"}` to the function `s1` calls, so the rule is per
    parameter and over every function of the toolbox: a whole result is allowed when some
    function's declared result can fit; otherwise the reference needs a `path`, and a
    one-step path is one of the fields (of any declared result) whose type can fit. The
    built-in `self` is left out of that judgement (its text passes everywhere): its whole
    result is written as a one-reference template where a bare reference is refused."""

    def __init__(self, toolbox: Mapping[str, Any], defs: dict[str, Any]) -> None:
        from ..functions import SELF

        self.defs = defs
        self.results = [declared_result(spec) for name, spec in toolbox.items()
                        if not (name == SELF and getattr(spec, "fn", None) is None)]
        self._made: dict[str, str] = {}

    def schema(self, expected: Any) -> dict[str, Any] | None:
        """The reference alternative for a value of type `expected` (`_ANY`: any
        reference); None when no reference can fit."""
        if expected is _ANY or expected is inspect.Parameter.empty:
            return _GENERIC_REF
        if any(r is _ANY or not incompatible(r, expected) for r in self.results):
            return _GENERIC_REF
        path = _path_schema(self.results, expected)
        if path is None:
            return None
        key = json.dumps(path, sort_keys=True)
        if key not in self._made:
            name = f"ref_with_path_{len(self._made) + 1}"
            self._made[key] = name
            self.defs[name] = {
                "type": "object",
                "properties": {"ref": {"type": "string", "description": "id of an earlier call"},
                               "path": path},
                "required": ["ref", "path"],
                "additionalProperties": False,
            }
        return {"$ref": f"#/$defs/{self._made[key]}"}


def _path_schema(results: list[Any], expected: Any) -> dict[str, Any] | None:
    """The schema of the non-empty field paths the plan-time check can accept into some
    result of `results` for a parameter of type `expected` (a superset of them), or None
    when there is none. One-step paths are judged exactly (field names whose types can fit;
    any string or index where the check does not look); longer ones only when some first
    step leads into a value with more steps, with any steps."""
    names: set[str] = set()
    any_name = any_index = deeper = False
    for result in results:
        tp = _unwrap(result)
        if not _has_shape(result, depth=0) or tp is _ANY:
            # the check does not follow paths into these: any path may pass
            any_name = any_index = deeper = True
            continue
        if _structured(tp):
            fields = _fields_of(tp)
            if fields is None:  # extra fields allowed: the check takes any step
                any_name = any_index = deeper = True
                continue
            for name, field_tp in fields.items():
                if not incompatible(field_tp, expected):
                    names.add(name)
                deeper = deeper or _has_steps(field_tp)
            continue
        origin = typing.get_origin(tp) or tp
        if isinstance(origin, type) and issubclass(origin, Mapping):
            any_name = any_index = deeper = True  # the check looks up any key, 0 included
        elif isinstance(origin, type) and issubclass(origin, (tuple, collections.abc.Sequence)) and not issubclass(origin, (str, bytes)):
            any_index = deeper = True
        else:
            any_name = any_index = deeper = True
    first: list[dict[str, Any]] = []
    if any_name:
        first.append({"type": "string"})
    elif names:
        first.append({"enum": sorted(names)})
    if any_index:
        first.append({"type": "integer"})
    one = ({"type": "array", "minItems": 1, "maxItems": 1,
            "items": first[0] if len(first) == 1 else {"anyOf": first}} if first else None)
    longer = {"type": "array", "minItems": 2, "items": _STEP} if deeper else None
    if one and longer:
        return {"anyOf": [one, longer], "description": _PATH_HELP}
    if one or longer:
        return {**(one or longer), "description": _PATH_HELP}  # type: ignore[dict-item]
    return None


_PATH_HELP = "fields and indexes to select from its result"


def _has_steps(tp: Any) -> bool:
    """Whether a path may go on past a value of type `tp` (the check rejects any step into
    a str, bytes, number, bool or None)."""
    tp = _unwrap(tp)
    if tp is _ANY:
        return True
    origin = typing.get_origin(tp) or tp
    return not (isinstance(origin, type) and issubclass(origin, (str, bytes, int, float, bool, type(None))))


def _or_ref(schema: dict[str, Any], expected: Any, refs: _References) -> dict[str, Any]:
    """`schema`, or a reference or template in its place, and so inside its items and
    properties too (`[s1, s2]` for a `list[float]`). `expected` is the Python type the
    plan-time check judges a reference here against (`_ANY`: it does not)."""
    if not schema:
        return {}  # any JSON value (references included)
    ref = refs.schema(expected)
    return {"anyOf": [_inside(schema, expected, refs)] + ([ref] if ref else []) + [_TEMPLATE_REF]}


def _inside(schema: dict[str, Any], expected: Any, refs: _References) -> dict[str, Any]:
    """`schema` with references allowed inside its items and properties, each judged as the
    plan-time check judges it: items of a list against the element type, values of a dict
    against the value type, anything else (model fields, tuple items, union members'
    insides) not at all."""

    schema = dict(schema)
    known = expected is not _ANY and expected is not inspect.Parameter.empty and _members(expected) is None
    if isinstance(schema.get("items"), dict):
        schema["items"] = _or_ref(schema["items"], _element(expected) if known else _ANY, refs)
    if isinstance(schema.get("prefixItems"), list):
        schema["prefixItems"] = [_or_ref(x, _ANY, refs) for x in schema["prefixItems"]]
    if isinstance(schema.get("properties"), dict):
        schema["properties"] = {k: _or_ref(v, _ANY, refs) for k, v in schema["properties"].items()}
    if isinstance(schema.get("additionalProperties"), dict):
        args = typing.get_args(expected) if known and _kind(expected) == "mapping" else ()
        value = args[1] if len(args) == 2 else _ANY
        schema["additionalProperties"] = _or_ref(schema["additionalProperties"], value, refs)
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            # the reference alternative sits once, around the whole union
            schema[key] = [_inside(x, _ANY, refs) for x in schema[key]]
    return schema


def _value_schema(annotation: Any, refs: _References) -> dict[str, Any]:

    if annotation is inspect.Parameter.empty:
        return {}
    try:
        schema = TypeAdapter(annotation).json_schema(ref_template="#/$defs/{model}")
    except Exception:  # an annotation pydantic has no schema for: accept any value
        return {}
    for name, sub in (schema.pop("$defs", None) or {}).items():
        if name not in refs.defs:  # a model's fields may hold references (not checked)
            refs.defs[name] = _inside(sub, _ANY, refs)
    return _or_ref(schema, annotation, refs)


def _annotation(spec: Any, param: inspect.Parameter) -> Any:
    ann = param.annotation
    if isinstance(ann, str):  # postponed annotations: resolve in the function's module
        from ..functions import eval_annotation

        try:
            ann = eval_annotation(ann, spec.fn)
        except Exception:
            return inspect.Parameter.empty
    return ann


def _call_schema(spec: Any, refs: _References) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required: list[str] = []
    takes_args = False
    extra = False
    for name, p in spec.signature.parameters.items():
        if p.kind in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL):
            takes_args = True
            continue
        if p.kind is p.VAR_KEYWORD:
            extra = True
            continue
        properties[name] = _value_schema(_annotation(spec, p), refs)
        if p.default is p.empty:
            required.append(name)
    kwargs: dict[str, Any] = {"type": "object", "properties": properties, "required": required,
                              "additionalProperties": extra}
    call: dict[str, Any] = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "function": {"type": "string", "enum": [spec.name]},
            "kwargs": kwargs,
        },
        # the JSON form may leave out an empty "kwargs" (and `to_text("json")` does)
        "required": ["id", "function", "kwargs"] if required else ["id", "function"],
        "additionalProperties": False,
    }
    if spec.description:
        call["description"] = spec.description.splitlines()[0][:200]
    if takes_args:
        call["properties"]["args"] = {"type": "array"}
    return call


def plan_schema(toolbox: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON schema of a plan in the JSON form that calls only `toolbox`'s functions."""
    defs: dict[str, Any] = {"ref": _REF, "template": _TEMPLATE}
    refs = _References(toolbox, defs)
    calls = [_call_schema(spec, refs) for spec in toolbox.values()]
    return {
        "type": "object",
        "properties": {
            "calls": {"type": "array", "minItems": 1, "items": {"anyOf": calls}},
            "answer": {"$ref": "#/$defs/ref"},
        },
        "required": ["calls"],
        "additionalProperties": False,
        "$defs": defs,
    }


def response_format(toolbox: Mapping[str, Any]) -> dict[str, Any]:
    """`response_format` for a chat completion request: the plan schema, by name.

    >>> from prefect_llmorch.functions import Toolbox
    >>> response_format(Toolbox())["json_schema"]["name"]
    'llmorch_plan'
    """
    schema = plan_schema(toolbox)
    json.dumps(schema)  # fail here, not in the HTTP client, if something is not JSON
    return {"type": "json_schema", "json_schema": {"name": SCHEMA_NAME, "schema": schema}}


def with_keywords(plan: Any, toolbox: Mapping[str, Any]) -> Any:
    """The plan with positional arguments named after the functions' parameters (the
    JSON form the schema asks for, and the NESTFUL form, take arguments by name).

    >>> from prefect_llmorch.functions import Toolbox, inout
    >>> from prefect_llmorch.plan.parser import parse
    >>> @inout
    ... def search(query: str, limit: int = 3) -> str:
    ...     return query
    >>> with_keywords(parse('s1: search("a", 2)'), Toolbox(search)).to_text()
    's1: search(query="a", limit=2)'
    """
    from .model import Arg, Call, Plan

    calls = []
    for call in plan.calls:
        spec = toolbox.get(call.function)
        names = [n for n, p in spec.signature.parameters.items()
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)] if spec else []
        args, i = [], 0
        for arg in call.args:
            if arg.name is None and i < len(names) and names[i] not in call.keywords:
                args.append(Arg(names[i], arg.value))
                i += 1
            else:
                args.append(arg)
                i = len(names) if arg.name is None else i
        calls.append(Call(call.id, call.function, tuple(args), call.line, call.column))
    return Plan(tuple(calls), plan.dialect, plan.answer)
