"""Typed configuration: `LMConfig` (the keys of base_config.yaml) and `RLConfig` (those of rl_config.yaml).

One typed field per YAML key, with the YAML's UPPER_CASE name, in the YAML's order; enumerations are Literals and the
ranges the code relies on are constraints, so a config is checked once, where it is loaded, and the code reads
`config.EMBED_DIM` instead of `config["EMBED_DIM"]`. The models are frozen (`replace` returns a validated copy) and
are also read-only mappings (`config["KEY"]`, `.get`, `in`, `keys()`, `items()`, `{**config}`, `config | {...}`),
so code and tests that hold plain dicts keep working: every component takes a mapping and validates it with
`LMConfig.of(...)` / `RLConfig.of(...)` (a no-op for a model). `to_dict()` gives plain nested dicts for YAML, JSON
and checkpoints.

A config that does not validate raises ConfigError with one line in the loader's wording (`Utils.validate_against`):
`SOURCE: unknown key EMBED_DIMS; did you mean EMBED_DIM?`, `SOURCE: missing key PATIENCE`,
`SOURCE: BATCH_SIZE must be an integer, got string 'eight'`, plus `must be one of …` and range messages.
"""
from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import ConfigError
from plugins.tidal.Utils import _type_name, _unknown_key

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Ratio = Annotated[float, Field(ge=0, lt=1)]       # [0, 1)
Fraction = Annotated[float, Field(ge=0, le=1)]    # [0, 1]


