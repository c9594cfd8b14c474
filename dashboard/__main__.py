"""`python -m dashboard [--demo] [--host H] [--port P]`: serve the API and the web client with uvicorn.

Without TIDAL_AUTH_TOKEN the server refuses to start (exit 2), except with `--demo`, which makes a random token,
prints it once and keeps it in `<EXPERIMENTS_DIR>/.dashboard_token` (mode 0600) so a demo restart reuses it.
"""
from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
from pathlib import Path

from core.errors import TidalError


def demo_token(experiments_dir: Path) -> tuple[str, Path, bool]:
    """(token, file, created): the demo token stored with mode 0600, created on first use."""
    path = experiments_dir / ".dashboard_token"
    try:
        token = path.read_text(encoding="utf-8").strip()
        if token:
            os.chmod(path, 0o600)
            return token, path, False
    except OSError:
        pass
    experiments_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)
    return token, path, True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dashboard", description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", action="store_true", help="generate (or reuse) a random auth token; print it once")
    p.add_argument("--host", help="bind address (default HOST or 127.0.0.1; 0.0.0.0 exposes the server)")
    p.add_argument("--port", type=int, help="port (default PORT or 4400)")
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from dashboard.server.settings import Settings

    try:
        settings = Settings.from_env()
    except TidalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if settings.auth_token is None:
        if not args.demo:
            print("error: TIDAL_AUTH_TOKEN is not set; set it (e.g. export TIDAL_AUTH_TOKEN=$(python -c "
                  "'import secrets; print(secrets.token_urlsafe(32))')) or run with --demo", file=sys.stderr)
            return 2
        token, path, created = demo_token(settings.experiments_dir)
        overrides["auth_token"] = token
        if created:
            print(f"demo mode: auth token {token}  (kept in {path}, mode 0600)", flush=True)
        else:
            print(f"demo mode: using the auth token kept in {path}", flush=True)
    settings = settings.with_(demo=args.demo, **overrides)

    from dashboard.server.app import create_app

    try:
        app = create_app(settings)
    except TidalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    print(f"Tidal dashboard on http://{settings.host}:{settings.port}", flush=True)
    # X-Forwarded-For is handled by the app (TRUSTED_PROXIES), never by uvicorn
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level, timeout_graceful_shutdown=5,
                proxy_headers=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
