"""Request and response schemas of the dashboard API (camelCase JSON, as the web client reads it). OpenAPI at /docs.

Requests forbid unknown fields (a typo is a 422 naming it) and reject NaN/Infinity. Ranges that come from the
manifest (generation parameters) are checked by the generation service and reported in the same 422 shape.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from core.jobs import JobStatus
from core.names import GatingMode

PathStr = Annotated[str, StringConstraints(max_length=1024)]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_max_length=20_000)


class Response(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorResponse(BaseModel):
    error: str
    detail: Any = None


class OkResponse(BaseModel):
    ok: bool = True


# ---------------------------------------------------------------------------------------------- health/plugins
class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"]
    redis: Literal["ok", "unavailable"]
    version: str
    uptimeSeconds: float
    plugins: list[str]
    sseReaders: int
    rateLimiter: Literal["ok", "degraded"]


class PluginSummary(BaseModel):
    name: str
    displayName: str
    version: str
    description: str
    trainingPhases: list[dict]
    generationModes: list[dict]


class PluginsResponse(BaseModel):
    plugins: list[PluginSummary]


class ConfigListResponse(BaseModel):
    plugin: str
    files: list[str]


class ConfigFileResponse(BaseModel):
    plugin: str
    filename: str
    content: str


# ---------------------------------------------------------------------------------------------- experiments
class ExperimentSummary(BaseModel):
    id: str
    type: Literal["lm", "rl", "unknown"]
    createdAt: float | None
    status: str | None
    lastUpdate: float | None
    live: bool
    sourceExperiment: str | None
    sourceCheckpoint: str | None
    configPath: str | None = Field(None, description="the LM config the run was started with (from its metadata)")
    hasMetrics: bool
    hasRLMetrics: bool
    hasEvaluation: bool
    hasAblation: bool
    checkpoints: list[str]
    onDisk: bool
    error: str | None = Field(None, description="why the run failed (its status record)")
    logTail: str | None = Field(None, description="a failed run's last log lines (its newest *.log file)")
    name: str | None = Field(None, description="a human name for the run (metadata.json)")
    tags: list[str] = Field(default_factory=list, description="labels for search and filtering (metadata.json)")
    notes: str | None = Field(None, description="free text about the run (metadata.json)")


class ExperimentsResponse(BaseModel):
    experiments: list[ExperimentSummary]


Tag = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class ExperimentInfoRequest(Request):
    """A run's name, tags and notes; a field left out is kept, null clears it."""
    name: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] | None = None
    tags: list[Tag] | None = Field(None, max_length=32)
    notes: str | None = Field(None, max_length=20_000)


class ExperimentResponse(BaseModel):
    experiment: ExperimentSummary


class RunRow(BaseModel):
    id: str
    type: Literal["lm", "rl", "unknown"]
    name: str | None
    tags: list[str]
    status: str | None
    createdAt: float | None
    params: dict[str, Any] = Field(description="the effective config saved with the run, nested keys dotted")
    final: dict[str, float] = Field(description="the last value of each metric series")


class RunsTableResponse(BaseModel):
    runs: list[RunRow]
    paramKeys: list[str]
    metricKeys: list[str]


class ConfigDifference(BaseModel):
    key: str
    a: Any = None
    b: Any = None
    change: Literal["changed", "added", "removed"]


class ConfigDiffResponse(BaseModel):
    experimentId: str
    other: str
    differences: list[ConfigDifference]
    same: int = Field(description="how many keys are equal in both")


class MetricsResponse(BaseModel):
    experimentId: str
    mode: Literal["recent", "historical"]
    points: list[dict[str, Any]]
    totalPoints: int
    originalCount: int
    downsampled: bool
    maxPoints: int
    keys: list[str]
    source: Literal["disk", "redis"]


class RLMetricsResponse(BaseModel):
    experimentId: str
    metrics: dict[str, Any] | None


class StatusResponse(BaseModel):
    experimentId: str
    status: dict[str, Any] | None


class CheckpointInfo(BaseModel):
    filename: str
    path: str
    sizeBytes: int
    modified: float
    phase: str
    epoch: int | None


class CheckpointsResponse(BaseModel):
    experimentId: str
    checkpoints: list[CheckpointInfo]


class ExperimentConfigFile(BaseModel):
    filename: str
    content: str
    truncated: bool


class ConfigFilesResponse(BaseModel):
    experimentId: str
    files: list[ExperimentConfigFile]


class ResultsResponse(BaseModel):
    experimentId: str
    results: Any = None


# ---------------------------------------------------------------------------------------------- jobs
class JobConfig(BaseModel):
    configPath: str | None = None
    rlConfigPath: str | None = None
    checkpoint: str | None = None
    resumeExpDir: str | None = None
    timesteps: int | None = None
    maxSteps: int | None = None
    overrides: dict[str, Any] | None = None


class Job(Response):
    jobId: str
    type: str
    status: JobStatus
    provider: str
    config: JobConfig
    experimentId: str | None = None
    createdAt: float
    updatedAt: float
    startedAt: float | None = None
    completedAt: float | None = None
    error: str | None = None
    exitCode: int | None = None


class JobResponse(BaseModel):
    job: Job


