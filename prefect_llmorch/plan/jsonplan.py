"""The JSON plan dialects: read by `parse` (text starting with `[` or `{`); `render` writes them.

Two forms, one `Plan`:

**NESTFUL** (IBM's benchmark of nested API-call sequences; dialect "nestful"): a JSON array
of calls `{"name": f, "arguments": {...}, "label": "var1"}`. A string value `"$var1$"` is
the result of the call labelled `var1`, `"$var1.data[0].id$"` a part of it (steps are
`.name`, where a name is anything but `.`, `[`, `]`, `$`, and `[N]`); a string with text
around references is formatted (`"5 * $var1.Exchange Rate$"`). A final
`{"name": "var_result", "arguments": {...}}` names the plan's answer (`Plan.answer`) and
is not a call. Arguments are keywords only.

    >>> from prefect_llmorch.plan.parser import parse
    >>> plan = parse('''[
    ...   {"name": "search_airport", "arguments": {"query": "New York"}, "label": "var1"},
    ...   {"name": "search_flights", "arguments": {"originSkyId": "$var1.skyId$"}, "label": "var2"},
    ...   {"name": "var_result", "arguments": {"flights": "$var2$"}}
    ... ]''')
    >>> plan.dialect, plan.ids, plan["var2"].args[0].value
    ('nestful', ('var1', 'var2'), Ref(id='var1', path=('skyId',)))

**Our JSON form** (dialect "json"): `{"calls": [...], "answer": <value>}` (or just the
array), each call `{"id": "s1", "function": "f", "args": [...], "kwargs": {...}}` (`args`
positional, `kwargs` by name; both optional). Strings are always plain text. An object is
special exactly when its keys are one of:

- `{"ref": "s1"}`, `{"ref": "s1", "path": ["data", 0, "id"]}`: a reference;
- `{"template": ["Summarize ", {"ref": "s3"}, "."]}`: text formatted with references;
- `{"op": "+", "left": <value>, "right": <value>}`: arithmetic (`+ - * /`);
- `{"dict": [[key, <value>], ...]}`: a dict literal whose keys are not all strings, or
  whose keys would read as one of these shapes.

Any other object is a dict literal; arrays are lists; other values are literals.

    >>> plan = parse('{"calls": [{"id": "s1", "function": "f", "args": [1]},'
    ...              ' {"id": "s2", "function": "g", "kwargs": {"x": {"ref": "s1", "path": ["a"]}}}]}')
    >>> plan.dialect, plan.to_text("paper")
    ('json', 's1: f(1)\\ns2: g(x=s1.a)')

Errors carry line and column and, in `PlanError.pointer`, the JSON pointer of the value.
No Prefect, no I/O.
"""

from __future__ import annotations

import difflib
import json
import re
from typing import Any, NamedTuple

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import LarkError, LexError, UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from .errors import ArgumentError, EmptyPlanError, PlanError, PlanReferenceError, PlanSyntaxError
from .model import Arg, BinOp, Call, DictExpr, Dialect, Expr, ListExpr, Literal, Ref, Step, Template
from .model import refs as _refs
from .common import Lines, Pos, RawCall, after_last_token, context, one_of, position, semantics

__all__ = ["analyse", "CallScanner", "NESTFUL_RESULT"]

#: The NESTFUL entry that names the answer instead of being a call.
NESTFUL_RESULT = "var_result"


def _build() -> Lark:
    options: dict[str, Any] = dict(rel_to=__file__, parser="lalr", propagate_positions=True,
                                   maybe_placeholders=False)
    try:
        return Lark.open("json.lark", strict=True, **options)
    except LexError:  # strict's collision check needs `interegular`
        return Lark.open("json.lark", **options)


_PARSER = _build()

