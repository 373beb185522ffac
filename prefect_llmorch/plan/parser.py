"""Plan text -> `Plan`, in either dialect, with every error found before anything runs.

    >>> plan = parse('''
    ... s1: search(query="Apple stock")
    ... s2: search("Microsoft stock")
    ... s3: python("cmp.py", args=[s1, s2])
    ... s4: chatbot("Summarize {s3}")
    ... ''')
    >>> plan.ids, plan.dialect, sorted(plan["s3"].deps)
    (('s1', 's2', 's3', 's4'), 'paper', ['s1', 's2'])
    >>> parse('1. search("x")\\n2. math("$1 * 2")\\n3. join()<END_OF_PLAN>')["2"].deps
    frozenset({'1'})
    >>> parse('s1: search("a")\\ns2: chatbot(sl)')
    Traceback (most recent call last):
    ...
    prefect_llmorch.plan.errors.ReferenceError_: line 2, column 13: undefined reference `sl`; defined so far: s1

Dialect: a plan whose first call is labelled with a number (`1.` / `1:`) is `llmcompiler`,
otherwise `paper`. The dialect only changes how references *inside strings* are read:

- paper: `{id}` (id = a name or digits, spaces allowed inside the braces) and `${id}`.
  Anything else in braces stays text: `{}`, `{"a": 1}`, `{a b}`, `{1.5}`.
- llmcompiler: `$N` and `${id}`. `{...}` is always text there; in the paper dialect `$5`
  is text (a price, not a reference).
- `\\{` and `\\$` are literal `{` and `$` in both (that is how `render` writes them).

A string that is exactly one reference becomes that `Ref`; text around references gives a
`Template`. Outside strings a reference is a bare name (`s1`), `$N` or `${id}`.
`N. join()` (no arguments), `Thought: ...` lines, `<END_OF_PLAN>` and `# comments` are
markers, never calls; `join` with arguments is an ordinary call.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Mapping, NamedTuple

from lark import Lark, Token, Transformer_NonRecursive, Tree, v_args
from lark.exceptions import (
    LarkError,
    LexError,
    UnexpectedCharacters,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)

from ..functions import ArgumentsInvalid, FunctionSpec
from .common import Lines, Pos, RawCall, after_last_token, context, one_of, position, semantics
from .errors import (
    ArgumentError,
    EmptyPlanError,
    PlanError,
    PlanErrors,
    PlanSyntaxError,
    UnknownFunctionError,
)
from .evaluate import EvaluationError, evaluate
from .jsonplan import CallScanner, analyse
from .model import (
    Arg, BinOp, Call, DictExpr, Dialect, Expr, ListExpr, Literal, Plan, Ref, Step, Template, chain,
)
from .model import refs as _refs
from .ref_types import reference_type_errors
from .result_types import field_errors

__all__ = ["parse", "check", "PlanStream", "UNKNOWN"]


def _build_parser() -> Lark:
    options: dict[str, Any] = dict(
        rel_to=__file__, parser="lalr", propagate_positions=True, maybe_placeholders=False
    )
    try:
        # strict=True turns shift/reduce conflicts into errors (checked before the lexer is
        # built); its regex-collision check needs `interegular`, which may be missing.
        return Lark.open("grammar.lark", strict=True, **options)
    except LexError:
        return Lark.open("grammar.lark", **options)


_PARSER = _build_parser()

#: Passed to `FunctionSpec.check` for argument values that come from other calls.
UNKNOWN = type("Unknown", (), {"__repr__": lambda self: "<result of an earlier call>"})()

_MAX_SYNTAX_ERRORS = 20

# A line that starts a new item: `1.`, `1:`, `s1:`, `Thought:`, `<END_OF_PLAN>`.
_ITEM_LINE = re.compile(r"[ \t]*(?:(\d+)[ \t]*[.:]|([A-Za-z_]\w*)[ \t]*:|<END_OF_PLAN>)")

# References inside strings (see the module docstring).
_ID = r"[A-Za-z_][A-Za-z0-9_]*|\d+"
# Field and index steps inside strings: .name  [0]  [-1]  ['key']  [\"key\"] (quotes may
# be escaped, since they sit inside a quoted string).
_STEP = (r"\.([A-Za-z_][A-Za-z0-9_]*)|\[[ \t]*(-?\d+)[ \t]*\]"
         r"|\[[ \t]*\\?'([^'\\\n]*)\\?'[ \t]*\]|\[[ \t]*\\?\"([^\"\\\n]*)\\?\"[ \t]*\]")
_STEPS = r"((?:" + _STEP + r")*)"
_STEP_RE = re.compile(_STEP)
# paper: {id.steps} and ${id.steps}
_BRACE_REF = re.compile(r"\$?\{[ \t]*(" + _ID + r")" + _STEPS + r"[ \t]*\}")
# llmcompiler: $N.steps and ${id.steps}
_DOLLAR_REF = re.compile(r"\$(?:(\d+)" + _STEPS + r"|\{[ \t]*(" + _ID + r")" + _STEPS + r"[ \t]*\})")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", "'": "'", '"': '"',
            "$": "$", "{": "{", "}": "}", "\n": ""}

_READABLE = {
    "NAME": "a name", "INT_LABEL": "a call label like `1.`", "NUMBER": "a number",
    "STRING": "a string", "DOLLAR_REF": "a reference like `$1`", "THOUGHT": "`Thought:`",
    "END_MARK": "`<END_OF_PLAN>`", "$END": "the end of the plan",
    "LITERAL_LIST": "a list", "LITERAL_DICT": "a dict",
}

#: What can start a value (an argument, a list item): lark names each of them as expected;
#: when a value as a whole would be valid, the message says so once (`_VALUE`).
_VALUE_STARTS = frozenset({
    "a string", "a number", "a name", "a list", "a dict", "a reference like `$1`",
    "`[`", "`{`", "`(`", "`-`", "`True`", "`False`", "`None`", "`true`", "`false`", "`null`",
})
_VALUE = "a value (a string, a number, a list, a dict, true, false, null, or a reference)"


def string_ref_pattern(dialect: Dialect) -> re.Pattern[str]:
    """The regex that finds references inside strings of `dialect` (used by `render`)."""
    return _BRACE_REF if dialect == "paper" else _DOLLAR_REF


def _norm_id(raw: str) -> str:
    return str(int(raw)) if raw.isdigit() else raw


# --------------------------------------------------------------------------- strings


def _scan_string(tok: Token, dialect: Dialect | None,
                 arithmetic: list[tuple[int, int, str]] | None = None) -> Expr:
    """Decode a STRING token; with a dialect, also find the references inside it, and (paper
    dialect, into `arithmetic`) the (line, column, text) of each unescaped `{a / b}`.

    Plain text between escapes and possible references is copied in slices, and positions
    are computed only for the references found (a per-character loop made 1 MB strings slow).
    """
    raw = str(tok)
    q = 3 if raw[:3] in ('"""', "'''") and len(raw) >= 6 else 1
    body = raw[q:-q]
    pattern = string_ref_pattern(dialect) if dialect else None
    special = _SPECIAL_REF if pattern else _SPECIAL
    parts: list[str | Ref] = []
    text: list[str] = []
    # (line, column) of body[cur], advanced lazily; body[0] sits after the opening quotes.
    cur, line, col = 0, tok.line or 1, (tok.column or 1) + q

    def where(j: int) -> tuple[int, int]:
        nonlocal cur, line, col
        newlines = body.count("\n", cur, j)
        if newlines:
            line, col = line + newlines, j - body.rfind("\n", cur, j)
        else:
            col += j - cur
        cur = j
        return line, col

    n, i = len(body), 0
    while i < n:
        m = special.search(body, i)
        j = m.start() if m else n
        if j > i:
            text.append(body[i:j])
        if m is None:
            break
        if body[j] == "\\":
            if j + 1 >= n:
                text.append("\\")
                i = j + 1
                continue
            nxt = body[j + 1]
            if nxt == "u" and _HEX4.fullmatch(body, j + 2, j + 6):
                text.append(chr(int(body[j + 2 : j + 6], 16)))
                i = j + 6
            else:
                text.append(_ESCAPES.get(nxt, "\\" + nxt))
                i = j + 2
            continue
        ref = pattern.match(body, j) if pattern else None
        if ref:
            if text:
                parts.append("".join(text))
                text = []
            parts.append(_string_ref(ref, *where(j)))
            i = ref.end()
        else:
            if arithmetic is not None and body[j] == "{" and (calc := _BRACE_ARITHMETIC.match(body, j)):
                arithmetic.append((*where(j), " ".join(calc.group(1).split())))
            text.append(body[j])
            i = j + 1
    if text or not parts:
        parts.append("".join(text))
    if len(parts) == 1:
        return parts[0] if isinstance(parts[0], Ref) else Literal(parts[0])
    return Template(tuple(parts))


