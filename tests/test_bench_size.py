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

#: State held on objects, not in bare names: found as well.
OBJECTS = '''
from dataclasses import dataclass
from typing import NamedTuple


@dataclass
class _Guard:
    signum: int | None = None


@dataclass(frozen=True)
class _Point:
    x: int = 0


class _Pair(NamedTuple):
    a: int


class _Owner:
    _instance: "_Owner | None" = None

    def __init__(self) -> None:
        self.held: dict[str, object] = {}   # its own attribute: a local `self`

    @classmethod
    def get(cls) -> "_Owner":
        cls._instance = cls._instance or cls()   # a class attribute a classmethod sets
        return cls._instance


_guard = _Guard()              # an attribute set below
_OWNER = _Owner()              # an instance of a mutable class of the module
_ORIGIN = _Point()             # frozen: not one
_PAIR = _Pair(1)               # a NamedTuple: not one
_box = _Guard()                # ...
_seen = _Guard()


def handle(signum: int) -> None:
    _guard.signum = signum


def note(name: str, box: _Guard) -> None:
    box.signum = 1             # a parameter, not module state
    _seen.signum = 2
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


def test_state_held_on_objects_is_found(tmp_path: Path) -> None:
    path = tmp_path / "objects.py"
    path.write_text(OBJECTS)
    found = {(r.name, r.how) for r in size.registries(path, "objects.py")}
    assert found == {("_guard", "instance"), ("_OWNER", "instance"), ("_box", "instance"), ("_seen", "instance"),
                     ("_Owner._instance", "rebound")}


def test_attributes_set_on_a_module_name_are_found(tmp_path: Path) -> None:
    # no class of the module behind it: only the attribute store shows the state
    path = tmp_path / "attrs.py"
    path.write_text("import types\n_ns = types.SimpleNamespace(n=0)\n_items = types.SimpleNamespace(l=[])\n"
                    "def bump() -> None:\n    _ns.n += 1\n    _items.l.append(1)\n"
                    "def read() -> int:\n    return _ns.n\n")
    found = {(r.name, r.how) for r in size.registries(path, "attrs.py")}
    assert found == {("_ns", "mutated"), ("_items", "mutated")}