_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z|\d+\Z")
_NESTFUL_REF = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*|\d+)((?:\.[^.\[\]$]+|\[-?\d+\])*)\$")
_NESTFUL_STEP = re.compile(r"\.([^.\[\]$]+)|\[(-?\d+)\]")
_OPS = ("+", "-", "*", "/")
_SHAPES = ({"ref"}, {"ref", "path"}, {"template"}, {"op", "left", "right"}, {"dict"})
_READABLE = {"LBRACE": "`{`", "RBRACE": "`}`", "LSQB": "`[`", "RSQB": "`]`", "COMMA": "`,`",
             "COLON": "`:`", "STRING": "a string", "NUMBER": "a number", "TRUE": "`true`",
             "FALSE": "`false`", "NULL": "`null`", "$END": "the end of the plan"}


class _J(NamedTuple):
    """A JSON value with its position. Objects are lists of (key, key token, value)."""

    value: Any
    line: int
    column: int
    kind: str  # "object" | "array" | "string" | "number" | "literal"
    raw: str = ""


@v_args(inline=True)
class _ToJ(Transformer):  # type: ignore[type-arg]
    @v_args(meta=True, inline=True)
    def object(self, meta: Any, *pairs: tuple[str, Token, _J]) -> _J:
        return _J(list(pairs), meta.line, meta.column, "object")

    def pair(self, key: Token, value: _J) -> tuple[str, Token, _J]:
        return json.loads(key), key, value

    @v_args(meta=True, inline=True)
    def array(self, meta: Any, *items: _J) -> _J:
        return _J(list(items), meta.line, meta.column, "array")

    def string(self, tok: Token) -> _J:
        return _J(json.loads(tok), tok.line, tok.column, "string", str(tok))

    def number(self, tok: Token) -> _J:
        value = json.loads(tok)
        return _J(value, tok.line, tok.column, "number", str(tok))

    def true(self, tok: Token | None = None) -> _J:
        return _J(True, getattr(tok, "line", 0), getattr(tok, "column", 0), "literal")

    def false(self, tok: Token | None = None) -> _J:
        return _J(False, getattr(tok, "line", 0), getattr(tok, "column", 0), "literal")

    def null(self, tok: Token | None = None) -> _J:
        return _J(None, getattr(tok, "line", 0), getattr(tok, "column", 0), "literal")


def _pointer(parent: str, key: str | int) -> str:
    return parent + "/" + str(key).replace("~", "~0").replace("/", "~1")


class Analysis(NamedTuple):
    calls: list[Call]
    dialect: Dialect
    errors: list[PlanError]
    answer: Expr | None
    pointers: dict[tuple[int, int], str]


def _syntax_error(exc: UnexpectedInput, text: str) -> PlanSyntaxError:
    if isinstance(exc, UnexpectedToken):
        tok = exc.token
        expected = sorted({_READABLE.get(n, n) for n in (exc.accepts or exc.expected)})
        if tok.type == "$END":
            offset = after_last_token(text, len(text))
            what = "the JSON plan ends too early"
        else:
            offset = tok.start_pos or 0
            what = f"unexpected `{str(tok)[:40]}`"
    elif isinstance(exc, UnexpectedCharacters):
        offset = exc.pos_in_stream
        expected = sorted({_READABLE.get(n, n) for n in (exc.allowed or ())})
        char = text[offset] if offset < len(text) else ""
        what = ("a string is not closed or has a raw control character" if char == '"'
                else f"unexpected character {char!r}")
    else:
        offset = after_last_token(text, len(text))
        expected = []
        what = "the JSON plan ends too early"
    pos = position(text, offset)
    return PlanSyntaxError(f"{what}; expected {one_of(expected)}", line=pos.line,
                           column=pos.column, context=context(text, pos), expected=expected)


def _tree(text: str) -> _J:
    return _ToJ().transform(_PARSER.parse(text))