_SPECIAL = re.compile(r"\\")
_SPECIAL_REF = re.compile(r"[\\{$]")
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")


def _string_ref(m: re.Match[str], line: int, col: int) -> Ref:
    groups = [g for g in m.groups()]
    if m.re is _BRACE_REF:
        call_id, steps = groups[0], groups[1]
    elif groups[0] is not None:  # $N.steps
        call_id, steps = groups[0], groups[1]
    else:  # ${id.steps}
        call_id, steps = groups[6], groups[7]
    return Ref(_norm_id(call_id), line, col, _steps_of(steps or ""))


def _steps_of(text: str) -> tuple[Step, ...]:
    out: list[Step] = []
    for m in _STEP_RE.finditer(text):
        name, index, single, double = m.groups()
        if index is not None:
            out.append(int(index))
        else:
            out.append(name if name is not None else single if single is not None else double)
    return tuple(out)


# --------------------------------------------------------------------------- tree -> model


@v_args(inline=True)
class _Builder(Transformer_NonRecursive):  # type: ignore[type-arg]
    """Shapes the lark tree into model objects; strings need the plan's dialect. Walks the
    tree in a loop, not by recursion: a flat 10,000-term sum is a tree that deep."""

    def __init__(self, dialect: Dialect) -> None:
        super().__init__()
        self.dialect = dialect
        #: (line, column, text) of `{s1 / s2}` in strings: checked against the ids once known
        self.arithmetic: list[tuple[int, int, str]] = []

    def start(self, *items: Any) -> list[RawCall]:
        return [i for i in items if isinstance(i, RawCall)]

    def call(self, label: tuple[str, Token], name: Token, *args: tuple[Arg, Pos]) -> RawCall:
        call_id, tok = label
        return RawCall(call_id, str(name), list(args), Pos(tok.line, tok.column))

    def name_label(self, tok: Token) -> tuple[str, Token]:
        return str(tok), tok

    def int_label(self, tok: Token) -> tuple[str, Token]:
        return _norm_id(re.match(r"\d+", tok).group()), tok  # type: ignore[union-attr]

    def kwarg(self, name: Token, value: Expr) -> tuple[Arg, Pos]:
        return Arg(str(name), value), Pos(name.line, name.column)

    @v_args(inline=True, meta=True)
    def posarg(self, meta: Any, value: Expr) -> tuple[Arg, Pos]:
        # `true`/`null` carry no token, so their meta may be empty.
        return Arg(None, value), Pos(getattr(meta, "line", 0), getattr(meta, "column", 0))

    def binop(self, left: Expr, op: Token, right: Expr) -> Expr:
        return BinOp(str(op), left, right)

    def neg(self, value: Expr) -> Expr:
        if isinstance(value, Literal) and type(value.value) in (int, float):
            return Literal(-value.value)  # type: ignore[operator]
        return BinOp("-", Literal(0), value)

    def number(self, tok: Token) -> Literal:
        return Literal(_number(tok))

    def string(self, tok: Token) -> Expr:
        return _scan_string(tok, self.dialect, self.arithmetic if self.dialect == "paper" else None)

    def name_ref(self, tok: Token, *steps: Step) -> Ref:
        return Ref(str(tok), tok.line, tok.column, tuple(steps))

    def dollar_ref(self, tok: Token, *steps: Step) -> Ref:
        return Ref(_norm_id(tok.strip("${} \t")), tok.line, tok.column, tuple(steps))

    def field_step(self, tok: Token) -> str:
        return str(tok)

    def key_step(self, tok: Token) -> str:
        return _scan_string(tok, None).value  # type: ignore[union-attr,return-value]

    def index_step(self, tok: Token) -> int:
        if any(c in tok for c in ".eE"):
            raise PlanSyntaxError(f"index `[{tok}]` must be a whole number, like [0]",
                                  line=tok.line or 0, column=tok.column or 0)
        return int(tok)

    def neg_index_step(self, tok: Token) -> int:
        return -self.index_step(tok)

    def true(self, *_: Any) -> Literal:
        return Literal(True)

    def false(self, *_: Any) -> Literal:
        return Literal(False)

    def null(self, *_: Any) -> Literal:
        return Literal(None)

    def list(self, *items: Expr) -> ListExpr:
        return ListExpr(tuple(items))

    def literal_list(self, tok: Token) -> ListExpr:
        return ListExpr(tuple(_literal_items(tok)))

    def literal_dict(self, tok: Token) -> DictExpr:
        items = _literal_items(tok)  # key, value, key, value, ...
        keys = [k.value for k in items[0::2]]  # type: ignore[union-attr]
        return DictExpr(tuple(zip(keys, items[1::2])))

    def dict(self, *pairs: tuple[Any, Expr]) -> DictExpr:
        return DictExpr(tuple(pairs))

    def pair(self, key: Any, value: Expr) -> tuple[Any, Expr]:
        return key, value

    def string_key(self, tok: Token) -> str:
        return _scan_string(tok, None).value  # type: ignore[union-attr]

    def number_key(self, tok: Token) -> int | float:
        return _number(tok)

    def neg_number_key(self, tok: Token) -> int | float:
        return -_number(tok)


