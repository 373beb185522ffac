"""`python benchmarks/size.py` -- issue 27's size budgets, measured from the source.

Prints, for `engine/` and `flows/` (all of `flows/` counts as Prefect-facing: every module
imports Prefect but `flows/handoff.py`, which exists to hand objects to a Prefect flow run's
body; what talks to neither Prefect nor a flow lives in other parts: `procs/`, `report.py`,
`storage/`, ...):

- lines per module (as `wc -l`) and code lines (without blank lines, comments and docstrings),
  grouped into the core (what a plan needs to run and recover) and the modules of features that
  other issues added (the Dask runner, approvals, rate limits, the joiner's flow), with the
  budget (2,500 lines) against the total;
- the package's process-global mutable registries, found in the syntax tree rather than
  listed by hand: module-level names that functions rebind (`global`) or mutate (item
  assignment, `del`, `add`/`append`/`pop`/`update`/... calls, on the name or on one of its
  attributes, or setting an attribute: `_guard.signum = ...`), class attributes a
  classmethod sets (`cls._instance = ...`), module-level instances of a mutable class of the
  module (`_OWNER = Owner()`: its methods change it), and module-level functions wrapped in
  `functools.cache`/`lru_cache`; grouped by module, against the budget (2).

`--json FILE` also writes the figures. No Prefect import: it reads files.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import tokenize
from dataclasses import asdict, dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "prefect_llmorch"
LINE_BUDGET = 2500
REGISTRY_BUDGET = 2
# Modules whose whole content is a feature another issue asked for (issue numbers in docs).
FEATURES = {
    "engine/dask.py": "Dask runner",
    "engine/approval.py": "approvals",
    "engine/rates.py": "rate limits",
    "flows/joiner.py": "joiner",
}
MUTATORS = {
    "add", "append", "appendleft", "clear", "discard", "extend", "insert", "pop", "popitem",
    "popleft", "remove", "setdefault", "update", "__setitem__", "__delitem__",
}


@dataclass(frozen=True)
class ModuleSize:
    path: str
    lines: int
    code: int
    group: str


@dataclass(frozen=True)
class Registry:
    module: str
    name: str
    how: str  # "rebound", "mutated", "instance" or "cache"


def _docstring_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                lines.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return lines


def code_lines(source: str) -> int:
    """Lines holding a token of code (not a comment, not a docstring, not blank)."""
    docs = _docstring_lines(ast.parse(source))
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENCODING, tokenize.ENDMARKER}
    code: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip:
            code.update(n for n in range(tok.start[0], tok.end[0] + 1) if n not in docs)
    return len(code)


def sizes() -> list[ModuleSize]:
    rows = []
    for folder in ("engine", "flows"):
        for path in sorted((PACKAGE / folder).glob("*.py")):
            rel = f"{folder}/{path.name}"
            source = path.read_text()
            rows.append(ModuleSize(rel, len(source.splitlines()), code_lines(source),
                                   FEATURES.get(rel, "core")))
    return rows


def _module_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
        for target in targets:
            if isinstance(target, ast.Name):
                names.add(target.id)
    return names


def _frozen(cls: ast.ClassDef) -> bool:
    """Whether instances of `cls` cannot change: a frozen dataclass, a NamedTuple, an Enum."""
    for deco in cls.decorator_list:
        if isinstance(deco, ast.Call) and any(
                k.arg == "frozen" and isinstance(k.value, ast.Constant) and k.value.value is True
                for k in deco.keywords):
            return True
    bases = {b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in cls.bases}
    return bool(bases & {"NamedTuple", "Enum", "IntEnum", "StrEnum", "Flag", "IntFlag"})


def _instances(tree: ast.Module) -> set[str]:
    """Module-level names bound to an instance of a mutable class defined in the module."""
    mutable = {n.name for n in tree.body if isinstance(n, ast.ClassDef) and not _frozen(n)}
    names: set[str] = set()
    for node in tree.body:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id in mutable:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]  # type: ignore[union-attr]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def _changed_base(node: ast.AST) -> ast.expr | None:
    """The object `node` changes: `x[k] = v`, `del x[k]`, `x.add(v)` change `x`; setting or
    deleting `x.a` changes `x`, as `x.a[k] = v` and `x.a.add(v)` do."""
    base = None
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATORS:
        base = node.func.value
    elif isinstance(node, (ast.Subscript, ast.Attribute)) and isinstance(node.ctx, (ast.Store, ast.Del)):
        return node.value if isinstance(node.value, ast.Name) else \
            node.value.value if isinstance(node.value, ast.Attribute) else node.value
    if isinstance(base, ast.Attribute):
        return base.value
    return base


def _local_names(func: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    args = func.args
    names = {a.arg for a in args.args + args.posonlyargs + args.kwonlyargs}
    names |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
    declared_global: set[str] = set()
    for node in ast.walk(func):
        if isinstance(node, ast.Global):
            declared_global.update(node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names - declared_global


def registries(path: Path, module: str) -> list[Registry]:
    tree = ast.parse(path.read_text())
    module_names = _module_names(tree) | {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    found: dict[str, str] = {name: "instance" for name in _instances(tree)}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for deco in node.decorator_list:
                target = deco.func if isinstance(deco, ast.Call) else deco
                name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
                if name in {"cache", "lru_cache"}:
                    found[node.name] = "cache"
    owners = {func: cls.name for cls in ast.walk(tree) if isinstance(cls, ast.ClassDef) for func in cls.body}
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        local = _local_names(func)
        classmethod_ = func in owners and any(getattr(d, "id", "") == "classmethod" for d in func.decorator_list)
        for node in ast.walk(func):
            if isinstance(node, ast.Global):
                for name in node.names:
                    found.setdefault(name, "rebound")
                continue
            base = _changed_base(node)
            if not isinstance(base, ast.Name):
                continue
            if base.id in module_names and base.id not in local:
                found.setdefault(base.id, "mutated")
            elif classmethod_ and base.id == "cls" and isinstance(node, ast.Attribute):
                found.setdefault(f"{owners[func]}.{node.attr}", "rebound")
    return [Registry(module, name, how) for name, how in sorted(found.items())]


def all_registries() -> list[Registry]:
    rows = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rows += registries(path, str(path.relative_to(PACKAGE)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    rows = sizes()
    print(f"{'module':28s} {'lines':>6s} {'code':>6s}  group")
    for row in rows:
        print(f"{row.path:28s} {row.lines:6d} {row.code:6d}  {row.group}")
    total = sum(r.lines for r in rows)
    code = sum(r.code for r in rows)
    core = [r for r in rows if r.group == "core"]
    print(f"{'total':28s} {total:6d} {code:6d}")
    print(f"{'core (no feature modules)':28s} {sum(r.lines for r in core):6d} {sum(r.code for r in core):6d}")
    for feature in sorted(set(FEATURES.values())):
        part = [r for r in rows if r.group == feature]
        print(f"{'  ' + feature:28s} {sum(r.lines for r in part):6d} {sum(r.code for r in part):6d}")
    verdict = "MET" if total <= LINE_BUDGET else "NOT MET"
    print(f"budget: engine/ + flows/ <= {LINE_BUDGET} lines: {total} ({total / LINE_BUDGET:.2f}x) {verdict}")

    found = all_registries()
    print()
    print("process-global mutable registries (module-level state changed at run time):")
    modules: dict[str, list[Registry]] = {}
    for reg in found:
        modules.setdefault(reg.module, []).append(reg)
    for module, regs in modules.items():
        print(f"  {module}: " + ", ".join(f"{r.name} ({r.how})" for r in regs))
    verdict = "MET" if len(modules) <= REGISTRY_BUDGET else "NOT MET"
    print(f"budget: <= {REGISTRY_BUDGET} registries: {len(found)} names in {len(modules)} modules {verdict}")

    if args.json:
        Path(args.json).write_text(json.dumps(
            {"modules": [asdict(r) for r in rows], "registries": [asdict(r) for r in found]}, indent=2))


if __name__ == "__main__":
    main()
