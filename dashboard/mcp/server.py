"""The MCP server "tidal": one tool per dashboard endpoint an assistant needs (SPEC §12).

Every tool is a thin, typed call through `TidalAPI`; results are the dashboard's JSON (structured content), and
every failure becomes a tool error whose text says what to do (start the dashboard, set the token, wait N s, fix a
field). Read tools are annotated read-only and idempotent; job tools destructive; generation neither.
"""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Annotated, Any, AsyncIterator, Awaitable, Literal
from urllib.parse import quote

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from .client import TidalAPI, TidalAPIError

INSTRUCTIONS = (
    "Tools for Tidal, a gated Transformer language model with a PPO controller that modulates its gates. Start "
    "with list_experiments to find ids and statuses; read a run with get_status, get_metrics (bounded by "
    "max_points), get_rl_metrics, get_checkpoints, get_evaluation, get_ablation; look at jobs with get_jobs and "
    "get_job_logs. create_job, signal_job and cancel_job change running training and need TIDAL_API_TOKEN: ask "
    "the user before calling them. generate_text and analyze_trajectories run the model (rate limited)."
)

READ = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
DESTRUCTIVE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False,
                              open_world_hint=False)
COMPUTE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False,
                          open_world_hint=False)

MAX_POINTS_LIMIT = 2000
MAX_LOG_LINES = 1000

ExperimentId = Annotated[str, Field(min_length=1, max_length=128, description="An experiment id from "
                                    "list_experiments, e.g. 20260101-120000-commit_nogit-config_0123456789")]
JobId = Annotated[str, Field(min_length=1, max_length=128, description="A job id from get_jobs or create_job")]
PluginName = Annotated[str, Field(min_length=1, max_length=64, description="Plugin name (see list_plugins)")]
Checkpoint = Annotated[str, Field(min_length=1, max_length=1024, description="Checkpoint path as listed by "
                                  "get_checkpoints, e.g. experiments/<id>/transformer-lm_v1.0.0.pth")]
