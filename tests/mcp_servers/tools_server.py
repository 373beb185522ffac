"""A FastMCP server for the MCP tests: run as `python tools_server.py stdio` or
`python tools_server.py http PORT`. Every tool records its own start and end times and its
process id, so tests measure overlap from the server's side."""

from __future__ import annotations

import os
import sys
import time
from typing_extensions import TypedDict

from fastmcp import FastMCP
from mcp.types import ToolAnnotations

mcp = FastMCP("llmorch-test-tools")


class Timed(TypedDict):
    value: str
    start: float
    end: float
    pid: int


@mcp.tool(annotations=ToolAnnotations(readOnlyHint=True))
def lookup(key: str, delay: float = 0.0) -> Timed:
    """Look a key up (sleeps `delay` seconds first); returns the value with the call's times."""
    start = time.time()
    time.sleep(delay)
    return {"value": key.upper(), "start": start, "end": time.time(), "pid": os.getpid()}


@mcp.tool(annotations=ToolAnnotations(destructiveHint=True, readOnlyHint=False))
def delete_item(item_id: int) -> str:
    """Delete an item (pretend)."""
    return f"deleted {item_id}"


@mcp.tool
def crash(delay: float = 0.0) -> str:
    """Ends the server process after `delay` seconds (the test of a dropped server)."""
    time.sleep(delay)
    os._exit(3)


@mcp.tool
def whoami() -> str:
    """The token the server was started with (stdio: env) or the header it got (HTTP)."""
    from fastmcp.server.dependencies import get_http_headers

    try:
        headers = get_http_headers(include={"authorization"})
    except Exception:
        headers = {}
    return headers.get("authorization") or os.environ.get("TEST_TOKEN", "nobody")


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        mcp.run(transport="stdio", show_banner=False)
    else:
        mcp.run(transport="http", host="127.0.0.1", port=int(sys.argv[2]), show_banner=False)
