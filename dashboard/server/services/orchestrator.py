"""Job creation and control: validate a request against the manifest, store it atomically, start its worker.

Creation policy (ADR 0007): the type must be a manifest phase; the phase's required arguments must be
given and no argument it does not take; every path is confined (400); at most `concurrency` active jobs per type
(409); an `Idempotency-Key` returns the job first created with it (200) instead of creating another (201).
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import secrets
import time
from typing import Any

import anyio

from core.errors import ConfigError
from core.jobs import SIGNALS, STARTUP, TERMINAL
from core.manifest import ARG_SOURCES, TrainingPhase
from core.paths import resolve_config_path, resolve_experiment_path
from plugins.tidal.Config import LMConfig
from plugins.tidal.Utils import apply_overrides, read_yaml, validate_against

from ..errors import BadRequest, Conflict, FieldError
from .job_store import JobStore
from .paths import display_path
from .plugin_registry import PluginRegistry

log = logging.getLogger("tidal.dashboard.jobs")

IDEMPOTENCY_KEY_MAX = 200


def check_overrides(config_path, overrides: dict) -> None:
    """Refuse (422) an override the trainer would refuse: a key the job's config file has no key for (naming the
    closest known one), a value of another type (the same rule as the CLI's --set, with the chosen file as the schema:
    every valid config has exactly the plugin's reference keys) or one outside LMConfig's rules (a range, a choice,
    the heads dividing the width), so the mistake fails here instead of minutes later in the trainer."""
    reference = read_yaml(config_path)
    try:
        LMConfig.of(reference, source="configPath")
    except ConfigError as exc:
        raise FieldError("body.configPath", str(exc)) from None
    assignments = {key: f"{key}={json.dumps(value)}" for key, value in overrides.items()}
    for key, assignment in assignments.items():  # one at a time, so the message names the key
        try:
            config = apply_overrides(copy.deepcopy(reference), [assignment], reference)
            validate_against(config, reference, "override")
            LMConfig.of(config, source="override")
        except ConfigError as exc:
            raise FieldError(f"body.overrides.{key}", str(exc)) from None
    try:  # the rules between keys
        LMConfig.of(apply_overrides(copy.deepcopy(reference), list(assignments.values()), reference), source="override")
    except ConfigError as exc:
        raise FieldError("body.overrides", str(exc)) from None


class Orchestrator:
    def __init__(self, settings, registry: PluginRegistry, store: JobStore, providers: dict, redis_url: str):
        self.settings = settings
        self.registry = registry
        self.store = store
        self.providers = providers
        self.redis_url = redis_url

    @property
    def manifest(self):
        return self.registry.default

    # ------------------------------------------------------------------------------------------ validation
    def build_config(self, request: dict) -> tuple[dict[str, Any], TrainingPhase]:
        """The stored job config (confined, display-form paths) for a CreateJobRequest dict; raises 400/422."""
        manifest = self.manifest
        phase = manifest.phase(request["type"])
        if phase is None:
            valid = [p.id for p in manifest.trainingPhases]
            raise BadRequest(f"unknown job type {request['type']!r}; valid types: {', '.join(valid)}",
                             detail={"field": "body.type", "validTypes": valid})
        accepted = {ARG_SOURCES[name] for name in phase.args}
        for name in phase.required:
            if request.get(ARG_SOURCES[name]) in (None, ""):
                raise FieldError(f"body.{ARG_SOURCES[name]}", f"required for {phase.id} jobs")
        for field in ARG_SOURCES.values():
            if request.get(field) is not None and field not in accepted:
                raise FieldError(f"body.{field}", f"not used by {phase.id} jobs")

        s = self.settings
        plugin_dir = self.registry.default_dir
        config: dict[str, Any] = {field: request.get(field) for field in ARG_SOURCES.values()}
        for field in ("configPath", "rlConfigPath"):
            if config[field] is not None:
                path = resolve_config_path(field, config[field], plugin_dir=plugin_dir, project_root=s.project_root,
                                           allowed_dirs=s.configs_dirs)
                if field == "configPath" and config["overrides"]:
                    check_overrides(path, config["overrides"])
                config[field] = display_path(path, s.project_root, s.experiments_dir)
        if config["checkpoint"] is not None:
            path = resolve_experiment_path("checkpoint", config["checkpoint"], experiments_root=s.experiments_dir,
                                           kind="checkpoint")
            config["checkpoint"] = display_path(path, s.project_root, s.experiments_dir)
        if config["resumeExpDir"] is not None:
            path = resolve_experiment_path("resumeExpDir", config["resumeExpDir"],
                                           experiments_root=s.experiments_dir, kind="dir")
            config["resumeExpDir"] = display_path(path, s.project_root, s.experiments_dir)
        return config, phase

    # ------------------------------------------------------------------------------------------ operations
    async def create(self, request: dict, idempotency_key: str | None = None) -> tuple[dict, bool]:
        """(job, created). created False: the Idempotency-Key matched an earlier identical request."""
        if idempotency_key is not None and not (
                0 < len(idempotency_key) <= IDEMPOTENCY_KEY_MAX and idempotency_key.isprintable()
                and idempotency_key.isascii()):
            raise BadRequest("invalid Idempotency-Key header: 1-200 printable ASCII characters",
                             detail={"field": "header.Idempotency-Key"})
        provider_name = request.get("provider") or self.settings.default_provider
        if provider_name not in self.providers:
            raise BadRequest(f"unknown provider {provider_name!r}; valid: {', '.join(sorted(self.providers))}",
                             detail={"field": "body.provider", "validProviders": sorted(self.providers)})
        config, phase = self.build_config(request)
        now = time.time()
        job = {
            "jobId": f"job-{secrets.token_hex(8)}", "type": phase.id, "plugin": self.manifest.name,
            "status": "pending", "provider": provider_name, "config": config,
            "experimentId": None, "createdAt": now, "updatedAt": now, "startedAt": None, "completedAt": None,
            "error": None, "exitCode": None,
        }
        fingerprint = hashlib.sha256(json.dumps({**config, "type": phase.id, "provider": provider_name},
                                                sort_keys=True).encode()).hexdigest()
        outcome, stored = await self.store.create(job, phase.concurrency, idempotency_key, fingerprint)
        if outcome == "busy":
            raise Conflict(f"a {phase.id} job is already active (at most {phase.concurrency} at a time)",
                           detail={"activeJobId": stored, "type": phase.id, "concurrency": phase.concurrency})
        assert isinstance(stored, dict)  # every outcome but "busy" answers the stored job
        if outcome == "idempotency-mismatch":
            raise Conflict("Idempotency-Key was already used with a different request",
                           detail={"jobId": stored["jobId"]})
        if outcome == "existing":
            return stored, False
        return await self._provision(stored), True

    async def _provision(self, job: dict) -> dict:
        provider = self.providers[job["provider"]]
        job = await self.store.transition(job["jobId"], "provisioning")
        try:
            fields = await anyio.to_thread.run_sync(provider.provision, job, self.redis_url)
        except Exception as exc:  # a provider failure fails the job, not the request
            log.exception("provisioning job %s failed", job["jobId"])
            result = await self.store.try_transition(job["jobId"], "failed", {"error": f"provisioning failed: {exc}"})
            return result.job or job
        if provider.is_remote:  # the worker attaches itself; a fast one may even have ended the job already
            return (await self.store.try_transition(job["jobId"], None, fields)).job or job if fields else job
        result = await self.store.try_transition(job["jobId"], "starting", fields)
        return result.job or job

    async def signal(self, job_id: str, signal: str) -> dict:
        """`complete` → completing (the trainer finishes its step, checkpoints, exits 0); `stop` → stopping."""
        job = await self.store.transition(job_id, SIGNALS[signal], {"signal": signal})
        await self.store.set_signal(job_id, signal)
        return job

    async def cancel(self, job_id: str) -> dict:
        job = await self.store.require(job_id)
        if job["status"] in TERMINAL:
            raise Conflict(f"job is already {job['status']}", detail={"jobId": job_id, "status": job["status"]})
        was = job["status"]
        job = await self.store.transition(job_id, "cancelled", {"error": "cancelled by user"})
        await self.store.set_signal(job_id, "stop")  # a live worker stops its trainer
        provider = self.providers.get(job.get("provider"))
        if was in STARTUP and provider is not None and provider.scheduler:
            try:  # a job still queued on the cluster would otherwise keep its place (and its resources) there
                await anyio.to_thread.run_sync(provider.release, job)
            except Exception:
                log.exception("releasing cancelled job %s on %s failed", job_id, provider.name)
        return job
