"""Train the RL gating controller (phase 2) on a frozen TransformerLM, then run the held-out decoding study.

    python3 plugins/tidal/train_rl.py --config plugins/tidal/configs/base_config.yaml \\
        --rl-config plugins/tidal/configs/rl_config.yaml --checkpoint experiments/<id>/transformer-lm_v1.0.0.pth \\
        [--timesteps N] [--resume RL_CKPT] [--ablation] [--experiment-dir DIR] [--set KEY=VALUE ...]

Order: prompt sets and judges, the dev sweep of every fixed decoder family (it picks the residual action space's
base), PPO for each of RL_SEEDS, then the study on the test prompts (Ablation.py, ADR 0015). `--ablation` with
--resume pointing at a trained RL checkpoint skips training and adds the study to that checkpoint's run.
SIGTERM or Ctrl-C saves `rl_checkpoint_interrupted.pth` and exits 143; SIGUSR1 finishes the current iteration and
completes normally.
"""
if __name__ == "__main__":  # before torch is imported: a re-exec is then nearly free
    from plugins.tidal.Utils import reexec_with_tuned_malloc

    reexec_with_tuned_malloc()

import argparse
import re
import signal
import sys
from pathlib import Path

import torch

from core.errors import TidalError
from experiment_utils import create_experiment_dir, resolve_device
from MetricsLogger import MetricsLogger
from plugins.tidal.Config import LMConfig, RLConfig
from plugins.tidal.GatingEnvironment import GatingEnvironment, freeze_lm_except_gates
from plugins.tidal.GatingModulator import make_action_space
from plugins.tidal.GatingPolicyAgent import create_agent
from plugins.tidal.Judges import build_judge
from plugins.tidal.RewardComputer import RewardComputer, content_token_mask
from plugins.tidal.RLTrainer import PPOTrainer
from plugins.tidal.StudyData import build_prompt_sets
from plugins.tidal.Tokenizer import get_tokenizer
from plugins.tidal.TransformerLM import load_pretrained, read_checkpoint
from plugins.tidal.Utils import RL_CONFIG_PATH, cli_main, load_config, resolve_project_path, setup_logger

EXIT_STOPPED = 128 + signal.SIGTERM
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


ORACLE_READING = {
    "learned above the frontier": " The reward can lead above the frontier on the held-out judge (an upper bound: the "
                                  "oracle sees the random draw).",
    "outside the frontier's range": " It lies below a fixed family's range (or does in more than 5 % of the "
                                    "resamples), so the comparison is undetermined: widen that family's grid.",
}


class Stopped(Exception):
    """A stop signal outside PPO (the dev sweep, the study): nothing to checkpoint, the run ends as stopped."""


def _raise_stopped(*_) -> None:
    raise Stopped


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="train_rl.py", description="Train the PPO gating controller on a trained LM.")
    p.add_argument("--config", required=True, help="the LM config the checkpoint was trained with")
    p.add_argument("--rl-config", default=str(RL_CONFIG_PATH), help="RL config YAML")
    p.add_argument("--checkpoint", required=True, help="trained LM checkpoint (.pth)")
    p.add_argument("--timesteps", type=int, help="override RL_TOTAL_TIMESTEPS")
    p.add_argument("--resume", metavar="RL_CKPT", help="continue from an RL checkpoint (of any RL seed: finished "
                                                       "seeds are reused, the rest trained)")
    p.add_argument("--ablation", action="store_true", help="with --resume and no --timesteps: skip training and run "
                                                           "the study on the run's finished seeds (the study always "
                                                           "follows training)")
    p.add_argument("--experiment-dir", help="write into this directory instead of a new experiments/<id>/")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override an RL config value")
    args = p.parse_args(argv)
    if args.timesteps is not None and args.timesteps <= 0:
        p.error("--timesteps must be positive")
    return args


