"""User functions: `@inout` / `@compute`, and the `Toolbox` a plan may call.

The decorators attach a `FunctionSpec` to the function and return the function itself,
so a compute function stays a plain module-level function that pickles by reference into
a worker process.

    >>> @compute(cost=2.0)
    ... def add(a: int, b: int = 1) -> int:
    ...     "Add two numbers."
    ...     return a + b
    >>> tb = Toolbox(add)
    >>> tb["add"].kind, tb["add"].cost
    ('compute', 2.0)
    >>> tb["add"].validate((2,), {"b": "3"})
    {'a': 2, 'b': 3}

No Prefect here (worker processes import this module).
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from datetime import timedelta
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, TypeVar, overload

from pydantic import TypeAdapter, ValidationError

Kind = Literal["inout", "compute"]
KINDS: tuple[Kind, ...] = ("inout", "compute")

#: Name of the parameter through which a function receives its loaded credentials.
CREDENTIALS_PARAM = "credentials"
#: The built-in inout function that asks the LLM.
SELF = "self"

F = TypeVar("F", bound=Callable[..., Any])


class ArgumentsInvalid(TypeError):
    """Arguments do not fit a function's signature. `problems` lists (param, message)."""

    def __init__(self, function: str, problems: list[tuple[str | None, str]]) -> None:
        self.function = function
        self.problems = problems
        text = "; ".join(f"`{p}`: {m}" if p else m for p, m in problems)
        super().__init__(f"{function}(): {text}")