# The items of a LITERAL_LIST or LITERAL_DICT token (grammar.lark); comments are matched to
# be skipped. A `:` or `,` is never inside an item, so the items come in order.
_LITERAL_ITEM = re.compile(r"""("[^"]*"|'[^']*'|-?\d+(\.\d+|(?=[eE]))?(?:[eE][+-]?\d+)?"""
                           r"|true|True|false|False|null|None)|#[^\n]*")
_CONSTANTS = {"true": Literal(True), "True": Literal(True), "false": Literal(False),
              "False": Literal(False), "null": Literal(None), "None": Literal(None)}


def _literal_items(tok: Token) -> list[Literal]:
    """The literals of a LITERAL_LIST or LITERAL_DICT token, in order. Equal literals are
    immutable, so one object serves every repeat of a text."""
    seen: dict[str, Literal] = dict(_CONSTANTS)
    items: list[Literal] = []
    append = items.append
    for m in _LITERAL_ITEM.finditer(tok):
        item = m.group(1)
        if item is None:
            continue  # a comment
        lit = seen.get(item)
        if lit is None:
            if item[0] in "\"'":
                lit = Literal(item[1:-1])  # no escapes, braces or `$`: as written
            elif m.group(2) is None:
                lit = Literal(int(item))
            else:
                lit = Literal(float(item))
            seen[item] = lit
        append(lit)
    return items


