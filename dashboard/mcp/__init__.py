"""Tidal's MCP server: the dashboard API as tools for an assistant (docs/MCP.md).

`python -m dashboard.mcp` serves stdio; `--http --port N` serves streamable HTTP. See docs/MCP.md.
"""
from .cache import DiskCache
from .client import TidalAPI, TidalAPIError
from .server import build_server

__all__ = ["DiskCache", "TidalAPI", "TidalAPIError", "build_server"]
