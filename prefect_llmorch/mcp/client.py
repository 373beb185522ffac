"""MCP servers as tool sources: their tools become `@inout` functions of a `Toolbox`.

    >>> server = MCPServer("python weather_server.py")              # doctest: +SKIP
    >>> toolbox = Toolbox.from_mcp(server, "https://api.example.com/mcp", search)  # doctest: +SKIP

Where the client lives: tool calls run in helper threads of the runner's task threads (inout
calls always run in the flow's process), many at once. Each process has one event-loop
thread (`_Loop`, held with the servers by `host/process.PROCESS`) that owns every MCP
session; a call hands its request to that loop (`run_coroutine_threadsafe`) and waits for
the answer in its own thread. One MCP session multiplexes requests, so parallel calls to
one server share its session.

Sessions: one per server per flow run (keyed by the flow run id; outside a flow run, one for
the process), opened by the run's first call to that server and closed when the run's
execution closes (`close_run_sessions`). When a session breaks (the server exits, the HTTP
server drops), the calls that were using it fail with the reason, the session is dropped,
and the next call opens a new one: a dropped server fails only its own calls.

Credentials: a server given `credentials="BLOCK"` has every tool declare that
`ToolCredentials` block; the compiler hands the revealed settings to each call (never through
task parameters), and the session is opened with them: for an HTTP server as request headers,
for a stdio server as environment variables of its process. They are never logged: errors
that carry them are scrubbed by the compiler.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import os
import shlex
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from prefect_llmorch.functions import CREDENTIALS_PARAM, FunctionSpec, check_resources
from prefect_llmorch.host.process import PROCESS, Stage
from prefect_llmorch.mcp.schema import result_type_of, signature_of, unwrap_result

__all__ = [
    "MCPCallFailed", "MCPServer", "MCPUnavailable", "close_run_sessions", "parse_server", "server_for", "server_of",
    "tool_specs",
]

#: Attribute an MCP tool's function carries: its `MCPServer`.
SERVER_ATTR = "__llmorch_mcp__"


class MCPUnavailable(ConnectionError):
    """An MCP server cannot be reached, or its session broke during a call.

    Attributes:
        server: the server's name.
        reason: what went wrong (the transport's error).
    """

    def __init__(self, server: str, reason: str) -> None:
        self.server = server
        self.reason = reason
        super().__init__(f"MCP server {server!r} is unavailable: {reason}")

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (MCPUnavailable, (self.server, self.reason))


class MCPCallFailed(RuntimeError):
    """An MCP tool answered with an error (`isError`); its text is the tool's message."""

    def __init__(self, server: str, tool: str, message: str) -> None:
        self.server = server
        self.tool = tool
        self.message = message
        super().__init__(f"MCP tool {tool} (server {server!r}) failed: {message}")

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (MCPCallFailed, (self.server, self.tool, self.message))


class _Loop:
    """One daemon thread running an asyncio loop: home of every MCP session of the process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="llmorch-mcp", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float | None = None) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise


@dataclass(eq=False)
class MCPServer:
    """One MCP server a toolbox takes tools from.

    Args:
        target: a streamable-HTTP URL (`http://host:8000/mcp`), or the command that starts a
            stdio server (a string split like a shell would, or a list of arguments).
        name: what errors, logs and the resource class call it (default: the URL's host and
            port, or the command's program name).
        credentials: a `ToolCredentials` block: its settings are the HTTP headers of every
            request (`{"Authorization": "Bearer ..."}`), or environment variables of a stdio
            server's process.
        resource: a resource class every call of this server's tools holds one of
            (`"mcp-search"`): how many calls the server takes at once is its capacity
            (`--resource mcp-search=4`), or its rate (`--resource mcp-search=10/s`).
        env: environment variables of a stdio server (beyond the safe defaults MCP passes on:
            PATH, HOME, ...).
        headers: HTTP headers that are not secret.
        timeout: seconds after which a call of one of its tools fails (None: no limit).
        prefix: put before each tool's name (`"gh_"`) when two servers have tools of one name.
    """

    target: str | Sequence[str]
    name: str = ""
    credentials: str | None = None
    resource: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float | None = None
    prefix: str = ""
    #: the flow run (id; None: outside one) of each session opened so far, in order: a run's
    #: first call opens one, a broken one is opened again, listing outside a run opens one
    openings: list[str | None] = field(default_factory=list, init=False)
    _tools: list[Any] | None = field(default=None, repr=False)
    _sessions: dict[str | None, Any] = field(default_factory=dict, repr=False)
    _opening: dict[str | None, "asyncio.Future[Any]"] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        import importlib.util

        if importlib.util.find_spec("fastmcp") is None:
            raise ImportError('MCP servers need the `mcp` extra: pip install "prefect-llmorch[mcp]" (no module named fastmcp)')
        if isinstance(self.target, str):
            text = self.target.strip()
            if not text:
                raise ValueError("an MCP server needs a URL or a command, got an empty string")
            self.is_http = text.startswith(("http://", "https://"))
            self.argv = [] if self.is_http else shlex.split(text)
            self.url = text if self.is_http else ""
        else:
            self.argv = [str(a) for a in self.target]
            if not self.argv:
                raise ValueError("an MCP server command needs at least the program")
            self.is_http, self.url = False, ""
        if not self.name:
            if self.is_http:
                from urllib.parse import urlsplit

                self.name = urlsplit(self.url).netloc or self.url
            else:
                # the script a runtime runs (`python weather.py`), else the program
                scripts = [a for a in self.argv[1:] if a.endswith((".py", ".js", ".mjs", ".ts"))]
                self.name = os.path.splitext(os.path.basename(scripts[0] if scripts else self.argv[0]))[0]
        if self.resource is not None:
            check_resources({self.resource: 1}, f"MCPServer({self.name!r}, resource=...)")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout}")

    # -- sessions ----------------------------------------------------------------------
    def _transport(self, secrets: Mapping[str, str]) -> Any:
        from fastmcp.client.transports import StdioTransport, StreamableHttpTransport

        if self.is_http:
            return StreamableHttpTransport(self.url, headers={**self.headers, **secrets})
        # keep_alive=False: the server process is the session's; closing one ends the other
        return StdioTransport(
            self.argv[0], self.argv[1:], env={**self.env, **secrets} or None, keep_alive=False
        )

    async def _session(self, key: str | None, secrets: Mapping[str, str]) -> Any:
        """The open session of flow run `key`, opened now if there is none (one opening at a
        time: parallel first calls wait for the same session)."""
        client = self._sessions.get(key)
        if client is not None and client.is_connected():
            return client
        if client is not None:  # broken: drop it, then reconnect
            self._sessions.pop(key, None)
            await _quiet_close(client)
        pending = self._opening.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        loop = asyncio.get_running_loop()
        pending = self._opening[key] = loop.create_future()
        try:
            from fastmcp import Client

            client = Client(self._transport(secrets), timeout=None)
            try:
                await client.__aenter__()
            except BaseException as exc:
                raise MCPUnavailable(self.name, _reason(exc)) from None
            self._sessions[key] = client
            self.openings.append(key)
            pending.set_result(client)
            return client
        except BaseException as exc:
            pending.set_exception(exc)
            pending.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            self._opening.pop(key, None)

    async def _close(self, key: str | None) -> None:
        client = self._sessions.pop(key, None)
        if client is not None:
            await _quiet_close(client)

    def close(self, key: str | None = None, *, all_runs: bool = False) -> None:
        """Close the session of flow run `key` (all of them with `all_runs`); safe to call
        more than once."""
        keys = list(self._sessions) if all_runs else [key]
        sessions = _sessions()
        if not keys or sessions.started is None:
            return
        loop = sessions.loop()
        for k in keys:
            if k in self._sessions:
                loop.run(self._close(k), timeout=10)

    def sessions(self) -> list[str | None]:
        """The flow runs (ids) this server has an open session for."""
        return [k for k, c in self._sessions.items() if c.is_connected()]

    # -- tools -------------------------------------------------------------------------
    def function_specs(self) -> list[FunctionSpec]:
        """Its tools as `@inout` functions (`tool_specs`): what `Toolbox(server)` takes."""
        _sessions().keep(self)  # its sessions close when the process exits
        return tool_specs(self)

    def tools(self, secrets: Mapping[str, str] | None = None) -> list[Any]:
        """The server's tools (`mcp.types.Tool`), listed once for this server object."""
        if self._tools is None:
            key = _run_key()
            if secrets is None:
                secrets = _load_credentials(self.credentials) if self.credentials else {}

            async def listing() -> list[Any]:
                client = await self._session(key, secrets)
                try:
                    return list(await client.list_tools())
                except Exception as exc:
                    await self._close(key)
                    raise MCPUnavailable(self.name, _reason(exc)) from None
                finally:
                    if key is None:  # outside a flow run: no run will reuse this session
                        await self._close(key)

            self._tools = _sessions().loop().run(listing(), timeout=self.timeout or 60)
        return self._tools

    def call(self, tool: Any, arguments: Mapping[str, Any], secrets: Mapping[str, str] | None = None) -> Any:
        """Call one tool in this flow run's session; returns its structured result (when it
        declares an output schema) or its text.

        Raises:
            MCPUnavailable: the session could not be opened, or broke during the call (the
                session is dropped: the next call reconnects).
            MCPCallFailed: the tool answered with an error.
        """
        key = _run_key()

        async def calling() -> Any:
            client = await self._session(key, secrets or {})
            try:
                return await client.call_tool_mcp(tool.name, dict(arguments))
            except Exception as exc:
                if not client.is_connected() or _is_transport_error(exc):
                    if self._sessions.get(key) is client:
                        self._sessions.pop(key, None)
                        await _quiet_close(client)
                    raise MCPUnavailable(self.name, _reason(exc)) from None
                raise

        result = _sessions().loop().run(calling())
        if result.is_error:
            raise MCPCallFailed(self.name, tool.name, _text(result.content) or "(no message)")
        if tool.output_schema is not None and result.structured_content is not None:
            return unwrap_result(tool.output_schema, result.structured_content)
        return _text(result.content)


class _Sessions:
    """This process's MCP side (held by `PROCESS`; a forked child, e.g. a worker process, gets
    its own: the parent's thread is not there): the loop thread, started on first use; every
    server whose sessions close when the process exits (their stdio processes end with them);
    and the servers made from `mcp:` toolbox text, by (text, flow run): a process that loads
    the same toolbox text several times in one run (the CLI's checks, the flow's parameter)
    lists each server's tools once for that run, and once outside runs."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: _Loop | None = None
        self.servers: list[MCPServer] = []
        self.by_text: dict[tuple[str, str | None], MCPServer] = {}

    def loop(self) -> _Loop:
        with self.lock:
            if self.started is None:
                self.started = _Loop()
            return self.started

    def keep(self, server: MCPServer) -> None:
        with self.lock:
            if server not in self.servers:
                self.servers.append(server)
        PROCESS.at_exit(Stage.SESSIONS, self.close_all)

    def close_all(self) -> None:
        with self.lock:
            servers = list(self.servers)
        for server in servers:
            try:
                server.close(all_runs=True)
            except Exception:
                pass


def _sessions() -> _Sessions:
    return PROCESS.hold(_Sessions)


async def _quiet_close(client: Any) -> None:
    try:
        await asyncio.wait_for(client.__aexit__(None, None, None), 10)
    except BaseException:  # a session that broke may fail to close; it is gone either way
        pass


def _reason(exc: BaseException) -> str:
    """The innermost useful message of a transport error (task groups wrap them)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text} ({type(cause).__name__}: {cause})"
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


def _is_transport_error(exc: BaseException) -> bool:
    import anyio

    transport: tuple[type[BaseException], ...] = (
        ConnectionError, EOFError, anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream,
    )
    for http in ("httpx2", "httpx"):  # FastMCP 4 uses httpx2; the MCP SDK's transports httpx
        try:
            transport += (__import__(http).TransportError,)
        except (ImportError, AttributeError):
            pass
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, transport) or "connection closed" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _text(content: Sequence[Any]) -> str:
    parts = []
    for block in content or ():
        text = getattr(block, "text", None)
        parts.append(text if isinstance(text, str) else json.dumps(block.model_dump(mode="json", exclude_none=True)))
    return "\n".join(parts)