def _number(tok: Token) -> int | float:
    return float(tok) if any(c in tok for c in ".eE") else int(tok)


def _dialect_of(tree: Tree) -> Dialect:  # type: ignore[type-arg]
    for child in tree.children:
        if isinstance(child, Tree) and child.data == "call":
            label = child.children[0]
            return "llmcompiler" if getattr(label, "data", "") == "int_label" else "paper"
    return "paper"


# --------------------------------------------------------------------------- syntax errors


def _offset(text: str, line: int, column: int) -> int:
    start = 0
    for _ in range(line - 1):
        start = text.index("\n", start) + 1
    return start + column - 1


def _readable(names: set[str] | frozenset[str]) -> list[str]:
    out = set()
    for name in names:
        if name in _READABLE:
            out.add(_READABLE[name])
            continue
        try:
            pattern = _PARSER.get_terminal(name).pattern
        except (KeyError, LarkError):
            out.add(name)
            continue
        # a pattern terminal without a readable name would show the grammar's token name:
        # say "a value" rather than that (tests/test_parser.py checks every terminal has one)
        out.add(f"`{pattern.value}`" if pattern.type == "str" else "a value")
    if {"a string", "a number", "a name"} <= out:
        return [_VALUE] + sorted(out - _VALUE_STARTS)
    return sorted(out)


