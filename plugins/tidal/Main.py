"""Train the language model (phase 1), then evaluate it.

    python3 plugins/tidal/Main.py --config plugins/tidal/configs/base_config.yaml [--set KEY=VALUE ...] [--max-steps N]
    python3 plugins/tidal/Main.py --resume experiments/<id>        # continue exactly where it stopped, to the same end
    torchrun --nproc_per_node=2 plugins/tidal/Main.py --config ...  # DistributedDataParallel

Signals: SIGUSR1 asks for a graceful finish (complete the current step, save, evaluate, exit 0); SIGTERM or Ctrl-C
saves a resumable `training_state.pth` and exits 143.
"""
if __name__ == "__main__":  # before torch is imported: a re-exec is then nearly free
    from plugins.tidal.Utils import reexec_with_tuned_malloc

    reexec_with_tuned_malloc()

import argparse
import signal
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from core.errors import TidalError
from experiment_utils import create_experiment_dir, resolve_device
from MetricsLogger import MetricsLogger
from plugins.tidal.Config import LMConfig
from plugins.tidal.Evaluator import Evaluator
from plugins.tidal.Trainer import Trainer, setup_distributed
from plugins.tidal.Utils import cli_main, load_config, resolve_project_path

EXIT_STOPPED = 128 + signal.SIGTERM


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="Main.py", description="Train the Tidal language model, then evaluate it.")
    parser.add_argument("--config", help="LM config YAML (default with --resume: the experiment's config.yaml)")
    parser.add_argument("--resume", metavar="EXP_DIR",
                        help="continue the experiment in EXP_DIR from training_state.pth")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. "
                             "--set BATCH_SIZE=32 --set LEARNING_RATE_SCHEDULER.BASE_LR=3e-4")
    parser.add_argument("--max-steps", type=int, help="stop after N optimizer steps (the LR schedule spans N); with "
                        "--resume the default is the run's own horizon, and another N rebuilds the schedule for N")
    args = parser.parse_args(argv)
    if not args.config and not args.resume:
        parser.error("--config is required (or --resume EXP_DIR)")
    if args.max_steps is not None and args.max_steps <= 0:
        parser.error("--max-steps must be a positive integer")
    return args


def load_run_config(args) -> tuple[LMConfig, Path, Path | None]:
    """(effective config, config path, experiment dir when resuming)."""
    if not args.resume:
        config_path = resolve_project_path(args.config)
        return load_config(config_path, args.set), config_path, None
    exp_dir = resolve_project_path(args.resume)
    if not exp_dir.is_dir():
        raise TidalError(f"--resume: experiment directory not found: {args.resume}")
    config_path = resolve_project_path(args.config) if args.config else exp_dir / "config.yaml"
    return load_config(config_path, args.set), config_path, exp_dir


def create_run_dir(config: LMConfig, config_path: Path, is_main: bool) -> Path:
    """Rank 0 creates the experiment directory; with DDP its name is broadcast so every rank agrees."""
    exp_dir = create_experiment_dir("lm", config_path, {"config.yaml": config.to_dict()}) if is_main else None
    if dist.is_initialized():
        shared = [str(exp_dir)]  # the other ranks' entry is replaced by rank 0's
        dist.broadcast_object_list(shared, src=0)
        return Path(shared[0])
    assert exp_dir is not None, "a single process is rank 0"
    return exp_dir


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_float32_matmul_precision("high")
    config, config_path, exp_dir = load_run_config(args)
    dist_ctx = setup_distributed(config.DEVICE)
    exp_dir = exp_dir or create_run_dir(config, config_path, dist_ctx.is_main)
    device = resolve_device(config.DEVICE)
    if dist_ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", dist_ctx.local_rank)
    metrics = MetricsLogger(exp_dir) if dist_ctx.is_main else None
    trainer = Trainer(config, exp_dir, device, metrics, args.max_steps, dist_ctx)
    signal.signal(signal.SIGUSR1, lambda *_: trainer.request_stop("complete"))
    signal.signal(signal.SIGTERM, lambda *_: trainer.request_stop("terminate"))
    signal.signal(signal.SIGINT, lambda *_: trainer.request_stop("terminate"))
    try:
        final = trainer.run(resume_from=exp_dir if args.resume else None)
        if final is None:
            if metrics:
                metrics.finalize("stopped")  # drains the live queue, so Redis sees the final status too
            print(f"stopped; resume with: python3 plugins/tidal/Main.py --resume {exp_dir}", file=sys.stderr)
            return EXIT_STOPPED
        if metrics is not None:  # rank 0
            results = Evaluator(config, exp_dir, final, device).run()
            metrics.log_metrics({"Losses/Validation": results["validation_loss"], "Perplexity/Validation":
                                 results["perplexity"], "NatsPerByte/Validation": results["nats_per_byte"]},
                                trainer.global_step)
            metrics.finalize("completed")
            print_summary(exp_dir, final, results)
        return 0
    except TidalError as exc:
        if metrics:
            metrics.finalize("failed", error=str(exc))
            append_to_log(exp_dir, f"error: {exc}\n")  # the run's log (and the dashboard's tail of it) ends with why
        raise
    except Exception as exc:  # an internal error: the traceback goes to the log, one line to the user
        if metrics:
            metrics.finalize("failed", error=f"{type(exc).__name__}: {exc}")
        raise internal_error(exc, exp_dir, dist_ctx.is_main) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def internal_error(exc: Exception, exp_dir: Path, is_main: bool) -> TidalError:
    """The one line for the user of an unexpected exception (call it while handling `exc`). Rank 0 appends the
    traceback to the run's log; other ranks print it, as their node may not hold the experiment directory (ADR 0017)."""
    if is_main:
        append_to_log(exp_dir, traceback.format_exc())
        where = f"traceback in {exp_dir / 'training.log'}"
    else:
        traceback.print_exc()
        where = "traceback above"
    return TidalError(f"training failed: {type(exc).__name__}: {exc} ({where})")


def append_to_log(exp_dir: Path, text: str) -> None:
    """Written to the file directly, not through the logger, whose console handler would repeat the one error line."""
    with open(exp_dir / "training.log", "a", encoding="utf-8") as f:
        f.write(text)


def print_summary(exp_dir: Path, final: Path, results: dict) -> None:
    print(f"\nexperiment: {exp_dir}")
    print(f"final model: {final}")
    print(f"validation loss {results['validation_loss']:.4f} | perplexity {results['perplexity']:.2f} | "
          f"{results['nats_per_byte']:.4f} nats/byte")
    for sample in results["samples"]:
        print(f"\n--- {sample['prompt']!r}\n{sample['generated']}")


if __name__ == "__main__":
    sys.exit(main())