def _run_key() -> str | None:
    """The current flow run's id (the session key); None outside a flow run."""
    try:
        from prefect.context import FlowRunContext, TaskRunContext
    except ImportError:  # pragma: no cover - prefect is a dependency
        return None
    task = TaskRunContext.get()
    if task is not None and task.task_run.flow_run_id is not None:
        return str(task.task_run.flow_run_id)
    flow = FlowRunContext.get()
    if flow is not None and flow.flow_run is not None:
        return str(flow.flow_run.id)
    return None


def _load_credentials(block: str) -> dict[str, str]:
    from prefect_llmorch.blocks import ToolCredentials

    return ToolCredentials.load(block).reveal()


def _tool_fn(server: MCPServer, tool: Any, name: str, names: Mapping[str, str]) -> Callable[..., Any]:
    """A plain function that calls `tool` on `server` (runs in a helper thread of the flow's
    process: inout calls are never sent to worker processes)."""

    def call_tool(*args: Any, **kwargs: Any) -> Any:
        secrets = kwargs.pop(CREDENTIALS_PARAM, None)
        bound = call_tool.__signature__.bind(*args, **kwargs)  # type: ignore[attr-defined]
        # an optional argument left at None is left out: the server applies its own default
        arguments = {names[k]: v for k, v in bound.arguments.items() if v is not None}
        return server.call(tool, arguments, secrets)

    call_tool.__name__ = call_tool.__qualname__ = name
    setattr(call_tool, SERVER_ATTR, server)
    return call_tool