def _describe(tok: Token) -> str:
    if tok.type == "$END":
        return "the end of the plan"
    value = str(tok).split("\n")[0]
    value = value if len(value) <= 40 else value[:37] + "..."
    return f"`{value}`"


def _syntax_error(exc: UnexpectedInput, text: str) -> tuple[PlanSyntaxError, int]:
    """A readable `PlanSyntaxError` for a lark error, and the offset it points at."""
    hint = ""
    if isinstance(exc, UnexpectedToken):
        tok = exc.token
        expected = _readable(exc.accepts or exc.expected)
        if tok.type == "$END":
            offset = after_last_token(text, len(text))
            what = "the plan ends too early"
        else:
            offset = tok.start_pos if tok.start_pos is not None else 0
            before = after_last_token(text, offset)
            what = f"unexpected {_describe(tok)}"
            if "\n" in text[before:offset]:
                # The call before this line is unfinished (a missing `)`, say): point
                # at where it stopped, not at the next call's label.
                what = "the call is not finished at the end of this line"
                offset = before
            elif tok.type == "NAME" and before and (text[before - 1].isalnum() or text[before - 1] == "_"):
                hint = "; text arguments must be quoted, e.g. \"...\""
        message = f"{what}; expected {one_of(expected)}{hint}"
    elif isinstance(exc, UnexpectedCharacters):
        offset = exc.pos_in_stream
        char = text[offset] if offset < len(text) else ""
        expected = _readable(exc.allowed or set())
        if char in "\"'":
            message = f"unterminated string: the quote {char} is never closed"
        else:
            message = f"unexpected character {char!r}; expected {one_of(expected)}"
    else:  # UnexpectedEOF and anything else lark may add
        offset = after_last_token(text, len(text))
        expected = _readable(set(getattr(exc, "expected", None) or ()))
        message = f"the plan ends too early; expected {one_of(expected)}"
    pos = position(text, offset)
    err = PlanSyntaxError(message, line=pos.line, column=pos.column,
                          context=context(text, pos), expected=expected)
    return err, offset


def _resync(text: str, offset: int) -> tuple[int, int]:
    """The lines to blank out after a syntax error at `offset`: from the start of the
    item containing it to the next line that starts an item (or the end)."""
    lines = text.splitlines(keepends=True)
    starts, acc = [], 0
    for ln in lines:
        starts.append(acc)
        acc += len(ln)
    idx = max(0, position(text, offset).line - 1)
    first = idx
    while first > 0 and not _ITEM_LINE.match(lines[first]):
        first -= 1
    last = idx + 1
    while last < len(lines) and not _ITEM_LINE.match(lines[last]):
        last += 1
    begin = starts[first] if lines else 0
    end = starts[last] if last < len(lines) else len(text)
    return begin, end


# --------------------------------------------------------------------------- analysis


class _Result(NamedTuple):
    calls: list[Call]
    dialect: Dialect
    errors: list[PlanError]
    answer: Expr | None = None
    pointers: Mapping[tuple[int, int], str] | None = None


def _is_json(text: str) -> bool:
    """JSON plans start with `[` or `{`; text plans never do."""
    return text.lstrip()[:1] in ("[", "{")


def _analyse_any(text: str, collect: bool = True) -> _Result:
    if not _is_json(text):
        return _analyse(text, collect)
    result = analyse(text)
    return _Result(result.calls, result.dialect, result.errors, result.answer, result.pointers)


def _point(errors: list[PlanError], pointers: Mapping[tuple[int, int], str] | None) -> None:
    for err in errors:
        if pointers and not err.pointer and (err.line, err.column) in pointers:
            err.pointer = pointers[(err.line, err.column)]


