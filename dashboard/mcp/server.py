"""The MCP server "tidal": one tool per dashboard endpoint an assistant needs (docs/MCP.md).

Every tool is a thin, typed call through `TidalAPI`; results are the dashboard's JSON (structured content), and
every failure becomes a tool error whose text says what to do (start the dashboard, set the token, wait N s, fix a
field). Read tools are annotated read-only and idempotent; job tools destructive; generation neither.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal
from urllib.parse import quote

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from core.names import GatingMode

from .budget import DEFAULT_MAX_BYTES, MAX_BYTES_LIMIT, fit_list, last_values, round_floats, size, summarise_ablation
from .client import TidalAPI, TidalAPIError

INSTRUCTIONS = (
    "Tools for Tidal, a gated Transformer language model with a PPO controller that modulates its gates. Start "
    "with list_experiments to find ids and statuses; read a run with get_status, get_metrics (bounded by "
    "max_points), get_rl_metrics, get_checkpoints, get_evaluation, get_ablation; look at jobs with get_jobs and "
    "get_job_logs. Answers are kept to about max_bytes (4000 by default) and say in `trimmed` what was cut; ask "
    "for fewer keys or a larger max_bytes to see more. set_experiment_info names and tags a run. create_job, "
    "signal_job and cancel_job change running training and need TIDAL_API_TOKEN: ask the user before calling "
    "them. generate_text and analyze_trajectories run the model (rate limited)."
)

READ = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
DESTRUCTIVE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False,
                              open_world_hint=False)
COMPUTE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False,
                          open_world_hint=False)
WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False)

MAX_POINTS_LIMIT = 2000
MAX_LOG_LINES = 1000

ExperimentId = Annotated[str, Field(min_length=1, max_length=128, description="An experiment id from "
                                    "list_experiments, e.g. 20260101-120000-commit_nogit-config_0123456789")]
JobId = Annotated[str, Field(min_length=1, max_length=128, description="A job id from get_jobs or create_job")]
PluginName = Annotated[str, Field(min_length=1, max_length=64, description="Plugin name (see list_plugins)")]
Checkpoint = Annotated[str, Field(min_length=1, max_length=1024, description="Checkpoint path as listed by "
                                  "get_checkpoints, e.g. experiments/<id>/transformer-lm_v1.0.0.pth")]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
MaxBytes = Annotated[int, Field(ge=500, le=MAX_BYTES_LIMIT, description="Most characters of JSON in the answer; "
                                "past it the longest list is cut and `trimmed` says so")]
SUMMARY_FIELDS = ("id", "name", "tags", "type", "status", "createdAt", "live", "sourceExperiment", "hasMetrics",
                  "hasRLMetrics", "hasEvaluation", "hasAblation", "checkpoints")
NOTES_PREVIEW = 200


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
    async def list_experiments(
        search: Annotated[str | None, Field(max_length=200, description="Only runs whose id, name, tags or notes "
                                            "contain this text (case-insensitive)")] = None,
        limit: Annotated[int, Field(ge=1, le=1000, description="Most runs to return, newest first")] = 20,
        max_bytes: MaxBytes = DEFAULT_MAX_BYTES,
    ) -> dict[str, Any]:
        """Experiments (LM and RL), newest first: id, name, tags, type, status, creation time, whether it is live,
        its source run, what results it has, its checkpoint files, and the first characters of its notes.

        Returns {experiments: [...], total, shown}. Use this first, to find an experiment id or to see which runs
        are training, completed or failed; `search` finds runs by name or tag."""
        body = await _answer(api.get("/api/experiments"))
        runs = body.get("experiments") or []
        if search:
            needle = search.lower()
            runs = [e for e in runs if needle in " ".join([e.get("id") or "", e.get("name") or "", e.get("notes") or "",
                                                           *(e.get("tags") or [])]).lower()]
        rows = []
        for e in runs[:limit]:
            row = {k: e.get(k) for k in SUMMARY_FIELDS}
            if e.get("notes"):
                row["notes"] = e["notes"][:NOTES_PREVIEW]
            rows.append(row)
        return fit_list({"experiments": rows, "total": len(runs), "shown": len(rows)}, "experiments", max_bytes,
                        keep="head", hint="use `search` or a smaller `limit`, or raise max_bytes")

    @mcp.tool(annotations=WRITE)
    async def set_experiment_info(
        experiment_id: ExperimentId,
        name: Annotated[str | None, Field(max_length=200, description="A short human name; \"\" clears it")] = None,
        tags: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]] | None,
                        Field(max_length=32, description="The run's tags (replaces them; [] clears)")] = None,
        notes: Annotated[str | None, Field(max_length=20_000, description="Free-text notes (replaces them)")] = None,
    ) -> dict[str, Any]:
        """Name, tag or annotate a run (kept in its metadata.json); arguments left out are not changed.

        Needs TIDAL_API_TOKEN. Returns {experiment: summary with name, tags, notes}."""
        body = {k: v for k, v in (("name", name), ("tags", tags), ("notes", notes)) if v is not None}
        if not body:
            raise ToolError("give at least one of name, tags, notes")
        return await _answer(api.patch(f"/api/experiments/{_seg(experiment_id)}", body))

    @mcp.tool(annotations=READ)
    async def get_metrics(
        experiment_id: ExperimentId,
        max_points: Annotated[int, Field(ge=10, le=MAX_POINTS_LIMIT, description="Most points per metric "
                                         "(min/max downsampled, last point kept)")] = 50,
        keys: Annotated[list[str] | None, Field(max_length=64, description="Only these metric names, e.g. "
                                                "['Losses/Total', 'Learning Rate']; default all")] = None,
        mode: Annotated[Literal["historical", "recent"], Field(description="historical: the whole run, "
                                                               "downsampled; recent: the last `window` steps")]
        = "historical",
        window: Annotated[int, Field(ge=1, le=MAX_POINTS_LIMIT, description="The last N steps for mode=recent")]
        = 200,
        series: Annotated[Literal["lm", "rl", "system"], Field(description="lm: the LM training history; rl: the "
                                                               "PPO history; system: CPU %, RSS MB, GPU samples")]
        = "lm",
        max_bytes: MaxBytes = DEFAULT_MAX_BYTES,
    ) -> dict[str, Any]:
        """Metric history of a run (loss, learning rate, perplexity, throughput …; or the RL or system series).

        Returns {points: [{step, timestamp, key: value}], keys: every metric name available, originalCount,
        downsampled, trimmed?}; values rounded to 5 significant digits. Use this to judge how a run is learning:
        trends, spikes, the last values. Ask for a few `keys` to see more points within the budget."""
        params: dict[str, Any] = {"mode": mode, "maxPoints": max_points, "series": series}
        if mode == "recent":
            params["window"] = window
        if keys:
            params["keys"] = ",".join(keys)
        body = round_floats(await _answer(api.get(f"/api/experiments/{_seg(experiment_id)}/metrics", params)))
        return fit_list(body, "points", max_bytes, hint="points thinned evenly (last kept) to fit max_bytes: ask "
                        "for fewer `keys`, mode=recent with a small `window`, or raise max_bytes")

    @mcp.tool(annotations=READ)
    async def get_rl_metrics(
        experiment_id: ExperimentId,
        keys: Annotated[list[str] | None, Field(max_length=64, description="Only these names, e.g. "
                                                "['episode_rewards', 'approx_kl']; default all")] = None,
        last_n: Annotated[int, Field(ge=1, le=1000, description="Values per metric from the end of its history "
                                     "(1: the latest value itself)")] = 1,
        max_bytes: MaxBytes = DEFAULT_MAX_BYTES,
    ) -> dict[str, Any]:
        """Latest PPO diagnostics of an RL experiment (episode reward per episode, reward components per token,
        policy/value loss, entropy, approx_kl, λ …).

        Returns {metrics: {name: latest value, or its last `last_n` values}, historyLength}. Use this for RL runs
        (type "rl"); LM runs have none. For a downsampled history use get_metrics with series="rl"."""
        body = await _answer(api.get(f"/api/experiments/{_seg(experiment_id)}/rl-metrics"))
        metrics, longest = last_values(body.get("metrics"), last_n, keys)
        answer = round_floats({**body, "metrics": metrics, "historyLength": longest})
        if isinstance(metrics, dict) and size(answer) > max_bytes:  # too many keys: keep those that fit, name the rest
            names = list(metrics)
            fitted = fit_list({**answer, "metrics": names}, "metrics", max_bytes, keep="head")
            kept = fitted["metrics"]
            answer = {**answer, "metrics": {k: answer["metrics"][k] for k in kept}, "omittedKeys": names[len(kept):]}
            while size(answer) > max_bytes and answer["metrics"]:
                answer["metrics"].pop(next(reversed(answer["metrics"])))
                answer["omittedKeys"].insert(0, names[len(answer["metrics"])])
        return answer

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
    async def get_ablation(
        experiment_id: ExperimentId,
        frontier_points: Annotated[int, Field(ge=2, le=100, description="Points per family frontier (evenly "
                                              "spaced, both ends kept)")] = 3,
        max_bytes: MaxBytes = DEFAULT_MAX_BYTES,
    ) -> dict[str, Any]:
        """The held-out decoding study of an RL run in brief: does the learned controller beat tuned fixed decoders?

        Returns {verdict: {verdict, gap, ci, best_family, at_diversity, oracle_gap, oracle_ci, text}, protocol
        (metric labels, prompt and seed counts), frontiers: {family: [[diversity, judge_nll], ...]}, learned: [points
        with CIs], oracle, human}; judge NLL is nats/token, lower is better. Old-format results give a note to rerun
        the study; a run without a study gives format null."""
        body = await _answer(api.get(f"/api/experiments/{_seg(experiment_id)}/ablation"))
        summary = round_floats({"experimentId": experiment_id,
                                **summarise_ablation(body.get("results"), frontier_points)})
        return fit_list(summary, "learned", max_bytes, keep="head", hint="fewer frontier_points, or raise max_bytes")

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
        max_bytes: MaxBytes = DEFAULT_MAX_BYTES,
    ) -> dict[str, Any]:
        """Captured stdout/stderr lines of a job, paginated: {lines: [{timestamp, stream, line}], totalLines, offset}.

        Use this to diagnose a failed job or watch progress; page with offset = previous offset + lines read (fewer
        than `limit` when max_bytes cut the page: `trimmed` says how many)."""
        body = await _answer(api.get(f"/api/jobs/{_seg(job_id)}/logs", {"offset": offset, "limit": limit}))
        return fit_list(body, "lines", max_bytes, keep="head",
                        hint="page on from offset + kept, or raise max_bytes")

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
        overrides: Annotated[dict[str, Any] | None, Field(max_length=64, description="Config values to change, "
                                                          "KEY or SECTION.KEY -> value, e.g. {\"BATCH_SIZE\": 4}; "
                                                          "an unknown key is refused with the closest known one")]
        = None,
        idempotency_key: Annotated[str | None, Field(max_length=200, description="Repeat-safe key: the same "
                                                     "key returns the job already created")] = None,
    ) -> dict[str, Any]:
        """Start a training job on the dashboard's compute (uses GPU time; one LM job at a time).

        Only when the user asked to train. Needs TIDAL_API_TOKEN. Returns the job; follow it with get_jobs."""
        body = {"type": type, "configPath": config_path, "rlConfigPath": rl_config_path, "checkpoint": checkpoint,
                "resumeExpDir": resume_exp_dir, "timesteps": timesteps, "maxSteps": max_steps,
                "overrides": overrides}
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
        prompt: Annotated[str, Field(min_length=1, max_length=4000, description="Text to continue")],
        checkpoint: Annotated[str | None, Field(max_length=1024, description="LM checkpoint as listed by "
                                                "get_checkpoints, e.g. experiments/<id>/transformer-lm_v1.0.0.pth; "
                                                "required unless gating_mode=learned, where the default is the LM "
                                                "the RL agent was trained on")] = None,
        max_tokens: Annotated[int, Field(ge=10, le=500, description="Tokens to generate (10-500)")] = 50,
        decoder: Annotated[str | None, Field(max_length=32, description="gating_mode=none only: plain (temperature, "
                                             "top_k, top_p, repetition_penalty; the default), greedy, min_p (min_p, "
                                             "temperature), mirostat (tau, eta, temperature) or edt (edt_t0, "
                                             "edt_theta, edt_n)")] = None,
        temperature: Annotated[float | None, Field(gt=0, le=10, description="Sampling temperature")] = None,
        top_k: Annotated[int | None, Field(ge=1, le=100_000, description="Top-k filter")] = None,
        top_p: Annotated[float | None, Field(gt=0, le=1, description="Nucleus filter")] = None,
        min_p: Annotated[float | None, Field(ge=0, lt=1, description="Min-p: keep tokens with p >= min_p * p_max")]
        = None,
        repetition_penalty: Annotated[float | None, Field(gt=0, description="Repetition penalty (1 = off)")] = None,
        tau: Annotated[float | None, Field(gt=0, description="Mirostat target surprise in bits")] = None,
        eta: Annotated[float | None, Field(gt=0, description="Mirostat learning rate")] = None,
        edt_t0: Annotated[float | None, Field(gt=0, description="EDT base temperature")] = None,
        edt_theta: Annotated[float | None, Field(gt=0, description="EDT theta")] = None,
        edt_n: Annotated[float | None, Field(gt=0, lt=1, description="EDT N")] = None,
        gating_mode: Annotated[GatingMode, Field(description="none: the model with `decoder`; fixed: constant "
                                                 "modulation; random; learned: the RL controller (needs "
                                                 "rl_checkpoint). Gated modes set the sampling parameters per "
                                                 "token themselves, so they take no decoder parameters")] = "none",
        rl_checkpoint: Annotated[str | None, Field(max_length=1024, description="RL checkpoint for learned")]
        = None,
        modulation: Annotated[float | None, Field(description="The action for gating_mode=fixed: m in [0, 1], or with "
                                                  "a residual agent's rl_checkpoint an action index (0 = its base "
                                                  "decoder)")] = None,
        seed: Annotated[int | None, Field(ge=0, le=2**31 - 1, description="Seed for a reproducible sample")]
        = None,
    ) -> dict[str, Any]:
        """Generate a continuation of `prompt`. Returns text, tokensGenerated, stopReason ("eos": the model ended
        the text; "length": max_tokens reached), the checkpoint and decoder used, warnings (e.g. an RL agent paired
        with an LM it was not trained on), and for gated modes the per-token trajectory (action and the sampling
        parameters it set).

        Use this to show what a model writes, how a decoder or gating changes it. Rate limited (429 says when to
        retry)."""
        body = {"checkpoint": checkpoint, "prompt": prompt, "maxTokens": max_tokens, "decoder": decoder,
                "temperature": temperature, "topK": top_k, "topP": top_p, "minP": min_p,
                "repetitionPenalty": repetition_penalty, "tau": tau, "eta": eta, "edtT0": edt_t0,
                "edtTheta": edt_theta, "edtN": edt_n, "gatingMode": gating_mode, "rlCheckpoint": rl_checkpoint,
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