def analyse(text: str) -> Analysis:
    """Syntax, shape and reference checks of a JSON plan; never raises."""
    try:
        root = _tree(text)
    except UnexpectedInput as exc:
        return Analysis([], "json", [_syntax_error(exc, text)], None, {})
    except LarkError as exc:  # pragma: no cover - defensive
        return Analysis([], "json", [PlanSyntaxError(f"cannot parse the JSON plan: {exc}")], None, {})
    reader = _Reader(text)
    raw, answer, dialect = reader.read(root)
    calls, semantic = semantics(raw, text, set())
    errors = reader.errors + semantic
    if answer is not None:
        defined = {c.id for c in calls}
        for ref in _refs(answer):
            if ref.id not in defined:
                errors.append(PlanReferenceError(
                    f"the answer refers to `{ref.id}`, which no call defines; defined: "
                    f"{', '.join(c.id for c in calls) or 'none'}",
                    line=ref.line, column=ref.column, context=reader.context(ref.line, ref.column)))
    if not calls and not errors:
        errors.append(EmptyPlanError("the JSON plan has no calls", line=root.line,
                                     column=root.column))
    for err in errors:
        reader.point(err)
    return Analysis(calls, dialect, errors, answer, reader.pointers)


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = Lines(text)  # each error's context: the text split once
        self.errors: list[PlanError] = []
        self.pointers: dict[tuple[int, int], str] = {}

    def context(self, line: int, column: int) -> str:
        return self.lines.context(Pos(line, column))

    def point(self, err: PlanError) -> None:
        if not err.pointer and (err.line, err.column) in self.pointers:
            err.pointer = self.pointers[(err.line, err.column)]

    def fail(self, message: str, node: _J, pointer: str, cls: type[PlanError] = PlanSyntaxError) -> None:
        self.pointers.setdefault((node.line, node.column), pointer)
        self.errors.append(cls(message, line=node.line, column=node.column,
                               context=self.context(node.line, node.column), pointer=pointer))

    # ------------------------------------------------------------------ the plan

    def read(self, root: _J) -> tuple[list[Any], Expr | None, Dialect]:
        answer: Expr | None = None
        if root.kind == "object":
            keys = {k: v for k, _, v in root.value}
            for key, tok, _ in root.value:
                if key not in ("calls", "answer"):
                    self.fail(f"unknown key {key!r} in the plan object; expected \"calls\" and "
                              "optionally \"answer\"", _J(None, tok.line, tok.column, "string"),
                              _pointer("", key))
            calls = keys.get("calls")
            if calls is None or calls.kind != "array":
                self.fail("a JSON plan object needs \"calls\": an array of calls", root, "")
                return [], None, "json"
            if "answer" in keys:
                answer = self.value(keys["answer"], "/answer")
            return self.calls(calls.value, "/calls"), answer, "json"
        if root.kind != "array":
            self.fail("a JSON plan is an array of calls, or an object with \"calls\"", root, "")
            return [], None, "json"
        first = root.value[0] if root.value else None
        nestful = not (first is not None and first.kind == "object"
                       and any(k in ("function", "id") for k, _, _ in first.value))
        if not nestful:
            return self.calls(root.value, ""), None, "json"
        out = []
        for i, node in enumerate(root.value):
            if (node.kind == "object" and i == len(root.value) - 1
                    and any(k == "name" and v.value == NESTFUL_RESULT for k, _, v in node.value)):
                answer = self.nestful_result(node, f"/{i}")
                continue
            if node.kind == "object" and any(k == "name" and v.value == NESTFUL_RESULT
                                             for k, _, v in node.value):
                self.fail(f"\"{NESTFUL_RESULT}\" names the answer and must be the last entry",
                          node, f"/{i}")
                continue
            call = self.nestful_call(node, f"/{i}", last=i == len(root.value) - 1)
            if call is not None:
                out.append(call)
        return out, answer, "nestful"

    def calls(self, nodes: list[_J], pointer: str) -> list[Any]:
        out = [self.call(node, f"{pointer}/{i}") for i, node in enumerate(nodes)]
        return [c for c in out if c is not None]

    def _object(self, node: _J, pointer: str, allowed: tuple[str, ...], what: str) -> dict[str, _J] | None:
        if node.kind != "object":
            self.fail(f"{what} must be an object like {_EXAMPLE[what]}", node, pointer)
            return None
        out: dict[str, _J] = {}
        for key, tok, value in node.value:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                self.fail(f"unknown key {key!r} in {what}; {hint}expected: {', '.join(allowed)}",
                          _J(None, tok.line, tok.column, "string"), _pointer(pointer, key))
            elif key in out:
                self.fail(f"duplicate key {key!r}", _J(None, tok.line, tok.column, "string"),
                          _pointer(pointer, key))
            else:
                out[key] = value
        return out

    def _label(self, node: _J | None, pointer: str, owner: _J, what: str) -> str | None:
        if node is None:
            example = '"label": "var1"' if "NESTFUL" in what else '"id": "s1"'
            self.fail(f"{what} needs {example.split(':')[0]}, e.g. {example}", owner,
                      pointer.rsplit("/", 1)[0])
            return None
        value = node.value
        if node.kind == "number" and isinstance(value, int) and value >= 0:
            value = str(value)
        if not isinstance(value, str) or not _ID.match(value.strip("$")):
            self.fail("an id is a name like `s1` or `var1` (letters, digits, `_`) or a number, "
                      f"not {json.dumps(value)}", node, pointer)
            return None
        value = value.strip("$")
        return str(int(value)) if value.isdigit() else value

    def _function(self, node: _J | None, pointer: str, owner: _J, key: str) -> str | None:
        if node is None or node.kind != "string" or not node.value:
            self.fail(f"a call needs \"{key}\": the function's name", node or owner,
                      pointer if node is not None else pointer.rsplit("/", 1)[0])
            return None
        self.pointers.setdefault((owner.line, owner.column), pointer.rsplit("/", 1)[0])
        return node.value

    def nestful_call(self, node: _J, pointer: str, last: bool) -> Any:
        fields = self._object(node, pointer, ("name", "arguments", "label"), "a NESTFUL call")
        if fields is None:
            return None
        function = self._function(fields.get("name"), _pointer(pointer, "name"), node, "name")
        label = self._label(fields.get("label"), _pointer(pointer, "label"), node, "a NESTFUL call")
        args = self.arguments(fields.get("arguments"), _pointer(pointer, "arguments"), nestful=True)
        if function is None or label is None or args is None:
            return None
        self.pointers[(node.line, node.column)] = pointer
        return RawCall(label, function, args, Pos(node.line, node.column))

    def nestful_result(self, node: _J, pointer: str) -> Expr | None:
        fields = self._object(node, pointer, ("name", "arguments", "label"), "a NESTFUL call")
        if fields is None:
            return None
        args = self.arguments(fields.get("arguments"), _pointer(pointer, "arguments"), nestful=True)
        if args is None:
            return None
        return DictExpr(tuple((a.name, a.value) for a, _ in args))

    def call(self, node: _J, pointer: str) -> Any:
        fields = self._object(node, pointer, ("id", "function", "args", "kwargs"), "a call")
        if fields is None:
            return None
        function = self._function(fields.get("function"), _pointer(pointer, "function"), node,
                                  "function")
        call_id = self._label(fields.get("id"), _pointer(pointer, "id"), node, "a call")
        args: list[tuple[Arg, Any]] = []
        positional = fields.get("args")
        if positional is not None:
            if positional.kind != "array":
                self.fail("\"args\" must be an array of values", positional, _pointer(pointer, "args"))
            else:
                for i, item in enumerate(positional.value):
                    expr = self.value(item, _pointer(_pointer(pointer, "args"), i))
                    args.append((Arg(None, expr), Pos(item.line, item.column)))
        named = self.arguments(fields.get("kwargs"), _pointer(pointer, "kwargs"), nestful=False)
        if function is None or call_id is None or named is None:
            return None
        self.pointers[(node.line, node.column)] = pointer
        return RawCall(call_id, function, args + named, Pos(node.line, node.column))

    def arguments(self, node: _J | None, pointer: str, nestful: bool) -> list[Any] | None:
        if node is None:
            return []
        if node.kind != "object":
            self.fail("arguments must be an object of name: value", node, pointer)
            return None
        out = []
        seen = set()
        for key, tok, value in node.value:
            if key in seen:
                self.fail(f"argument {key!r} is given twice", _J(None, tok.line, tok.column, "string"),
                          _pointer(pointer, key), ArgumentError)
                continue
            seen.add(key)
            expr = self.value(value, _pointer(pointer, key), nestful)
            out.append((Arg(key, expr), Pos(tok.line, tok.column)))
        return out

    # ------------------------------------------------------------------ values

    def value(self, node: _J, pointer: str, nestful: bool = False) -> Expr:
        if node.kind == "string":
            return self.nestful_string(node, pointer) if nestful else Literal(node.value)
        if node.kind in ("number", "literal"):
            return Literal(node.value)
        if node.kind == "array":
            return ListExpr(tuple(self.value(v, _pointer(pointer, i), nestful)
                                  for i, v in enumerate(node.value)))
        keys = [k for k, _, _ in node.value]
        if not nestful and set(keys) in _SHAPES and len(keys) == len(set(keys)):
            return self.special(node, {k: v for k, _, v in node.value}, pointer)
        items = []
        seen = set()
        for key, tok, value in node.value:
            if key in seen:
                self.fail(f"duplicate key {key!r}", _J(None, tok.line, tok.column, "string"),
                          _pointer(pointer, key))
            seen.add(key)
            items.append((key, self.value(value, _pointer(pointer, key), nestful)))
        return DictExpr(tuple(items))

    def special(self, node: _J, fields: dict[str, _J], pointer: str) -> Expr:
        if "ref" in fields:
            return self.ref(node, fields, pointer)
        if "template" in fields:
            parts_node = fields["template"]
            if parts_node.kind != "array":
                self.fail("\"template\" is an array of strings and {\"ref\": ...} objects",
                          parts_node, _pointer(pointer, "template"))
                return Literal("")
            parts: list[str | Ref] = []
            for i, part in enumerate(parts_node.value):
                p = _pointer(_pointer(pointer, "template"), i)
                if part.kind == "string":
                    if part.value:
                        if parts and isinstance(parts[-1], str):
                            parts[-1] += part.value
                        else:
                            parts.append(part.value)
                    continue
                expr = self.value(part, p)
                if isinstance(expr, Ref):
                    parts.append(expr)
                else:
                    self.fail("a template part is a string or a {\"ref\": ...} object", part, p)
            if not parts:
                return Literal("")
            if len(parts) == 1:
                return parts[0] if isinstance(parts[0], Ref) else Literal(parts[0])
            return Template(tuple(parts))
        if "op" in fields:
            op = fields["op"]
            if op.value not in _OPS or op.kind != "string":
                self.fail(f"\"op\" is one of {', '.join(_OPS)}", op, _pointer(pointer, "op"))
            return BinOp(str(op.value), self.value(fields["left"], _pointer(pointer, "left")),
                         self.value(fields["right"], _pointer(pointer, "right")))
        items_node = fields["dict"]
        items = []
        if items_node.kind != "array":
            self.fail("\"dict\" is an array of [key, value] pairs", items_node, _pointer(pointer, "dict"))
            return DictExpr(())
        for i, pair in enumerate(items_node.value):
            p = _pointer(_pointer(pointer, "dict"), i)
            if pair.kind != "array" or len(pair.value) != 2 or pair.value[0].kind in ("array", "object"):
                self.fail("each \"dict\" item is a [key, value] pair with a string, number, "
                          "boolean or null key", pair, p)
                continue
            items.append((pair.value[0].value, self.value(pair.value[1], _pointer(p, 1))))
        return DictExpr(tuple(items))

    def ref(self, node: _J, fields: dict[str, _J], pointer: str) -> Expr:
        target = fields["ref"]
        call_id = self._label(target, _pointer(pointer, "ref"), node, "a reference")
        path: list[Step] = []
        path_node = fields.get("path")
        if path_node is not None:
            if path_node.kind != "array":
                self.fail("\"path\" is an array of field names and indexes, e.g. [\"data\", 0]",
                          path_node, _pointer(pointer, "path"))
            else:
                for i, step in enumerate(path_node.value):
                    ok = step.kind == "string" or (step.kind == "number" and isinstance(step.value, int))
                    if not ok:
                        self.fail("a path step is a field name (string) or an index (integer)",
                                  step, _pointer(_pointer(pointer, "path"), i))
                    else:
                        path.append(step.value)
        self.pointers.setdefault((node.line, node.column), pointer)
        return Ref(call_id or "?", node.line, node.column, tuple(path))

    def nestful_string(self, node: _J, pointer: str) -> Expr:
        text = node.value
        parts: list[str | Ref] = []
        last = 0
        search_from = 1
        for m in _NESTFUL_REF.finditer(text):
            if m.start() > last:
                parts.append(text[last:m.start()])
            raw_at = node.raw.find("$" + m.group(1), search_from)
            search_from = max(raw_at + 1, search_from)
            column = node.column + (raw_at if raw_at >= 0 else 0)
            steps = tuple(int(s.group(2)) if s.group(2) is not None else s.group(1)
                          for s in _NESTFUL_STEP.finditer(m.group(2)))
            call_id = str(int(m.group(1))) if m.group(1).isdigit() else m.group(1)
            parts.append(Ref(call_id, node.line, column, steps))
            self.pointers.setdefault((node.line, column), pointer)
            last = m.end()
        if not parts:
            return Literal(text)
        if last < len(text):
            parts.append(text[last:])
        if len(parts) == 1 and isinstance(parts[0], Ref):
            return parts[0]
        return Template(tuple(parts))


