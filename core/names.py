"""Names shared by writers and readers in different layers, each defined once: artifact files, Redis keys, modes.

The plugin manifest (`plugins/tidal/manifest.yaml`) declares the same names to the dashboard; tests/test_manifest.py
checks that it declares exactly these.
"""
from __future__ import annotations

from typing import Literal, get_args

# ---------------------------------------------------------------------------------------------- artifact files
# Under `<experiment>/`:
METADATA_FILE = "metadata.json"                  # experiment_utils.create_experiment_dir
EVALUATION_FILE = "evaluation_results.json"      # Evaluator
ABLATION_FILE = "ablation_results.json"          # the held-out decoding study (Ablation)
RL_METRICS_DIRNAME = "rl_metrics"
RL_TRAINING_METRICS_FILE = "rl_training_metrics.json"  # in RL_METRICS_DIRNAME: the RL trainer's whole history
# Under `<experiment>/dashboard_metrics/` (MetricsLogger):
METRICS_DIRNAME = "dashboard_metrics"
METRICS_FILE = "metrics.jsonl"        # {step, timestamp, …metrics} per line
RL_METRICS_FILE = "rl_metrics.jsonl"  # {global_step, timestamp, …} per line
LATEST_FILE = "latest.json"           # the last metrics record
STATUS_FILE = "status.json"           # {status, timestamp, experiment_id, …}
SYSTEM_FILE = "system.jsonl"          # {step, timestamp, System/…}: process CPU and memory, GPU on CUDA
# Under the experiments directory: the Redis URL a running dashboard announces (core.net).
REDIS_ANNOUNCE_FILE = ".redis_url"

# ---------------------------------------------------------------------------------------------- Redis keys
# `{id}` is an experiment id, `{jobId}` a job id. The keys are the manifest's `redis:` field names.
REDIS_KEYS = {
    "jobsHash": "tidal:jobs",
    "jobsActiveSet": "tidal:jobs:active",
    "jobsStream": "tidal:jobs:stream",
    "updatesChannel": "tidal:job:updates",
    "idempotencyPrefix": "tidal:jobs:idempotency:",
    "signalKey": "tidal:job:{jobId}:signal",
    "heartbeatKey": "tidal:worker:{jobId}:heartbeat",
    "logsKey": "tidal:logs:{jobId}",
    "experimentsSet": "tidal:experiments",
    "metricsStream": "tidal:metrics:{id}:stream",
    "metricsLatest": "tidal:metrics:{id}:latest",
    "statusKey": "tidal:status:{id}",
    "rlLatest": "tidal:rl:{id}:latest",
    "rateLimitPrefix": "tidal:ratelimit:",
}

# ---------------------------------------------------------------------------------------------- vocabularies
# How the modulation m of a gated generation is chosen: none (plain decoding), a fixed m, a random m, or the learned
# RL controller. The plugin's Generator, the manifest's generation.modes, the API and the MCP tools share it.
GatingMode = Literal["none", "fixed", "random", "learned"]
GATING_MODES: tuple[str, ...] = get_args(GatingMode)