@dataclass(frozen=True, eq=False)
class FunctionSpec:
    """What the orchestrator knows of one function.

    Attributes:
        name: the name plans call it by.
        kind: `inout` (I/O-bound, takes no processor) or `compute` (holds a CPU).
        fn: the Python function (None for the built-in `self`, bound at run time).
        description: shown to the LLM; defaults to the docstring.
        cost: estimated seconds, used by the critical-path policy (default 1).
        timeout: seconds after which the call fails (compute: its worker is killed).
        retries: Prefect retries for transient errors before trace-back recovery.
        retry_delay: seconds between those retries.
        credentials: name of a `ToolCredentials` block whose secrets are passed in the
            function's `credentials` parameter at call time.
        resources: what one call needs beyond the default, by resource name
            (`{"gpu_mem_gb": 30}`, `{"search-api": 1}`, `{"processors": 2}`). A compute call
            holds one processor unless this names `processors`; an inout call holds nothing else.
        cache: the function is pure: a call's result is stored (Prefect result persistence)
            and reused, in this run or a later one, by any call of the same function and
            version on the same resolved arguments (engine/caching.py).
        cache_expiration: how long a cached result may be reused (None: no limit).
        effects: the function has side effects: never cached, never retried automatically;
            trace-back recovery re-runs it only through the LLM's repair.
        version: part of the cache key; defaults to a hash of the function's source.
        approve: each call runs only after a person approves it, with its arguments, in the
            Prefect UI or on the terminal (engine/approval.py); a rejection or a timeout is
            the call's failure. An MCP tool with `destructiveHint` sets it.
    """

    name: str
    kind: Kind
    fn: Callable[..., Any] | None
    description: str = ""
    cost: float = 1.0
    timeout: float | None = None
    retries: int = 0
    retry_delay: float = 0.0
    credentials: str | None = None
    resources: Mapping[str, float] = field(default_factory=dict)
    cache: bool = False
    cache_expiration: timedelta | None = None
    effects: bool = False
    version: str | None = None
    approve: bool = False
    _signature: inspect.Signature | None = field(default=None, repr=False)

    @cached_property
    def signature(self) -> inspect.Signature:
        """The signature a plan sees (without the `credentials` parameter)."""
        sig = self._signature or inspect.signature(self.fn)  # type: ignore[arg-type]
        params = [p for n, p in sig.parameters.items() if n != CREDENTIALS_PARAM]
        return sig.replace(parameters=params)

    @cached_property
    def _adapters(self) -> dict[str, TypeAdapter[Any]]:
        out: dict[str, TypeAdapter[Any]] = {}
        for name, p in self.signature.parameters.items():
            ann = p.annotation
            if ann is inspect.Parameter.empty:
                continue
            if isinstance(ann, str):  # postponed annotations: resolve in fn's module
                try:
                    ann = eval_annotation(ann, self.fn)
                except Exception:
                    continue
            if p.kind is inspect.Parameter.VAR_POSITIONAL:
                ann = list[ann]  # type: ignore[valid-type]
            elif p.kind is inspect.Parameter.VAR_KEYWORD:
                ann = dict[str, ann]  # type: ignore[valid-type]
            out[name] = TypeAdapter(ann)
        return out

    def render(self) -> str:
        """One line for a prompt or a listing: `search(query: str, units: str = "metric") -> str  [inout]`.

        Text values (defaults, `Literal` choices) in double quotes, as a plan writes them: a
        model shown `type: Literal[Compact, Standard] = Standard` writes `type=Standard`, an
        undefined reference. Types by their bare names, as the prompt's result fields list them.
        """
        sig = self.signature
        params = [p.replace(annotation=_Shown(type_text(p.annotation)) if p.annotation is not p.empty else p.empty,
                            default=_Shown(value_text(p.default)) if p.default is not p.empty else p.empty)
                  for p in sig.parameters.values()]
        ret = sig.return_annotation
        shown = sig.replace(parameters=params,
                            return_annotation=_Shown(type_text(ret)) if ret is not sig.empty else sig.empty)
        return f"{self.name}{shown}  [{self.kind}]"

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> inspect.BoundArguments:
        """Check arity and keyword names; raises `ArgumentsInvalid`."""
        try:
            return self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ArgumentsInvalid(self.name, [(None, str(exc))]) from None

    def check(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any], unknown: object = None
    ) -> None:
        """Plan-time check: arity, keywords, and the types of arguments already known.

        Arguments equal to the sentinel `unknown` (values that come from other calls)
        are skipped; they are checked again by `validate` once resolved.
        """
        bound = self.bind(args, kwargs)
        problems = []
        for name, value in bound.arguments.items():
            if unknown is not None and _contains(value, unknown):
                continue
            problem = self._validate_one(name, value)[1]
            if problem:
                problems.append((name, problem))
        if problems:
            raise ArgumentsInvalid(self.name, problems)

    def validate(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Run-time check of resolved arguments; returns them as keyword mapping
        (var-positional under its own name), coerced to the annotated types."""
        bound = self.bind(args, kwargs)
        bound.apply_defaults()
        out: dict[str, Any] = {}
        problems = []
        for name, value in bound.arguments.items():
            coerced, problem = self._validate_one(name, value)
            if problem:
                problems.append((name, problem))
            out[name] = coerced
        if problems:
            raise ArgumentsInvalid(self.name, problems)
        return out

    def call_args(self, validated: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Turn `validate`'s mapping back into (args, kwargs) for calling `fn`."""
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for name, p in self.signature.parameters.items():
            if name not in validated:
                continue
            value = validated[name]
            if p.kind is inspect.Parameter.VAR_POSITIONAL:
                args.extend(value)
            elif p.kind is inspect.Parameter.VAR_KEYWORD:
                kwargs.update(value)
            elif p.kind is inspect.Parameter.POSITIONAL_ONLY:
                args.append(value)
            else:
                kwargs[name] = value
        return tuple(args), kwargs

    def _validate_one(self, name: str, value: Any) -> tuple[Any, str | None]:
        adapter = self._adapters.get(name)
        if adapter is None:
            return value, None
        try:
            return adapter.validate_python(value), None
        except ValidationError as exc:
            err = exc.errors()[0]
            return value, f"{err['msg']} (got {value!r})"


class _Shown:
    """Text that `inspect.Signature` prints as it is (its repr)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def value_text(value: Any) -> str:
    """A default or `Literal` value as a plan writes it: text in double quotes."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def type_text(tp: Any) -> str:
    """An annotation for a prompt: `list[Quote]`, `Literal["a", 1]`, `int | None`.

    A postponed (string) annotation is shown as written, its quotes made double."""
    if isinstance(tp, str):
        return tp.replace("'", '"')
    if tp is None or tp is type(None):
        return "None"
    if tp is Ellipsis:
        return "..."
    if isinstance(tp, list):  # Callable's parameter list
        return "[" + ", ".join(type_text(a) for a in tp) + "]"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "Literal[" + ", ".join(value_text(a) for a in args) + "]"
    if origin is typing.Annotated:
        return type_text(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(a) for a in args)
    if origin is not None and args:
        return f"{type_text(origin)}[{', '.join(type_text(a) for a in args)}]"
    if isinstance(tp, type):
        name = tp.__qualname__
        return tp.__name__ if "<locals>" in name else name
    return str(tp).replace("typing.", "")


def eval_annotation(text: str, fn: Callable[..., Any] | None) -> Any:
    """Resolve a postponed (string) annotation the way `typing.get_type_hints` does."""
    import typing

    def _probe(x):  # type: ignore[no-untyped-def]
        return x

    _probe.__annotations__ = {"x": text}
    globalns = getattr(fn, "__globals__", {}) if fn else {}
    return typing.get_type_hints(_probe, globalns=globalns)["x"]


def _contains(value: Any, sentinel: object) -> bool:
    if value is sentinel:
        return True
    if isinstance(value, (list, tuple)):
        return any(_contains(v, sentinel) for v in value)
    if isinstance(value, dict):
        return any(_contains(v, sentinel) for v in value.values())
    return False


#: The resource every compute call holds one of unless it declares otherwise.
PROCESSORS = "processors"


def check_resources(declared: Mapping[str, Any], where: str) -> dict[str, float]:
    """Check a resource declaration (name -> amount) and return it as floats.

    Names are non-empty strings; amounts are finite numbers > 0, and `processors` a whole
    number (a call holds whole processors).

    >>> check_resources({"gpu_mem_gb": 30}, "@compute(resources=...)")
    {'gpu_mem_gb': 30.0}
    >>> check_resources({"search-api": 0}, "@inout(resources=...)")
    Traceback (most recent call last):
    ...
    ValueError: @inout(resources=...): `search-api` must be a number > 0, got 0

    Raises:
        ValueError: naming `where`, the resource and the bad amount.
    """
    if not isinstance(declared, Mapping):
        raise ValueError(f"{where}: resources must be a mapping of name to amount, got {declared!r}")
    out: dict[str, float] = {}
    for name, amount in declared.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{where}: resource names must be non-empty strings, got {name!r}")
        ok = isinstance(amount, (int, float)) and not isinstance(amount, bool)
        if not ok or not (amount > 0 and amount != float("inf")):
            raise ValueError(f"{where}: `{name}` must be a number > 0, got {amount!r}")
        if name == PROCESSORS and amount != int(amount):
            raise ValueError(f"{where}: `processors` must be a whole number, got {amount!r}")
        out[name] = float(amount)
    return out


def _decorator(kind: Kind):  # type: ignore[no-untyped-def]
    @overload
    def deco(fn: F, /) -> F: ...

    @overload
    def deco(
        fn: None = None,
        /,
        *,
        name: str | None = None,
        description: str | None = None,
        cost: float = 1.0,
        timeout: float | None = None,
        retries: int = 0,
        retry_delay: float = 0.0,
        credentials: str | None = None,
        resources: Mapping[str, float] | None = None,
        cache: bool = False,
        cache_expiration: timedelta | None = None,
        effects: bool = False,
        version: str | None = None,
        approve: bool = False,
    ) -> Callable[[F], F]: ...

    def deco(
        fn: F | None = None,
        /,
        *,
        name: str | None = None,
        description: str | None = None,
        cost: float = 1.0,
        timeout: float | None = None,
        retries: int = 0,
        retry_delay: float = 0.0,
        credentials: str | None = None,
        resources: Mapping[str, float] | None = None,
        cache: bool = False,
        cache_expiration: timedelta | None = None,
        effects: bool = False,
        version: str | None = None,
        approve: bool = False,
    ) -> F | Callable[[F], F]:
        if cost < 0:
            raise ValueError(f"cost must be >= 0, got {cost}")
        if cache and effects:
            raise ValueError("a function with effects=True cannot be cache=True: its calls must really run")
        if approve and cache:
            raise ValueError("a function with approve=True cannot be cache=True: a stored result would skip the person's approval")
        if effects and retries:
            raise ValueError("a function with effects=True is never retried automatically: drop retries=")
        if cache_expiration is not None and not isinstance(cache_expiration, timedelta):
            raise TypeError(f"cache_expiration must be a datetime.timedelta, got {cache_expiration!r}")
        declared = check_resources(resources or {}, f"@{kind}(resources=...)")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")

        def wrap(f: F) -> F:
            if not callable(f):
                raise TypeError(f"@{kind} expects a function, got {f!r}")
            if inspect.iscoroutinefunction(f):
                raise TypeError(f"@{kind} expects a plain function; {f.__name__} is async")
            if credentials and CREDENTIALS_PARAM not in inspect.signature(f).parameters:
                raise TypeError(
                    f"{f.__name__} declares credentials={credentials!r} but has no "
                    f"`{CREDENTIALS_PARAM}` parameter to receive them"
                )
            spec = FunctionSpec(
                name=name or f.__name__,
                kind=kind,
                fn=f,
                description=(description or inspect.getdoc(f) or "").strip(),
                cost=float(cost),
                timeout=timeout,
                retries=retries,
                retry_delay=retry_delay,
                credentials=credentials,
                resources=declared,
                cache=bool(cache),
                cache_expiration=cache_expiration,
                effects=bool(effects),
                version=version,
                approve=bool(approve),
            )
            f.__llmorch__ = spec  # type: ignore[attr-defined]
            return f

        return wrap(fn) if fn is not None else wrap

    deco.__name__ = kind
    deco.__doc__ = (
        f"Mark a function as `{kind}`. Use bare (`@{kind}`) or with options "
        "(`name`, `description`, `cost`, `timeout`, `retries`, `retry_delay`, `credentials`, `cache`, `cache_expiration`, `effects`, `version`, "
        "`resources`, `approve`)."
    )
    return deco


inout = _decorator("inout")
compute = _decorator("compute")


def _self_placeholder(prompt: str) -> str:  # pragma: no cover - never called
    raise RuntimeError("`self` is bound to the LLM at run time")


#: The built-in `self`: ask the LLM. Its body is supplied by the orchestrator.
SELF_SPEC = FunctionSpec(
    name=SELF,
    kind="inout",
    fn=None,
    description=(
        "Ask the language model a question and return its answer as text. "
        "Use {id} inside the prompt to include earlier results."
    ),
    cost=1.0,
    _signature=inspect.signature(_self_placeholder),
)


def spec_of(fn: Callable[..., Any] | FunctionSpec) -> FunctionSpec:
    """The `FunctionSpec` of a decorated function (or the spec itself)."""
    if isinstance(fn, FunctionSpec):
        return fn
    spec = getattr(fn, "__llmorch__", None)
    if not isinstance(spec, FunctionSpec):
        name = getattr(fn, "__name__", repr(fn))
        raise TypeError(f"{name} is not marked @inout or @compute")
    return spec


class Toolbox(Mapping[str, FunctionSpec]):
    """The functions a plan may call, by name. `self` is always there (built in).

    A plan names the functions by their Python names (or `name=` of the decorator); the
    CLI and the flows find a toolbox by its `module:attr` path (`load_toolbox`).

        >>> @inout
        ... def search(query: str) -> str: return query
        >>> Toolbox(search)
        Toolbox(search, self)

    Args:
        *functions: functions decorated with `@inout` or `@compute` (or their specs), as
            separate arguments: `Toolbox(search, detect)`, not a list.
        include_self: offer the built-in `self` (ask the LLM). Default True.

    Raises:
        TypeError: an argument is not a decorated function (a list of them included).
        ValueError: two functions have the same name.
    """

    def __init__(self, *functions: Callable[..., Any] | FunctionSpec, include_self: bool = True) -> None:
        self._specs: dict[str, FunctionSpec] = {}
        for fn in functions:
            if isinstance(fn, (list, tuple, set)):
                raise TypeError(f"Toolbox takes the functions as arguments: Toolbox(f, g) or Toolbox(*functions), not a {type(fn).__name__}")
            # a tool source (an `MCPServer`) gives several functions
            source = getattr(fn, "function_specs", None)
            for spec in source() if callable(source) and not isinstance(fn, FunctionSpec) else [spec_of(fn)]:
                if spec.name in self._specs or (include_self and spec.name == SELF):
                    raise ValueError(f"two functions are named {spec.name!r}")
                self._specs[spec.name] = spec
        if include_self:
            self._specs[SELF] = SELF_SPEC

    def __getitem__(self, name: str) -> FunctionSpec:
        return self._specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __repr__(self) -> str:
        return f"Toolbox({', '.join(self._specs)})"

    def of_kind(self, kind: Kind) -> list[FunctionSpec]:
        return [s for s in self._specs.values() if s.kind == kind]

    def describe(self) -> str:
        """The functions for a prompt: signature, kind, and description of each."""
        lines = []
        for i, spec in enumerate(self._specs.values(), 1):
            lines.append(f"{i}. {spec.render()}")
            for doc_line in spec.description.splitlines():
                lines.append(f"   {doc_line}" if doc_line.strip() else "")
        return "\n".join(lines)

    @classmethod
    def from_functions(cls, functions: Iterable[Callable[..., Any]]) -> "Toolbox":
        return cls(*functions)

    @classmethod
    def from_mcp(cls, *sources: Any, include_self: bool = True, **server_options: Any) -> "Toolbox":
        """A toolbox of MCP servers' tools, mixed with Python functions if given.

            >>> Toolbox.from_mcp("python weather.py", "http://localhost:8000/mcp", search)  # doctest: +SKIP

        Args:
            *sources: MCP servers (an `MCPServer`, a streamable-HTTP URL, or the command
                that starts a stdio server), and `@inout`/`@compute` functions.
            include_self: offer the built-in `self`.
            **server_options: `MCPServer` settings for the servers given as text
                (`credentials=`, `resource=`, `timeout=`, ...).

        Each server's tools are listed once, here (`MCPServer.function_specs`); needs the
        `mcp` extra (`pip install "prefect-llmorch[mcp]"`).

        Raises:
            ImportError: the `mcp` extra is not installed.
            MCPUnavailable: a server cannot be reached (`prefect_llmorch.mcp`).
            ValueError: two tools or functions have the same name (give a server `prefix=`).
        """
        items: list[Any] = []
        for source in sources:
            if isinstance(source, str) or (isinstance(source, (list, tuple)) and all(isinstance(a, str) for a in source)):
                items.append(_mcp().MCPServer(source, **server_options))
            else:
                items.append(source)
        return cls(*items, include_self=include_self)


def _mcp() -> Any:
    """`prefect_llmorch.mcp`, named by string: the MCP client does I/O and lives in a higher
    layer (tests/test_imports.py); this pure module only hands it text, as `load_toolbox`
    hands a module path to `importlib`."""
    import importlib

    try:
        return importlib.import_module("prefect_llmorch.mcp")
    except ImportError as exc:
        raise ImportError(
            f"MCP toolboxes need the `mcp` extra: pip install \"prefect-llmorch[mcp]\" ({exc})"
        ) from exc


class ToolboxNotFound(ValueError):
    """`load_toolbox` could not give a `Toolbox` for a `module:attr` path.

    Attributes:
        path: the `module:attr` given.
        problem: what is wrong, in one sentence.
        fix: what to do about it.
    """

    def __init__(self, path: str, problem: str, fix: str) -> None:
        self.path = path
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}; {fix}")


