"""The plugin manifest (`plugins/tidal/manifest.yaml`) as typed objects: parsed and validated once, then the only
source of model knowledge for the layers above the plugin.

`load_manifest(path)` reads a manifest into a `PluginManifest` or raises `ManifestError` naming the file and the
field. The dashboard's plugin registry, the worker agent and the inference server all go through here; nothing else
reads the YAML. Names the manifest declares that other code also writes (artifact files, Redis keys, gating modes)
are defined once in `core.names`; tests/test_manifest.py checks that the shipped manifest declares the same.
"""
from __future__ import annotations

import fnmatch
import json
import re
from functools import cached_property
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import TidalError
from core.io import parse_yaml_mapping
from core.names import GatingMode
from core.paths import PROJECT_ROOT

DEFAULT_MANIFEST_PATH = PROJECT_ROOT / "plugins" / "tidal" / "manifest.yaml"

# Logical argument names of a training phase and the job-config field each one is filled from.
ARG_SOURCES = {"config": "configPath", "rlConfig": "rlConfigPath", "checkpoint": "checkpoint",
               "resume": "resumeExpDir", "timesteps": "timesteps", "maxSteps": "maxSteps", "overrides": "overrides"}


class ManifestError(TidalError):
    """The manifest is missing or invalid; the message names the file and the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class TrainingPhase(_Model):
    id: str = Field(pattern=r"^[a-z][a-z0-9-]{0,63}$")
    displayName: str
    entrypoint: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
    configFiles: list[str] = Field(min_length=1)
    args: dict[str, str]
    required: list[str] = Field(default_factory=list)
    concurrency: int = Field(ge=1, le=64)
    gpuTier: str

    @field_validator("args")
    @classmethod
    def _known_args(cls, args: dict[str, str]) -> dict[str, str]:
        for name, flag in args.items():
            if name not in ARG_SOURCES:
                raise ValueError(f"unknown logical argument {name!r} (known: {', '.join(ARG_SOURCES)})")
            if not re.fullmatch(r"--[a-z][a-z0-9_-]*", flag):
                raise ValueError(f"argument {name!r}: {flag!r} is not a long CLI flag")
        return args

    @model_validator(mode="after")
    def _required_have_flags(self) -> TrainingPhase:
        missing = [r for r in self.required if r not in self.args]
        if missing:
            raise ValueError(f"required arguments without a flag in args: {', '.join(missing)}")
        return self

    def build_args(self, values: dict[str, object]) -> list[str]:
        """CLI arguments for this phase from logical values (None/absent values are left out), in `args` order.
        A mapping (config overrides) becomes one `flag KEY=VALUE` per item, VALUE as JSON (which YAML reads back)."""
        out: list[str] = []
        for name, flag in self.args.items():
            value = values.get(name)
            if isinstance(value, dict):
                for key, item in value.items():
                    out += [flag, f"{key}={json.dumps(item)}"]
            elif value is not None:
                out += [flag, str(value)]
        return out


class CheckpointPattern(_Model):
    phase: str
    glob: str
    epochCapture: str | None = None
    excludePrefix: str | None = None

    @field_validator("epochCapture")
    @classmethod
    def _valid_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                if re.compile(value).groups < 1:
                    raise ValueError("needs one capture group")
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value

    def match(self, filename: str) -> tuple[bool, int | None]:
        if self.excludePrefix and filename.startswith(self.excludePrefix):
            return False, None
        if not fnmatch.fnmatchcase(filename, self.glob):
            return False, None
        epoch = None
        if self.epochCapture:
            m = re.search(self.epochCapture, filename)
            epoch = int(m.group(1)) if m else None
        return True, epoch


class GenerationMode(_Model):
    id: GatingMode
    displayName: str
    requiresRLCheckpoint: bool = False


class GenerationParameter(_Model):
    id: str
    displayName: str
    min: float
    max: float
    step: float = Field(gt=0)
    default: float
    integer: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> GenerationParameter:
        if not self.min <= self.default <= self.max:
            raise ValueError(f"need min <= default <= max, got {self.min}, {self.default}, {self.max}")
        return self


class GenerationDecoder(_Model):
    """A fixed decoder the playground, the API and MCP offer for gating mode none; `parameters` are the ids (in
    `generation.parameters`) of the sliders it takes."""
    id: str
    displayName: str
    parameters: list[str] = []


class SampleRange(_Model):
    min: int = Field(ge=1)
    max: int = Field(ge=1)
    default: int = Field(ge=1)


class AnalysisLimits(_Model):
    maxPrompts: int = Field(ge=1, le=100)
    samplesPerPrompt: SampleRange
    promptMaxChars: int = Field(ge=1)


class GenerationConfig(_Model):
    defaultConfigPath: str
    modes: list[GenerationMode] = Field(min_length=1)
    parameters: list[GenerationParameter]
    decoders: list[GenerationDecoder] = Field(min_length=1)
    analysis: AnalysisLimits
    rlCheckpointPatterns: list[str]

    @model_validator(mode="after")
    def _needed_parameters(self) -> GenerationConfig:
        have = {p.id for p in self.parameters}
        missing = {"temperature", "topK", "topP", "maxTokens", "modulation"} - have
        if missing:
            raise ValueError(f"parameters must define {', '.join(sorted(missing))}")
        for decoder in self.decoders:
            unknown = set(decoder.parameters) - have
            if unknown:
                raise ValueError(f"decoder {decoder.id!r} takes undefined parameters {', '.join(sorted(unknown))}")
        return self

    def parameter(self, pid: str) -> GenerationParameter:
        return next(p for p in self.parameters if p.id == pid)

    def decoder(self, did: str) -> GenerationDecoder | None:
        return next((d for d in self.decoders if d.id == did), None)

    def mode(self, mid: str) -> GenerationMode | None:
        return next((m for m in self.modes if m.id == mid), None)


class LMMetricsFiles(_Model):
    directory: str
    historyFile: str
    statusFile: str
    latestFile: str


class RLMetricsFiles(_Model):
    directory: str
    metricsFile: str
    historyFile: str
    rewardComponents: list[str]  # the RL metrics carry `reward_<component>`; the client charts them


class MetricsConfig(_Model):
    lm: LMMetricsFiles
    rl: RLMetricsFiles
    evaluationFile: str
    ablationFile: str


class RedisKeys(_Model):
    jobsHash: str
    jobsActiveSet: str
    jobsStream: str
    updatesChannel: str
    idempotencyPrefix: str
    signalKey: str
    heartbeatKey: str
    logsKey: str
    experimentsSet: str
    metricsStream: str
    metricsLatest: str
    statusKey: str
    rlLatest: str
    rateLimitPrefix: str

    @model_validator(mode="after")
    def _placeholders(self) -> RedisKeys:
        for name in ("signalKey", "heartbeatKey", "logsKey"):
            if "{jobId}" not in getattr(self, name):
                raise ValueError(f"{name} must contain {{jobId}}")
        for name in ("metricsStream", "metricsLatest", "statusKey", "rlLatest"):
            if "{id}" not in getattr(self, name):
                raise ValueError(f"{name} must contain {{id}}")
        return self

    def signal(self, job_id: str) -> str:
        return self.signalKey.format(jobId=job_id)

    def heartbeat(self, job_id: str) -> str:
        return self.heartbeatKey.format(jobId=job_id)

    def logs(self, job_id: str) -> str:
        return self.logsKey.format(jobId=job_id)

    def metrics_stream(self, exp_id: str) -> str:
        return self.metricsStream.format(id=exp_id)

    def status(self, exp_id: str) -> str:
        return self.statusKey.format(id=exp_id)

    def metrics_latest(self, exp_id: str) -> str:
        return self.metricsLatest.format(id=exp_id)

    def rl_latest(self, exp_id: str) -> str:
        return self.rlLatest.format(id=exp_id)


class GpuTier(_Model):
    minGpuRamMb: int = Field(ge=0)
    minCpuCores: int = Field(ge=1)


class Infrastructure(_Model):
    gpuTiers: dict[str, GpuTier]


class PluginManifest(_Model):
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")
    displayName: str
    version: str
    description: str
    trainingPhases: list[TrainingPhase] = Field(min_length=1)
    checkpointPatterns: list[CheckpointPattern]
    generation: GenerationConfig
    metrics: MetricsConfig
    redis: RedisKeys
    infrastructure: Infrastructure

    @model_validator(mode="after")
    def _consistent(self) -> PluginManifest:
        ids = [p.id for p in self.trainingPhases]
        if len(set(ids)) != len(ids):
            raise ValueError(f"trainingPhases: duplicate ids in {ids}")
        for phase in self.trainingPhases:
            if phase.gpuTier not in self.infrastructure.gpuTiers:
                raise ValueError(f"trainingPhases[{phase.id}].gpuTier {phase.gpuTier!r} is not in "
                                 f"infrastructure.gpuTiers")
        return self

    @cached_property
    def phases(self) -> dict[str, TrainingPhase]:
        return {p.id: p for p in self.trainingPhases}

    def phase(self, phase_id: str) -> TrainingPhase | None:
        return self.phases.get(phase_id)

    def classify_checkpoint(self, filename: str) -> tuple[str, int | None]:
        """(phase, epoch) of a checkpoint file name by the first matching pattern; ("unknown", None) otherwise."""
        for pattern in self.checkpointPatterns:
            matched, epoch = pattern.match(filename)
            if matched:
                return pattern.phase, epoch
        return "unknown", None

    def is_rl_checkpoint(self, filename: str) -> bool:
        return any(fnmatch.fnmatchcase(filename, g) for g in self.generation.rlCheckpointPatterns)

    def summary(self) -> dict:
        return {"name": self.name, "displayName": self.displayName, "version": self.version,
                "description": self.description,
                "trainingPhases": [{"id": p.id, "displayName": p.displayName} for p in self.trainingPhases],
                "generationModes": [{"id": m.id, "displayName": m.displayName} for m in self.generation.modes]}


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def load_manifest(path: str | Path = DEFAULT_MANIFEST_PATH) -> PluginManifest:
    """Parse and validate a manifest; `ManifestError` names the file and the first invalid field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the plugin manifest ({exc.strerror or exc})") from None
    data = parse_yaml_mapping(text, path, ManifestError, "a mapping")
    try:
        return PluginManifest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ManifestError(f"{path}: field {_field_path(err['loc'])}: {err['msg']}"
                            + (f" ({exc.error_count() - 1} more)" if exc.error_count() > 1 else "")) from None