def prepare_dir(args, lm_config_path: Path, rl_config_path: Path, lm_config: LMConfig, rl_config: RLConfig) -> Path:
    """The experiment directory: --experiment-dir, else the run a --resume checkpoint belongs to (so a study added
    later lands beside its charts), else a new experiments/<id>/."""
    configs = {"base_config.yaml": lm_config.to_dict(), "rl_config.yaml": rl_config.to_dict()}
    if args.experiment_dir or args.resume:
        exp_dir = resolve_project_path(args.experiment_dir) if args.experiment_dir else \
            resolve_project_path(args.resume).parent
        if not args.experiment_dir and re.fullmatch(r"seed_\d+", exp_dir.name):  # a later RL seed's checkpoint
            exp_dir = exp_dir.parent
        exp_dir.mkdir(parents=True, exist_ok=True)
        return exp_dir
    checkpoint = resolve_project_path(args.checkpoint)
    return create_experiment_dir("rl", lm_config_path, configs, rl_config_path=rl_config_path,
                                 source_experiment=checkpoint.parent.name, source_checkpoint=str(checkpoint))


def train_seed(seed: int, model, action_space, reward_computer, prompts, rl_config: RLConfig, device, exp_dir: Path,
               metrics, gate_params, timesteps: int | None, resume: str | Path | None, extra_state: dict) -> PPOTrainer:
    """One PPO run from RL seed `seed` (its own env streams, agent init and minibatch order)."""
    torch.manual_seed(seed)
    env = GatingEnvironment(model, action_space, reward_computer, prompts, rl_config, device=device, seed=seed,
                            gate_training=bool(gate_params))
    agent = create_agent(rl_config).to(device)
    trainer = PPOTrainer(agent, env, rl_config, exp_dir, device, metrics, gate_params, extra_state=extra_state)
    if resume:
        trainer.load_checkpoint(resolve_project_path(resume))
    # during PPO a signal finishes the iteration first (and SIGUSR1 completes the run); outside it, it stops at once
    for sig, kind in zip(STOP_SIGNALS, ("terminate", "terminate", "complete"), strict=True):
        signal.signal(sig, lambda *_, kind=kind: trainer.request_stop(kind))
    try:
        if timesteps != 0:
            trainer.train(timesteps)
    finally:
        for sig in STOP_SIGNALS:
            signal.signal(sig, _raise_stopped)
    return trainer


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)
    lm_config_path, rl_config_path = resolve_project_path(args.config), resolve_project_path(args.rl_config)
    lm_config = load_config(lm_config_path)
    rl_config = load_config(rl_config_path, args.set, reference_path=RL_CONFIG_PATH)
    device = resolve_device(lm_config.DEVICE)
    model = load_pretrained(lm_config, resolve_project_path(args.checkpoint), device)
    exp_dir = prepare_dir(args, lm_config_path, rl_config_path, lm_config, rl_config)
    logger = setup_logger("tidal.rl", exp_dir / "rl_training.log")
    metrics = MetricsLogger(exp_dir)
    for sig in STOP_SIGNALS:
        signal.signal(sig, _raise_stopped)
    try:
        return run(args, lm_config, rl_config, model, device, exp_dir, logger, metrics)
    except Stopped:
        metrics.finalize("stopped")
        print("stopped (outside PPO training: nothing to resume)", file=sys.stderr)
        return EXIT_STOPPED
    except TidalError as exc:
        metrics.finalize("failed", error=str(exc))
        raise
    except Exception as exc:
        metrics.finalize("failed", error=f"{type(exc).__name__}: {exc}")
        logger.exception("RL training failed")
        raise TidalError(f"RL training failed: {type(exc).__name__}: {exc} (traceback in "
                         f"{exp_dir / 'rl_training.log'})") from None


