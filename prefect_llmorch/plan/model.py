"""The plan model: what a parsed plan *is*, independent of its surface dialect.

A `Plan` is an ordered tuple of `Call`s. Each call's arguments are expression trees
(`Ref`, `Literal`, `ListExpr`, `DictExpr`, `Template`, `BinOp`). References to earlier
calls are the def-use edges of the Function-call Relation Graph.

Positions (`line`, `column`) are kept for error messages but excluded from equality, so
`parse(plan.to_text()) == plan` compares meaning, not layout.

No Prefect, no I/O here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Literal as TypingLiteral, Union

Dialect = TypingLiteral["paper", "llmcompiler", "json", "nestful"]

#: Every dialect `Plan.to_text` can write and `parse` reads.
DIALECTS: tuple[Dialect, ...] = ("paper", "llmcompiler", "json", "nestful")

Scalar = Union[str, int, float, bool, None]

#: One step of a field/index access: a field or key name (`.skyId`, `["Exchange Rate"]`)
#: or an index (`[0]`, `[-1]`).
Step = Union[str, int]


@dataclass(frozen=True)
class Ref:
    """A reference to the result of an earlier call (`s1`, `$1`, `${1}`, `{s1}`), optionally
    selecting a part of it: `s1.data[0].id` is `Ref("s1", path=("data", 0, "id"))`.

    The def-use edge goes to the base call (`id`), whatever the path.
    """

    id: str
    line: int = field(default=0, compare=False, repr=False)
    column: int = field(default=0, compare=False, repr=False)
    path: tuple[Step, ...] = ()

    def __repr__(self) -> str:
        return f"Ref(id={self.id!r}" + (f", path={self.path!r})" if self.path else ")")

    def display(self) -> str:
        """How messages name it: `s1.data[0]`, `$1.skyId`, `s1["Exchange Rate"]`."""
        return describe_path(self.id, self.path)


@dataclass(frozen=True)
class Literal:
    """A constant: string, number, boolean or null."""

    value: Scalar


@dataclass(frozen=True)
class ListExpr:
    items: tuple["Expr", ...]


@dataclass(frozen=True)
class DictExpr:
    """A dict literal; keys are constant strings or numbers."""

    items: tuple[tuple[Scalar, "Expr"], ...]


@dataclass(frozen=True)
class Template:
    """A string with references inside it: `"Summarize {s3}"` or `'$1 / $2'`.

    `parts` alternates text (`str`) and `Ref`s. A string that is exactly one reference
    is parsed as that `Ref` itself (so it keeps its type), never as a one-part Template.
    """

    parts: tuple[Union[str, Ref], ...]


@dataclass(frozen=True, eq=False, repr=False)
class BinOp:
    """`left op right` for op in + - * /; evaluated by walking the tree, never `eval`.

    A flat chain `1 + 2 + ... + n` is a left-deep tree as deep as it is long, so equality,
    hashing, repr and pickling walk the left spine in a loop (see `chain`): they would
    otherwise hit Python's recursion limit at about a thousand terms.
    """

    op: str
    left: "Expr"
    right: "Expr"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BinOp):
            return NotImplemented
        a, b = self, other
        while isinstance(a, BinOp) and isinstance(b, BinOp):
            if a is b:
                return True
            if a.op != b.op or a.right != b.right:
                return False
            a, b = a.left, b.left
        return a == b

    def __hash__(self) -> int:
        first, rest = chain(self)
        return hash((BinOp, first, rest))

    def __repr__(self) -> str:
        first, rest = chain(self)
        head = "".join(f"BinOp(op={op!r}, left=" for op, _ in reversed(rest))
        tail = "".join(f", right={right!r})" for _, right in rest)
        return head + repr(first) + tail

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_from_chain, chain(self))


Expr = Union[Ref, Literal, ListExpr, DictExpr, Template, BinOp]


@dataclass(frozen=True)
class Arg:
    """One argument: positional when `name` is None."""

    name: str | None
    value: Expr


@dataclass(frozen=True)
class Call:
    """One function call of a plan: `s3: python("cmp.py", args=[s1, s2])`."""

    id: str
    function: str
    args: tuple[Arg, ...] = ()
    line: int = field(default=0, compare=False, repr=False)
    column: int = field(default=0, compare=False, repr=False)

    @property
    def deps(self) -> frozenset[str]:
        """Ids of the calls whose results this call uses (R1 def-use edges)."""
        out: set[str] = set()
        for arg in self.args:
            out.update(r.id for r in refs(arg.value))
        return frozenset(out)

    @property
    def positional(self) -> tuple[Expr, ...]:
        return tuple(a.value for a in self.args if a.name is None)

    @property
    def keywords(self) -> dict[str, Expr]:
        return {a.name: a.value for a in self.args if a.name is not None}


@dataclass(frozen=True)
class Plan:
    """A function-call sequence. `dialect` records how it was written.

    `answer` names the plan's answer when the plan says so (the NESTFUL form's final
    `var_result` entry, the JSON form's `"answer"`): an expression over the calls'
    results, usually a `DictExpr` of `Ref`s. The text dialects have no way to write it.
    """

    calls: tuple[Call, ...]
    dialect: Dialect = field(default="paper", compare=False)
    answer: Expr | None = None

    def __iter__(self):
        return iter(self.calls)

    def __len__(self) -> int:
        return len(self.calls)

    def __getitem__(self, call_id: str) -> Call:
        for call in self.calls:
            if call.id == call_id:
                return call
        raise KeyError(call_id)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(c.id for c in self.calls)

    def to_text(self, dialect: Dialect | None = None) -> str:
        """Render the plan in `dialect` (default: the one it was written in):
        "paper", "llmcompiler", "json" or "nestful"; `parse(plan.to_text(d))` gives back
        an equal plan (the text dialects drop `answer`)."""
        if _renderer is None:  # only while the package's own __init__ is still running
            raise RuntimeError("Plan.to_text needs prefect_llmorch.plan.render imported first")
        return _renderer(self, dialect or self.dialect)


#: What `Plan.to_text` calls. `render.py` (built on this module) installs itself with
#: `use_renderer` when imported, and `plan/__init__.py` imports it, so the import goes
#: one way: render -> model.
_renderer: Callable[[Plan, Dialect], str] | None = None


def use_renderer(render: Callable[[Plan, Dialect], str]) -> None:
    """Make `Plan.to_text` write plans with `render` (called once, by `render.py`)."""
    global _renderer
    _renderer = render


def refs(expr: Expr) -> list[Ref]:
    """Every `Ref` inside an expression, in order of appearance."""
    if isinstance(expr, Ref):
        return [expr]
    if isinstance(expr, ListExpr):
        return [r for item in expr.items for r in refs(item)]
    if isinstance(expr, DictExpr):
        return [r for _, v in expr.items for r in refs(v)]
    if isinstance(expr, Template):
        return [p for p in expr.parts if isinstance(p, Ref)]
    if isinstance(expr, BinOp):
        first, rest = chain(expr)
        out = refs(first)
        for _, right in rest:
            out += refs(right)
        return out
    return []


def chain(expr: BinOp) -> tuple["Expr", tuple[tuple[str, "Expr"], ...]]:
    """A left-deep `BinOp` as its leftmost operand and the `(op, right)` pairs applied to it
    in order: `1 + 2 - 3` is `(Literal(1), (("+", Literal(2)), ("-", Literal(3))))`. Walkers
    loop over this, so a long flat chain costs no recursion; only nesting on the right
    (parentheses) recurses."""
    rest: list[tuple[str, Expr]] = []
    node: Expr = expr
    while isinstance(node, BinOp):
        rest.append((node.op, node.right))
        node = node.left
    rest.reverse()
    return node, tuple(rest)


def _from_chain(first: "Expr", rest: tuple[tuple[str, "Expr"], ...]) -> "Expr":
    node = first
    for op, right in rest:
        node = BinOp(op, node, right)
    return node


def describe_path(call_id: str, path: tuple[Step, ...] = ()) -> str:
    """`s1.data[0]["Exchange Rate"]` (a numeric id reads `$1`)."""
    out = [f"${call_id}" if call_id.isdigit() else call_id]
    for step in path:
        if isinstance(step, int):
            out.append(f"[{step}]")
        elif _IDENT.fullmatch(step):
            out.append(f".{step}")
        else:
            out.append(f"[{step!r}]")
    return "".join(out)


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
