"""The dashboard server: `create_app(settings)` in `dashboard.server.app`; run it with `python -m dashboard`."""