def _analyse(text: str, collect: bool = True) -> _Result:
    """Syntax and reference checks; never raises. `collect=False` stops at the first
    syntax error (used while streaming, where most failures are unfinished text)."""
    work, errors, hidden = text, [], set()
    lines = Lines(text)
    tree = None
    last = -1
    for _ in range(_MAX_SYNTAX_ERRORS):
        try:
            tree = _PARSER.parse(work)
            break
        except UnexpectedInput as exc:
            err, offset = _syntax_error(exc, work)
            err.context = lines.context(Pos(err.line, err.column))
            errors.append(err)
            if not collect or offset <= last:
                break
            last = offset
            begin, end = _resync(work, offset)
            for ln in work[begin:end].splitlines():
                m = _ITEM_LINE.match(ln)
                if m and (m.group(1) or m.group(2)):
                    hidden.add(_norm_id(m.group(1) or m.group(2)))
            work = work[:begin] + re.sub(r"[^\n]", " ", work[begin:end]) + work[end:]
        except LarkError as exc:  # pragma: no cover - defensive: lark's other errors
            errors.append(PlanSyntaxError(f"cannot parse plan: {exc}"))
            break
    if tree is None:
        return _Result([], "paper", errors)
    dialect = _dialect_of(tree)
    builder = _Builder(dialect)
    try:
        raw: list[RawCall] = builder.transform(tree)
    except VisitError as exc:
        orig = exc.orig_exc
        err = orig if isinstance(orig, PlanError) else PlanSyntaxError(f"cannot read plan: {orig}")
        if err.line and not err.context:
            err.context = lines.context(Pos(err.line, err.column))
        return _Result([], dialect, errors + [err])
    deep = _too_deep(raw, text)
    if deep:
        return _Result([], dialect, errors + deep)
    calls, semantic = semantics(raw, text, hidden)
    errors += semantic
    errors += _arithmetic_in_strings(builder.arithmetic, {r.id for r in raw}, text)
    if not calls and not errors:
        errors.append(EmptyPlanError("the plan has no function calls; write calls like "
                                     + ("`1. search(\"...\")`" if dialect == "llmcompiler"
                                        else "`s1: search(\"...\")`")))
    return _Result(calls, dialect, errors)


# `{s1 / s2}`, `{s1.price * 100}`, `{2 * s3}` inside a string: arithmetic in braces, which
# the paper dialect leaves as text (only `{id}` with fields is a reference).
_OPERAND = r"(?:(?:" + _ID + r")(?:" + _STEP + r")*|\d+(?:\.\d+)?)"
_BRACE_ARITHMETIC = re.compile(r"\{[ \t]*(" + _OPERAND + r"(?:[ \t]*[-+*/][ \t]*" + _OPERAND + r")+)[ \t]*\}")


def _arithmetic_in_strings(found: list[tuple[int, int, str]], ids: set[str], text: str) -> list[PlanError]:
    """An error for each `{s1 / s2}` in a string over a call's result: the function would
    get that text, not a number (an escaped `\\{` is text, as written)."""
    errors: list[PlanError] = []
    lines = Lines(text)
    for line, column, inner in found:
        operands = re.split(r"[ \t]*[-+*/][ \t]*", inner)
        results = [o for o in operands if re.split(r"[.\[]", o, maxsplit=1)[0] in ids]
        if not results:
            continue  # text that only looks like arithmetic: `{a + b}`
        values = " and ".join(f"{{{o}}}" for o in results)
        errors.append(ArgumentError(
            f"`{{{inner}}}` in a string is not computed: only a reference like `{{s1}}` is filled in, so the "
            f"function would get the text `{{{inner}}}`; compute it with a function and insert that call's "
            f"result, or insert the values themselves ({values})",
            line=line, column=column, context=lines.context(Pos(line, column))))
    return errors


#: How deeply an argument may nest (lists, dicts, operators on the right: `1 - (2 - (3 ...))`).
#: The walkers of arguments (references, checks, evaluation, rendering) recurse per level;
#: a flat chain `1 + 2 + ...` is not nesting and costs no levels.
MAX_NESTING = 100


