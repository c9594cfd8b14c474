"""RL environment throughput: N vectorized environments in one batched, KV-cached forward per step, side by side with
ONE environment at a time (how the original ran its rollouts, ADR 0010), in one process.

Both sides run the same GatingEnvironment under the same untrained PPO agent over the shipped action space (the
residual grid around T 1, min-p 0.1). They use the base model config (untrained weights: speed does not depend on
them), synthetic prompts of RL_PROMPT_MIN..MAX_LENGTH random token ids, a RewardComputer whose judge is a 4-gram LM
of a random token stream, and full-length episodes that end and restart with a fresh prefill. The vectorized side
runs prompt groups of RL_SAMPLES_PER_PROMPT rows; the single side one row.
"Steps/s" counts environment steps, i.e. tokens generated under control; stepping 16 environments one after the
other runs at the single environment's rate. Timed chunks alternate (vectorized, single, vectorized, ...) and the
median is reported, so machine noise hits both sides alike.

`--before REF` instead measures the environment before and after a change: it checks REF out in a temporary git
worktree and runs that tree's own bench_rl.py and this one in alternation, `--rounds` times each, with the same
arguments and allocator settings, and reports each side's median vectorized steps/s and their ratio. The default
REF is the environment before the decode fast path (ADR 0016, 4a8822f); the old tree keeps its own action space,
observation and reward, so the figure is what a researcher's RL step cost then and costs now.

    python benchmarks/bench_rl.py [--config plugins/tidal/configs/base_config.yaml] [--num-envs 16] [--threads 1]
    python benchmarks/bench_rl.py --before 4a8822f --threads 1 [--rounds 5]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import get_args

import numpy as np
import torch

from core.io import atomic_write_json
from experiment_utils import resolve_device
from plugins.tidal.Config import InferenceWeights
from plugins.tidal.DataPipeline import EOT_TOKEN_ID
from plugins.tidal.GatingEnvironment import GatingEnvironment
from plugins.tidal.GatingModulator import make_action_space
from plugins.tidal.GatingPolicyAgent import create_agent
from plugins.tidal.Judges import NGramJudge
from plugins.tidal.RewardComputer import RewardComputer
from plugins.tidal.TransformerLM import TransformerLM, count_parameters
from plugins.tidal.Utils import BASE_CONFIG_PATH, CONFIG_DIR, RL_CONFIG_PATH, TUNED_MALLOC_ENV, load_config, read_yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
BEFORE_REF = "4a8822f"  # the environment before the decode fast path (ADR 0016)
QUICKSTART_CONFIG = CONFIG_DIR / "quickstart_config.yaml"
TARGET_RATIO = 6.0
NUM_PROMPTS = 256
JUDGE_STREAM_TOKENS = 200_000
BASE_DECODER = {"temperature": 1.0, "min_p": 0.1}


def synthetic_prompts(count: int, lo: int, hi: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """`count` prompts of lo..hi random token ids (never <|endoftext|>)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, min(vocab, EOT_TOKEN_ID), int(rng.integers(lo, hi + 1))).tolist() for _ in range(count)]