class ConfigModel(BaseModel):
    """A frozen, strictly typed config that is also a read-only mapping of its keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, validate_default=True)

    # ------------------------------------------------------------------------------------------ construction
    @classmethod
    def of(cls, config: Mapping[str, Any] | ConfigModel, source: str = "config") -> Self:
        """`config` itself when it is already this model, else `config` validated into one (ConfigError naming
        `source` and the key otherwise)."""
        if isinstance(config, cls):
            return config
        if not isinstance(config, Mapping):
            raise ConfigError(f"{source}: expected a mapping of KEY: value, got {_type_name(config)}")
        data = config.to_dict() if isinstance(config, ConfigModel) else config
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise ConfigError(f"{source}: {_describe(exc, cls, data)}") from None

    def replace(self, **changes: Any) -> Self:
        """A validated copy with `changes` applied (`{**config, "KEY": value}` for a frozen config)."""
        return type(self).of({**self.to_dict(), **changes}, source="replace")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts and lists, in the YAML's key order (what YAML, JSON and checkpoints store)."""
        return self.model_dump()

    @classmethod
    def reference(cls) -> dict[str, Any]:
        """The key tree (a section is a dict of its keys, a key maps to None), for `Utils.apply_overrides`."""
        tree: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            section = _model_of(field.annotation)
            tree[name] = section.reference() if section is not None else None
        return tree

    # ------------------------------------------------------------------------------------------ read-only mapping
    # pydantic keeps the field values in the instance __dict__, in field order, and nothing else (extra="forbid")
    def __getitem__(self, key: str) -> Any:
        return self.__dict__[key]

    def __iter__(self):  # the keys, as a mapping's (BaseModel's own yields (key, value) pairs)
        return iter(self.__dict__)

    def __len__(self) -> int:
        return len(self.__dict__)

    def __contains__(self, key: object) -> bool:
        return key in self.__dict__

    def keys(self):
        return self.__dict__.keys()

    def values(self):
        return self.__dict__.values()

    def items(self):
        return self.__dict__.items()

    def get(self, key: str, default: Any = None) -> Any:
        return self.__dict__.get(key, default)

    def __or__(self, other: Mapping[str, Any]) -> Self:
        """`config | {"KEY": value}`: like a dict's union, a validated copy."""
        if not isinstance(other, Mapping):
            return NotImplemented
        return self.replace(**other)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ConfigModel):
            return type(self) is type(other) and self.to_dict() == other.to_dict()
        if isinstance(other, Mapping):
            return self.to_dict() == _plain(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable lists inside: not hashable, as a dict is not


Mapping.register(ConfigModel)


# ---------------------------------------------------------------------------------------------- the LM config
class LRSchedulerConfig(ConfigModel):
    WARMUP_RATIO: Ratio
    BASE_LR: NonNegativeFloat
    MIN_LR: NonNegativeFloat

    @model_validator(mode="after")
    def _min_below_base(self):
        if self.MIN_LR > self.BASE_LR:
            raise ValueError(f"need 0 <= MIN_LR <= BASE_LR, got MIN_LR={self.MIN_LR}, BASE_LR={self.BASE_LR}")
        return self


InferenceWeights = Literal["fp32", "bf16", "eager"]
AmpDtype = Literal["auto", "bf16", "fp16", "fp32"]


class LMConfig(ConfigModel):
    """base_config.yaml: the model, the data, LM training and evaluation (see the YAML for what each key does)."""

    # ---- model (TransformerLM)
    VOCAB_SIZE: PositiveInt
    EMBED_DIM: PositiveInt
    NUM_TRANSFORMER_BLOCKS: PositiveInt
    NUM_ATTENTION_HEADS: PositiveInt
    FFN_HIDDEN_DIM: PositiveInt
    DROPOUT: Ratio
    MAX_CONTEXT_LENGTH: PositiveInt
    GATE_DIM: PositiveInt
    GATE_HIDDEN_DIM: PositiveInt
    GATE_INIT_BIAS: float
    ROPE_THETA: PositiveFloat
    INIT_STD: PositiveFloat
    INFERENCE_WEIGHTS: InferenceWeights
    # ---- data (DataPipeline)
    DATASET: str
    BUILTIN_NUM_STORIES: PositiveInt
    MAX_STORIES: NonNegativeInt | None
    VALIDATION_SPLIT_RATIO: Ratio
    DATA_CACHE_DIR: str
    NUM_CPU_CORE_WORKERS: PositiveInt
    SEED: int
    # ---- LM training (Trainer)
    NUM_EPOCHS: PositiveInt
    BATCH_SIZE: PositiveInt
    DESIRED_BATCH_SIZE: PositiveInt
    LEARNING_RATE_SCHEDULER: LRSchedulerConfig
    WEIGHT_DECAY: NonNegativeFloat
    ADAM_BETAS: Annotated[list[Fraction], Field(min_length=2, max_length=2)]
    MAX_GRAD_NORM: PositiveFloat
    PATIENCE: PositiveInt
    MIN_DELTA: NonNegativeFloat
    EVAL_INTERVAL: PositiveInt
    EVAL_MAX_BATCHES: PositiveInt
    EVAL_BATCH_SIZE: PositiveInt
    LOG_INTERVAL: PositiveInt
    CHECKPOINT_INTERVAL: NonNegativeInt
    TORCH_COMPILE: bool
    AMP_DTYPE: AmpDtype
    DEVICE: str
    MODEL_NAME: str
    MODEL_VERSION: str
    # ---- evaluation (Evaluator)
    EVAL_PROMPTS: list[str]
    EVAL_MAX_NEW_TOKENS: NonNegativeInt
    EVAL_TEMPERATURE: PositiveFloat
    EVAL_TOP_K: NonNegativeInt
    EVAL_TOP_P: Annotated[float, Field(gt=0, le=1)]
    EVAL_REPETITION_PENALTY: PositiveFloat

    @model_validator(mode="after")
    def _heads_divide_the_width(self):
        if self.EMBED_DIM % self.NUM_ATTENTION_HEADS:
            raise ValueError(f"EMBED_DIM ({self.EMBED_DIM}) must be divisible by NUM_ATTENTION_HEADS "
                             f"({self.NUM_ATTENTION_HEADS})")
        return self


# ---------------------------------------------------------------------------------------------- the RL config
ActionMode = Literal["modulation", "residual"]
AgentType = Literal["categorical", "beta", "gaussian"]
EntropySchedule = Literal["constant", "homeostasis", "linear"]
ConstraintMode = Literal["weighted", "lagrangian"]


class RLConfig(ConfigModel):
    """rl_config.yaml: the action space, the environment, the reward, the agent, PPO and the decoding study."""

    # ---- GatingModulator
    RL_BASE_TEMPERATURE: PositiveFloat
    RL_MODULATION_TEMP_MIN: PositiveFloat
    RL_MODULATION_TEMP_MAX: PositiveFloat
    RL_BASE_REPETITION_PENALTY: PositiveFloat
    RL_MODULATION_PENALTY_MIN: PositiveFloat
    RL_MODULATION_PENALTY_MAX: PositiveFloat
    RL_MODULATION_TOP_K_MIN: NonNegativeInt
    RL_MODULATION_TOP_K_MAX: NonNegativeInt
    RL_MODULATION_TOP_P_MIN: Fraction
    RL_MODULATION_TOP_P_MAX: Fraction
    RL_MODULATION_MIN_P_MIN: Fraction
    RL_MODULATION_MIN_P_MAX: Fraction
    RL_REPETITION_PENALTY_WINDOW: NonNegativeInt
    # ---- action space
    RL_ACTION_MODE: ActionMode
    RL_RESIDUAL_TEMPERATURE_FACTORS: Annotated[list[PositiveFloat], Field(min_length=1)]
    RL_RESIDUAL_MIN_P_FACTORS: Annotated[list[NonNegativeFloat], Field(min_length=1)]
    RL_RESIDUAL_PENALTIES: Annotated[list[PositiveFloat], Field(min_length=1)]
    RL_NUM_ACTIONS: PositiveInt
    # ---- GatingEnvironment
    RL_NUM_ENVS: PositiveInt
    RL_EOT_BOOTSTRAP: bool
    RL_SAMPLES_PER_PROMPT: PositiveInt
    RL_PROMPT_MIN_LENGTH: PositiveInt
    RL_PROMPT_MAX_LENGTH: PositiveInt
    RL_MAX_EPISODE_LENGTH: PositiveInt
    RL_NUM_PROMPTS: PositiveInt
    RL_DEV_PROMPTS: PositiveInt
    RL_OBSERVATION_DIM: int     # must equal GatingEnvironment.OBSERVATION_DIM, the one definition of the size
    RL_ACTION_DIM: int          # must be 1: one action value per row
    # ---- RewardComputer
    RL_REWARD_QUALITY_WEIGHT: NonNegativeFloat
    RL_REWARD_REPETITION_WEIGHT: NonNegativeFloat
    RL_REWARD_OVERLAP_WEIGHT: NonNegativeFloat
    RL_QUALITY_CLIP: PositiveFloat
    RL_REPETITION_WINDOW: PositiveInt
    RL_REPETITION_NGRAM: Literal[2, 3]
    RL_JUDGE_STORIES: PositiveInt
    RL_JUDGE_ORDER: PositiveInt
    # ---- GatingPolicyAgent
    RL_AGENT_TYPE: AgentType
    RL_HIDDEN_DIM: PositiveInt
    RL_OBS_CLIP: PositiveFloat
    RL_BETA_CONCENTRATION_MAX: PositiveFloat
    # ---- PPO (RLTrainer)
    RL_TOTAL_TIMESTEPS: PositiveInt
    RL_ROLLOUT_STEPS: PositiveInt
    RL_NUM_EPOCHS: PositiveInt
    RL_BATCH_SIZE: PositiveInt
    RL_LEARNING_RATE: NonNegativeFloat
    RL_LR_FINAL_FRACTION: NonNegativeFloat
    RL_GAMMA: Fraction
    RL_GAE_LAMBDA: Fraction
    RL_TARGET_KL: PositiveFloat | None
    RL_CLIP_VALUE_LOSS: bool
    RL_CLIP_EPSILON: PositiveFloat
    RL_VALUE_LOSS_COEF: NonNegativeFloat
    RL_MAX_GRAD_NORM: PositiveFloat
    RL_NORMALIZE_ADVANTAGES: bool
    RL_CHECKPOINT_INTERVAL: PositiveInt
    RL_SEED: int
    RL_SEEDS: Annotated[list[int], Field(min_length=1)]
    # ---- entropy schedule
    RL_ENTROPY_SCHEDULE: EntropySchedule
    RL_ENTROPY_COEF: NonNegativeFloat
    RL_ENTROPY_COEF_FINAL: NonNegativeFloat
    RL_ENTROPY_TARGET_POLICY: float
    RL_ENTROPY_HOMEOSTASIS_RATE: NonNegativeFloat
    RL_ENTROPY_HOMEOSTASIS_DECAY: Fraction
    RL_ENTROPY_COEF_MIN: NonNegativeFloat
    RL_ENTROPY_COEF_MAX: NonNegativeFloat
    # ---- PPO-Lagrangian
    RL_CONSTRAINT_MODE: ConstraintMode
    RL_LAGRANGE_MULTIPLIER_LR: NonNegativeFloat
    RL_LAGRANGE_MULTIPLIER_INIT: PositiveFloat   # λ = softplus(raw) > 0
    # ---- dynamic gates
    RL_UNFREEZE_DYNAMIC_GATES: bool
    RL_GATE_LR: NonNegativeFloat
    RL_GATE_ENTROPY_WEIGHT: NonNegativeFloat
    RL_GATE_ENTROPY_MIN: float
    RL_GATE_ENTROPY_MAX: float
    # ---- the decoding study (Ablation.py)
    RL_STUDY_PROTOCOL: str
    RL_ABLATION_NUM_PROMPTS: PositiveInt
    RL_ABLATION_BOOTSTRAP_SAMPLES: PositiveInt
    RL_STUDY_TEMPERATURES: list[PositiveFloat]
    RL_STUDY_GRID_TEMPERATURES: list[PositiveFloat]
    RL_STUDY_TOP_PS: list[Fraction]
    RL_STUDY_TOP_KS: list[PositiveInt]
    RL_STUDY_MIN_PS: list[Fraction]
    RL_STUDY_MIROSTAT_TAU_FACTORS: list[PositiveFloat]
    RL_STUDY_EDT_T0S: list[PositiveFloat]
    RL_STUDY_EDT_THETAS: list[PositiveFloat]
    RL_STUDY_BATCH: PositiveInt
    RL_STUDY_TEST_POINTS_PER_FAMILY: NonNegativeInt
    RL_STUDY_CONSTANT_POINTS: PositiveInt
    # ---- added with RLControllers
    RL_LAGRANGE_COST_LIMIT: NonNegativeFloat

    @field_validator("RL_OBSERVATION_DIM")
    @classmethod
    def _the_environments_observation(cls, value: int) -> int:
        from plugins.tidal.GatingEnvironment import OBSERVATION_DIM

        if value != OBSERVATION_DIM:
            raise ValueError(f"RL_OBSERVATION_DIM must be {OBSERVATION_DIM} (the observation GatingEnvironment "
                             f"builds), got {value}")
        return value

    @field_validator("RL_ACTION_DIM")
    @classmethod
    def _one_action_per_row(cls, value: int) -> int:
        if value != 1:
            raise ValueError(f"RL_ACTION_DIM must be 1 (the gating agent takes one action value per row), got {value}")
        return value

    def reward_weights(self) -> dict[str, float]:
        """The reward components' weights by component name (RewardComputer's COMPONENTS)."""
        return {"quality": self.RL_REWARD_QUALITY_WEIGHT, "repetition": self.RL_REWARD_REPETITION_WEIGHT,
                "overlap": self.RL_REWARD_OVERLAP_WEIGHT}


# ---------------------------------------------------------------------------------------------- error messages
def _describe(exc: ValidationError, model: type[ConfigModel], data: Mapping[str, Any]) -> str:
    """The first problem, in the loader's words (unknown keys first, as `Utils.validate_against` reports them)."""
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    error = errors[0]
    path = [str(p) for p in error["loc"] if isinstance(p, str)]
    name = ".".join(path)
    kind = error["type"]
    if kind == "extra_forbidden":
        return _unknown_key(path, _fields_at(model, path[:-1]))
    if kind == "missing":
        return f"missing key {name}"
    if kind == "value_error":  # a validator's own message names its key(s)
        message = str(error.get("ctx", {}).get("error") or error["msg"])
        return message.removeprefix("Value error, ")
    value = _value_at(data, path)
    annotation = _annotation_at(model, path)
    if kind == "literal_error":
        choices = typing.get_args(_strip_optional(annotation))
        return f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "too_short", "too_long") \
            and not isinstance(error["loc"][-1], int):
        return f"{name} must be {_bounds_text(annotation, kind, error.get('ctx', {}))}, got {value!r}"
    if len(error["loc"]) > len(path):  # an element of a list
        index = error["loc"][-1]
        if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            element = typing.get_args(_strip_optional(annotation))[0]
            bounds = _bounds_text(element, kind, error.get("ctx", {}))
            return f"{name}[{index}] must be {bounds}, got {error['input']!r}"
        element = _element_text(annotation)
        return f"{name} must be a list of {element}, got {_type_name(value)} {value!r}"
    expected = _expected_text(annotation)
    article = "an" if expected[0] in "aeiou" else "a"
    return f"{name} must be {article} {expected}, got {_type_name(value)} {value!r}"


