"""Environment → one immutable `Settings` object. Nothing else in the server reads `os.environ`.

Defaults are those documented in the README ("Dashboard") and ADR 0007 (port 4400, loopback host, 10 s heartbeats,
60 s heartbeat timeout); tests shrink the timers through the same fields.
"""
from __future__ import annotations

import importlib.util
import ipaddress
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from core.env import env_number
from core.errors import TidalError
from core.manifest import DEFAULT_MANIFEST_PATH
from core.paths import PROJECT_ROOT


class SettingsError(TidalError):
    pass


PROVIDERS = ("local", "remote", "ray")
RAY_MISSING = "DEFAULT_COMPUTE_PROVIDER=ray needs the ray package: pip install 'ray[default]'"


def ray_installed() -> bool:
    """Whether `ray` can be imported, without importing it (that takes seconds; only the ray provider pays it)."""
    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        return False


def _env_float(env: dict, name: str, default: float, minimum: float = 0.0) -> float:
    return env_number(env, name, default, minimum, error=SettingsError)


def _env_optional_float(env: dict, name: str) -> float | None:
    return None if env.get(name) in (None, "") else _env_float(env, name, 0.0)


def _env_int(env: dict, name: str, default: int, minimum: int = 0, maximum: int = 2**31) -> int:
    return int(env_number(env, name, default, minimum, maximum, integer=True, error=SettingsError))


def _trusted_proxies(raw: str) -> tuple:
    nets = []
    for part in (p.strip() for p in raw.split(",")):
        if part:
            try:
                nets.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise SettingsError(f"TRUSTED_PROXIES: {part!r} is not an IP address or network") from None
    return tuple(nets)


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 4400
    redis_url: str | None = None                 # None: start an embedded redis-server for this run
    experiments_dir: Path = PROJECT_ROOT / "experiments"
    python_bin: str = sys.executable
    auth_token: str | None = None
    default_provider: str = "local"              # local | remote | ray
    ray_address: str | None = None               # Ray's job submission (dashboard) URL; None: http://127.0.0.1:8265
    ray_num_cpus: float | None = None            # CPUs/GPUs a Ray job reserves; None: from the phase's gpuTier
    ray_num_gpus: float | None = None
    inference_url: str | None = None
    trusted_proxies: tuple = ()
    manifest_path: Path = DEFAULT_MANIFEST_PATH
    extra_config_dirs: tuple[Path, ...] = ()     # more directories job configs may come from (tests)
    project_root: Path = PROJECT_ROOT
    client_dir: Path = PROJECT_ROOT / "dashboard" / "client"
    # jobs and the worker
    heartbeat_interval: float = 10.0             # passed to local workers
    heartbeat_timeout: float = 60.0              # a running job with no heartbeat for this long has failed
    signal_poll_interval: float = 2.0            # passed to local workers
    stop_grace: float = 30.0                     # SIGTERM -> SIGKILL grace the worker gives the trainer
    startup_timeout: float = 120.0               # pending/provisioning/starting longer than this -> failed (local)
    remote_startup_timeout: float = 900.0        # the same for a remote worker that must attach itself
    monitor_interval: float = 5.0                # health monitor period
    # HTTP
    body_limit: int = 64 * 1024
    sse_ping: float = 15.0                       # heartbeat event period on SSE streams
    sse_queue_size: int = 2048                   # per-client buffered events before a slow client is dropped
    sse_send_timeout: float = 10.0
    # rate limit (ADR 0009): 5 tokens, one back every 6 s
    rate_capacity: int = 5
    rate_refill_seconds: float = 6.0
    # bound on one limiter call to a *hung* Redis (a stopped one refuses at once)
    rate_timeout: float = 0.25
    rate_breaker_seconds: float = 5.0            # skip Redis this long after a limiter failure
    # generation
    model_cache_size: int = 3
    generation_threads: int = 1
    demo: bool = False
    worker_env: dict = field(default_factory=dict)   # extra environment for local workers (tests: PYTHONPATH)

    @classmethod
    def from_env(cls, env: dict | None = None, **overrides) -> Settings:
        env = dict(os.environ if env is None else env)
        experiments = env.get("EXPERIMENTS_DIR") or str(PROJECT_ROOT / "experiments")
        extra_dirs = tuple(Path(p).resolve() for p in env.get("EXTRA_CONFIG_DIRS", "").split(os.pathsep) if p)
        settings = cls(
            host=env.get("HOST") or "127.0.0.1",
            port=_env_int(env, "PORT", 4400, 0, 65535),
            redis_url=env.get("REDIS_URL") or None,
            experiments_dir=Path(experiments).resolve(),
            python_bin=env.get("PYTHON_BIN") or sys.executable,
            auth_token=env.get("TIDAL_AUTH_TOKEN") or None,
            default_provider=env.get("DEFAULT_COMPUTE_PROVIDER") or "local",
            ray_address=(env.get("RAY_ADDRESS") or "").rstrip("/") or None,
            ray_num_cpus=_env_optional_float(env, "RAY_NUM_CPUS"),
            ray_num_gpus=_env_optional_float(env, "RAY_NUM_GPUS"),
            inference_url=(env.get("INFERENCE_URL") or "").rstrip("/") or None,
            trusted_proxies=_trusted_proxies(env.get("TRUSTED_PROXIES", "")),
            manifest_path=Path(env.get("TIDAL_MANIFEST") or DEFAULT_MANIFEST_PATH),
            extra_config_dirs=extra_dirs,
            heartbeat_interval=_env_float(env, "TIDAL_HEARTBEAT_INTERVAL", 10.0, 0.05),
            heartbeat_timeout=_env_float(env, "TIDAL_HEARTBEAT_TIMEOUT", 60.0, 0.1),
            signal_poll_interval=_env_float(env, "TIDAL_SIGNAL_POLL_INTERVAL", 2.0, 0.05),
            stop_grace=_env_float(env, "TIDAL_STOP_GRACE", 30.0, 0.0),
            startup_timeout=_env_float(env, "TIDAL_STARTUP_TIMEOUT", 120.0, 0.1),
            remote_startup_timeout=_env_float(env, "TIDAL_REMOTE_STARTUP_TIMEOUT", 900.0, 0.1),
            monitor_interval=_env_float(env, "TIDAL_MONITOR_INTERVAL", 5.0, 0.05),
            body_limit=_env_int(env, "TIDAL_BODY_LIMIT", 64 * 1024, 1024),
            model_cache_size=_env_int(env, "TIDAL_MODEL_CACHE_SIZE", 3, 1, 64),
        )
        if settings.default_provider not in PROVIDERS:
            raise SettingsError(f"DEFAULT_COMPUTE_PROVIDER={settings.default_provider!r}: "
                                f"expected local, remote or ray")
        if settings.default_provider == "ray" and not ray_installed():
            raise SettingsError(RAY_MISSING)
        return replace(settings, **overrides) if overrides else settings

    def with_(self, **changes) -> Settings:
        return replace(self, **changes)

    @property
    def configs_dirs(self) -> tuple[Path, ...]:
        """Directories a job's config files must resolve into: the plugin's configs/ plus any extra ones."""
        return ((self.manifest_path.resolve().parent / "configs").resolve(), *self.extra_config_dirs)
