"""@inout / @compute, FunctionSpec checks, Toolbox."""

from __future__ import annotations

import inspect
import pickle
import re
import sys
from typing import Literal, Optional

import pytest
from pydantic import BaseModel

from prefect_llmorch.functions import (
    SELF, ArgumentsInvalid, FunctionSpec, Toolbox, ToolboxNotFound, compute, inout, load_toolbox, spec_of,
)


@inout(description="Search the web.", cost=0.4, retries=2)
def search(query: str, k: int = 3) -> list[str]:
    return [query] * k


@compute
def analyse(*values: float, scale: float = 1.0) -> float:
    """Sum, scaled."""
    return sum(values) * scale


def test_decorators_keep_the_function_and_attach_a_spec() -> None:
    assert search("x", 2) == ["x", "x"]  # still the plain function
    spec = spec_of(search)
    assert (spec.name, spec.kind, spec.cost, spec.retries, spec.description) == ("search", "inout", 0.4, 2, "Search the web.")
    assert spec_of(analyse).kind == "compute" and spec_of(analyse).description == "Sum, scaled."
    assert pickle.loads(pickle.dumps(analyse)) is analyse  # ships to worker processes by reference


def test_validate_coerces_and_check_reports_every_problem() -> None:
    spec = spec_of(search)
    assert spec.validate(("q",), {"k": "2"}) == {"query": "q", "k": 2}
    with pytest.raises(ArgumentsInvalid, match="missing a required argument: 'query'"):
        spec.validate((), {})
    with pytest.raises(ArgumentsInvalid, match="unexpected keyword argument 'limit'"):
        spec.check(("q",), {"limit": 3})
    with pytest.raises(ArgumentsInvalid) as info:
        spec.check((1.5,), {"k": "many"})
    assert [p for p, _ in info.value.problems] == ["query", "k"]


def test_unknown_values_are_skipped_at_plan_time() -> None:
    unknown = object()
    spec_of(search).check((unknown,), {"k": 1}, unknown=unknown)  # a reference: checked later


def test_var_positional_arguments_round_trip_to_a_call() -> None:
    spec = spec_of(analyse)
    validated = spec.validate((1, "2", 3.5), {"scale": 2})
    args, kwargs = spec.call_args(validated)
    assert analyse(*args, **kwargs) == 13.0


def test_toolbox_has_self_and_renders_for_a_prompt() -> None:
    tb = Toolbox(search, analyse)
    assert list(tb) == ["search", "analyse", SELF]
    text = tb.describe()
    assert "search(query: str, k: int = 3) -> list[str]  [inout]" in text and "[compute]" in text
    with pytest.raises(ValueError, match="two functions are named 'search'"):
        Toolbox(search, search)
    with pytest.raises(TypeError, match="not marked @inout or @compute"):
        Toolbox(len)


@inout
def reserve_car(city: str, kind: Literal['Compact', 'Standard'] = 'Standard', note: str = "it's \"late\"") -> Receipt:
    """Reserve a car."""
    return Receipt(code=city)


class Receipt(BaseModel):
    code: str


def test_a_prompt_shows_text_values_in_double_quotes_and_types_by_their_names() -> None:
    # shown `type: Literal[Compact, Standard] = Standard`, the real model wrote
    # `type=Standard`: an undefined reference (NESTFUL sgd_0, sgd_1)
    postponed = spec_of(reserve_car).render()  # this module's annotations are strings
    assert postponed == ('reserve_car(city: str, kind: Literal["Compact", "Standard"] = "Standard", '
                         'note: str = "it\'s \\"late\\"") -> Receipt  [inout]')
    resolved = FunctionSpec(name="book", kind="inout", fn=reserve_car, _signature=inspect.Signature(
        [inspect.Parameter("kind", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Literal["a", 1, True]),
         inspect.Parameter("rooms", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Optional[list[Receipt]])],
        return_annotation=dict[str, Receipt]))
    assert resolved.render() == ('book(kind: Literal["a", 1, True], *, rooms: list[Receipt] | None = None) '
                                 '-> dict[str, Receipt]  [inout]')


def test_bad_decorator_settings_fail_at_once() -> None:
    with pytest.raises(ValueError, match="cost must be >= 0"):
        compute(cost=-1)
    with pytest.raises(TypeError, match="has no `credentials` parameter"):
        inout(credentials="api")(lambda q: q)

    async def coro() -> None: ...

    with pytest.raises(TypeError, match="is async"):
        inout(coro)


