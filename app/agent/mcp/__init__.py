"""Tools from remote MCP servers: `McpTools` (the lifespan's), per-server connections, the tool type."""

from app.agent.mcp.server import McpServer, McpTools
from app.agent.mcp.tools import McpArguments, McpTool, model_tool_name, render_result

__all__ = ["McpArguments", "McpServer", "McpTool", "McpTools", "model_tool_name", "render_result"]
