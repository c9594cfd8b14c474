"""`python -m dashboard.mcp` (stdio) or `python -m dashboard.mcp --http [--host H] [--port N]` (streamable HTTP).

Environment: TIDAL_API_URL (default http://127.0.0.1:4400), TIDAL_API_TOKEN (for job tools), TIDAL_CACHE_DIR
(default ~/.cache/tidal), TIDAL_MCP_NO_CACHE=1 to turn the disk cache off.
"""
from __future__ import annotations

import argparse
import os
import sys

from .cache import DiskCache
from .client import DEFAULT_API_URL, TidalAPI
from .server import build_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboard.mcp", description="Tidal MCP server")
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP instead of stdio")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=4401, help="HTTP port (default 4401)")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                        help="log level on stderr (default WARNING)")
    args = parser.parse_args(argv)
    cache = None if os.environ.get("TIDAL_MCP_NO_CACHE") == "1" else DiskCache()
    api = TidalAPI(os.environ.get("TIDAL_API_URL") or DEFAULT_API_URL, os.environ.get("TIDAL_API_TOKEN"),
                   cache=cache)
    server = build_server(api, log_level=args.log_level)
    if args.http:
        print(f"Tidal MCP server: http://{args.host}:{args.port}/mcp -> {api.base_url}", file=sys.stderr)
        server.run("streamable-http", host=args.host, port=args.port)
    else:
        server.run("stdio")  # stdout is the protocol: nothing else may be printed there
    return 0


if __name__ == "__main__":
    sys.exit(main())
