"""Tools from MCP servers (`pip install "prefect-llmorch[mcp]"`): see `client.py`, docs/mcp.md."""

from prefect_llmorch.mcp.client import (
    MCPCallFailed,
    MCPServer,
    MCPUnavailable,
    close_run_sessions,
    parse_server,
    server_for,
    server_of,
    tool_specs,
)

__all__ = ["MCPCallFailed", "MCPServer", "MCPUnavailable", "close_run_sessions", "parse_server", "server_for", "server_of", "tool_specs"]
