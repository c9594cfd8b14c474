"""LM pretraining loop: gradient accumulation, mixed precision, optional torch.compile and DDP, warmup+cosine LR,
periodic validation with early stopping, graceful stop, atomic checkpoints and exact resume.

Data order is a pure function of (SEED, epoch), so the position in the data is just (epoch, optimizer step within
the epoch): a resumed run reads exactly the batches the interrupted run had not yet seen.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from core.errors import TidalError
from core.io import atomic_torch_save
from plugins.tidal.Config import LMConfig
from plugins.tidal.DataPipeline import TokenDataset
from plugins.tidal.DynamicLRScheduler import DynamicLRScheduler
from plugins.tidal.Evaluator import validation_loss
from plugins.tidal.TransformerLM import TransformerLM, count_parameters, load_model_weights, model_state_dict
from plugins.tidal.Utils import setup_logger

TRAINING_STATE = "training_state.pth"
STATE_FORMAT = 1

# Dense bf16 peak FLOP/s used for MFU, by device name (NVIDIA datasheets, no sparsity).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device_name: str) -> DistContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank)


def resolve_amp(name: str, device: torch.device) -> tuple[torch.dtype, bool]:
    """(autocast dtype, use GradScaler) for AMP_DTYPE auto|bf16|fp16|fp32 on this device."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32, False
        return (torch.bfloat16, False) if torch.cuda.is_bf16_supported() else (torch.float16, True)
    if name == "bf16":
        return torch.bfloat16, False
    if name == "fp16":
        if device.type != "cuda":
            raise TidalError("AMP_DTYPE fp16 needs CUDA; use bf16 or fp32 on CPU")
        return torch.float16, True
    if name == "fp32":
        return torch.float32, False
    raise TidalError(f"AMP_DTYPE must be one of auto, bf16, fp16, fp32; got {name!r}")