def _is_toolbox_factory(obj: Any) -> bool:
    """A plain Python function that takes no arguments and is annotated `-> Toolbox`.

    Only such functions are called: an arbitrary callable (`os:abort`, a class) never is.
    """
    if not inspect.isfunction(obj):
        return False
    try:
        params = inspect.signature(obj).parameters.values()
        hints = typing.get_type_hints(obj)
    except Exception:  # an annotation that does not resolve: not a documented factory
        return False
    required = [p for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    returns = hints.get("return")
    return not required and isinstance(returns, type) and issubclass(returns, Toolbox)


def _import_toolbox_module(path: str, module_name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise ToolboxNotFound(
                path, f"cannot import toolbox module {module_name!r}: no module named {missing!r}",
                "check the name, or run from the folder that holds it (the current folder is searched)",
            ) from exc
        raise ToolboxNotFound(
            path, f"toolbox module {module_name!r} failed to import {missing!r}: {exc}",
            f"install {missing.split('.')[0]!r} or fix the module's imports",
        ) from exc
    except (Exception, SystemExit) as exc:  # the module's own code failed (a bug, a syntax error, sys.exit)
        raise ToolboxNotFound(
            path, f"toolbox module {module_name!r} raised {type(exc).__name__} while importing: {exc}",
            "fix the module (llmorch --debug shows the traceback)",
        ) from exc


def load_toolbox(path: str) -> Toolbox:
    """The `Toolbox` named by `module:attr`.

    `attr` is a `Toolbox`, or a toolbox factory: a function with no required parameters,
    annotated `-> Toolbox`, which is called once. Nothing else is called (an arbitrary
    callable such as `os:abort` is refused, not run).

        >>> "detect" in load_toolbox("prefect_llmorch.examples.toolbox:toolbox")
        True
        >>> load_toolbox("os:abort")
        Traceback (most recent call last):
        ...
        prefect_llmorch.functions.ToolboxNotFound: os:abort is a builtin_function_or_method, not a Toolbox; ...

    Raises:
        ToolboxNotFound: (a ValueError) naming the problem and the fix: the path is not
            `module:attr`, the module is missing or raises on import, the attribute is
            missing, not a Toolbox, or a factory that fails or returns something else.
    """
    if " + " in path or path.startswith("mcp:"):
        return _composite_toolbox(path)
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name.strip() or not attr.strip():
        raise ToolboxNotFound(path, f"toolbox must be given as module:attr, got {path!r}", "e.g. --toolbox mytools:toolbox")
    module = _import_toolbox_module(path, module_name)
    try:
        obj = getattr(module, attr)
    except AttributeError:
        found = sorted(k for k, v in vars(module).items() if isinstance(v, Toolbox) or _is_toolbox_factory(v))
        hint = f"it has: {', '.join(found)}" if found else "it defines no Toolbox"
        raise ToolboxNotFound(path, f"toolbox module {module_name!r} has no attribute {attr!r}", hint) from None
    if isinstance(obj, Toolbox):
        return obj
    fix = "give a Toolbox, or a function with no parameters annotated `-> Toolbox`"
    if not _is_toolbox_factory(obj):
        raise ToolboxNotFound(path, f"{path} is a {type(obj).__name__}, not a Toolbox", fix)
    try:
        made = obj()
    except Exception as exc:
        raise ToolboxNotFound(
            path, f"toolbox factory {path} raised {type(exc).__name__}: {exc}",
            "fix the factory (llmorch --debug shows the traceback)",
        ) from exc
    if not isinstance(made, Toolbox):
        raise ToolboxNotFound(path, f"toolbox factory {path} returned a {type(made).__name__}, not a Toolbox", fix)
    return made


#: Separates the parts of a toolbox path that mixes MCP servers and Python toolboxes.
TOOLBOX_SEPARATOR = " + "


def _composite_toolbox(path: str) -> Toolbox:
    """`mytools:toolbox + mcp:python server.py + mcp:http://host/mcp#credentials=gh`: the
    functions of every part in one toolbox (an `mcp:` part is one MCP server, in
    `parse_server`'s form; a `module:attr` part a toolbox, whose `self` is not repeated)."""
    items: list[Any] = []
    for part in (p.strip() for p in path.split(TOOLBOX_SEPARATOR)):
        if not part:
            raise ToolboxNotFound(path, f"empty part in toolbox {path!r}", f"separate parts with {TOOLBOX_SEPARATOR!r}")
        if part.startswith("mcp:"):
            try:
                mcp = _mcp()
                items.append(mcp.server_for(part[len("mcp:"):]))
            except (ImportError, ValueError) as exc:
                raise ToolboxNotFound(path, f"{part}: {exc}", "e.g. mcp:python server.py or mcp:http://localhost:8000/mcp") from exc
        else:
            items.extend(spec for name, spec in load_toolbox(part).items() if name != SELF)
    try:
        return Toolbox(*items)
    except ValueError as exc:
        raise ToolboxNotFound(path, str(exc), "give a server a prefix (mcp:...#prefix=gh_) or rename a function") from exc
    except ConnectionError as exc:  # an MCP server that cannot be reached for its tool list
        raise ToolboxNotFound(path, str(exc), "start the server, or check its command or URL") from exc