GatingMode = Literal["none", "fixed", "random", "learned"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def _seg(value: str) -> str:
    """One URL path segment: anything that could climb or split the path is escaped (the server validates too)."""
    return quote(value, safe="")


async def _answer(call: Awaitable[Any]) -> dict[str, Any]:
    try:
        body = await call
    except TidalAPIError as exc:
        raise ToolError(exc.message) from None
    return body if isinstance(body, dict) else {"result": body}


def build_server(api: TidalAPI, log_level: LogLevel = "WARNING") -> MCPServer:
    """The "tidal" MCP server whose tools call the dashboard through `api`.

    `log_level` is the SDK's (it configures root logging on stderr once); WARNING keeps per-request lines quiet."""
    @asynccontextmanager
    async def lifespan(_server: MCPServer) -> AsyncIterator[None]:
        try:
            yield
        finally:  # the HTTP client's connections belong to this event loop: close them on it
            await api.aclose()

    mcp = MCPServer("tidal", title="Tidal", instructions=INSTRUCTIONS, version="1.0.0", lifespan=lifespan,
                    log_level=log_level)

    # ------------------------------------------------------------------------------------------ experiments
    @mcp.tool(annotations=READ)
    async def list_experiments() -> dict[str, Any]:
        """List every experiment (LM and RL) with its id, type, status, creation time and what it has on disk.

        Use this first, to find an experiment id or to see which runs are training, completed or failed."""
        return await _answer(api.get("/api/experiments"))

    @mcp.tool(annotations=READ)
    async def get_metrics(
        experiment_id: ExperimentId,
        max_points: Annotated[int, Field(ge=10, le=MAX_POINTS_LIMIT, description="Most points per metric "
                                         "(min/max downsampled, last point kept)")] = 200,
        keys: Annotated[list[str] | None, Field(max_length=64, description="Only these metric names, e.g. "
                                                "['Losses/Total', 'Learning Rate']; default all")] = None,
        mode: Annotated[Literal["historical", "recent"], Field(description="historical: the whole run, "
                                                               "downsampled; recent: the last `window` steps")]
        = "historical",
        window: Annotated[int, Field(ge=1, le=MAX_POINTS_LIMIT, description="Steps for mode=recent")] = 200,
    ) -> dict[str, Any]:
        """Training metric history of an LM experiment (loss, learning rate, perplexity, throughput …), bounded.

        Use this to judge how a run is learning: trends, spikes, the last values. Ask for a few `keys` and a small
        `max_points` to keep the answer short; the response lists all available `keys`."""
        params: dict[str, Any] = {"mode": mode, "maxPoints": max_points}
        if mode == "recent":
            params["window"] = window
        if keys:
            params["keys"] = ",".join(keys)
        return await _answer(api.get(f"/api/experiments/{_seg(experiment_id)}/metrics", params))

    @mcp.tool(annotations=READ)
    async def get_rl_metrics(experiment_id: ExperimentId) -> dict[str, Any]:
        """Latest PPO diagnostics of an RL experiment (reward, policy/value loss, entropy, approx_kl, λ …).

        Use this for RL runs (type "rl"); LM runs have none."""
        return await _answer(api.get(f"/api/experiments/{_seg(experiment_id)}/rl-metrics"))

    @mcp.tool(annotations=READ)
    async def get_status(experiment_id: ExperimentId) -> dict[str, Any]:
        """The current status record of one experiment (initialized, training, completed, failed, stopped).

        Use this to check whether a run is still going before reading or acting on it."""
        return await _answer(api.get(f"/api/experiments/{_seg(experiment_id)}/status"))

    @mcp.tool(annotations=READ)
    async def get_checkpoints(experiment_id: ExperimentId) -> dict[str, Any]:
        """The checkpoint files of an experiment, classified by phase (foundational, final, rl) with epoch/size.

        Use this to find the `checkpoint` path for generate_text, analyze_trajectories or an RL job."""
        return await _answer(api.get(f"/api/experiments/{_seg(experiment_id)}/checkpoints"))

    @mcp.tool(annotations=READ)
    async def get_evaluation(experiment_id: ExperimentId) -> dict[str, Any]:
        """The evaluation results of an experiment (e.g. perplexity, sample quality), or null if none yet."""
        return await _answer(api.get(f"/api/experiments/{_seg(experiment_id)}/evaluation"))

    @mcp.tool(annotations=READ)
    async def get_ablation(experiment_id: ExperimentId) -> dict[str, Any]:
        """The ablation results of an RL experiment (learned controller vs baselines), or null if none yet.

        Use this to tell whether the learned gating beats the fixed/random baselines."""
        return await _answer(api.get(f"/api/experiments/{_seg(experiment_id)}/ablation"))

    # ------------------------------------------------------------------------------------------ plugins
    @mcp.tool(annotations=READ)
    async def list_plugins() -> dict[str, Any]:
        """The model plugins the dashboard knows, with their training phases (job types) and generation modes.

        Use this to find valid job `type`s for create_job and the gating modes for generate_text."""
        return await _answer(api.get("/api/plugins"))

    @mcp.tool(annotations=READ)
    async def get_plugin_manifest(plugin: PluginName = "tidal") -> dict[str, Any]:
        """The full manifest of a plugin: phases and their config files, checkpoint patterns, generation limits.

        Use this when you need parameter ranges (temperature, topK, maxTokens) or checkpoint naming rules."""
        return await _answer(api.get(f"/api/plugins/{_seg(plugin)}"))

    @mcp.tool(annotations=READ)
    async def get_config(
        filename: Annotated[str | None, Field(max_length=128, description="A config file name, e.g. "
                                              "base_config.yaml; omit to list the plugin's config files")] = None,
        plugin: PluginName = "tidal",
    ) -> dict[str, Any]:
        """A plugin's config file (YAML text), or the list of its config files when `filename` is omitted.

        Use this to read hyperparameters before starting a job or explaining a run."""
        base = f"/api/plugins/{_seg(plugin)}/configs"
        return await _answer(api.get(f"{base}/{_seg(filename)}" if filename else base))

    # ------------------------------------------------------------------------------------------ jobs
    @mcp.tool(annotations=READ)
    async def get_jobs(
        active_only: Annotated[bool, Field(description="Only jobs not yet finished")] = False,
        job_id: Annotated[str | None, Field(max_length=128, description="One job by id instead of a list")] = None,
    ) -> dict[str, Any]:
        """Training jobs (LM / RL) with status, config, experiment id, times, exit code and error.

        Use this to see what is running, or to follow a job started with create_job."""
        if job_id:
            return await _answer(api.get(f"/api/jobs/{_seg(job_id)}"))
        return await _answer(api.get("/api/jobs/active" if active_only else "/api/jobs"))

    @mcp.tool(annotations=READ)
    async def get_job_logs(
        job_id: JobId,
        offset: Annotated[int, Field(ge=0, le=10**9, description="First line to return (0 = oldest kept)")] = 0,
        limit: Annotated[int, Field(ge=1, le=MAX_LOG_LINES, description="Most lines to return")] = 200,
    ) -> dict[str, Any]:
        """Captured stdout/stderr lines of a job, paginated (`totalLines` tells how many there are).

        Use this to diagnose a failed job or watch progress; page with offset = previous offset + lines read."""
        return await _answer(api.get(f"/api/jobs/{_seg(job_id)}/logs", {"offset": offset, "limit": limit}))

    @mcp.tool(annotations=DESTRUCTIVE)
    async def create_job(
        type: Annotated[str, Field(min_length=1, max_length=64, description="A training phase id from "
                                   "list_plugins, e.g. lm-training or rl-training")],
        config_path: Annotated[str, Field(min_length=1, max_length=1024, description="Config file, e.g. "
                                          "configs/base_config.yaml")],
        rl_config_path: Annotated[str | None, Field(max_length=1024, description="RL config (rl-training)")] = None,
        checkpoint: Annotated[str | None, Field(max_length=1024, description="LM checkpoint (rl-training)")]
        = None,
        resume_exp_dir: Annotated[str | None, Field(max_length=1024, description="Experiment dir to resume")]
        = None,
        timesteps: Annotated[int | None, Field(ge=1, le=10**9, description="RL timesteps")] = None,
        max_steps: Annotated[int | None, Field(ge=1, le=10**9, description="Stop after this many steps")] = None,
        idempotency_key: Annotated[str | None, Field(max_length=200, description="Repeat-safe key: the same "
                                                     "key returns the job already created")] = None,
    ) -> dict[str, Any]:
        """Start a training job on the dashboard's compute (uses GPU time; one LM job at a time).

        Only when the user asked to train. Needs TIDAL_API_TOKEN. Returns the job; follow it with get_jobs."""
        body = {"type": type, "configPath": config_path, "rlConfigPath": rl_config_path, "checkpoint": checkpoint,
                "resumeExpDir": resume_exp_dir, "timesteps": timesteps, "maxSteps": max_steps}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return await _answer(api.post("/api/jobs", body, auth=True, headers=headers))

    @mcp.tool(annotations=DESTRUCTIVE)
    async def signal_job(
        job_id: JobId,
        signal: Annotated[Literal["complete", "stop"], Field(description="complete: finish gracefully (save and "
                                                             "exit 0); stop: terminate now (checkpoint, exit)")],
    ) -> dict[str, Any]:
        """Ask a running job to finish gracefully (complete) or to stop.

        Only when the user asked to end a run. Needs TIDAL_API_TOKEN. A job that is not running answers 409."""
        return await _answer(api.post(f"/api/jobs/{_seg(job_id)}/signal", {"signal": signal}, auth=True))

    @mcp.tool(annotations=DESTRUCTIVE)
    async def cancel_job(job_id: JobId) -> dict[str, Any]:
        """Cancel a job (pending or running); its worker stops the trainer. Cannot be undone.

        Only when the user asked to cancel. Needs TIDAL_API_TOKEN."""
        return await _answer(api.post(f"/api/jobs/{_seg(job_id)}/cancel", auth=True))

    # ------------------------------------------------------------------------------------------ generation
    @mcp.tool(annotations=COMPUTE)
    async def generate_text(
        checkpoint: Checkpoint,
        prompt: Annotated[str, Field(min_length=1, max_length=4000, description="Text to continue")],
        max_tokens: Annotated[int, Field(ge=10, le=500, description="Tokens to generate (10-500)")] = 50,
        temperature: Annotated[float | None, Field(gt=0, le=10, description="Sampling temperature")] = None,
        top_k: Annotated[int | None, Field(ge=1, le=100_000, description="Top-k filter")] = None,
        top_p: Annotated[float | None, Field(gt=0, le=1, description="Nucleus filter")] = None,
        gating_mode: Annotated[GatingMode, Field(description="none: plain model; fixed: constant modulation; "
                                                 "random; learned: the RL controller (needs rl_checkpoint)")]
        = "none",
        rl_checkpoint: Annotated[str | None, Field(max_length=1024, description="RL checkpoint for learned")]
        = None,
        modulation: Annotated[float | None, Field(description="Modulation for gating_mode=fixed")] = None,
        seed: Annotated[int | None, Field(ge=0, le=2**31 - 1, description="Seed for a reproducible sample")]
        = None,
    ) -> dict[str, Any]:
        """Generate a continuation of `prompt` with a checkpoint; gated modes also return the per-token trajectory.

        Use this to show what a model writes or how gating changes it. Rate limited (429 says when to retry)."""
        body = {"checkpoint": checkpoint, "prompt": prompt, "maxTokens": max_tokens, "temperature": temperature,
                "topK": top_k, "topP": top_p, "gatingMode": gating_mode, "rlCheckpoint": rl_checkpoint,
                "modulation": modulation, "seed": seed}
        return await _answer(api.post("/api/generate", body))

    @mcp.tool(annotations=COMPUTE)
    async def analyze_trajectories(
        checkpoint: Checkpoint,
        prompts: Annotated[list[str], Field(min_length=1, max_length=20, description="Prompts to analyse")],
        max_tokens: Annotated[int, Field(ge=10, le=500, description="Tokens per sample (10-500)")] = 50,
        gating_mode: Annotated[GatingMode, Field(description="Gating mode to analyse")] = "fixed",
        rl_checkpoint: Annotated[str | None, Field(max_length=1024, description="RL checkpoint for learned")]
        = None,
        samples_per_prompt: Annotated[int | None, Field(ge=1, le=100, description="Samples per prompt")] = None,
        include_extreme_values: Annotated[bool, Field(description="Also sweep extreme modulations")] = False,
        bootstrap: Annotated[bool, Field(description="Bootstrap confidence intervals")] = True,
        seed: Annotated[int | None, Field(ge=0, le=2**31 - 1, description="Seed")] = None,
    ) -> dict[str, Any]:
        """Statistics of gate signals and their effects over several prompts (with confidence intervals).

        Use this to study how the controller behaves, not for a single sample (use generate_text). Slow-ish and
        rate limited; keep prompts and samples few."""
        body = {"checkpoint": checkpoint, "prompts": prompts, "maxTokens": max_tokens, "gatingMode": gating_mode,
                "rlCheckpoint": rl_checkpoint, "samplesPerPrompt": samples_per_prompt,
                "includeExtremeValues": include_extreme_values, "bootstrap": bootstrap, "seed": seed}
        return await _answer(api.post("/api/analyze-trajectories", body))

    return mcp