def run(args, lm_config: LMConfig, rl_config: RLConfig, model, device, exp_dir: Path, logger, metrics) -> int:
    """Prompts and judges, the dev sweep (which picks the residual base), the oracle check, PPO per RL seed, the
    held-out study."""
    from plugins.tidal.Ablation import (
        Player,
        format_study_table,
        gap_text,
        merge_tuning,
        oracle_check,
        residual_base,
        run_study,
        tune_on_dev,
    )

    sets = build_prompt_sets(lm_config, {"train": rl_config.RL_NUM_PROMPTS, "dev": rl_config.RL_DEV_PROMPTS,
                                         "test": rl_config.RL_ABLATION_NUM_PROMPTS},
                             rl_config.RL_PROMPT_MIN_LENGTH, rl_config.RL_PROMPT_MAX_LENGTH,
                             rl_config.RL_MAX_EPISODE_LENGTH, seed=rl_config.RL_SEED)
    judges = {role: build_judge(lm_config, role, rl_config.RL_JUDGE_STORIES, rl_config.RL_JUDGE_ORDER)
              for role in ("train", "eval")}
    reward_computer = RewardComputer(rl_config, judges["train"], content_token_mask(get_tokenizer(),
                                                                                   lm_config.VOCAB_SIZE))
    if rl_config.RL_CONSTRAINT_MODE == "lagrangian":
        reward_computer.set_lagrangian_mode()
    resumed = read_checkpoint(resolve_project_path(args.resume)) if args.resume else None
    train = not (args.ablation and args.resume and args.timesteps is None)
    metrics.set_status("training", phase="rl")

    fixed = Player(model, None, reward_computer, rl_config, device)
    dev = tune_on_dev(fixed, sets["dev"], judges["eval"], rl_config)
    base = (resumed or {}).get("action_base") or residual_base(dev["families"])
    action_space = make_action_space(rl_config, base if rl_config.RL_ACTION_MODE == "residual" else None)
    player = Player(model, action_space, reward_computer, rl_config, device)
    merge_tuning(dev, tune_on_dev(player, sets["dev"], judges["eval"], rl_config, families=("constant_action",),
                                  ce_bits=dev["ce_bits"]))
    logger.info("dev sweep done; residual base decoder %s", base)
    check = oracle_check(player, sets["dev"], judges["eval"], rl_config, dev,
                         rl_config.RL_LAGRANGE_MULTIPLIER_INIT if reward_computer.weights["overlap"] == 0
                         else 0.0)
    print("oracle check on dev, before PPO: " + gap_text("the per-token oracle", check) + ORACLE_READING.get(
        check["verdict"], " Even the oracle does not clear the frontier under this reward, so a learned controller can "
        "at best match it: the reward, not the optimiser, would need changing (ADR 0015)."), flush=True)

    gate_params = freeze_lm_except_gates(model) if rl_config.RL_UNFREEZE_DYNAMIC_GATES else None
    extra_state = {"action_base": base if rl_config.RL_ACTION_MODE == "residual" else None,
                   "lm_checkpoint": str(resolve_project_path(args.checkpoint))}
    agents, lam = [], 0.0
    resume = resolve_project_path(args.resume) if args.resume else None
    seeds = rl_config.RL_SEEDS
    for i, seed in enumerate(seeds):
        seed_dir = exp_dir if i == 0 else exp_dir / f"seed_{seed}"
        final = seed_dir / "rl_checkpoint_final.pth"
        # a resumed run continues the seed whose checkpoint it names, reuses the seeds already finished, and trains
        # the rest; a study-only run (--ablation --resume) measures every seed that finished
        if resume is not None and resume.parent == seed_dir:
            start, steps = resume, args.timesteps if train else 0
        elif resume is not None and final.is_file():
            start, steps = final, 0
        elif train:
            start, steps = None, args.timesteps
        else:
            continue
        trainer = train_seed(seed, model, action_space, reward_computer, sets["train"].prompts, rl_config, device,
                             seed_dir, metrics if i == 0 else None, gate_params, steps, start, extra_state)
        if trainer.stop_requested == "terminate":
            path = trainer.save_checkpoint(seed_dir / "rl_checkpoint_interrupted.pth")
            metrics.finalize("stopped")
            print(f"stopped; resume with --resume {path}", file=sys.stderr)
            return EXIT_STOPPED
        if steps != 0:
            trainer.save_checkpoint(final)
            logger.info("RL seed %d finished: %d timesteps", seed, trainer.global_step)
        agents.append((f"learned (RL seed {seed})", trainer.agent.eval()))
        if trainer.lagrange is not None:
            lam = trainer.lagrange.value
    results = run_study(player, sets, judges["eval"], rl_config, dev, agents, oracle_lambda=lam, oracle_dev=check,
                        protocol=rl_config.RL_STUDY_PROTOCOL, experiment_dir=exp_dir,
                        judge_provenance={r: j.provenance for r, j in judges.items()})
    print(format_study_table(results))
    metrics.finalize("completed")
    print(f"\nexperiment: {exp_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
