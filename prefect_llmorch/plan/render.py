"""`Plan` -> text in either dialect; `parse(render(plan, d)) == plan`.

    >>> from prefect_llmorch.plan.parser import parse
    >>> plan = parse('s1: search("Apple stock")\\ns2: chatbot("Summarize {s1}", n=s1 * 2)')
    >>> print(render(plan, "paper"))
    s1: search("Apple stock")
    s2: chatbot("Summarize {s1}", n=s1 * 2)
    >>> print(render(plan, "llmcompiler"))
    1. search("Apple stock")
    2. chatbot("Summarize $1", n=$1 * 2)
    3. join()<END_OF_PLAN>

Ids:

- paper: ids are written as they are (`s1: ...`). A numeric first id makes the text read
  back as the LLMCompiler dialect; references are then written so that either reading works.
- llmcompiler: ids that are already `1`, `2`, ... (distinct decimal numbers without leading
  zeros) are kept; otherwise the calls are renumbered 1..n in plan order and every
  reference is renumbered with them (so the text parses back to the plan *up to that
  renaming*). A final `N. join()<END_OF_PLAN>` follows, N = largest id + 1.

Strings are written in double quotes on one line (`\\n` escapes). Text that would read as
a reference is escaped (`\\{`, `\\$`). Every nested operator expression is parenthesised.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Mapping

from .model import (
    DIALECTS, Arg, BinOp, Call, DictExpr, Dialect, Expr, ListExpr, Literal, Plan, Ref, Step, Template,
    chain, use_renderer,
)
from .jsonplan import _J, _NESTFUL_REF, _SHAPES, NESTFUL_RESULT, _Reader
from .parser import _BRACE_ARITHMETIC, _BRACE_REF

__all__ = ["render", "render_json"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_KEYWORDS = {"true", "false", "null", "True", "False", "None"}
_SIMPLE_ID = re.compile(r"[A-Za-z0-9_]+\Z")
# What would start a reference inside a string (see parser module docstring).
# what the paper dialect reads specially after `{`: a reference, or arithmetic the parser
# rejects (`{s1 / 2}`); text like it is written escaped
_PAPER_REF_START = re.compile(r"\$\{|" + _BRACE_REF.pattern + "|" + _BRACE_ARITHMETIC.pattern)
_LLMC_REF_START = re.compile(r"\$(\d|\{)")
# Text right after a bare `$N` that would read as a step of it (`.name`, `[`).
_STEP_START = re.compile(r"\.[A-Za-z_]|\[")
# How much of the text after a string part is kept to decide its escaping: a reference
# that starts in the part and ends further on than this would need an id this long.
_AFTER = 4096
_CHAR_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def render(plan: Plan, dialect: Dialect = "paper") -> str:
    """Write a plan as text in `dialect` ("paper" or "llmcompiler").

    Raises:
        ValueError: an unknown dialect, or a value with no written form (NaN).
    """
    if dialect not in DIALECTS:
        raise ValueError(f"dialect must be one of {', '.join(map(repr, DIALECTS))}, got {dialect!r}")
    if dialect in ("json", "nestful"):
        return render_json(plan, dialect)
    calls = plan.calls
    for c in calls:
        if not _NAME.match(c.function) or c.function in _KEYWORDS:
            raise ValueError(f"the function name {c.function!r} has no written form in the "
                             f"{dialect} dialect; use \"json\"")
        if dialect == "paper" and not (_NAME.match(c.id) or c.id.isdigit()):
            raise ValueError(f"the call id {c.id!r} has no written form in the paper dialect")
    if dialect == "llmcompiler":
        ids = [c.id for c in calls]
        if not all(i.isdigit() and str(int(i)) == i for i in ids) or len(set(ids)) != len(ids):
            calls = _renumber(calls)
        r = _Renderer("llmcompiler", llmc_refs=True)
        lines = [f"{c.id}. {r.call(c)}" for c in calls]
        last = max((int(c.id) for c in calls), default=0)
        lines.append(f"{last + 1}. join()<END_OF_PLAN>")
    else:
        # The text reads back as llmcompiler when its first label is a number.
        reads_as: Dialect = "llmcompiler" if calls and calls[0].id.isdigit() else "paper"
        r = _Renderer(reads_as, llmc_refs=False)
        lines = [f"{c.id}: {r.call(c)}" for c in calls]
    return "\n".join(lines)


def _renumber(calls: tuple[Call, ...]) -> tuple[Call, ...]:
    mapping: dict[str, str] = {}
    for n, c in enumerate(calls, 1):
        mapping.setdefault(c.id, str(n))
    out = []
    for n, c in enumerate(calls, 1):
        args = tuple(Arg(a.name, _rename(a.value, mapping)) for a in c.args)
        out.append(Call(str(n), c.function, args, c.line, c.column))
    return tuple(out)


def _rename(expr: Expr, mapping: Mapping[str, str]) -> Expr:
    if isinstance(expr, Ref):
        return Ref(mapping.get(expr.id, expr.id), expr.line, expr.column, expr.path)
    if isinstance(expr, ListExpr):
        return ListExpr(tuple(_rename(e, mapping) for e in expr.items))
    if isinstance(expr, DictExpr):
        return DictExpr(tuple((k, _rename(v, mapping)) for k, v in expr.items))
    if isinstance(expr, Template):
        return Template(tuple(p if isinstance(p, str) else _rename(p, mapping) for p in expr.parts))
    if isinstance(expr, BinOp):
        first, rest = chain(expr)
        node = _rename(first, mapping)
        for op, right in rest:
            node = BinOp(op, node, _rename(right, mapping))
        return node
    return expr


class _Renderer:
    """`reads_as`: the dialect the parser will read the text in (it decides which string
    text must be escaped); `llmc_refs`: write references LLMCompiler style (`$1`)."""

    def __init__(self, reads_as: Dialect, llmc_refs: bool) -> None:
        self.reads_as = reads_as
        self.llmc_refs = llmc_refs

    def call(self, call: Call) -> str:
        return f"{call.function}({', '.join(self.arg(a) for a in call.args)})"

    def arg(self, arg: Arg) -> str:
        value = self.expr(arg.value)
        return value if arg.name is None else f"{arg.name}={value}"

    def expr(self, expr: Expr) -> str:
        if isinstance(expr, Literal):
            return self.literal(expr.value)
        if isinstance(expr, Ref):
            return self.ref(expr.id) + "".join(self.step(s) for s in expr.path)
        if isinstance(expr, ListExpr):
            return "[" + ", ".join(self.expr(e) for e in expr.items) + "]"
        if isinstance(expr, DictExpr):
            return "{" + ", ".join(f"{self.key(k)}: {self.expr(v)}" for k, v in expr.items) + "}"
        if isinstance(expr, Template):
            return self.template(expr.parts)
        if isinstance(expr, BinOp):
            # ((a + b) + c) + d, built in one pass along the left spine (no recursion there).
            first, rest = chain(expr)
            out = ["(" * (len(rest) - 1), self.operand(first)]
            for n, (op, right) in enumerate(rest):
                out.append(f" {op} {self.operand(right)}" + (")" if n < len(rest) - 1 else ""))
            return "".join(out)
        raise TypeError(f"not a plan expression: {expr!r}")

    def operand(self, expr: Expr) -> str:
        text = self.expr(expr)
        return f"({text})" if isinstance(expr, BinOp) else text

    def ref(self, call_id: str) -> str:
        if self.llmc_refs and call_id.isdigit():
            return f"${call_id}"
        if not self.llmc_refs and _NAME.match(call_id) and call_id not in _KEYWORDS:
            return call_id
        return f"${{{call_id}}}"

    def step(self, step: Step) -> str:
        if isinstance(step, int):
            return f"[{step}]"
        if _NAME.match(step) and step not in _KEYWORDS:
            return f".{step}"
        return f"[{self.literal(step)}]"

    def string_ref(self, ref: Ref, text_after: str) -> str:
        call_id = ref.id
        steps = "".join(_string_step(s) for s in ref.path)
        if (self.llmc_refs and call_id.isdigit() and not ref.path
                and not text_after[:1].isdigit() and not _STEP_START.match(text_after)):
            return f"${call_id}"
        if self.reads_as == "paper" and _SIMPLE_ID.match(call_id):
            return f"{{{call_id}{steps}}}"
        return f"${{{call_id}{steps}}}"

    def literal(self, value: object) -> str:
        if value is None:
            return "null"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            return str(value)
        if isinstance(value, float):
            if math.isnan(value):
                raise ValueError("NaN has no written form in a plan")
            if math.isinf(value):
                return "1e999" if value > 0 else "-1e999"
            return repr(value)
        return self.template((str(value),))

    def key(self, key: object) -> str:
        return self.literal(key)

    def template(self, parts: tuple[str | Ref, ...]) -> str:
        out: list[str] = []
        # Render right to left: a part's escaping depends on what is written after it. Only
        # the start of what follows can matter, so `after` keeps a bounded head of it (the
        # whole of it made rendering quadratic in the template's length).
        after = ""
        for part in reversed(parts):
            if isinstance(part, Ref):
                piece = self.string_ref(part, after)
            else:
                piece = self.text(part, after)
            out.append(piece)
            after = (piece[:_AFTER] + after)[:_AFTER]
        return '"' + "".join(reversed(out)) + '"'

    def text(self, text: str, after: str) -> str:
        pattern = _PAPER_REF_START if self.reads_as == "paper" else _LLMC_REF_START
        out = []
        rest = None  # text + after, built once, at the first `$` or `{`
        for i, ch in enumerate(text):
            if ch in "${" and pattern.match(rest := rest if rest is not None else text + after, i):
                out.append("\\" + ch)
            elif ch in _CHAR_ESCAPES:
                out.append(_CHAR_ESCAPES[ch])
            elif ord(ch) < 0x20 or ch == "\x7f":
                out.append(f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
        return "".join(out)


def _string_step(step: Step) -> str:
    """A step inside a (double-quoted) string: `.name`, `[0]`, `['key']` or `[\\"key's\\"]`."""
    if isinstance(step, int):
        return f"[{step}]"
    if _NAME.match(step):
        return f".{step}"
    if "\\" in step or "\n" in step or '"' in step:  # strings are written in double quotes
        raise ValueError(f"the field name {step!r} has no written form inside a string; "
                         "select it outside the string")
    return f"['{step}']" if "'" not in step else f'[\\"{step}\\"]'


# --------------------------------------------------------------------------- render


def render_json(plan: Plan, dialect: Dialect = "json") -> str:
    """Write a plan in the JSON form ("json") or the NESTFUL form ("nestful"), one call
    per line.

    Raises:
        ValueError: a plan the form cannot express: NaN anywhere; for "nestful" also
            positional arguments, arithmetic, and text that would read as a reference.
    """
    if dialect == "nestful":
        return _render_nestful(plan)
    try:
        return _render_json(plan)
    except RecursionError:  # json.dumps recurses per level of {"op", "left", "right"}
        raise ValueError("the plan nests too deeply for the JSON form (a long operator chain, "
                         "written there as nested objects); use the \"paper\" dialect") from None


def _render_json(plan: Plan) -> str:
    lines = [json.dumps({k: v for k, v in (
        ("id", c.id), ("function", c.function),
        ("args", [_value(a.value) for a in c.args if a.name is None]),
        ("kwargs", {a.name: _value(a.value) for a in c.args if a.name is not None}),
    ) if v or k in ("id", "function")}, ensure_ascii=False) for c in plan.calls]
    body = "{\"calls\": [\n  " + ",\n  ".join(lines) + "\n]"
    if plan.answer is not None:
        body += ", \"answer\": " + json.dumps(_value(plan.answer), ensure_ascii=False)
    return _finite(body + "}")


def _finite(text: str) -> str:
    # json.dumps writes infinities as `Infinity`; write them as numbers JSON can hold.
    return re.sub(r"(?<![\w\"])(-?)Infinity(?![\w\"])", r"\g<1>1e999", text)


def _value(expr: Expr) -> Any:
    if isinstance(expr, Literal):
        if isinstance(expr.value, float) and math.isnan(expr.value):
            raise ValueError("NaN has no written form in a plan")
        return expr.value
    if isinstance(expr, Ref):
        return {"ref": expr.id, "path": list(expr.path)} if expr.path else {"ref": expr.id}
    if isinstance(expr, ListExpr):
        return [_value(e) for e in expr.items]
    if isinstance(expr, DictExpr):
        keys = [k for k, _ in expr.items]
        plain = (all(isinstance(k, str) for k in keys) and len(set(keys)) == len(keys)
                 and set(keys) not in _SHAPES)
        if plain:
            return {k: _value(v) for k, v in expr.items}
        return {"dict": [[_literal_key(k), _value(v)] for k, v in expr.items]}
    if isinstance(expr, Template):
        return {"template": [p if isinstance(p, str) else _value(p) for p in expr.parts]}
    if isinstance(expr, BinOp):
        first, rest = chain(expr)
        node = _value(first)
        for op, right in rest:
            node = {"op": op, "left": node, "right": _value(right)}
        return node
    raise TypeError(f"not a plan expression: {expr!r}")


def _literal_key(key: Any) -> Any:
    if isinstance(key, float) and math.isnan(key):
        raise ValueError("NaN has no written form in a plan")
    return key


def _render_nestful(plan: Plan) -> str:
    rename = {c.id: (f"var{c.id}" if c.id.isdigit() else c.id) for c in plan.calls}
    lines = []
    for c in plan.calls:
        if any(a.name is None for a in c.args):
            raise ValueError(f"call {c.id} has positional arguments, which the NESTFUL form "
                             "cannot write; use the \"json\" dialect")
        args = {a.name: _nestful_value(a.value, rename) for a in c.args}
        lines.append(json.dumps({"name": c.function, "arguments": args, "label": rename[c.id]},
                                ensure_ascii=False))
    if plan.answer is not None:
        answer = plan.answer
        if not (isinstance(answer, DictExpr) and all(isinstance(k, str) for k, _ in answer.items)):
            raise ValueError("the NESTFUL form writes an answer only as named references")
        lines.append(json.dumps({"name": NESTFUL_RESULT, "arguments": {
            k: _nestful_value(v, rename) for k, v in answer.items}}, ensure_ascii=False))
    return _finite("[\n  " + ",\n  ".join(lines) + "\n]")


def _nestful_ref(ref: Ref, rename: dict[str, str]) -> str:
    out = "$" + rename.get(ref.id, ref.id)
    for step in ref.path:
        if isinstance(step, int):
            out += f"[{step}]"
        elif step and not re.search(r"[.\[\]$]", step):
            out += "." + step
        else:
            raise ValueError(f"the field name {step!r} has no written form in the NESTFUL form")
    return out + "$"


def _nestful_value(expr: Expr, rename: dict[str, str]) -> Any:
    if isinstance(expr, Ref):
        return _nestful_ref(expr, rename)
    if isinstance(expr, Template):
        text = "".join(p if isinstance(p, str) else _nestful_ref(p, rename) for p in expr.parts)
        back = _Reader("").nestful_string(_J(text, 0, 0, "string", json.dumps(text)), "")
        want = Template(tuple(p if isinstance(p, str) else Ref(rename.get(p.id, p.id), path=p.path)
                              for p in expr.parts))
        if back != want:
            raise ValueError(f"the text {text!r} would not read back as written in the NESTFUL "
                             "form (`$` next to references); use the \"json\" dialect")
        return text
    if isinstance(expr, Literal):
        if isinstance(expr.value, str) and _NESTFUL_REF.search(expr.value):
            raise ValueError(f"the text {expr.value!r} would read as a reference in the NESTFUL "
                             "form; use the \"json\" dialect")
        return _value(expr)
    if isinstance(expr, ListExpr):
        return [_nestful_value(e, rename) for e in expr.items]
    if isinstance(expr, DictExpr):
        if not all(isinstance(k, str) for k, _ in expr.items):
            raise ValueError("the NESTFUL form writes only dicts with string keys")
        return {k: _nestful_value(v, rename) for k, v in expr.items}
    raise ValueError("the NESTFUL form cannot write arithmetic; use the \"json\" dialect")


use_renderer(render)  # Plan.to_text writes with this module (model cannot import it)