class Stepper:
    """One environment (of `num_envs` rows) driven by the agent; `run(steps)` returns the seconds they took."""

    def __init__(self, model, rl_config, reward_computer, prompts, agent, num_envs: int, device: torch.device):
        self.env = GatingEnvironment(model, make_action_space(rl_config, BASE_DECODER), reward_computer, prompts,
                                     rl_config, num_envs=num_envs, device=device, seed=0,
                                     samples_per_prompt=min(num_envs, rl_config["RL_SAMPLES_PER_PROMPT"]))
        self.agent = agent
        self.device = device
        self.obs = self.env.reset()

    @torch.no_grad()
    def run(self, steps: int) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.obs, *_ = self.env.step(self.agent.act(self.obs))
        sync(self.device)
        return time.perf_counter() - t0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_config(name: str, config: dict, rl_config: dict, num_envs: int, steps: int, repeats: int, warmup: int,
                 device: torch.device) -> dict:
    torch.manual_seed(0)
    model = TransformerLM(config["VOCAB_SIZE"], config).to(device).eval()
    vocab = config["VOCAB_SIZE"]
    stream = np.random.default_rng(1).integers(0, EOT_TOKEN_ID, JUDGE_STREAM_TOKENS)
    reward_computer = RewardComputer(rl_config, NGramJudge.from_tokens(stream), torch.zeros(vocab, dtype=torch.bool))
    prompts = synthetic_prompts(NUM_PROMPTS, rl_config["RL_PROMPT_MIN_LENGTH"], rl_config["RL_PROMPT_MAX_LENGTH"],
                                vocab)
    agent = create_agent(rl_config).to(device).eval()
    sides = {"vectorized": Stepper(model, rl_config, reward_computer, prompts, agent, num_envs, device),
             "single": Stepper(model, rl_config, reward_computer, prompts, agent, 1, device)}
    for side in sides.values():
        side.run(warmup)
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for side_name, side in sides.items():
            seconds[side_name].append(side.run(steps))
    vec_rate = num_envs * steps / statistics.median(seconds["vectorized"])
    single_rate = steps / statistics.median(seconds["single"])
    best_ratio = num_envs * min(seconds["single"]) / min(seconds["vectorized"])  # fastest chunks: least disturbed
    return {"config": name, "parameters": count_parameters(model), "num_envs": num_envs,
            "episode_length": rl_config["RL_MAX_EPISODE_LENGTH"], "steps_per_chunk": steps, "repeats": repeats,
            "vectorized_steps_per_s": vec_rate, "single_steps_per_s": single_rate,
            "vectorized_ms_per_batched_step": 1000 * statistics.median(seconds["vectorized"]) / steps,
            "single_ms_per_step": 1000 * statistics.median(seconds["single"]) / steps,
            "ratio": vec_rate / single_rate, "ratio_best_chunks": best_ratio, "target": TARGET_RATIO,
            "chunk_seconds": seconds}


def print_table(rows: list[dict], machine: str) -> None:
    print(f"\nRL environment steps/s (tokens generated under control) — {machine}")
    print(f"{'config':<12} {'params':>8} {'N':>3} {'vectorized steps/s':>19} {'single steps/s':>15} {'ratio':>7} "
          f"{'best-chunk ratio':>17} {'target':>7}")
    for r in rows:
        print(f"{r['config']:<12} {r['parameters'] / 1e6:>7.1f}M {r['num_envs']:>3} "
              f"{r['vectorized_steps_per_s']:>19.1f} {r['single_steps_per_s']:>15.1f} {r['ratio']:>6.2f}x "
              f"{r['ratio_best_chunks']:>16.2f}x {'>=' + format(r['target'], 'g'):>7}")
    print("steps/s and ratio from the median chunk; best-chunk ratio from the fastest chunk of each side")


def before_after(ref: str, rounds: int, passthrough: list[str], ours: list[str]) -> dict:
    """Run REF's bench_rl.py and this one alternately `rounds` times; median vectorized steps/s per side and config."""
    env = {**os.environ, **TUNED_MALLOC_ENV, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), ref], check=True,
                       capture_output=True)
        try:
            for _ in range(rounds):
                for side, root in (("before", tree), ("after", ROOT)):
                    output = root / "benchmarks" / "results" / "bench_rl.json" if side == "before" else \
                        Path(tmp) / "after.json"
                    extra = ["--output", str(output), *ours] if side == "after" else []
                    # PYTHONPATH (ahead of the editable install) makes each side import its own tree's code
                    subprocess.run([sys.executable, "benchmarks/bench_rl.py", *passthrough, *extra], cwd=root,
                                   env={**env, "PYTHONPATH": str(root)},
                                   check=True, capture_output=True)
                    runs[side].append({r["config"]: r["vectorized_steps_per_s"]
                                       for r in json.loads(output.read_text())["rows"]})
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
    rows = []
    for config in runs["after"][0]:
        before = statistics.median(r[config] for r in runs["before"])
        after = statistics.median(r[config] for r in runs["after"])
        rows.append({"config": config, "before_steps_per_s": before, "after_steps_per_s": after,
                     "ratio": after / before, "target": 2.0,
                     "rounds": {side: [r[config] for r in runs[side]] for side in runs}})
    return {"ref": ref, "args": passthrough + ours, "rows": rows}


