"""The layout is the architecture: imports go one way, and the pure layers stay pure.

plan -> graph -> schedule -> host | report -> storage | procs -> engine -> flows -> cli
(llm beside engine, used by flows),
read from every module's own source with `ast` (function-local imports included, imports
under `if TYPE_CHECKING:` left out: they never run).
"""

from __future__ import annotations

import ast
import graphlib
import importlib
import pkgutil
from pathlib import Path

import pytest

import prefect_llmorch

PACKAGE = Path(prefect_llmorch.__file__).parent

#: Each top-level part of the package and its layer: a module may import its own part and
#: parts of lower layers only (parts of one layer do not import each other).
LAYERS: dict[str, int] = {
    "testing": 0,
    "functions": 0,
    "plan": 1,
    "examples": 1,
    "graph": 2,
    "schedule": 3,
    "host": 4,
    "procs": 5,
    "report": 4,
    "options": 4,
    "storage": 5,
    "engine": 6,
    "llm": 6,
    "blocks": 7,
    "credentials": 8,
    "mcp": 8,
    "flows": 9,
    "cli": 10,
}

#: Parts that are pure (no Prefect, no LLM client, no cluster), and what they must not import.
PURE = ("functions", "plan", "graph", "schedule", "options", "report")
NOT_IN_PURE = ("prefect", "prefect_dask", "distributed", "openai", "httpx")
#: The LLM side is plain HTTP: Prefect stays in flows/ (the planner task, the recovery hooks).
NOT_IN_LLM = ("prefect", "prefect_dask", "distributed")
#: The worker processes never import Prefect (each would start its own ephemeral server);
#: `engine/` drives them from Prefect's task runs.
NOT_IN_PROCS = NOT_IN_LLM


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (`plan.model`, `flows`, ...), no facade."""
    out: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str) -> list[tuple[str, int]]:
    """(absolute module imported, line) for every import of module `name` that can run."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ("prefect_llmorch." + package).rstrip(".").split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, node.lineno))
            # `from prefect_llmorch.plan import model` imports a submodule too
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub.startswith("prefect_llmorch.") and sub[len("prefect_llmorch."):] in MODULES:
                    found.append((sub, node.lineno))
                elif target == "prefect_llmorch" and alias.name in _EXPORTS:
                    found.append((f"prefect_llmorch.{_EXPORTS[alias.name]}", node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


_EXPORTS: dict[str, str] = getattr(prefect_llmorch, "_EXPORTS", {})


def _internal(target: str) -> str | None:
    """The package module `target` names (`prefect_llmorch.plan.model` -> `plan.model`)."""
    if not target.startswith("prefect_llmorch."):
        return None
    name = target[len("prefect_llmorch."):]
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _part(name: str) -> str:
    return name.split(".")[0]


def test_every_part_of_the_package_has_a_layer() -> None:
    assert {_part(m) for m in MODULES} <= set(LAYERS), "add the new part to LAYERS (and to DESIGN.md's layout)"


def test_no_module_imports_a_later_layer_or_a_sibling_part() -> None:
    wrong = []
    for name in MODULES:
        here = _part(name)
        for target, line in _imports(name):
            other = _internal(target)
            if other is None or _part(other) == here:
                continue
            there = _part(other)
            if LAYERS[there] >= LAYERS[here]:
                wrong.append(f"{MODULES[name].relative_to(PACKAGE)}:{line} imports {target} ({here} is layer {LAYERS[here]}, {there} layer {LAYERS[there]})")
    assert not wrong, "imports against the direction:\n" + "\n".join(wrong)


@pytest.mark.parametrize("part, banned", [(p, NOT_IN_PURE) for p in PURE] + [("llm", NOT_IN_LLM), ("procs", NOT_IN_PROCS)])
def test_pure_parts_import_neither_prefect_nor_an_llm_client(part: str, banned: tuple[str, ...]) -> None:
    wrong = [
        f"{MODULES[name].relative_to(PACKAGE)}:{line} imports {target}"
        for name in MODULES if _part(name) == part
        for target, line in _imports(name)
        if target.split(".")[0] in banned
    ]
    assert not wrong, "\n".join(wrong)


def _graph(nodes: set[str], key=lambda m: m) -> dict[str, set[str]]:  # type: ignore[no-untyped-def]
    graph: dict[str, set[str]] = {key(m): set() for m in MODULES if key(m) in nodes}
    for name in MODULES:
        if key(name) not in nodes:
            continue
        for target, _ in _imports(name):
            other = _internal(target)
            if other is not None and key(other) in nodes and key(other) != key(name):
                graph[key(name)].add(key(other))
    return graph


def _assert_acyclic(graph: dict[str, set[str]]) -> None:
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_no_import_cycles_between_parts() -> None:
    _assert_acyclic(_graph(set(LAYERS), key=_part))


@pytest.mark.parametrize("part", sorted(LAYERS))
def test_no_import_cycles_within_a_part(part: str) -> None:
    _assert_acyclic(_graph({m for m in MODULES if _part(m) == part}))


def test_no_public_name_equals_a_submodule_name() -> None:
    """`from prefect_llmorch import orchestrate` must give the flow even once a submodule of
    that name would have been imported (a submodule import sets the package attribute)."""
    submodules = {m.name for m in pkgutil.iter_modules(prefect_llmorch.__path__)}
    clash = sorted(set(prefect_llmorch.__all__) & submodules)
    assert not clash, f"public names equal to submodules: {clash}"
    for name in MODULES:  # import everything, then every public name is still what it says
        importlib.import_module(f"prefect_llmorch.{name}")
    import types

    modules = [n for n in prefect_llmorch.__all__ if isinstance(getattr(prefect_llmorch, n), types.ModuleType)]
    assert not modules, f"public names that are modules: {modules}"


def test_the_import_walker_sees_every_kind_of_import() -> None:
    """The walker finds module-level, function-local and relative imports, and skips
    TYPE_CHECKING blocks (checked on this package's own files, so it cannot pass vacuously)."""
    flows = {t for t, _ in _imports("flows.execute")}
    assert {"prefect_llmorch.engine.compiler", "prefect.futures"} <= flows
    parser = {t for t, _ in _imports("plan.parser")}
    assert "prefect_llmorch.functions" in parser  # `from ..functions import ...`
    recovery = {t for t, _ in _imports("flows.recovery")}
    assert "prefect_llmorch.report" not in recovery  # under TYPE_CHECKING only
    assert any(t == "prefect.states" for t in recovery)  # imported inside a method


def test_the_cli_uses_the_public_api_not_the_engine() -> None:
    """Issue 27: the CLI calls the library (the package's public names, flows, options), never
    a module of `engine/` directly (read from cli.py's own source, as written)."""
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    named = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
    named += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert named, "the walk found no import in cli.py"
    assert not [m for m in named if m.startswith("prefect_llmorch.engine")]
