"""Tidal's base layer: what every other layer (plugins, dashboard, the root modules, tests) may import.

It imports only the standard library, third-party packages and itself (tests/test_layers.py checks it):
errors (TidalError, ConfigError), paths (PROJECT_ROOT, experiment ids, path confinement), io (atomic writes, the
JSONL reader), names (artifact files, Redis keys, gating modes), env (numbers from the environment), net (free
ports, the announced Redis URL), manifest (the plugin manifest's schema), jobs (the job state machine), testing.
"""
