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

`response_format(toolbox)` wraps it the way the chat completions API wants it. Pure: no
Prefect, no I/O.
"""

from __future__ import annotations

import inspect
import json
from typing import Any, Mapping

from pydantic import TypeAdapter

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
{"template": ["Summarize ", {"ref": "s3"}]}. A call may only use results of earlier calls.
Calls that do not depend on each other run in parallel."""


_OR_REF = [{"$ref": "#/$defs/ref"}, {"$ref": "#/$defs/template"}]


def _or_ref(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema`, or a reference or template in its place, and so inside its items and
    properties too (`[s1, s2]` for a `list[float]`)."""
    if not schema:
        return {}  # any JSON value (references included)
    schema = dict(schema)
    if isinstance(schema.get("items"), dict):
        schema["items"] = _or_ref(schema["items"])
    if isinstance(schema.get("properties"), dict):
        schema["properties"] = {k: _or_ref(v) for k, v in schema["properties"].items()}
    if isinstance(schema.get("additionalProperties"), dict):
        schema["additionalProperties"] = _or_ref(schema["additionalProperties"])
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            schema[key] = [s for s in (_or_ref(x) for x in schema[key])]
    return {"anyOf": [schema] + _OR_REF}


def _value_schema(annotation: Any, defs: dict[str, Any]) -> dict[str, Any]:
    if annotation is inspect.Parameter.empty:
        return {}
    try:
        schema = TypeAdapter(annotation).json_schema(ref_template="#/$defs/{model}")
    except Exception:  # an annotation pydantic has no schema for: accept any value
        return {}
    for name, sub in (schema.pop("$defs", None) or {}).items():
        defs.setdefault(name, sub)
    return _or_ref(schema)


def _annotation(spec: Any, param: inspect.Parameter) -> Any:
    ann = param.annotation
    if isinstance(ann, str):  # postponed annotations: resolve in the function's module
        from ..functions import eval_annotation

        try:
            ann = eval_annotation(ann, spec.fn)
        except Exception:
            return inspect.Parameter.empty
    return ann


def _call_schema(spec: Any, defs: dict[str, Any]) -> dict[str, Any]:
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
        properties[name] = _value_schema(_annotation(spec, p), defs)
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
        "required": ["id", "function", "kwargs"],
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
    calls = [_call_schema(spec, defs) for spec in toolbox.values()]
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