class JobsResponse(BaseModel):
    jobs: list[Job]


class CreateJobRequest(Request):
    type: str = Field(max_length=64)
    configPath: PathStr
    rlConfigPath: PathStr | None = None
    checkpoint: PathStr | None = None
    resumeExpDir: PathStr | None = None
    timesteps: int | None = Field(default=None, ge=1, le=10**9, strict=True)
    maxSteps: int | None = Field(default=None, ge=1, le=10**9, strict=True)
    overrides: dict[Annotated[str, StringConstraints(max_length=200)], Any] | None = Field(
        default=None, max_length=64, description="config values to change, `KEY` or `SECTION.KEY` -> value (as the "
                                                 "CLI's --set); a key the config does not have is a 422 naming it")
    provider: Literal["local", "remote", "ray"] | None = None


class SignalRequest(Request):
    signal: Literal["complete", "stop"]


class LogLine(Request):
    timestamp: float
    stream: Literal["stdout", "stderr"]
    line: str = Field(max_length=8000)


class JobLogsResponse(BaseModel):
    jobId: str
    lines: list[dict]
    totalLines: int
    offset: int


# ---------------------------------------------------------------------------------------------- worker API
class WorkerStatusUpdate(Request):
    status: JobStatus
    error: str | None = Field(default=None, max_length=20_000)
    exitCode: int | None = None
    workerPid: int | None = None
    childPid: int | None = None
    host: str | None = Field(default=None, max_length=255)
    command: str | None = Field(default=None, max_length=4000)


class WorkerLogsRequest(Request):
    lines: list[LogLine] = Field(max_length=2000)


class MetricRecord(Request):
    kind: Literal["metrics", "rl-metrics", "status"]
    data: dict[str, Any]


class WorkerMetricsRequest(Request):
    experimentId: str = Field(max_length=128)
    records: list[MetricRecord] = Field(max_length=2000)


class ExperimentIdRequest(Request):
    experimentId: str = Field(max_length=128)


class SignalPollResponse(BaseModel):
    signal: Literal["complete", "stop"] | None


class IngestResponse(BaseModel):
    ok: bool = True
    ingested: int


# ---------------------------------------------------------------------------------------------- generation
class GenerateRequest(Request):
    """Ranges, which parameters each decoder takes and the valid decoder names come from the manifest (422 naming
    the field when broken). The sampling parameters belong to gating mode none; gated modes set them per token."""
    checkpoint: PathStr | None = Field(None, description="LM checkpoint; in learned mode, default: the LM the RL "
                                                         "agent was trained on")
    prompt: str = Field(min_length=1, max_length=4000)
    maxTokens: int | None = Field(default=None, strict=True)
    decoder: str | None = Field(None, max_length=32, description="plain (default) | greedy | min_p | mirostat | edt")
    temperature: float | None = None
    topK: int | None = Field(default=None, strict=True)
    topP: float | None = None
    minP: float | None = None
    repetitionPenalty: float | None = None
    tau: float | None = Field(None, description="Mirostat: target surprise in bits")
    eta: float | None = Field(None, description="Mirostat: learning rate")
    edtT0: float | None = Field(None, description="EDT: base temperature")
    edtTheta: float | None = Field(None, description="EDT: theta")
    edtN: float | None = Field(None, description="EDT: N in (0, 1)")
    gatingMode: GatingMode = "none"
    rlCheckpoint: PathStr | None = None
    modulation: float | None = Field(None, description="the action for gating mode fixed: m in the manifest's "
                                                       "range, or with a residual agent's rlCheckpoint an action "
                                                       "index (0 = its base decoder)")
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1, strict=True)


class Trajectory(Response):
    gateSignals: list = Field([], description="the controller's action per token")
    effects: list = Field([], description="the sampling parameters that action set, per token")
    tokenIds: list[int] = []
    tokenTexts: list[str] = []


class GenerateResponse(Response):
    text: str
    tokensGenerated: int
    stopReason: Literal["eos", "length"] = Field(description="eos: the model ended the text; length: maxTokens")
    elapsedMs: float
    gatingMode: GatingMode | None = None
    checkpoint: str | None = Field(None, description="the LM checkpoint that generated")
    decoder: dict[str, Any] | None = Field(None, description="the decoder and the parameters it applied")
    warnings: list[str] = Field(default_factory=list, description="e.g. an RL agent paired with an LM it was not "
                                                                  "trained on")
    trajectory: Trajectory | None = None


class AnalyzeRequest(Request):
    checkpoint: PathStr
    prompts: list[str] = Field(min_length=1, max_length=100)
    maxTokens: int | None = Field(default=None, strict=True)
    temperature: float | None = None
    topK: int | None = Field(default=None, strict=True)
    gatingMode: GatingMode = "fixed"
    rlCheckpoint: PathStr | None = None
    modulation: float | None = None
    samplesPerPrompt: int | None = Field(default=None, strict=True)
    includeExtremeValues: bool = False
    bootstrap: bool = True
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1, strict=True)


class AnalyzeResponse(Response):
    analysis: dict[str, Any]
    trajectories: dict[str, list[dict[str, Any]]]
    elapsedMs: float
    sweepTexts: dict[str, list[str]] | None = None