def _too_deep(raw: list[RawCall], text: str) -> list[PlanError]:
    """A clear error for each argument nested deeper than `MAX_NESTING` (found in a loop,
    so the check itself cannot hit the recursion limit)."""
    errors: list[PlanError] = []
    lines = Lines(text)
    for r in raw:
        for arg, pos in r.args:
            stack: list[tuple[Expr, int]] = [(arg.value, 0)]
            deepest = 0
            while stack and deepest <= MAX_NESTING:
                expr, depth = stack.pop()
                deepest = max(deepest, depth)
                if isinstance(expr, ListExpr):
                    stack.extend((e, depth + 1) for e in expr.items)
                elif isinstance(expr, DictExpr):
                    stack.extend((v, depth + 1) for _, v in expr.items)
                elif isinstance(expr, BinOp):
                    first, rest = chain(expr)
                    stack.append((first, depth))
                    stack.extend((right, depth + 1) for _, right in rest)
            if deepest > MAX_NESTING:
                errors.append(PlanSyntaxError(
                    f"argument of `{r.function}` is nested more than {MAX_NESTING} levels deep "
                    "(lists, dicts or parenthesised operators inside each other)",
                    line=pos.line, column=pos.column, context=lines.context(pos)))
    return errors


def _name_column(lines: Lines, call: Call) -> int:
    """Column of the call's function name (the call's own column if it cannot be found)."""
    line = lines.line(call.line)
    if not lines.text or line is None:
        return call.column
    at = line.find(call.function + "(", max(call.column - 1, 0))
    return at + 1 if at >= 0 else call.column


def _toolbox_errors(calls: list[Call] | tuple[Call, ...], toolbox: Mapping[str, FunctionSpec],
                    text: str = "") -> list[PlanError]:
    errors: list[PlanError] = []
    lines = Lines(text)
    for call in calls:
        pos = Pos(call.line, call.column)
        ctx = lines.context(pos) if text and call.line else ""
        spec = toolbox.get(call.function)
        if spec is None:
            names = sorted(toolbox)
            close = difflib.get_close_matches(call.function, names, n=1)
            msg = f"unknown function `{call.function}`"
            msg += f"; did you mean `{close[0]}`?" if close else ""
            msg += f" Available: {', '.join(names) or 'none'}"
            column = _name_column(lines, call)
            if column != call.column:
                ctx = lines.context(Pos(call.line, column))
            errors.append(UnknownFunctionError(msg, line=call.line, column=column,
                                               context=ctx, expected=names))
            continue
        problems: list[str] = []
        args = tuple(_static(a, problems) for a in call.positional)
        kwargs = {k: _static(v, problems) for k, v in call.keywords.items()}
        try:
            spec.check(args, kwargs, unknown=UNKNOWN)
        except ArgumentsInvalid as exc:
            problems.insert(0, str(exc))
        except Exception as exc:  # a user annotation pydantic cannot handle, say
            problems.insert(0, f"{call.function}(): cannot check arguments: {exc}")
        for problem in problems:
            errors.append(ArgumentError(problem, line=call.line, column=call.column, context=ctx))
    at = (lambda ln, col: lines.context(Pos(ln, col))) if text else None
    errors += field_errors(calls, toolbox, at)
    errors += reference_type_errors(calls, toolbox, at)
    return errors


def _static(expr: Expr, problems: list[str]) -> Any:
    """The value of an argument known at plan time, `UNKNOWN` where it needs results."""
    if isinstance(expr, Literal):
        return expr.value
    if isinstance(expr, ListExpr):
        return [_static(e, problems) for e in expr.items]
    if isinstance(expr, DictExpr):
        return {k: _static(v, problems) for k, v in expr.items}
    if isinstance(expr, BinOp) and not _refs(expr):
        try:
            return evaluate(expr, {})
        except EvaluationError as exc:
            problems.append(str(exc))
    return UNKNOWN


def _raise(errors: list[PlanError]) -> None:
    errors = sorted(errors, key=lambda e: (e.line, e.column))
    raise errors[0] if len(errors) == 1 else PlanErrors(errors)


# --------------------------------------------------------------------------- public API