def tool_specs(server: MCPServer) -> list[FunctionSpec]:
    """An `@inout` `FunctionSpec` per tool of `server` (listing its tools if not done yet).

    `readOnlyHint` makes a tool `cache=True` (its result is reused for the same arguments),
    `destructiveHint` (given as true) `effects=True` and `approve=True`: never cached, never
    retried automatically, and each call runs only after a person approves it (docs/approval.md).
    """
    import inspect

    specs = []
    for tool in server.tools():
        name = f"{server.prefix}{tool.name}"
        signature, names = signature_of(tool.input_schema or {}, name)
        returns = result_type_of(tool.output_schema, name)
        fn = _tool_fn(server, tool, name, names)
        fn.__signature__ = signature.replace(return_annotation=returns)  # type: ignore[attr-defined]
        fn.__annotations__ = {**{p.name: p.annotation for p in signature.parameters.values()}, "return": returns}
        hints = tool.annotations
        read_only = bool(hints and hints.read_only_hint)
        destructive = bool(hints and hints.destructive_hint) and not read_only
        version = hashlib.sha256(
            json.dumps([server.url or server.argv, tool.name, tool.input_schema, tool.output_schema],
                       sort_keys=True, default=str).encode()
        ).hexdigest()[:16]
        description = (tool.description or (hints.title if hints and hints.title else "") or "").strip()
        specs.append(FunctionSpec(
            name=name, kind="inout", fn=fn, description=description, timeout=server.timeout,
            credentials=server.credentials, resources={server.resource: 1.0} if server.resource else {},
            cache=read_only, effects=destructive, approve=destructive, version=version,
            _signature=inspect.Signature(
                list(signature.parameters.values()), return_annotation=returns
            ),
        ))
    return specs