def print_before_after(result: dict, machine: str) -> None:
    print(f"\nRL environment steps/s before ({result['ref']}) and now — {machine}, {' '.join(result['args'])}")
    print(f"{'config':<12} {'before':>9} {'now':>9} {'ratio':>7} {'target':>7}")
    for r in result["rows"]:
        print(f"{r['config']:<12} {r['before_steps_per_s']:>9.1f} {r['after_steps_per_s']:>9.1f} {r['ratio']:>6.2f}x "
              f"{'>=' + format(r['target'], 'g'):>7}")
    print("medians over the rounds; each round runs the old tree's benchmark, then this one")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(BASE_CONFIG_PATH))
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="environment steps per timed chunk")
    parser.add_argument("--repeats", type=int, default=7, help="timed chunks per side, interleaved")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); 1 is steadier on a shared machine, where "
                             "OpenMP barriers stall small per-token ops")
    parser.add_argument("--output", default=str(RESULTS / "bench_rl.json"))
    parser.add_argument("--inference-weights", choices=get_args(InferenceWeights), default=None,
                        help="override the configs' INFERENCE_WEIGHTS (with --before: this tree's side only; the old "
                             "tree has no such setting)")
    parser.add_argument("--before", nargs="?", const=BEFORE_REF, default=None, metavar="REF",
                        help=f"compare with the environment at git REF (default {BEFORE_REF}) instead")
    parser.add_argument("--rounds", type=int, default=5, help="with --before: alternating runs per side")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.before:
        passthrough = [f"--num-envs={args.num_envs}", f"--steps={args.steps}", f"--repeats={args.repeats}",
                       f"--warmup={args.warmup}", f"--device={args.device}", f"--threads={torch.get_num_threads()}"]
        ours = [f"--inference-weights={args.inference_weights}"] if args.inference_weights else []
        result = before_after(args.before, args.rounds, passthrough, ours)
        machine = f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
        print_before_after(result, machine)
        suffix = f"_{args.inference_weights}" if args.inference_weights else ""
        atomic_write_json(RESULTS / f"bench_rl_before_after{suffix}.json", {**result, "machine": machine,
                                                                    "torch": torch.__version__,
                                                                    "timestamp": time.time()})
        return 0
    device = resolve_device(args.device)
    rl_config = read_yaml(RL_CONFIG_PATH)
    configs = [("base", load_config(args.config))]
    if QUICKSTART_CONFIG.exists():
        configs.append(("quickstart", load_config(QUICKSTART_CONFIG)))
    if args.inference_weights:
        configs = [(name, config.replace(INFERENCE_WEIGHTS=args.inference_weights)) for name, config in configs]
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rows = [bench_config(name, config, rl_config, args.num_envs, args.steps, args.repeats, args.warmup, device)
            for name, config in configs]
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    print_table(rows, machine)
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load_before is not None:
        print(f"1-minute load average: {load_before:.2f} before, {load_after:.2f} after "
              f"(other processes on the machine slow both sides)")
    atomic_write_json(Path(args.output), {"machine": machine, "device": str(device), "rows": rows,
                                                  "load_average": [load_before, load_after],
                                                  "torch": torch.__version__, "timestamp": time.time()})
    return 0


if __name__ == "__main__":
    from plugins.tidal.Utils import reexec_with_tuned_malloc

    reexec_with_tuned_malloc()  # the allocator settings train_rl.py runs with (ADR 0012)
    sys.exit(main())
