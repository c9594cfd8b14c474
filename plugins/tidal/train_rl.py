"""Train the RL gating controller (phase 2) on a frozen TransformerLM, then run the ablation.

    python3 plugins/tidal/train_rl.py --config plugins/tidal/configs/base_config.yaml \\
        --rl-config plugins/tidal/configs/rl_config.yaml --checkpoint experiments/<id>/transformer-lm_v1.0.0.pth \\
        [--timesteps N] [--resume RL_CKPT] [--ablation] [--experiment-dir DIR] [--set KEY=VALUE ...]

`--ablation` alone (with --resume pointing at a trained RL checkpoint) skips training and runs the ablation only.
SIGTERM or Ctrl-C saves `rl_checkpoint_interrupted.pth` and exits 143; SIGUSR1 finishes the current iteration and
completes normally.
"""
if __package__ in (None, ""):  # run as a file: make the project root importable
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
if __name__ == "__main__":  # before torch is imported: a re-exec is then nearly free
    from plugins.tidal.Utils import reexec_with_tuned_malloc

    reexec_with_tuned_malloc()

import argparse
import signal
import sys
from pathlib import Path

import torch

from experiment_utils import create_experiment_dir, resolve_device
from MetricsLogger import MetricsLogger
from plugins.tidal.DataPipeline import TokenDataset, load_prompt_starts
from plugins.tidal.GatingEnvironment import GatingEnvironment, freeze_lm_except_gates
from plugins.tidal.GatingModulator import GatingModulator
from plugins.tidal.GatingPolicyAgent import create_agent
from plugins.tidal.RewardComputer import RewardComputer
from plugins.tidal.RLTrainer import PPOTrainer
from plugins.tidal.TransformerLM import load_pretrained
from plugins.tidal.Utils import RL_CONFIG_PATH, TidalError, cli_main, load_config, resolve_project_path, setup_logger

EXIT_STOPPED = 128 + signal.SIGTERM


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="train_rl.py", description="Train the PPO gating controller on a trained LM.")
    p.add_argument("--config", required=True, help="the LM config the checkpoint was trained with")
    p.add_argument("--rl-config", default=str(RL_CONFIG_PATH), help="RL config YAML")
    p.add_argument("--checkpoint", required=True, help="trained LM checkpoint (.pth)")
    p.add_argument("--timesteps", type=int, help="override RL_TOTAL_TIMESTEPS")
    p.add_argument("--resume", metavar="RL_CKPT", help="continue from an RL checkpoint")
    p.add_argument("--ablation", action="store_true", help="run the ablation (alone when --resume is given and "
                                                           "no --timesteps)")
    p.add_argument("--experiment-dir", help="write into this directory instead of a new experiments/<id>/")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override an RL config value")
    args = p.parse_args(argv)
    if args.timesteps is not None and args.timesteps <= 0:
        p.error("--timesteps must be positive")
    return args


def bigram_statistics(lm_config: dict, rl_config: dict, vocab_size: int):
    """Coherence statistics from the training split's token cache (capped at RL_BIGRAM_STORIES-worth of tokens)."""
    tokens = TokenDataset(lm_config, "train").tokens
    limit = rl_config["RL_BIGRAM_STORIES"] * 250  # ~250 tokens per story is generous for TinyStories-like text
    return RewardComputer.bigram_statistics_from_tokens(tokens[:limit], vocab_size)


def prompts(lm_config: dict, rl_config: dict) -> tuple[list[list[int]], list[list[int]]]:
    """(training prompts, held-out ablation prompts): disjoint draws of validation-story starts."""
    n_train, n_eval = rl_config["RL_NUM_PROMPTS"], rl_config["RL_ABLATION_NUM_PROMPTS"]
    starts = load_prompt_starts(lm_config, "validation", n_train + n_eval, rl_config["RL_PROMPT_MIN_LENGTH"],
                                rl_config["RL_PROMPT_MAX_LENGTH"], seed=rl_config["RL_SEED"])
    return starts[:n_train], starts[n_train:]