def server_of(spec: FunctionSpec) -> MCPServer | None:
    """The MCP server a function's calls go to (None for a Python function)."""
    return getattr(spec.fn, SERVER_ATTR, None)


def close_run_sessions(specs: Mapping[str, FunctionSpec] | Sequence[FunctionSpec], run_id: str | None = None) -> None:
    """Close the sessions of flow run `run_id` (default: the current one) of every MCP server
    among `specs` (a toolbox): what the flows do when a run's execution ends."""
    values = specs.values() if isinstance(specs, Mapping) else specs
    servers = {id(s): s for s in (server_of(spec) for spec in values) if s is not None}
    key = run_id if run_id is not None else _run_key()
    for server in servers.values():
        server.close(key)
    if key is not None:  # the run is over: its servers made from text are not reused
        sessions = _sessions()
        with sessions.lock:
            ended = [sessions.by_text.pop(k) for k in [k for k in sessions.by_text if k[1] == key]]
            # nor kept for the exit's close once no session of theirs is open (a long-lived
            # process, e.g. `llmorch serve`, would otherwise keep one per flow run)
            for server in ended:
                if server in sessions.servers and not server.sessions():
                    sessions.servers.remove(server)


def server_for(text: str) -> MCPServer:
    """The `MCPServer` for `mcp:` toolbox text (`parse_server`), one per flow run."""
    key = (text, _run_key())
    sessions = _sessions()
    with sessions.lock:
        server = sessions.by_text.get(key)
    if server is None:
        server = parse_server(text)
        with sessions.lock:
            server = sessions.by_text.setdefault(key, server)
    return server


def parse_server(text: str) -> MCPServer:
    """An `MCPServer` from the CLI's `mcp:TARGET[#key=value&...]` form (the `mcp:` taken off):
    `python server.py`, `http://localhost:8000/mcp#credentials=gh&resource=mcp-gh`.
    Keys: name, credentials, resource, timeout, prefix.

    Raises:
        ValueError: an unknown key, or a bad value.
    """
    target, _, options = text.partition("#")
    kwargs: dict[str, Any] = {}
    for part in filter(None, options.split("&")):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in {"name", "credentials", "resource", "timeout", "prefix"}:
            raise ValueError(f"mcp:{text}: unknown option {part!r} (name, credentials, resource, timeout, prefix)")
        kwargs[key] = float(value) if key == "timeout" else value.strip()
    return MCPServer(target.strip(), **kwargs)