def parse(text: str, toolbox: Mapping[str, FunctionSpec] | None = None) -> Plan:
    """Parse plan text in the paper or LLMCompiler dialect.

    Args:
        text: the plan, as the LLM wrote it.
        toolbox: if given, also check function names, arity, keywords and the types of
            literal arguments (see `check`).

    Returns:
        The `Plan`; its `dialect` says how it was written.

    Raises:
        PlanError: the only exception, for any input. When the plan has several errors
            it is a `PlanErrors` listing all of them (syntax errors: one per broken call,
            resynchronising at the next line that starts a call).
    """
    if not isinstance(text, str):
        raise PlanSyntaxError(f"plan text must be a str, not {type(text).__name__}")
    try:
        result = _analyse_any(text)
        errors = list(result.errors)
        if toolbox is not None:
            errors += _toolbox_errors(result.calls, toolbox, text)
        _point(errors, result.pointers)
    except PlanError:
        raise
    except RecursionError:
        raise PlanSyntaxError("the plan is nested too deeply") from None
    except Exception as exc:  # the contract: nothing but PlanError leaves parse()
        raise PlanSyntaxError(f"internal error while parsing the plan: {exc!r}") from exc
    if errors:
        _raise(errors)
    return Plan(tuple(result.calls), result.dialect, result.answer)


def check(plan: Plan, toolbox: Mapping[str, FunctionSpec]) -> None:
    """Check a plan's calls against a toolbox: known functions, arity, keyword names, the
    types of arguments known before running, the fields references select from declared
    result types, and references' declared types against the parameters they are passed to
    (`ref_types`; a reference to a call outside the plan is skipped).

    Raises:
        UnknownFunctionError: with "did you mean ..." when a name is close.
        ArgumentError: from `FunctionSpec.check`, at the call's line and column.
        PlanErrors: when there are several.
    """
    errors = _toolbox_errors(plan.calls, toolbox)
    if errors:
        _raise(errors)


class PlanStream:
    """Parse a plan while the LLM is still writing it, to dispatch calls early.

    `feed` returns the calls that became complete: a call is complete at the first
    newline after it where the text so far parses (brackets and quotes balanced, so
    multi-line calls and strings wait for their end) and every reference in it names an
    earlier call (and, with a toolbox, the call checks). In a JSON plan (text starting
    with `[` or `{`) a call is complete when its object closes. Once the text so far has
    an error, `feed` returns nothing more; `close` then raises it.

    Examples:
        >>> stream = PlanStream()
        >>> stream.feed('s1: search("a")\\ns2: chatbot("Sum')
        [Call(id='s1', function='search', args=(Arg(name=None, value=Literal(value='a')),))]
        >>> [c.id for c in stream.feed('marize {s1}")\\n')]
        ['s2']
        >>> stream.close().ids
        ('s1', 's2')
    """

    def __init__(self, toolbox: Mapping[str, FunctionSpec] | None = None) -> None:
        self._toolbox = toolbox
        self._text = ""
        self._tried = 0  # text[:_tried] has had every newline tried
        self._calls: list[Call] = []
        self._closed = False
        self._json: Any = None  # a jsonplan.CallScanner once the text reads as JSON

    @property
    def text(self) -> str:
        """Everything fed so far."""
        return self._text

    @property
    def calls(self) -> list[Call]:
        """Every call returned by `feed` so far, in plan order."""
        return list(self._calls)

    def feed(self, chunk: str) -> list[Call]:
        """Add text; return the calls that became complete (each one once, in order)."""
        if self._closed:
            raise RuntimeError("PlanStream is closed; feed() must come before close()")
        self._text += chunk
        fresh: list[Call] = []
        if self._json is None and _is_json(self._text):
            self._json, chunk = CallScanner(), self._text
        if self._json is not None:
            for document in self._json.feed(chunk):
                fresh += self._complete(document)
            return fresh
        while (nl := self._text.find("\n", self._tried)) >= 0:
            line = self._text[self._text.rfind("\n", 0, nl) + 1 : nl]
            self._tried = nl + 1
            if not line.strip():
                continue
            fresh += self._complete(self._text[: nl + 1])
        return fresh

    def _complete(self, prefix: str) -> list[Call]:
        try:
            result = _analyse_any(prefix, collect=False)
            if result.errors:
                return []
            if self._toolbox is not None and _toolbox_errors(result.calls, self._toolbox):
                return []
        except Exception:  # close() reports it
            return []
        if result.calls[: len(self._calls)] != self._calls:
            return []  # cannot happen: a complete prefix parses the same in the whole text
        new = result.calls[len(self._calls):]
        self._calls += new
        return new

    def close(self) -> Plan:
        """Parse everything fed; return the `Plan` (raises `PlanError` like `parse`)."""
        self._closed = True
        return parse(self._text, self._toolbox)