def _model_of(annotation: Any) -> type[ConfigModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, ConfigModel) else None


def _section(model: type[ConfigModel], path: list[str]) -> type[ConfigModel]:
    """The (nested) model at `path`, a list of section keys."""
    for key in path:
        section = _model_of(model.model_fields[key].annotation)
        if section is None:
            raise KeyError(f"{key} is not a section")
        model = section
    return model


def _fields_at(model: type[ConfigModel], path: list[str]) -> dict[str, Any]:
    return dict(_section(model, path).model_fields)


def _annotation_at(model: type[ConfigModel], path: list[str]) -> Any:
    field = _section(model, path[:-1]).model_fields[path[-1]]
    return Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation


def _value_at(data: Any, path: list[str]) -> Any:
    for key in path:
        data = data.get(key) if isinstance(data, Mapping) else None
    return data


def _strip_annotated(annotation: Any) -> tuple[Any, list[Any]]:
    """(the bare type, its constraint metadata) of `Annotated[T, ...]` (nested Annotated flattened)."""
    metadata: list[Any] = []
    while typing.get_origin(annotation) is Annotated:
        annotation, *extra = typing.get_args(annotation)
        metadata = [*extra, *metadata]
    flat: list[Any] = []
    for item in metadata:  # Field(...) carries its constraints in .metadata
        flat.extend(getattr(item, "metadata", None) or [item])
    return annotation, flat


