"""benchmarks/size.py's measures: code lines and the registries it finds in a module's syntax."""

from __future__ import annotations

from pathlib import Path

import size  # benchmarks/ is on sys.path (conftest)

MODULE = '''"""A module docstring
of two lines."""
import functools
import threading

_KEPT: dict[str, int] = {}     # mutated by item assignment: a registry
_SEEN: set[str] = set()        # mutated by a method call: a registry
_LIMIT = 3                     # read only: not one
_LOCK = threading.Lock()       # acquired, not mutated: not one
_current = None                # rebound through `global`: a registry


def keep(name: str) -> None:
    # a comment
    _KEPT[name] = _LIMIT
    _SEEN.add(name)


def swap(value: object) -> None:
    global _current
    _current = value


def shadowed(_SEEN: set[str]) -> None:
    _SEEN.add("x")              # the parameter, not the module's set


def local_only() -> None:
    _KEPT = {}
    _KEPT["a"] = 1             # a local of the same name


@functools.cache
def once() -> int:
    return 1
'''


def test_code_lines_skip_docstrings_comments_and_blank_lines() -> None:
    assert size.code_lines('"""Doc."""\n\n# note\nx = 1  # why\n\ndef f():\n    """Doc."""\n    return x\n') == 3


def test_registries_are_the_module_names_functions_change(tmp_path: Path) -> None:
    path = tmp_path / "mod.py"
    path.write_text(MODULE)
    found = {(r.name, r.how) for r in size.registries(path, "mod.py")}
    assert found == {("_KEPT", "mutated"), ("_SEEN", "mutated"), ("_current", "rebound"), ("once", "cache")}


def test_the_package_is_measured() -> None:
    rows = size.sizes()
    assert {r.path for r in rows} >= {"engine/runner.py", "flows/run.py"}
    assert all(0 < r.code <= r.lines for r in rows if r.lines > 1)
