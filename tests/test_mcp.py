"""Tools from MCP servers: JSON-schema parameters and results checked at plan time, one
session per server per flow run shared by parallel calls, a dropped server failing only its
own calls, and reconnecting (issue 30). Real FastMCP servers, in subprocesses, over stdio and
streamable HTTP (tests/mcp_servers/tools_server.py)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import typing
from pathlib import Path
from typing import Iterator

import pytest

pytest.importorskip("fastmcp", reason="the `mcp` extra is not installed (pip install -e '.[test,mcp]')")

from prefect_llmorch.functions import ArgumentsInvalid, Toolbox, inout, load_toolbox
from prefect_llmorch.mcp import MCPServer, MCPUnavailable, parse_server
from prefect_llmorch.mcp.schema import python_type, result_type_of, signature_of
from prefect_llmorch.plan.errors import PlanError
from prefect_llmorch.plan.parser import parse

SERVER = str(Path(__file__).parent / "mcp_servers" / "tools_server.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_http(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, SERVER, "http", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"the MCP test server exited with {proc.returncode}")
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the MCP test server did not listen within 60 s")


@pytest.fixture(scope="module")
def http_server() -> Iterator[str]:
    port = _free_port()
    proc = _start_http(port)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.kill()
        proc.wait()


@inout
def shout(text: str) -> str:
    """Upper-case a text (a Python function beside the MCP tools)."""
    return text.upper() + "!"


# -- JSON Schema -> Python types (pure) ---------------------------------------------------

def test_parameters_become_a_signature_with_types_defaults_and_python_names() -> None:
    sig, names = signature_of({
        "type": "object",
        "properties": {
            "max-results": {"type": "integer", "default": 10},
            "query": {"type": "string"},
            "order": {"enum": ["asc", "desc"]},
            "from": {"type": "string"},
        },
        "required": ["query"],
    }, "search")
    assert list(sig.parameters) == ["query", "max_results", "order", "from_"]
    assert names == {"query": "query", "max_results": "max-results", "order": "order", "from_": "from"}
    assert sig.parameters["max_results"].default == 10
    assert sig.parameters["order"].annotation == typing.Optional[typing.Literal["asc", "desc"]]


def test_an_output_schema_becomes_a_typed_dict_and_fastmcp_wrapping_is_taken_off() -> None:
    shape = result_type_of({"type": "object", "properties": {"title": {"type": "string"}, "n": {"type": "integer"}},
                            "required": ["title"]}, "fetch")
    assert typing.get_type_hints(shape) == {"title": str, "n": int}
    assert shape.__required_keys__ == {"title"}
    wrapped = {"type": "object", "properties": {"result": {"type": "array", "items": {"type": "string"}}},
               "x-fastmcp-wrap-result": True}
    assert result_type_of(wrapped, "names") == list[str]
    assert result_type_of(None, "plain") is str
    assert python_type({"$ref": "#/$defs/Missing"}, {}) is typing.Any


def test_the_cli_form_names_the_target_and_options() -> None:
    server = parse_server("http://localhost:9/mcp#credentials=gh&resource=mcp-gh&prefix=gh_&timeout=5")
    assert (server.url, server.credentials, server.resource, server.prefix, server.timeout) == (
        "http://localhost:9/mcp", "gh", "mcp-gh", "gh_", 5.0)
    assert parse_server(f"python {SERVER}").name == "tools_server"
    with pytest.raises(ValueError, match="unknown option 'token=x'"):
        parse_server("python s.py#token=x")


# -- a real server: the listing, plan-time checks ----------------------------------------

@pytest.fixture(scope="module")
def stdio_toolbox() -> Iterator[Toolbox]:
    tb = Toolbox.from_mcp(f"{sys.executable} {SERVER} stdio", shout)
    yield tb
    tb["lookup"].fn.__llmorch_mcp__.close(all_runs=True)


def test_tools_become_inout_functions_with_descriptions_and_hints(stdio_toolbox: Toolbox) -> None:
    tb = stdio_toolbox
    assert set(tb) == {"lookup", "delete_item", "crash", "whoami", "shout", "self"}
    lookup, delete = tb["lookup"], tb["delete_item"]
    assert lookup.kind == delete.kind == "inout"
    assert str(lookup.signature).startswith("(key: str, delay: float = 0.0)")
    assert "Look a key up" in tb.describe() and "lookup(key: str" in tb.describe()
    assert (lookup.cache, lookup.effects) == (True, False)  # readOnlyHint
    assert (delete.cache, delete.effects, delete.approve) == (False, True, True)  # destructiveHint: a person approves
    assert lookup.approve is False
    assert tb["crash"].effects is False  # no hint: neither


def test_arguments_and_fields_are_checked_at_plan_time(stdio_toolbox: Toolbox) -> None:
    with pytest.raises(ArgumentsInvalid, match="item_id"):
        stdio_toolbox["delete_item"].check(("seven",), {})
    with pytest.raises(PlanError) as err:
        parse('s1: lookup("a")\ns2: shout(s1.valeu)\n', stdio_toolbox)
    assert "valeu" in str(err.value) and "did you mean 'value'" in str(err.value)
    with pytest.raises(PlanError, match="missing a required argument: 'key'"):
        parse('s1: lookup(ky="a")\n', stdio_toolbox)
    parse('s1: lookup("a")\ns2: shout(s1.value)\n', stdio_toolbox)


def test_an_unreachable_server_says_which_and_why() -> None:
    port = _free_port()  # nothing listens there
    with pytest.raises(MCPUnavailable, match=f"127.0.0.1:{port}"):
        Toolbox.from_mcp(f"http://127.0.0.1:{port}/mcp", timeout=20)


# -- plans through real servers ------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_plans_run_in_parallel_through_stdio_and_http_servers_with_a_failure_and_a_recovery(http_server: str) -> None:
    """A stdio server, an HTTP server and a Python function in one toolbox (the CLI's path
    form). Run 1: four lookups on each server at once (they overlap, by the tools' own
    clocks), one session per server. Run 2: the stdio server crashes mid-run; its call in
    flight fails with the reason, the HTTP server's calls complete, and a later stdio call
    (after the crash, by its dependency) reconnects and completes."""
    from prefect_llmorch.flows.run import PlanRunFailed, run_plan

    path = f"mcp:{sys.executable} {SERVER} stdio + mcp:{http_server}#prefix=h_ + test_mcp:PY"
    tb = load_toolbox(path)
    stdio, http = tb["lookup"].fn.__llmorch_mcp__, tb["h_lookup"].fn.__llmorch_mcp__
    assert {"lookup", "h_lookup", "shout", "self"} <= set(tb)

    plan = "".join(f's{i}: lookup("k{i}", 1.0)\ns{i + 4}: h_lookup("k{i}", 1.0)\n' for i in range(1, 5))
    plan += "s9: shout(s1.value)\n"
    report = run_plan(plan, tb, processors=2, cache=False)
    assert report.results["s9"] == "K1!"
    for first in (1, 5):
        rows = [report.results[f"s{i}"] for i in range(first, first + 4)]
        # all four ran at once: each started before any other ended
        assert max(r["start"] for r in rows) < min(r["end"] for r in rows), rows
    assert len({report.results[f"s{i}"]["pid"] for i in range(1, 5)}) == 1  # one stdio process: one session
    for server in (stdio, http):  # the listing (outside the run, closed at once), then one for the run
        assert len(server.openings) == 2 and server.openings[0] is None and server.openings[1] is not None
    assert stdio.sessions() == http.sessions() == []  # closed when the run's execution closed

    crash_plan = (
        's1: crash(delay=1.0)\n'
        's2: lookup("inflight", 3.0)\n'        # in flight on the stdio server when it dies
        # other server: unaffected; long enough that s4 starts after the MCP SDK has seen the
        # stdio server gone (it gives a dead server's pipes a grace period of ~3 s)
        's3: h_lookup("slow", 6.0)\n'
        's4: lookup(s3.value)\n'                # after the crash: a new session
    )
    with pytest.raises(PlanRunFailed) as failed:
        run_plan(crash_plan, tb, processors=2, cache=False)
    rows = {c.id: c for c in failed.value.report.calls}
    assert rows["s1"].state == rows["s2"].state == "Failed"
    for call in ("s1", "s2"):
        assert "MCP server 'tools_server' is unavailable" in (rows[call].error or ""), rows[call].error
    assert rows["s3"].state == rows["s4"].state == "Completed"
    assert failed.value.report.results["s4"]["value"] == "SLOW"
    assert failed.value.report.results["s4"]["pid"] != report.results["s1"]["pid"]  # a new server process
    # Run 2's sessions (its reconnect included) are run 2's own; how many there were depends on
    # when the SDK saw the server gone (under load the crash can come before s2's session
    # opens): the reconnect itself is shown by s4's new server process above.
    assert len(stdio.openings) >= 3 and set(stdio.openings[2:]) == {stdio.openings[2]}
    assert len(http.openings) == 3  # run 2: one session


PY = Toolbox(shout, include_self=False)


@pytest.mark.usefixtures("prefect_harness")
def test_credentials_come_from_a_tool_credentials_block_as_headers_and_are_not_logged(
    http_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    from prefect_llmorch.blocks import ToolCredentials
    from prefect_llmorch.flows.run import run_plan

    token = "Bearer mcp-s3cret-7f3a"
    ToolCredentials(secrets={"Authorization": token}).save("mcp-test-http", overwrite=True)
    # resource=: how many calls the server takes at once is a resource class of the run
    server = MCPServer(http_server, credentials="mcp-test-http", prefix="c_", resource="mcp-c")
    tb = Toolbox.from_mcp(server)  # the listing loads the block too
    assert tb["c_whoami"].credentials == "mcp-test-http"
    assert tb["c_whoami"].resources == {"mcp-c": 1.0}
    assert token not in repr(server) and token not in repr(tb["c_whoami"])
    with caplog.at_level("DEBUG"):
        report = run_plan("s1: c_whoami()\n", tb, processors=1, cache=False, resources={"mcp-c": 1})
    assert report.results["s1"] == token  # the server got it as its Authorization header
    assert token not in caplog.text
    server.close(all_runs=True)