def flops_per_token(config: LMConfig, n_params: int) -> float:
    """Training FLOPs per token, PaLM appendix B: 6N for the weights + 12·L·T·E for attention scores/values."""
    return 6 * n_params + 12 * config.NUM_TRANSFORMER_BLOCKS * config.MAX_CONTEXT_LENGTH * config.EMBED_DIM


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def epoch_order(num_chunks: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(num_chunks, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


class EarlyStopping:
    """Stop when the validation loss has not improved by more than `min_delta` for `patience` evaluations."""

    def __init__(self, patience: int, min_delta: float):
        self.patience, self.min_delta = patience, min_delta
        self.best = math.inf
        self.bad_evaluations = 0

    def step(self, val_loss: float) -> bool:
        """Record a validation loss; returns True when it is a new best."""
        if self.best - val_loss > self.min_delta:
            self.best, self.bad_evaluations = val_loss, 0
            return True
        self.bad_evaluations += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_evaluations >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_evaluations": self.bad_evaluations}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_evaluations = state["best"], state["bad_evaluations"]


class Trainer:
    """Trains `TransformerLM` on `TokenDataset` splits. `request_stop("complete" | "terminate")` is safe to call from a
    signal handler: the current optimizer step finishes, then a checkpoint is written."""

    def __init__(self, config: LMConfig | Mapping, experiment_dir: str | Path, device: torch.device,
                 metrics_logger=None, max_steps: int | None = None, dist_ctx: DistContext | None = None):
        self.config = config = LMConfig.of(config)
        self.experiment_dir = Path(experiment_dir)
        self.device = device
        self.metrics = metrics_logger
        self.max_steps = max_steps
        self.dist = dist_ctx or DistContext()
        self.logger = setup_logger("tidal.trainer", self.experiment_dir / "training.log" if self.dist.is_main else None)
        self.stop_request: str | None = None
        self.amp_dtype, use_scaler = resolve_amp(config.AMP_DTYPE, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        world_batch = config.BATCH_SIZE * self.dist.world_size
        if config.DESIRED_BATCH_SIZE % world_batch:
            raise TidalError(f"DESIRED_BATCH_SIZE ({config.DESIRED_BATCH_SIZE}) must be divisible by BATCH_SIZE "
                             f"({config.BATCH_SIZE}) x processes ({self.dist.world_size})")
        self.accumulation = config.DESIRED_BATCH_SIZE // world_batch

    # ---------------------------------------------------------------------------------------------- set-up
    def request_stop(self, kind: str) -> None:
        self.stop_request = self.stop_request or kind

    def _build(self) -> None:
        torch.manual_seed(self.config.SEED)  # all randomness in training (init, dropout) comes from torch
        torch.set_flush_denormal(True)  # x86: tiny gradients/Adam moments become 0 instead of slow denormals (ADR 0012)
        self.raw_model = TransformerLM(self.config.VOCAB_SIZE, self.config).to(self.device)
        # The LM phase trains the ungated path (gate_signals=None); the DynamicGates are trained only by the RL
        # trainer. Frozen before DDP wraps the model, they stay out of its gradient reduction (which rejects
        # parameters that receive no gradient).
        for name, p in self.raw_model.named_parameters():
            p.requires_grad_("_gate." not in name)
        self.model: torch.nn.Module = self.raw_model  # what the steps call: DDP-wrapped and/or compiled below
        self._ddp: torch.nn.parallel.DistributedDataParallel | None = None
        if self.dist.enabled:
            ids = [self.dist.local_rank] if self.device.type == "cuda" else None
            self.model = self._ddp = torch.nn.parallel.DistributedDataParallel(self.raw_model, device_ids=ids)
        if self.config.TORCH_COMPILE:
            self.model = self._compile(self.model)
        trainable = [p for p in self.raw_model.parameters() if p.requires_grad]
        lr = self.config.LEARNING_RATE_SCHEDULER.BASE_LR
        self.optimizer = torch.optim.AdamW(
            [{"params": [p for p in trainable if p.dim() >= 2], "weight_decay": self.config.WEIGHT_DECAY},
             {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0}],  # no decay on biases/norms
            # fused on CUDA only: torch 2.13's fused CPU AdamW trained the test model to a validation loss of 7.85
            # instead of 5.22 over the same epoch (ADR 0016), so the CPU keeps the foreach implementation
            lr=lr, betas=(self.config.ADAM_BETAS[0], self.config.ADAM_BETAS[1]),  # (LMConfig checks there are 2)
            fused=self.device.type == "cuda")
        self.n_params = count_parameters(self.raw_model)

    def _compile(self, model):
        try:
            return torch.compile(model)
        except Exception as exc:  # e.g. no C compiler or an unsupported platform
            self.logger.warning("torch.compile unavailable (%s); training in eager mode", exc)
            return model

    def _load_data(self) -> None:
        if self.dist.enabled and not self.dist.is_main:
            dist.barrier()  # rank 0 builds the token caches once; the other ranks then open them
        self.train_data = TokenDataset(self.config, "train", progress=self.dist.is_main)
        self.val_data = TokenDataset(self.config, "validation", progress=self.dist.is_main)
        if self.dist.enabled and self.dist.is_main:
            dist.barrier()
        micro_per_epoch = len(self.train_data) // (self.config.BATCH_SIZE * self.dist.world_size)
        self.steps_per_epoch = micro_per_epoch // self.accumulation
        if self.steps_per_epoch == 0:
            raise TidalError(f"the training split has {len(self.train_data)} sequences of "
                             f"{self.config.MAX_CONTEXT_LENGTH} tokens, fewer than one optimizer step of "
                             f"{self.config.DESIRED_BATCH_SIZE}; "
                             "use a larger dataset or a smaller DESIRED_BATCH_SIZE")
        self.total_steps = self._horizon()

    def _horizon(self) -> int:
        """Optimizer steps this run trains for: NUM_EPOCHS epochs, cut at max_steps when one is set."""
        total = self.config.NUM_EPOCHS * self.steps_per_epoch
        return min(total, self.max_steps) if self.max_steps else total

    # ---------------------------------------------------------------------------------------------- the loop
    def run(self, resume_from: str | Path | None = None) -> Path | None:
        """Train; returns the final model path, or None when stopped by `terminate` (a resumable state is saved)."""
        self._build()
        self._load_data()
        self.scheduler = DynamicLRScheduler(self.optimizer, self.config, self.total_steps)
        self.early_stopping = EarlyStopping(self.config.PATIENCE, self.config.MIN_DELTA)
        self.epoch, self.step_in_epoch, self.global_step, self.tokens_seen = 0, 0, 0, 0
        if resume_from is not None:
            self._restore(Path(resume_from))
        if self.dist.is_main:
            self.logger.info("model: %s parameters; %d optimizer steps (%d per epoch, accumulation %d, %s)",
                             f"{self.n_params:,}", self.total_steps, self.steps_per_epoch, self.accumulation,
                             str(self.amp_dtype).removeprefix("torch."))
            self._status("training")
        outcome = self._train_loop()
        if outcome == "terminate":
            self._save_state()
            return None
        final = self.experiment_dir / f"{self.config.MODEL_NAME}_v{self.config.MODEL_VERSION}.pth"
        self._save_state()
        if self.dist.is_main:
            atomic_torch_save(model_state_dict(self.raw_model), final)
            self.logger.info("training finished (%s) after %d steps; final model %s", outcome, self.global_step,
                             final.name)
        return final

    def _train_loop(self) -> str:
        tokens_per_step = self.config.DESIRED_BATCH_SIZE * self.config.MAX_CONTEXT_LENGTH
        bar = tqdm(total=self.total_steps, initial=self.global_step, unit="step", dynamic_ncols=True, file=sys.stderr,
                   disable=not self.dist.is_main or not sys.stderr.isatty(), desc="LM training")
        window_start, window_steps = time.perf_counter(), 0
        try:
            while self.epoch < self.config.NUM_EPOCHS:
                order = epoch_order(len(self.train_data), self.config.SEED, self.epoch)
                while self.step_in_epoch < self.steps_per_epoch and self.global_step < self.total_steps:
                    loss = self._optimizer_step(order)
                    self.global_step += 1
                    self.step_in_epoch += 1
                    self.tokens_seen += tokens_per_step
                    window_steps += 1
                    bar.update(1)
                    if self.global_step % self.config.LOG_INTERVAL == 0 or self.global_step == self.total_steps:
                        elapsed = time.perf_counter() - window_start
                        self._log_train(loss, window_steps / elapsed, tokens_per_step * window_steps / elapsed, bar)
                        window_start, window_steps = time.perf_counter(), 0
                    end_of_epoch = self.step_in_epoch == self.steps_per_epoch
                    if self.global_step % self.config.EVAL_INTERVAL == 0 and not end_of_epoch:
                        self._validate(self.config.EVAL_MAX_BATCHES)
                    if self.config.CHECKPOINT_INTERVAL and self.global_step % self.config.CHECKPOINT_INTERVAL == 0:
                        self._save_state()
                    stop = self._agreed_stop()
                    if stop or self.early_stopping.should_stop:
                        return stop or "early stopping"
                if self.step_in_epoch < self.steps_per_epoch:
                    return "max steps"
                self._end_epoch()
                if self.early_stopping.should_stop:
                    return "early stopping"
            return "completed"
        finally:
            bar.close()

    def _optimizer_step(self, order: torch.Tensor) -> float:
        B, world = self.config.BATCH_SIZE, self.dist.world_size
        first = self.step_in_epoch * self.accumulation
        losses = torch.zeros((), device=self.device)
        for micro in range(self.accumulation):
            start = ((first + micro) * world + self.dist.rank) * B  # each global micro-batch: B rows per rank
            x, y = self.train_data.batch(order[start:start + B].tolist())
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            last = micro == self.accumulation - 1
            # DDP all-reduces gradients only on the last micro-batch of the step.
            with self._ddp.no_sync() if self._ddp is not None and not last else contextlib.nullcontext():
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype != torch.float32):
                    loss = self.model(x, target_ids=y).loss
                self.scaler.scale(loss / self.accumulation).backward()
            losses += loss.detach()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), self.config.MAX_GRAD_NORM)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        mean = losses / self.accumulation
        if self.dist.enabled:
            dist.all_reduce(mean, op=dist.ReduceOp.AVG)
        return mean.item()

    def _agreed_stop(self) -> str | None:
        """Every rank must stop at the same step, so the request is all-reduced (a signal may reach ranks apart)."""
        if not self.dist.enabled:
            return self.stop_request
        code = {None: 0, "complete": 1, "terminate": 2}[self.stop_request]
        flag = torch.tensor(code, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return {0: None, 1: "complete", 2: "terminate"}[int(flag.item())]

    # ---------------------------------------------------------------------------------------------- validation, logging
    def _validate(self, max_batches: int | None) -> float:
        result = validation_loss(self.model, self.val_data, self.config.EVAL_BATCH_SIZE, self.device, max_batches,
                                 self.amp_dtype, self.dist.rank, self.dist.world_size)
        improved = self.early_stopping.step(result["loss"])
        if self.dist.is_main:
            self._log({"Losses/Validation": result["loss"], "Perplexity/Validation": math.exp(min(result["loss"], 50))})
            self.logger.info("step %d/%d | validation loss %.4f%s", self.global_step, self.total_steps, result["loss"],
                             " (best)" if improved else f" (no improvement {self.early_stopping.bad_evaluations}/"
                                                         f"{self.config.PATIENCE})")
        return result["loss"]

    def _end_epoch(self) -> None:
        self._validate(self.config.EVAL_MAX_BATCHES)
        self.epoch += 1
        self.step_in_epoch = 0
        if self.dist.is_main:
            atomic_torch_save(model_state_dict(self.raw_model),
                              self.experiment_dir / f"checkpoint_foundational_epoch_{self.epoch}.pth")
        self._save_state()

    def _log_train(self, loss: float, steps_per_s: float, tokens_per_s: float, bar) -> None:
        if not self.dist.is_main:
            return
        remaining = (self.total_steps - self.global_step) / steps_per_s if steps_per_s > 0 else None
        record = {
            "Losses/Total": loss, "Perplexity": math.exp(min(loss, 50)), "Learning Rate": self.scheduler.get_last_lr(),
            "Iterations/Second": steps_per_s, "Tokens/Second": tokens_per_s, "Tokens/Seen": self.tokens_seen,
            "Epoch/Progress": self.epoch + self.step_in_epoch / self.steps_per_epoch,
            "Progress": self.global_step / self.total_steps, "ETA/Seconds": remaining,
        }
        peak = peak_flops(self.device)
        if peak:
            record["MFU"] = tokens_per_s * flops_per_token(self.config, self.n_params) / (peak * self.dist.world_size)
        self._log(record)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
        if bar.disable and (self.global_step % max(1, self.total_steps // 20) == 0):
            eta = f"{remaining / 60:.1f} min" if remaining is not None else "?"
            self.logger.info("step %d/%d | loss %.4f | %s tok/s | ETA %s", self.global_step, self.total_steps, loss,
                             f"{tokens_per_s:,.0f}", eta)

    def _log(self, record: dict) -> None:
        if self.metrics is not None:
            self.metrics.log_metrics(record, self.global_step)

    def _status(self, status: str, **extra) -> None:
        if self.metrics is not None and self.dist.is_main:
            self.metrics.set_status(status, step=self.global_step, total_steps=self.total_steps, **extra)

    # ---------------------------------------------------------------------------------------------- checkpoints
    def _save_state(self) -> None:
        if not self.dist.is_main:
            return
        state = {
            "format": STATE_FORMAT,
            "model_state_dict": model_state_dict(self.raw_model),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "scheduler_state_dict": self.scheduler.state_dict(),
            "scaler_state_dict": self.scaler.state_dict(),
            "early_stopping": self.early_stopping.state_dict(),
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "tokens_seen": self.tokens_seen,
            "max_steps": self.max_steps,  # the horizon asked for, so a resume continues the same run
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }
        atomic_torch_save(state, self.experiment_dir / TRAINING_STATE)

    def _restore_horizon(self, state: dict) -> None:
        """Keep the horizon the run was started with unless this resume asks for another (--max-steps, NUM_EPOCHS);
        then the LR schedule is rebuilt for the new length at the same position, and the change is logged."""
        saved_total = self.scheduler.total_steps
        if self.max_steps is None:
            # states written before the horizon was saved: the schedule's length is that horizon
            self.max_steps = state.get("max_steps", saved_total)
        self.total_steps = self._horizon()
        if self.total_steps != saved_total:
            self.scheduler.set_total_steps(self.total_steps)
            if self.dist.is_main:
                self.logger.warning("horizon changed from %d to %d steps on resume; learning-rate schedule rebuilt "
                                    "for %d steps", saved_total, self.total_steps, self.total_steps)

    def _restore(self, path: Path) -> None:
        if path.is_dir():
            path = path / TRAINING_STATE
        if not path.is_file():
            raise TidalError(f"nothing to resume: {path} not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise TidalError(f"{path}: not a readable training state ({type(exc).__name__})") from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise TidalError(f"{path}: not a Tidal training state (format {STATE_FORMAT})")
        load_model_weights(self.raw_model, state["model_state_dict"])
        self.optimizer.load_state_dict(state["optimizer_state_dict"])
        self.scheduler.load_state_dict(state["scheduler_state_dict"])
        self._restore_horizon(state)
        self.scaler.load_state_dict(state["scaler_state_dict"])
        self.early_stopping.load_state_dict(state["early_stopping"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step, self.tokens_seen = state["global_step"], state["tokens_seen"]
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        if self.dist.is_main:
            self.logger.info("resumed from %s at step %d (epoch %d, step %d of the epoch)", path, self.global_step,
                             self.epoch, self.step_in_epoch)