def prepare_dir(args, lm_config_path: Path, rl_config_path: Path, lm_config: dict, rl_config: dict) -> Path:
    configs = {"base_config.yaml": lm_config, "rl_config.yaml": rl_config}
    if args.experiment_dir:
        exp_dir = resolve_project_path(args.experiment_dir)
        exp_dir.mkdir(parents=True, exist_ok=True)
        return exp_dir
    checkpoint = resolve_project_path(args.checkpoint)
    return create_experiment_dir("rl", lm_config_path, configs, rl_config_path=rl_config_path,
                                 source_experiment=checkpoint.parent.name, source_checkpoint=str(checkpoint))


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)
    lm_config_path, rl_config_path = resolve_project_path(args.config), resolve_project_path(args.rl_config)
    lm_config = load_config(lm_config_path)
    rl_config = load_config(rl_config_path, args.set, reference_path=RL_CONFIG_PATH)
    device = resolve_device(lm_config["DEVICE"])
    model = load_pretrained(lm_config, resolve_project_path(args.checkpoint), device)
    torch.manual_seed(rl_config["RL_SEED"])
    exp_dir = prepare_dir(args, lm_config_path, rl_config_path, lm_config, rl_config)
    logger = setup_logger("tidal.rl", exp_dir / "rl_training.log")
    train_prompts, eval_prompts = prompts(lm_config, rl_config)
    reward_computer = RewardComputer(rl_config, lm_config["VOCAB_SIZE"], bigram_statistics(lm_config, rl_config,
                                                                                            lm_config["VOCAB_SIZE"]))
    gate_params = freeze_lm_except_gates(model) if rl_config["RL_UNFREEZE_DYNAMIC_GATES"] else None
    env = GatingEnvironment(model, GatingModulator(rl_config), reward_computer, train_prompts, rl_config,
                            device=device, seed=rl_config["RL_SEED"], gate_training=bool(gate_params))
    agent = create_agent(rl_config).to(device)
    metrics = MetricsLogger(exp_dir)
    trainer = PPOTrainer(agent, env, rl_config, exp_dir, device, metrics, gate_params)
    if args.resume:
        trainer.load_checkpoint(resolve_project_path(args.resume))
    train = not (args.ablation and args.resume and args.timesteps is None)
    signal.signal(signal.SIGTERM, lambda *_: trainer.request_stop("terminate"))
    signal.signal(signal.SIGINT, lambda *_: trainer.request_stop("terminate"))
    signal.signal(signal.SIGUSR1, lambda *_: trainer.request_stop("complete"))
    try:
        if train:
            metrics.set_status("training", phase="rl")
            trainer.train(args.timesteps)
            if trainer.stop_requested == "terminate":
                path = trainer.save_checkpoint(exp_dir / "rl_checkpoint_interrupted.pth")
                metrics.finalize("stopped")
                print(f"stopped; resume with --resume {path}", file=sys.stderr)
                return EXIT_STOPPED
            trainer.save_checkpoint(exp_dir / "rl_checkpoint_final.pth")
            logger.info("RL training finished: %d timesteps, checkpoint %s", trainer.global_step,
                        exp_dir / "rl_checkpoint_final.pth")
        from plugins.tidal.Ablation import format_ablation_table, run_ablation_study

        results = run_ablation_study(model.eval(), eval_prompts, rl_config, reward_computer, agent=agent,
                                     experiment_dir=exp_dir, device=device)
        print(format_ablation_table(results))
        metrics.finalize("completed")
        print(f"\nexperiment: {exp_dir}")
        return 0
    except TidalError as exc:
        metrics.finalize("failed", error=str(exc))
        raise
    except Exception as exc:
        metrics.finalize("failed", error=f"{type(exc).__name__}: {exc}")
        logger.exception("RL training failed")
        raise TidalError(f"RL training failed: {type(exc).__name__}: {exc} (traceback in "
                         f"{exp_dir / 'rl_training.log'})") from None


if __name__ == "__main__":
    sys.exit(main())
