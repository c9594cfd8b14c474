"""Text generation and trajectory analysis for the API, in-process or through the inference server.

In-process: a small LRU of loaded checkpoints (`ModelCache`), and every load/generation runs in a worker thread
(never on the event loop) behind a capacity limiter, so the server keeps answering while a model works.
With INFERENCE_URL the validated request is forwarded to `dashboard/server/inference_server.py`, which runs this same
service in-process. Request checks (ranges from the manifest, confined paths) happen here, before any work.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path

import anyio

from core.paths import PathRejected, resolve_config_path, resolve_experiment_path

from ..errors import BadRequest, DomainError, FieldError, Unavailable
from .paths import display_path

log = logging.getLogger("tidal.dashboard.generation")

SWEEP_MODULATIONS = (0.0, 0.5, 1.0)


def check_parameter(manifest, pid: str, value, field: str):
    """Bound a generation parameter by the manifest's range; the manifest default when absent."""
    spec = manifest.generation.parameter(pid)
    if value is None:
        return int(spec.default) if spec.integer else spec.default
    if not spec.min <= value <= spec.max:
        raise FieldError(field, f"must be between {spec.min:g} and {spec.max:g}")
    return value


class ModelCache:
    """LRU of loaded generators keyed by (config, checkpoint, rl checkpoint, their mtimes)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0

    def get(self, config: Path, checkpoint: Path, rl_checkpoint: Path | None):
        key = (str(config), str(checkpoint), checkpoint.stat().st_mtime_ns,
               str(rl_checkpoint) if rl_checkpoint else None,
               rl_checkpoint.stat().st_mtime_ns if rl_checkpoint else None)
        with self._lock:  # one load at a time: two requests for a new checkpoint load it once
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            try:
                from plugins.tidal.Generator import load_generator
            except ImportError as exc:
                raise Unavailable("text generation is not available on this host", detail=str(exc)) from None
            handle = _load(load_generator, config, checkpoint, rl_checkpoint)
            self.loads += 1
            self._items[key] = handle
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
            return handle


def _load(load_generator, config: Path, checkpoint: Path, rl_checkpoint: Path | None):
    """Load a generator; a file torch cannot read is the client's choice of file, so a 400 naming it. torch raises
    many types for an empty, truncated or foreign file (some with no message), so anything but a TidalError (already
    a clear message) is caught here, with its traceback logged in case it was not the file."""
    from core.errors import TidalError

    try:
        return load_generator(config, checkpoint, rl_checkpoint, device="cpu")
    except (TidalError, ValueError, MemoryError):
        raise
    except Exception as exc:
        log.warning("loading %s failed", checkpoint, exc_info=True)
        names = " / ".join(p.name for p in (checkpoint, rl_checkpoint) if p is not None)
        raise BadRequest(f"{names}: not a loadable checkpoint ({type(exc).__name__})",
                         detail={"field": "checkpoint"}) from None


class GenerationService:
    def __init__(self, settings, registry):
        self.settings = settings
        self.registry = registry
        self.cache = ModelCache(settings.model_cache_size)
        self.limiter = anyio.CapacityLimiter(max(1, settings.generation_threads))
        self._client = None

    @property
    def manifest(self):
        return self.registry.default

    # ---- validation (shared by both routes and the inference server)
    def _checkpoints(self, checkpoint: str | None, rl_checkpoint: str | None, gating_mode: str):
        """(LM checkpoint, RL checkpoint) confined to the experiments root; the LM is None when learned mode leaves
        it to the agent (`_agent_lm` finds it, off the event loop)."""
        root = self.settings.experiments_dir
        ckpt = None
        if checkpoint is None:
            if gating_mode != "learned":
                raise FieldError("body.checkpoint", "required (only learned mode defaults to the agent's own LM)")
        else:
            ckpt = resolve_experiment_path("checkpoint", checkpoint, experiments_root=root, kind="checkpoint")
            if self.manifest.is_rl_checkpoint(ckpt.name):
                raise FieldError("body.checkpoint", "is an RL checkpoint: pass the language model checkpoint here "
                                                    "and the RL one as rlCheckpoint")
        rl = None
        if rl_checkpoint is not None:
            rl = resolve_experiment_path("rlCheckpoint", rl_checkpoint, experiments_root=root, kind="checkpoint")
            if not self.manifest.is_rl_checkpoint(rl.name):
                raise FieldError("body.rlCheckpoint", "is not an RL checkpoint")
        mode = self.manifest.generation.mode(gating_mode)
        if mode is None:
            modes = ", ".join(m.id for m in self.manifest.generation.modes)
            raise FieldError("body.gatingMode", f"must be one of {modes}")
        if mode.requiresRLCheckpoint and rl is None:
            raise FieldError("body.rlCheckpoint", f"required for gating mode {gating_mode!r}")
        return ckpt, rl

    def _config_for(self, checkpoint: Path) -> Path:
        """The checkpoint's own effective config when its experiment kept one, else the manifest default."""
        for name in ("config.yaml", "base_config.yaml"):
            candidate = checkpoint.parent / name
            if candidate.is_file():
                return candidate
        return resolve_config_path("config", self.manifest.generation.defaultConfigPath,
                                   plugin_dir=self.registry.default_dir, project_root=self.settings.project_root,
                                   allowed_dirs=self.settings.configs_dirs)

    def _decoder_values(self, req, gating_mode: str) -> tuple[str | None, dict]:
        """(decoder name, {manifest parameter id: value}) for gating mode none. Gated modes decode with their
        controller, which sets every sampling parameter per token, so a decoder or parameter there would do nothing:
        a 422 rather than a silent no-op. So is a parameter the chosen decoder does not take."""
        g = self.manifest.generation
        given = {pid: getattr(req, pid) for pid in dict.fromkeys(p for d in g.decoders for p in d.parameters)
                 if getattr(req, pid, None) is not None}
        if req.modulation is not None and gating_mode != "fixed":
            raise FieldError("body.modulation", "applies to gatingMode fixed only")
        if gating_mode != "none":
            refused = (["decoder"] if req.decoder is not None else []) + list(given)
            if refused:
                raise FieldError(f"body.{refused[0]}", f"gatingMode {gating_mode!r} decodes with its controller, "
                                                       "which sets the sampling parameters per token; use "
                                                       "gatingMode none")
            return None, {}
        name = req.decoder or "plain"
        spec = g.decoder(name)
        if spec is None:
            raise FieldError("body.decoder", f"must be one of {', '.join(d.id for d in g.decoders)}")
        for pid in given:
            if pid not in spec.parameters:
                takes = ", ".join(spec.parameters) or "no parameters"
                raise FieldError(f"body.{pid}", f"does not apply to decoder {name!r} (it takes {takes})")
        return name, {pid: check_parameter(self.manifest, pid, v, f"body.{pid}") for pid, v in given.items()}

    def _modulation(self, req) -> float | None:
        """The fixed action: m in the manifest's range, or — with an RL checkpoint, whose action space may be a grid
        of actions (residual mode) — passed on for the model code to check against that space (a 400 naming it)."""
        if req.modulation is None or req.rlCheckpoint is not None:
            return req.modulation
        return check_parameter(self.manifest, "modulation", req.modulation, "body.modulation")

    def validate_generate(self, req) -> dict:
        m = self.manifest
        decoder, values = self._decoder_values(req, req.gatingMode)
        params = {
            "max_tokens": check_parameter(m, "maxTokens", req.maxTokens, "body.maxTokens"),
            "decoder": decoder,
            "decoder_values": values,
            "gating_mode": req.gatingMode,
            "modulation": self._modulation(req),
            "seed": req.seed,
        }
        ckpt, rl = self._checkpoints(req.checkpoint, req.rlCheckpoint, req.gatingMode)
        return {"checkpoint": ckpt, "rl_checkpoint": rl, "params": params}

    def validate_analyze(self, req) -> dict:
        m = self.manifest
        limits = m.generation.analysis
        if req.gatingMode == "none":
            raise FieldError("body.gatingMode", "trajectory analysis needs a gated mode (fixed, random or learned)")
        if len(req.prompts) > limits.maxPrompts:
            raise FieldError("body.prompts", f"at most {limits.maxPrompts} prompts")
        for i, prompt in enumerate(req.prompts):
            if len(prompt) > limits.promptMaxChars:
                raise FieldError(f"body.prompts.{i}", f"at most {limits.promptMaxChars} characters")
        spp = req.samplesPerPrompt if req.samplesPerPrompt is not None else limits.samplesPerPrompt.default
        if not limits.samplesPerPrompt.min <= spp <= limits.samplesPerPrompt.max:
            raise FieldError("body.samplesPerPrompt", f"must be between {limits.samplesPerPrompt.min} and "
                                                      f"{limits.samplesPerPrompt.max}")
        for field in ("temperature", "topK"):  # analysis is always gated: the controller sets them
            if getattr(req, field) is not None:
                raise FieldError(f"body.{field}", "trajectory analysis is gated: the controller sets the sampling "
                                                  "parameters per token")
        params = {
            "max_tokens": check_parameter(m, "maxTokens", req.maxTokens, "body.maxTokens"),
            "modulation": self._modulation(req),
        }
        ckpt, rl = self._checkpoints(req.checkpoint, req.rlCheckpoint, req.gatingMode)
        if ckpt is None:
            raise FieldError("body.checkpoint", "required")
        return {"checkpoint": ckpt, "rl_checkpoint": rl, "params": params, "samples": spp}

    # ---- execution
    async def generate(self, req) -> dict:
        plan = self.validate_generate(req)
        if self.settings.inference_url:
            return await self._forward("/generate", req)
        return await self._in_thread(self._generate_sync, req, plan)

    async def analyze(self, req) -> dict:
        plan = self.validate_analyze(req)
        if self.settings.inference_url:
            return await self._forward("/analyze-trajectories", req)
        return await self._in_thread(self._analyze_sync, req, plan)

    async def _in_thread(self, fn, req, plan):
        try:
            return await anyio.to_thread.run_sync(fn, req, plan, limiter=self.limiter)
        except (DomainError, PathRejected):
            raise
        except Exception as exc:
            from core.errors import TidalError

            if isinstance(exc, (TidalError, ValueError)):  # a user mistake the model code detected
                raise BadRequest(str(exc)) from None
            raise

    def _handle(self, plan):
        return self.cache.get(self._config_for(plan["checkpoint"]), plan["checkpoint"], plan["rl_checkpoint"])

    def _agent_lm(self, rl: Path) -> Path:
        """The LM checkpoint the RL checkpoint's agent was trained on, found under this server's experiments root by
        its experiment and file name (the recorded path may be another machine's, and must not leave the root)."""
        from plugins.tidal.Generator import agent_lm_checkpoint
        from plugins.tidal.TransformerLM import read_checkpoint

        named = agent_lm_checkpoint(rl, read_checkpoint(rl))
        if named is None:
            raise FieldError("body.checkpoint", "required: the RL checkpoint does not say which LM its agent was "
                                                "trained on")
        relative = f"{named.parent.name}/{named.name}"
        try:
            return resolve_experiment_path("checkpoint", relative, experiments_root=self.settings.experiments_dir,
                                           kind="checkpoint")
        except PathRejected:
            raise FieldError("body.checkpoint", f"required: the agent's own LM ({relative}) is not in the "
                                                "experiments directory") from None

    def _generate_sync(self, req, plan) -> dict:
        from plugins.tidal.Generator import DECODER_KEYWORDS

        if plan["checkpoint"] is None:
            plan = {**plan, "checkpoint": self._agent_lm(plan["rl_checkpoint"])}
        handle = self._handle(plan)
        p = plan["params"]
        result = handle.generate(req.prompt, max_tokens=p["max_tokens"], decoder=p["decoder"] or "plain",
                                 decoder_params={DECODER_KEYWORDS[k]: v for k, v in p["decoder_values"].items()},
                                 gating_mode=p["gating_mode"], modulation=p["modulation"], seed=p["seed"])
        out = {key: result[key] for key in ("text", "tokensGenerated", "stopReason", "elapsedMs", "gatingMode",
                                            "decoder", "warnings")}
        out["checkpoint"] = display_path(plan["checkpoint"], self.settings.project_root,
                                         self.settings.experiments_dir)
        if result.get("trajectory") is not None:
            out["trajectory"] = result["trajectory"]
        return out

    def _analyze_sync(self, req, plan) -> dict:
        from plugins.tidal.TrajectoryAnalyzer import analyze_batch

        handle = self._handle(plan)
        p = plan["params"]
        start = time.perf_counter()
        trajectories: dict[str, list] = {}
        for i, prompt in enumerate(req.prompts):
            result = handle.generate(prompt, max_tokens=p["max_tokens"], gating_mode=req.gatingMode,
                                     modulation=p["modulation"],
                                     seed=(req.seed + i) if req.seed is not None else None,
                                     num_samples=plan["samples"])
            trajectories[prompt] = [t for t in result.get("trajectories", []) if t]
        texts_by_m = None
        if req.includeExtremeValues:
            texts_by_m = {}
            for m in SWEEP_MODULATIONS:
                texts_by_m[m] = [handle.generate(prompt, max_tokens=p["max_tokens"], gating_mode="fixed",
                                                 modulation=m, seed=req.seed)["text"] for prompt in req.prompts]
        try:
            report = analyze_batch(trajectories, texts_by_m, bootstrap=1000 if req.bootstrap else 0,
                                   seed=req.seed or 0)
        except ValueError as exc:
            raise BadRequest(f"nothing to analyse: {exc}") from None
        out = {"analysis": report, "trajectories": trajectories,
               "elapsedMs": (time.perf_counter() - start) * 1000}
        if texts_by_m is not None:
            out["sweepTexts"] = {str(m): texts for m, texts in texts_by_m.items()}
        return out

    async def _forward(self, path: str, req) -> dict:
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.settings.inference_url, timeout=300.0)
        try:
            response = await self._client.post(path, json=req.model_dump(exclude_none=True))
        except httpx.HTTPError as exc:
            raise Unavailable("the inference server is unreachable", detail=str(exc)) from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code >= 500:
            raise Unavailable("the inference server failed", detail=body.get("error"))
        if response.status_code >= 400:
            error = DomainError(body.get("error") or "inference request rejected", detail=body.get("detail"))
            error.status_code = response.status_code
            raise error
        return body

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
