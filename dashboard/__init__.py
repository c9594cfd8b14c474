"""Tidal dashboard: the FastAPI server (`dashboard.server`), the static web client and the MCP server."""
