"""`make demo`: the whole system on built-in defaults, offline, on a CPU.

1. trains the quickstart LM on the built-in `tinytales` corpus and evaluates it (Main.py),
2. trains the PPO gating controller on it and prints the ablation table (train_rl.py),
3. prints ungated and gated samples with their per-token modulation (Generator.py),
4. says how to open the dashboard on the experiments it made.

Each phase runs the same command a user would type, so the demo is also an end-to-end check of the CLIs.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from experiment_utils import experiments_root, make_experiment_id

ROOT = Path(__file__).resolve().parents[1]

LM_CONFIG = "plugins/tidal/configs/quickstart_config.yaml"
RL_CONFIG = "plugins/tidal/configs/rl_quickstart_config.yaml"
PROMPT = "Once upon a time"


def banner(text: str) -> None:
    print(f"\n{'=' * 100}\n{text}\n{'=' * 100}", flush=True)


def run(title: str, args: list[str], env: dict | None = None) -> float:
    banner(title)
    print("$ python " + " ".join(args), flush=True)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        print(f"\ndemo: the step above failed (exit {proc.returncode})", file=sys.stderr)
        sys.exit(proc.returncode)
    return time.monotonic() - start


def main() -> int:
    start = time.monotonic()
    lm_id = make_experiment_id(ROOT / LM_CONFIG)
    lm_dir = experiments_root() / lm_id
    lm_seconds = run("1/3  Training the language model on the built-in corpus (quickstart config)",
                     ["plugins/tidal/Main.py", "--config", LM_CONFIG], {"TIDAL_EXPERIMENT_ID": lm_id})
    checkpoint = lm_dir / "transformer-lm_v1.0.0.pth"
    rl_id = make_experiment_id(ROOT / LM_CONFIG, ROOT / RL_CONFIG)
    rl_dir = experiments_root() / rl_id
    rl_seconds = run("2/3  Training the PPO gating controller, then the ablation against decoding baselines",
                     ["plugins/tidal/train_rl.py", "--config", LM_CONFIG, "--rl-config", RL_CONFIG,
                      "--checkpoint", str(checkpoint)], {"TIDAL_EXPERIMENT_ID": rl_id})
    common = ["plugins/tidal/Generator.py", "--config", LM_CONFIG, "--checkpoint", str(checkpoint),
              "--prompt", PROMPT, "--max_tokens", "40", "--seed", "0"]
    run("3/3  Samples — plain sampling (temperature 0.8, top-k 50)", [*common, "--num_samples", "3"])
    run("     Samples — gated by the learned controller (m per token and the sampling parameters it set)",
        [*common, "--rl-agent", "--rl-checkpoint", str(rl_dir / "rl_checkpoint_final.pth"), "--verbose"])
    banner("Done")
    print(f"LM experiment: {lm_dir}  ({lm_seconds / 60:.1f} min)")
    print(f"RL experiment: {rl_dir}  ({rl_seconds / 60:.1f} min)")
    print(f"total: {(time.monotonic() - start) / 60:.1f} min\n")
    print("Open the dashboard on these experiments:")
    print("    make dashboard            # then browse http://127.0.0.1:4400")
    print(f"    (experiments are read from {experiments_root()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
