"""What both plan parsers share: positions in the plan text, the error context line, and
the semantic checks of raw calls (ids, argument order, references).

`parser.py` (text dialects) and `jsonplan.py` (JSON forms) both build `RawCall`s and hand
them to `semantics`; keeping these here lets `parser` import `jsonplan` and never the
other way round.

    >>> position("a\\nbc", 3)
    Pos(line=2, column=2)
    >>> print(context("s1: search(x)", Pos(1, 12)))
    s1: search(x)
               ^
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .errors import ArgumentError, DuplicateIdError, PlanError, PlanReferenceError
from .model import Arg, BinOp, Call, DictExpr, ListExpr, Ref, Template, describe_path
from .model import refs as _refs

__all__ = ["Lines", "Pos", "RawCall", "position", "context", "line_text", "after_last_token", "one_of", "semantics"]


class Pos(NamedTuple):
    line: int
    column: int


class RawCall(NamedTuple):
    id: str
    function: str
    args: list[tuple[Arg, Pos]]
    pos: Pos


def position(text: str, offset: int) -> Pos:
    line = text.count("\n", 0, offset) + 1
    return Pos(line, offset - (text.rfind("\n", 0, offset) + 1) + 1)


class Lines:
    """The lines of one text, found once (at the first question): what a function that
    reports many errors of one text asks, each error's line and context. A plan with
    thousands of errors asks for each one's, and splitting the whole text every time made
    that quadratic; so such a function makes one `Lines` of its text and asks it.

        >>> lines = Lines("a\\nbc")
        >>> lines.line(2), lines.line(3)
        ('bc', None)
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self._starts: tuple[int, ...] | None = None

    def line(self, line: int) -> str | None:
        """Line `line` (1-based) without its newline; None if there is no such line."""
        if self._starts is None:
            self._starts = (0, *(m.end() for m in re.finditer("\n", self.text)))
        starts = self._starts
        if not 1 <= line <= len(starts):
            return None
        begin = starts[line - 1]
        end = starts[line] - 1 if line < len(starts) else len(self.text)
        return self.text[begin:end]

    def context(self, pos: Pos, span: int = 60) -> str:
        """The line of `pos` (at most `span` characters either side) and a caret under it."""
        line = self.line(pos.line)
        if line is None:
            return ""
        line = line.rstrip("\r")
        start = 0 if len(line) <= 2 * span else max(0, pos.column - 1 - span)
        return line[start : pos.column - 1 + span] + "\n" + " " * (pos.column - 1 - start) + "^"


def line_text(text: str, line: int) -> str | None:
    """Line `line` (1-based) of `text` without its newline; None if there is no such line
    (one question: for many, ask one `Lines`)."""
    return Lines(text).line(line)


def context(text: str, pos: Pos, span: int = 60) -> str:
    """The caret context of `pos` in `text` (one question: for many, ask one `Lines`)."""
    return Lines(text).context(pos, span)


def after_last_token(text: str, offset: int) -> int:
    """Offset just after the last non-blank character before `offset`."""
    i = offset
    while i > 0 and text[i - 1].isspace():
        i -= 1
    return i


def one_of(expected: list[str]) -> str:
    if not expected:
        return "something else"
    return expected[0] if len(expected) == 1 else "one of: " + ", ".join(expected)


def semantics(raw: list[RawCall], text: str, hidden: set[str]) -> tuple[list[Call], list[PlanError]]:
    """The `Call`s of `raw` (bare `join()` markers dropped) and the errors found in them:
    duplicate ids, argument order, self/forward/undefined references (ids in `hidden`
    belong to calls with syntax errors, already reported)."""
    def err(cls: type[PlanError], message: str, line: int, column: int,
            refs: list[tuple[str, tuple]] | None = None) -> None:
        pos = Pos(line, column)
        errors.append(cls(message, line=line, column=column, context=lines.context(pos),
                          refs=refs or ()))

    lines = Lines(text)

    errors: list[PlanError] = []
    raw = [r for r in raw if not (r.function == "join" and not r.args)]
    where = {}
    for r in raw:
        where.setdefault(r.id, r.pos)
    defined: list[str] = []
    known: set[str] = set()  # `defined` as a set: thousands of calls made the list scans quadratic
    calls: list[Call] = []
    for r in raw:
        if r.id in known:
            err(DuplicateIdError, f"duplicate id `{r.id}`; already used on line {where[r.id].line}",
                *r.pos)
        seen_kw: set[str] = set()
        for arg, pos in r.args:
            if arg.name is None and seen_kw:
                err(ArgumentError, "positional argument follows keyword argument", *pos)
            elif arg.name is not None:
                if arg.name in seen_kw:
                    err(ArgumentError, f"keyword argument `{arg.name}` repeated", *pos)
                seen_kw.add(arg.name)
            quoted = _in_templates(arg.value)
            for ref in _refs(arg.value):
                if ref.id in known:
                    continue
                named: list[tuple[str, tuple]] = []  # the ids the hint names instead
                if ref.id == r.id:
                    msg = f"call `{r.id}` refers to its own result `{ref.id}`"
                elif ref.id in where and where[ref.id] > r.pos:
                    msg = (f"forward reference `{ref.id}` (defined on line {where[ref.id].line}); "
                           "a call can only use results of earlier calls")
                elif ref.id in hidden:
                    continue  # its call had a syntax error, already reported
                else:
                    msg = f"undefined reference `{ref.id}`; defined so far: {_so_far(defined)}"
                    # `convert_currency_result.amount` (the type the prompt names) or
                    # `convert_currency.amount`: the result of an earlier call, named by its function
                    callers = [c.id for c in calls if c.id in known and (
                        ref.id == c.function or ref.id.startswith(c.function + "_"))]
                    if callers:
                        ids = " or ".join(f"`{describe_path(c, ref.path)}`" for c in callers)
                        msg += f"; a result is used by its call's id, not its function's name: {ids}"
                        named = [(c, ref.path) for c in callers]
                    elif id(ref) not in quoted and not _ID_LIKE.fullmatch(ref.id) and (ref.path or len(ref.id) > 3):
                        # `detect(frame_001.png)`: a small model left the quotes off a text
                        msg += f'; if it is text, write it in double quotes: "{ref.display()}"'
                err(PlanReferenceError, msg, ref.line, ref.column, named)
        if r.id not in known:
            defined.append(r.id)
            known.add(r.id)
        calls.append(Call(r.id, r.function, tuple(a for a, _ in r.args), *r.pos))
    return calls, errors


#: What a call id looks like (`s3`, `3`, `$3`): an undefined name unlike one is likely text.
_ID_LIKE = re.compile(r"s?\d+|\$\{?\d+\}?")


def _in_templates(expr: object) -> set[int]:
    """`id()`s of the references inside strings of `expr` (already quoted text)."""
    out: set[int] = set()
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, Template):
            out.update(id(p) for p in node.parts if isinstance(p, Ref))
        elif isinstance(node, ListExpr):
            stack.extend(node.items)
        elif isinstance(node, DictExpr):
            stack.extend(v for _, v in node.items)
        elif isinstance(node, BinOp):
            stack.extend((node.left, node.right))
    return out


def _so_far(defined: list[str], show: int = 12) -> str:
    """The ids defined so far, for an error message: all of them, or the first and last few
    of a long plan (every error listing thousands of ids made the errors quadratic)."""
    if not defined:
        return "none"
    if len(defined) <= show:
        return ", ".join(defined)
    half = show // 2
    return (", ".join(defined[:half]) + ", ..., " + ", ".join(defined[-half:])
            + f" ({len(defined)} calls)")