def _strip_optional(annotation: Any) -> Any:
    bare, _ = _strip_annotated(annotation)
    if typing.get_origin(bare) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(bare) if a is not type(None)]
        return args[0] if len(args) == 1 else bare
    return bare


def _nullable(annotation: Any) -> bool:
    bare, _ = _strip_annotated(annotation)
    return typing.get_origin(bare) in (typing.Union, types.UnionType) and type(None) in typing.get_args(bare)


_TYPE_WORDS = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _expected_text(annotation: Any) -> str:
    bare, _ = _strip_annotated(_strip_optional(annotation))
    if _model_of(bare):
        text = "mapping"
    elif typing.get_origin(bare) is list:
        text = "list"
    else:
        text = _TYPE_WORDS.get(bare, getattr(bare, "__name__", str(bare)))
    return f"{text} or null" if _nullable(annotation) else text


def _element_text(annotation: Any) -> str:
    bare, _ = _strip_annotated(_strip_optional(annotation))
    element, _ = _strip_annotated(typing.get_args(bare)[0]) if typing.get_args(bare) else (Any, [])
    return {bool: "booleans", int: "integers", float: "numbers", str: "strings"}.get(element, "values")


def _has(constraint: Any, name: str) -> bool:
    """Whether a constraint (annotated_types' Gt, Ge, Lt, Le, MinLen, MaxLen) is the one carrying `name`."""
    return getattr(constraint, name, None) is not None