_EXAMPLE = {
    "a NESTFUL call": '{"name": "f", "arguments": {...}, "label": "var1"}',
    "a call": '{"id": "s1", "function": "f", "args": [...], "kwargs": {...}}',
}


# --------------------------------------------------------------------------- streaming


class CallScanner:
    """Finds where the call objects of a JSON plan end while the text is still arriving.

    `feed(chunk)` returns, for each call object completed by the chunk, the text so far
    closed into a whole JSON document (the open arrays and objects closed), ready for
    `analyse`. Calls are the items of the top-level array, or of the `"calls"` array of
    a top-level object.
    """

    def __init__(self) -> None:
        self.text = ""
        self._stack: list[str] = []
        self._in_string = False
        self._escape = False
        self._key: list[str] | None = None  # characters of the root object's current key
        self._expect_key = False
        self._root_key = ""
        self._array_key = ""

    def feed(self, chunk: str) -> list[str]:
        out = []
        start = len(self.text)
        self.text += chunk
        for i in range(start, len(self.text)):
            ch = self.text[i]
            if self._in_string:
                if self._key is not None:
                    self._key.append(ch)
                if self._escape:
                    self._escape = False
                elif ch == "\\":
                    self._escape = True
                elif ch == '"':
                    self._in_string = False
                    if self._key is not None:
                        try:
                            self._root_key = json.loads('"' + "".join(self._key))
                        except ValueError:
                            self._root_key = ""
                        self._key = None
                continue
            if ch == '"':
                self._in_string = True
                if self._stack == ["{"] and self._expect_key:
                    self._key = []
                    self._expect_key = False
            elif ch in "[{":
                if self._stack == ["{"] and ch == "[":
                    self._array_key = self._root_key
                self._stack.append(ch)
                if self._stack == ["{"]:
                    self._expect_key = True
            elif ch in "]}":
                if self._stack:
                    self._stack.pop()
                if ch == "}" and self._in_calls():
                    closers = "".join("]" if c == "[" else "}" for c in reversed(self._stack))
                    out.append(self.text[: i + 1] + closers)
            elif ch == "," and self._stack == ["{"]:
                self._expect_key = True
        return out

    def _in_calls(self) -> bool:
        return self._stack == ["["] or (self._stack == ["{", "["] and self._array_key == "calls")