def test_load_toolbox_errors_are_clear() -> None:
    assert "detect" in load_toolbox("prefect_llmorch.examples.toolbox:toolbox")
    with pytest.raises(ValueError, match="module:attr"):
        load_toolbox("prefect_llmorch.examples.toolbox")
    with pytest.raises(ValueError, match="cannot import toolbox module"):
        load_toolbox("no_such_module_xyz:toolbox")
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        load_toolbox("prefect_llmorch.examples.toolbox:nope")
    with pytest.raises(ValueError, match="not a Toolbox"):
        load_toolbox("prefect_llmorch.examples.toolbox:_FACTS")


TOOLBOX_MODULES = {
    "tb_factories": """
from prefect_llmorch import Toolbox, inout

CALLED = []

@inout
def ping(x: str) -> str:
    return x

def make() -> Toolbox:
    return Toolbox(ping)

def make_with_default(extra: bool = False) -> "Toolbox":
    return Toolbox(ping)

def unannotated():
    CALLED.append("unannotated")
    return Toolbox(ping)

def needs_arg(x) -> Toolbox:
    return Toolbox(ping)

def lies() -> Toolbox:
    return 42

def breaks() -> Toolbox:
    raise RuntimeError("no tools today")

class Maker:
    def __call__(self) -> Toolbox:
        CALLED.append("Maker")
        return Toolbox(ping)

maker = Maker()
""",
    "tb_raises_on_import": "raise ZeroDivisionError('toolbox is broken')\n",
    "tb_exits_on_import": "import sys\nsys.exit(3)\n",
    "tb_syntax_error": "def f(:\n",
    "tb_missing_dependency": "import no_such_dependency_xyz\n",
}


@pytest.fixture
def toolbox_modules(tmp_path, monkeypatch):
    for name, text in TOOLBOX_MODULES.items():
        (tmp_path / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in TOOLBOX_MODULES:
        sys.modules.pop(name, None)


def test_a_function_annotated_to_return_a_toolbox_is_called_once(toolbox_modules) -> None:
    assert list(load_toolbox("tb_factories:make")) == ["ping", SELF]
    assert list(load_toolbox("tb_factories:make_with_default")) == ["ping", SELF]


def test_other_callables_are_refused_and_never_called(toolbox_modules) -> None:
    import tb_factories

    for attr in ("unannotated", "needs_arg", "maker", "Maker"):
        with pytest.raises(ToolboxNotFound, match="not a Toolbox") as info:
            load_toolbox(f"tb_factories:{attr}")
        assert "annotated `-> Toolbox`" in info.value.fix
    with pytest.raises(ToolboxNotFound, match="is a builtin_function_or_method, not a Toolbox"):
        load_toolbox("os:abort")  # would kill this process if it were called
    assert tb_factories.CALLED == []


def test_a_factory_that_fails_or_returns_something_else_is_named(toolbox_modules) -> None:
    with pytest.raises(ToolboxNotFound, match="factory tb_factories:breaks raised RuntimeError: no tools today") as info:
        load_toolbox("tb_factories:breaks")
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(ToolboxNotFound, match="returned a int, not a Toolbox"):
        load_toolbox("tb_factories:lies")


def test_a_module_that_fails_on_import_is_reported_with_what_it_raised(toolbox_modules) -> None:
    cases = {
        "tb_raises_on_import": "raised ZeroDivisionError while importing: toolbox is broken",
        "tb_exits_on_import": "raised SystemExit while importing: 3",
        "tb_syntax_error": "raised SyntaxError while importing",
        "tb_missing_dependency": "failed to import 'no_such_dependency_xyz'",
    }
    for module, message in cases.items():
        with pytest.raises(ToolboxNotFound, match=re.escape(message)) as info:
            load_toolbox(f"{module}:toolbox")
        assert info.value.path == f"{module}:toolbox" and info.value.fix
    with pytest.raises(ToolboxNotFound, match="no module named 'no_such_module_xyz'"):
        load_toolbox("no_such_module_xyz.sub:toolbox")


def test_a_missing_attribute_lists_the_toolboxes_the_module_has(toolbox_modules) -> None:
    with pytest.raises(ToolboxNotFound, match="has no attribute 'tb'; it has: breaks, lies, make, make_with_default"):
        load_toolbox("tb_factories:tb")


def test_a_list_of_functions_is_refused_with_how_to_pass_them() -> None:
    @inout
    def lookup(q: str) -> str:
        return q

    with pytest.raises(TypeError, match=r"Toolbox takes the functions as arguments: Toolbox\(f, g\)"):
        Toolbox([lookup])  # type: ignore[list-item]