def _bounds_text(annotation: Any, kind: str, ctx: dict) -> str:
    """`positive`, `>= 0`, `in [0, 1)`, `a list of 2 values` … from the field's constraints."""
    if kind in ("too_short", "too_long"):
        _, metadata = _strip_annotated(annotation)
        lo = next((m.min_length for m in metadata if _has(m, "min_length")), ctx.get("min_length"))
        hi = next((m.max_length for m in metadata if _has(m, "max_length")), ctx.get("max_length"))
        if lo is not None and lo == hi:
            return f"a list of {lo} values"
        return f"a list of at least {lo} value{'s' if lo != 1 else ''}" if kind == "too_short" else \
            f"a list of at most {hi} values"
    bare = _strip_optional(annotation)
    _, metadata = _strip_annotated(bare)
    if not metadata:  # Optional[Annotated[...]]: the constraints sit on the union's member
        _, metadata = _strip_annotated(annotation)
    low = next(((m.gt, "(") for m in metadata if _has(m, "gt")), None) or \
        next(((m.ge, "[") for m in metadata if _has(m, "ge")), None)
    high = next(((m.lt, ")") for m in metadata if _has(m, "lt")), None) or \
        next(((m.le, "]") for m in metadata if _has(m, "le")), None)
    if low and high:
        return f"in {low[1]}{low[0]}, {high[0]}{high[1]}"
    if low:
        return "positive" if low == (0, "(") else f"{'>' if low[1] == '(' else '>='} {low[0]}"
    if high:
        return f"{'<' if high[1] == ')' else '<='} {high[0]}"
    bound = next(iter(ctx.values()), "?")
    return {"greater_than": f"> {bound}", "greater_than_equal": f">= {bound}", "less_than": f"< {bound}",
            "less_than_equal": f"<= {bound}"}[kind]


def _plain(value: Any) -> Any:
    if isinstance(value, ConfigModel):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value

