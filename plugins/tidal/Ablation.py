"""Ablation of the gating controller against constant modulation and classic decoders (SPEC §7, ADR 0011).

Every policy plays the SAME held-out prompts, once per seed, through the SAME `GatingEnvironment` (same KV-cached
batched forward, same observation, same `RewardComputer` with bigram statistics). The modulated policies (random,
fixed m, the grid of constants, the learned agent) drive the environment's default `ModulatedDecoder`. The decoding
baselines plug into the environment as decoders:
  PlainDecoder        fixed temperature / top-k / top-p (/ repetition penalty)
  MinPDecoder         keep tokens with p ≥ min_p · p_max
  MirostatV2Decoder   per-row μ; drop tokens whose surprise (bits) exceeds μ; μ ← μ − η (surprise − τ)

Prompts run in waves of N environments. Prompt p always plays in its own token-noise stream (seed, p), whatever the
policy and N. The comparison is therefore paired, and the statistics bootstrap over episodes.
"""
from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

from plugins.tidal.GatingEnvironment import GatingEnvironment
from plugins.tidal.GatingModulator import FixedGatingPolicy, GatingEffects, GatingModulator, RandomGatingPolicy
from plugins.tidal.RewardComputer import COMPONENTS
from plugins.tidal.TransformerLM import apply_repetition_penalty, filter_logits
from plugins.tidal.Utils import atomic_write_json

RESULTS_FILE = "ablation_results.json"
TRAJECTORY_FILE = "trajectory_report.json"
TIMING_KEYS = frozenset({"tokens_per_second", "wall_seconds", "timestamp"})  # differ between identical runs
CI_LEVEL = 0.95
BOOTSTRAP_SEED = 0
LN2 = math.log(2.0)
VERDICTS = ("learned beats best constant", "no significant difference", "best constant beats learned")


# ------------------------------------------------------------------------------------------- decoders
class PlainDecoder:
    """Fixed sampling parameters for every row: repetition penalty (1.0 = off), temperature, top-k, top-p."""

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0):
        self.temperature, self.top_k, self.top_p = float(temperature), int(top_k), float(top_p)
        self.repetition_penalty = float(repetition_penalty)

    @classmethod
    def at_modulation(cls, modulator: GatingModulator, m: float = 0.5) -> "PlainDecoder":
        """The modulator's temperature, top-k and top-p at `m`, without its repetition penalty."""
        effects = modulator(torch.tensor([float(m)]))
        return cls(float(effects.temperature[0]), int(effects.top_k[0]), float(effects.top_p[0]))

    def decode(self, logits: torch.Tensor, seen: torch.Tensor, m: torch.Tensor):
        if self.repetition_penalty != 1.0:
            logits = apply_repetition_penalty(logits, seen, self.repetition_penalty)
        modulated = filter_logits(logits, temperature=self.temperature)
        sampling = filter_logits(modulated, top_k=self.top_k, top_p=self.top_p)
        B, device = logits.shape[0], logits.device
        effects = GatingEffects(temperature=torch.full((B,), self.temperature, device=device),
                                repetition_penalty=torch.full((B,), self.repetition_penalty, device=device),
                                top_k=torch.full((B,), self.top_k, dtype=torch.long, device=device),
                                top_p=torch.full((B,), self.top_p, device=device))
        return modulated, sampling, effects

    def observe(self, token: torch.Tensor, sampling_logits: torch.Tensor) -> None:
        """Stateless."""

    def reset_rows(self, rows: torch.Tensor) -> None:
        """Stateless."""

    def describe(self) -> str:
        return (f"T={self.temperature:.3g}, top-k={self.top_k}, top-p={self.top_p:.3g}, "
                f"repetition penalty={self.repetition_penalty:.3g}")


class MinPDecoder:
    """min-p (Nguyen et al. 2024): after temperature, keep the tokens with p ≥ min_p · p_max, i.e. logit ≥ max logit +
    ln(min_p), with no softmax."""

    def __init__(self, min_p: float = 0.1, temperature: float = 1.0):
        if not 0.0 < min_p <= 1.0:
            raise ValueError(f"min_p must lie in (0, 1], got {min_p}")
        if not temperature > 0.0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.min_p, self.temperature = float(min_p), float(temperature)

    def decode(self, logits: torch.Tensor, seen: torch.Tensor, m: torch.Tensor):
        modulated = logits / self.temperature
        threshold = modulated.max(dim=-1, keepdim=True).values + math.log(self.min_p)  # (B, 1)
        return modulated, modulated.masked_fill(modulated < threshold, float("-inf")), None

    def observe(self, token: torch.Tensor, sampling_logits: torch.Tensor) -> None:
        """Stateless."""

    def reset_rows(self, rows: torch.Tensor) -> None:
        """Stateless."""

    def describe(self) -> str:
        return f"min-p={self.min_p:.3g}, T={self.temperature:.3g}"


class MirostatV2Decoder:
    """Mirostat v2 (Basu et al. 2021), batched: each row keeps its own μ (bits), starting at 2τ. Tokens whose surprise
    −log2 p exceeds μ are removed (the top token always stays). After sampling, μ ← μ − η (s − τ), where s is the
    sampled token's surprise under the truncated, renormalised distribution."""

    def __init__(self, tau: float = 5.0, eta: float = 0.1):
        if not tau > 0.0 or not eta > 0.0:
            raise ValueError(f"tau and eta must be > 0, got tau={tau}, eta={eta}")
        self.tau, self.eta = float(tau), float(eta)
        self.mu: torch.Tensor | None = None  # (N,)

    def reset_rows(self, rows: torch.Tensor) -> None:
        rows = torch.as_tensor(rows).long().reshape(-1)
        if rows.numel() == 0:
            return
        size = int(rows.max()) + 1
        if self.mu is None or self.mu.shape[0] < size:  # the first reset sizes the state to the batch
            grown = torch.full((size,), 2.0 * self.tau, device=rows.device)
            if self.mu is not None:
                grown[:self.mu.shape[0]] = self.mu.to(rows.device)
            self.mu = grown
        self.mu[rows.to(self.mu.device)] = 2.0 * self.tau

    def decode(self, logits: torch.Tensor, seen: torch.Tensor, m: torch.Tensor):
        B = logits.shape[0]
        if self.mu is None or self.mu.shape[0] != B:
            self.mu = torch.full((B,), 2.0 * self.tau, device=logits.device)
        self.mu = self.mu.to(logits.device)
        surprise = -logits.float().log_softmax(dim=-1) / LN2  # (B, V) bits
        keep = surprise <= self.mu.unsqueeze(1)
        keep.scatter_(1, logits.argmax(dim=-1, keepdim=True), True)
        return logits, logits.masked_fill(~keep, float("-inf")), None

    def observe(self, token: torch.Tensor, sampling_logits: torch.Tensor) -> None:
        logprob = sampling_logits.float().log_softmax(dim=-1).gather(1, token.long().unsqueeze(1)).squeeze(1)
        self.mu = self.mu - self.eta * (-logprob / LN2 - self.tau)

    def describe(self) -> str:
        return f"tau={self.tau:.3g}, eta={self.eta:.3g}, T=1"


# ------------------------------------------------------------------------------------------- metrics
def _ngrams(tokens: Sequence[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(generations: Sequence[Sequence[int]], n: int) -> float | None:
    """Corpus-level distinct-n (Li et al. 2016): distinct n-grams over all generations / total n-grams (an n-gram never
    spans two generations). None when there is no n-gram."""
    grams = [g for tokens in generations for g in _ngrams(tokens, n)]
    return len(set(grams)) / len(grams) if grams else None


def rep_n(tokens: Sequence[int], n: int) -> float | None:
    """Share of a generation's n-grams that repeat an earlier one: 1 − unique / total (Su et al. 2022, as a fraction).
    None when the generation is shorter than n."""
    grams = _ngrams(tokens, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else None


def _bootstrap_indices(count: int, samples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, count, size=(samples, count))


def bootstrap_ci(values, samples: int, seed: int = BOOTSTRAP_SEED, level: float = CI_LEVEL):
    """Percentile-bootstrap interval of the mean of `values` (E,) or of each column of (E, K): (low, high) as floats
    or (K,) arrays. The same seed draws the same resamples for any data with the same number of rows."""
    values = np.asarray(values, dtype=np.float64)
    means = values[_bootstrap_indices(values.shape[0], samples, seed)].mean(axis=1)  # (samples,) or (samples, K)
    tail = 50.0 * (1.0 - level)
    low, high = np.percentile(means, [tail, 100.0 - tail], axis=0)
    return (float(low), float(high)) if values.ndim == 1 else (low, high)


def has_bigram_statistics(reward_computer) -> bool:
    """Whether the reward computer's coherence comes from real bigram counts (without them it is a constant)."""
    flag = getattr(reward_computer, "has_bigram_statistics", None)
    if flag is not None:
        return bool(flag() if callable(flag) else flag)
    stats = getattr(reward_computer, "_stats", None)
    return bool(stats) and stats["bigram_keys"].numel() > 0


# ------------------------------------------------------------------------------------------- playing episodes
@dataclass
class Episodes:
    """One episode per (seed, prompt), in that order. Per-episode means over its steps; `tokens` are the generated
    ids (prompt excluded); `trajectories` only when recorded."""
    reward: np.ndarray             # (E,)
    components: np.ndarray         # (E, len(COMPONENTS))
    entropy: np.ndarray            # (E,) sampling entropy, nats
    modulation: np.ndarray         # (E,) mean m
    terminated: np.ndarray         # (E,) bool: ended at <|endoftext|>
    tokens: list[list[int]]
    sampled_tokens: int            # every token sampled, restarted rows included
    wall_seconds: float
    trajectories: list[dict] | None = None

    @staticmethod
    def concatenate(parts: list["Episodes"]) -> "Episodes":
        trajectories = None if any(p.trajectories is None for p in parts) else \
            [t for p in parts for t in p.trajectories]
        return Episodes(
            reward=np.concatenate([p.reward for p in parts]),
            components=np.concatenate([p.components for p in parts]),
            entropy=np.concatenate([p.entropy for p in parts]),
            modulation=np.concatenate([p.modulation for p in parts]),
            terminated=np.concatenate([p.terminated for p in parts]),
            tokens=[t for p in parts for t in p.tokens],
            sampled_tokens=sum(p.sampled_tokens for p in parts),
            wall_seconds=sum(p.wall_seconds for p in parts),
            trajectories=trajectories,
        )


@dataclass
class _Player:
    """Everything that stays the same across the policies of one study."""
    model: torch.nn.Module
    modulator: GatingModulator
    reward_computer: object
    prompts: list[list[int]]
    rl_config: dict
    device: torch.device
    num_envs: int
    use_gates: bool

    def play(self, seed: int, policy=None, deterministic: bool = False,
             decoder_factory: Callable[[], object] | None = None, record: bool = False) -> Episodes:
        """Every prompt once, in waves of `num_envs`, with `policy.act` choosing m (0.5 when there is no policy, for
        decoders m does not drive). The global torch RNG is forked and seeded, so a stochastic agent is reproducible
        and the caller's RNG is untouched."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.default_generator.manual_seed(seed)
            if self.device.type == "cuda":
                with torch.cuda.device(self.device):
                    torch.cuda.manual_seed(seed)
            waves = []
            for start in range(0, len(self.prompts), self.num_envs):
                wave = self.prompts[start:start + self.num_envs]
                decoder = decoder_factory() if decoder_factory else None
                waves.append(self._play_wave(wave, seed, start, policy, deterministic, decoder, record))
        return Episodes.concatenate(waves)

    @torch.no_grad()
    def _play_wave(self, prompts, seed, offset, policy, deterministic, decoder, record) -> Episodes:
        t0 = time.perf_counter()
        n, max_steps = len(prompts), int(self.rl_config["RL_MAX_EPISODE_LENGTH"])
        env = GatingEnvironment(self.model, self.modulator, self.reward_computer, prompts, self.rl_config,
                                num_envs=n, device=self.device, seed=seed, env_offset=offset, decoder=decoder,
                                use_gates=self.use_gates, sequential_prompts=True)
        obs = env.reset()
        # storage shaped (steps, envs); a row counts until its first episode ends, its restarts are ignored
        active = torch.zeros(max_steps, n, dtype=torch.bool)
        values = torch.zeros(max_steps, n, 1 + len(COMPONENTS))  # total reward, then each component
        entropy, modulation = torch.zeros(max_steps, n), torch.zeros(max_steps, n)
        tokens = torch.zeros(max_steps, n, dtype=torch.long)
        eot = torch.zeros(max_steps, n, dtype=torch.bool)
        effects = []
        alive = torch.ones(n, dtype=torch.bool)
        steps = 0
        while steps < max_steps and bool(alive.any()):
            m = policy.act(obs, deterministic=deterministic) if policy is not None else \
                torch.full((n,), env.initial_m, device=self.device)
            m = m.detach().to(self.device).float().reshape(n).clamp(0.0, 1.0)  # what the env applies
            obs, reward, terminated, truncated, info = env.step(m)
            active[steps] = alive
            values[steps] = torch.stack([reward, *(info["components"][c] for c in COMPONENTS)], dim=1).cpu()
            entropy[steps], modulation[steps] = info["sampling_entropy"].cpu(), m.cpu()
            tokens[steps], eot[steps] = info["tokens"].cpu(), terminated.cpu()
            effects.append(info["effects"] if record else None)
            alive &= ~(terminated | truncated).cpu()
            steps += 1
        active = active[:steps]
        weight = active.float() / active.sum(dim=0)  # (T, n): per-episode mean over its own steps
        per_episode = (values[:steps] * weight.unsqueeze(2)).sum(dim=0).double().numpy()  # (n, 1 + C)
        generated = [tokens[:steps, b][active[:, b]].tolist() for b in range(n)]
        trajectories = None
        if record:
            trajectories = [{"gateSignals": [[float(modulation[t, b])] for t in range(len(generated[b]))],
                             "effects": [None if effects[t] is None else GatingModulator.effects_dict(effects[t], b)
                                         for t in range(len(generated[b]))],
                             "tokenIds": generated[b]} for b in range(n)]
        return Episodes(reward=per_episode[:, 0], components=per_episode[:, 1:],
                        entropy=(entropy[:steps] * weight).sum(dim=0).double().numpy(),
                        modulation=(modulation[:steps] * weight).sum(dim=0).double().numpy(),
                        terminated=(eot[:steps] & active).any(dim=0).numpy(), tokens=generated,
                        sampled_tokens=n * steps, wall_seconds=time.perf_counter() - t0, trajectories=trajectories)


# ------------------------------------------------------------------------------------------- statistics
def _stat(values: np.ndarray, low: float, high: float) -> dict:
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "ci_low": float(low), "ci_high": float(high)}


def _mean_or_none(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarise(episodes: Episodes, samples: int, modulated: bool, description: str,
              constant_m: float | None = None) -> dict:
    """The per-policy block of ablation_results.json (ADR 0011 defines each figure)."""
    table = np.column_stack([episodes.reward, episodes.components])  # (E, 1 + C)
    low, high = bootstrap_ci(table, samples)
    stats = [_stat(table[:, i], low[i], high[i]) for i in range(table.shape[1])]
    return {
        "description": description,
        "constant_m": constant_m,
        "episodes": int(len(episodes.reward)),
        "generated_tokens": int(sum(len(t) for t in episodes.tokens)),
        "mean_length": float(np.mean([len(t) for t in episodes.tokens])),
        "terminated_fraction": float(episodes.terminated.mean()),
        "reward": stats[0],
        "components": dict(zip(COMPONENTS, stats[1:])),
        **{f"distinct_{n}": distinct_n(episodes.tokens, n) for n in (1, 2, 3)},
        "rep_4": _mean_or_none(rep_n(t, 4) for t in episodes.tokens),
        "entropy": float(episodes.entropy.mean()),
        "mean_m": float(episodes.modulation.mean()) if modulated else None,
        "tokens_per_second": episodes.sampled_tokens / max(episodes.wall_seconds, 1e-9),
        "wall_seconds": episodes.wall_seconds,
    }


def compare(learned: np.ndarray, best: np.ndarray, samples: int) -> dict:
    """Paired bootstrap of the per-episode reward differences learned − best constant, and the verdict."""
    difference = np.asarray(learned, dtype=np.float64) - np.asarray(best, dtype=np.float64)
    low, high = bootstrap_ci(difference, samples)
    verdict = VERDICTS[0] if low > 0 else VERDICTS[2] if high < 0 else VERDICTS[1]
    return {"difference": float(difference.mean()), "ci_low": low, "ci_high": high, "verdict": verdict}


# ------------------------------------------------------------------------------------------- the study
class _Run(NamedTuple):
    episodes: Episodes
    description: str
    modulated: bool = True  # False for decoders that m does not drive: their mean m is null
    constant_m: float | None = None


def _check_prompts(prompts, vocab_size: int) -> list[list[int]]:
    if not prompts:
        raise ValueError("the ablation needs at least one prompt")
    checked = []
    for i, prompt in enumerate(prompts):
        ids = [int(t) for t in prompt]
        if not ids:
            raise ValueError(f"prompt {i} is empty")
        if min(ids) < 0 or max(ids) >= vocab_size:
            raise ValueError(f"prompt {i} has token ids outside [0, {vocab_size})")
        checked.append(ids)
    return checked


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"[ablation] {message}", file=sys.stderr, flush=True)


def run_ablation_study(model, prompts: Sequence[Sequence[int]], rl_config: dict, reward_computer, agent=None,
                       experiment_dir: str | Path | None = None, device: str | torch.device = "cpu",
                       seeds: Sequence[int] | None = None, num_envs: int | None = None, progress: bool = True,
                       use_gates: bool | None = None) -> dict:
    """Score every policy on the same held-out prompts, the same seeds and the same reward computer: random, fixed
    0.5, the best constant m of a grid over [0, 1], the learned agent (stochastic and deterministic, when given),
    plain top-k/top-p at m = 0.5's settings, min-p and Mirostat v2. Returns the results dict (see ADR 0011) and
    writes it to `experiment_dir/ablation_results.json` when a directory is given.

    Raises ValueError when the reward computer has no bigram statistics (coherence would be constant, SPEC §14),
    or when there are no prompts, an empty prompt, or no seeds."""
    if not has_bigram_statistics(reward_computer):
        raise ValueError("the ablation needs a reward computer with bigram statistics; without them coherence is "
                         "constant (build it with RewardComputer.bigram_statistics_from_tokens)")
    prompts = _check_prompts(prompts, model.vocab_size)
    seeds = [int(s) for s in (rl_config["RL_ABLATION_SEEDS"] if seeds is None else seeds)]
    if not seeds:
        raise ValueError("the ablation needs at least one seed")
    device = torch.device(device)
    samples = int(rl_config["RL_ABLATION_BOOTSTRAP_SAMPLES"])
    use_gates = bool(rl_config.get("RL_UNFREEZE_DYNAMIC_GATES", False)) if use_gates is None else use_gates
    modulator = GatingModulator(rl_config)
    player = _Player(model, modulator, reward_computer, prompts, rl_config, device,
                     max(1, min(num_envs or rl_config["RL_NUM_ENVS"], len(prompts))), use_gates)

    def play(name: str, policy_for_seed: Callable[[int], object] | None = None, **kwargs) -> Episodes:
        episodes = Episodes.concatenate([
            player.play(seed, policy=policy_for_seed(seed) if policy_for_seed else None, **kwargs) for seed in seeds])
        _log(progress, f"{name}: mean reward {episodes.reward.mean():+.4f} over {len(episodes.reward)} episodes "
                       f"({episodes.wall_seconds:.1f} s)")
        return episodes

    # the grid of constants always contains 0.5: "fixed 0.5" is one of its runs, so the best constant is never
    # worse than the fixed baseline reported beside it
    grid_ms = sorted({round(float(m), 10) for m in np.linspace(0.0, 1.0, int(rl_config["RL_ABLATION_GRID_POINTS"]))}
                     | {0.5})

    def constant(m: float) -> Episodes:
        return play(f"constant m={m:g}", lambda seed: FixedGatingPolicy(m))

    constant_runs = {m: constant(m) for m in grid_ms}
    grid = []
    for m in grid_ms:
        stat = _stat(constant_runs[m].reward, *bootstrap_ci(constant_runs[m].reward, samples))
        grid.append({"m": m, "mean_reward": stat["mean"], "std": stat["std"], "ci_low": stat["ci_low"],
                     "ci_high": stat["ci_high"]})
    best_m = max(grid, key=lambda g: g["mean_reward"])["m"]  # the first of equal maxima: the most conservative m

    runs: dict[str, _Run] = {
        "random": _Run(play("random", RandomGatingPolicy), "m ~ U(0, 1) per token"),
        "fixed_0.5": _Run(constant_runs[0.5], "m = 0.5 for every token", constant_m=0.5),
        "best_constant": _Run(constant_runs[best_m], f"best m of the grid: {best_m:g}", constant_m=best_m),
    }
    if agent is not None:
        runs["learned_stochastic"] = _Run(play("learned (stochastic)", lambda seed: agent, deterministic=False),
                                          "PPO agent, m sampled from the policy")
        runs["learned_deterministic"] = _Run(play("learned (deterministic)", lambda seed: agent, deterministic=True),
                                             "PPO agent, m = the policy mean")
    baselines = {
        "plain_top_k_top_p": lambda: PlainDecoder.at_modulation(modulator, 0.5),
        "min_p": lambda: MinPDecoder(float(rl_config["RL_ABLATION_MIN_P"])),
        "mirostat_v2": lambda: MirostatV2Decoder(float(rl_config["RL_ABLATION_MIROSTAT_TAU"]),
                                                 float(rl_config["RL_ABLATION_MIROSTAT_ETA"])),
    }
    for name, factory in baselines.items():
        runs[name] = _Run(play(name, decoder_factory=factory), factory().describe(), modulated=False)

    policies = {name: summarise(run.episodes, samples, run.modulated, run.description, run.constant_m)
                for name, run in runs.items()}
    if agent is not None:
        best = constant_runs[best_m].reward
        comparison = {"policy": "learned_deterministic", "best_constant_m": best_m, "paired": True,
                      **compare(runs["learned_deterministic"].episodes.reward, best, samples),
                      "stochastic": compare(runs["learned_stochastic"].episodes.reward, best, samples)}
    else:
        comparison = {"policy": None, "best_constant_m": best_m, "paired": True, "difference": None,
                      "ci_low": None, "ci_high": None, "verdict": "no learned policy evaluated"}

    results = {
        "config": {
            "seeds": seeds, "num_prompts": len(prompts), "episode_length": int(rl_config["RL_MAX_EPISODE_LENGTH"]),
            "episodes_per_policy": len(prompts) * len(seeds), "num_envs": player.num_envs,
            "grid_points": len(grid_ms), "bootstrap_samples": samples, "ci_level": CI_LEVEL,
            "bootstrap_seed": BOOTSTRAP_SEED, "use_gates": use_gates, "device": str(device),
            "reward_weights": {k: float(v) for k, v in reward_computer.weights.items()},
            "min_p": float(rl_config["RL_ABLATION_MIN_P"]),
            "mirostat_tau": float(rl_config["RL_ABLATION_MIROSTAT_TAU"]),
            "mirostat_eta": float(rl_config["RL_ABLATION_MIROSTAT_ETA"]),
            "best_constant_selection": "highest mean reward on the same episodes (optimistic for the constant)",
        },
        "policies": policies,
        "grid": grid,
        "best_constant_m": best_m,
        "learned_vs_best_constant": comparison,
        "timestamp": time.time(),
    }
    if experiment_dir is not None:
        atomic_write_json(Path(experiment_dir) / RESULTS_FILE, results)
    return results


# ------------------------------------------------------------------------------------------- the table
_COLUMNS = [("policy", 22), ("reward ± 95% CI", 18), *((c[:5], 7) for c in COMPONENTS), ("dist-1", 7),
            ("dist-2", 7), ("dist-3", 7), ("rep-4", 7), ("H", 6), ("m", 6), ("tok/s", 8)]


def _cell(value, width: int, spec: str = ".3f") -> str:
    text = "-" if value is None else format(value, spec) if isinstance(value, float) else str(value)
    return text.rjust(width)


def format_ablation_table(results: dict) -> str:
    """A fixed-width table, one row per policy, then the grid and the learned-vs-best-constant verdict."""
    header = " ".join(name.ljust(w) if i == 0 else name.rjust(w) for i, (name, w) in enumerate(_COLUMNS))
    lines = [header, "-" * len(header)]
    for name, p in results["policies"].items():
        reward = p["reward"]
        half_width = (reward["ci_high"] - reward["ci_low"]) / 2.0
        cells = [name.ljust(_COLUMNS[0][1])[:_COLUMNS[0][1]], f"{reward['mean']:+.4f} ± {half_width:.4f}".rjust(18)]
        cells += [_cell(p["components"][c]["mean"], 7) for c in COMPONENTS]
        cells += [_cell(p[k], 7) for k in ("distinct_1", "distinct_2", "distinct_3", "rep_4")]
        cells += [_cell(p["entropy"], 6, ".2f"), _cell(p["mean_m"], 6, ".2f"), _cell(p["tokens_per_second"], 8, ".1f")]
        lines.append(" ".join(cells))
    lines.append("")
    lines.append("grid: " + "  ".join(f"m={g['m']:g}: {g['mean_reward']:+.4f}" for g in results["grid"]))
    comparison = results["learned_vs_best_constant"]
    if comparison["difference"] is None:
        lines.append(f"best constant m = {results['best_constant_m']:g}; {comparison['verdict']}")
    else:
        lines.append(f"learned (deterministic) − best constant (m = {results['best_constant_m']:g}): "
                     f"{comparison['difference']:+.4f} [{comparison['ci_low']:+.4f}, {comparison['ci_high']:+.4f}] "
                     f"-> {comparison['verdict']}")
        s = comparison["stochastic"]
        lines.append(f"learned (stochastic) − best constant: {s['difference']:+.4f} "
                     f"[{s['ci_low']:+.4f}, {s['ci_high']:+.4f}] -> {s['verdict']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- trajectories
def trajectory_report(model, prompts: Sequence[Sequence[int]], rl_config: dict, agent, reward_computer=None,
                      device: str | torch.device = "cpu", seed: int = 0, num_envs: int | None = None,
                      deterministic: bool = True, sweep: Sequence[float] = (0.0, 0.5, 1.0),
                      bootstrap: int | None = None, experiment_dir: str | Path | None = None,
                      decode: Callable[[Sequence[int]], str] | None = None, use_gates: bool | None = None) -> dict:
    """Trajectories of the learned policy (one per prompt, in the generator's lightweight format) and texts generated
    at each constant m of `sweep`, analysed by TrajectoryAnalyzer.analyze_batch. Written to
    `experiment_dir/trajectory_report.json` when a directory is given. Rewards play no part here, so a reward
    computer without bigram statistics is acceptable (one is built when none is given)."""
    from plugins.tidal.TrajectoryAnalyzer import analyze_batch

    if decode is None:
        from plugins.tidal.DataPipeline import decode
    prompts = _check_prompts(prompts, model.vocab_size)
    if reward_computer is None:
        from plugins.tidal.RewardComputer import RewardComputer

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reward_computer = RewardComputer(rl_config, model.vocab_size)
    use_gates = bool(rl_config.get("RL_UNFREEZE_DYNAMIC_GATES", False)) if use_gates is None else use_gates
    player = _Player(model, GatingModulator(rl_config), reward_computer, prompts, rl_config, torch.device(device),
                     max(1, min(num_envs or rl_config["RL_NUM_ENVS"], len(prompts))), use_gates)

    learned = player.play(seed, policy=agent, deterministic=deterministic, record=True)
    by_prompt: dict[str, list[dict]] = {}
    for prompt, trajectory in zip(prompts, learned.trajectories):
        trajectory["tokenTexts"] = [decode([t]) for t in trajectory["tokenIds"]]
        by_prompt.setdefault(decode(prompt), []).append(trajectory)
    texts_by_m = {float(m): [decode(t) for t in player.play(seed, policy=FixedGatingPolicy(float(m))).tokens]
                  for m in sweep}
    samples = int(rl_config["RL_ABLATION_BOOTSTRAP_SAMPLES"]) if bootstrap is None else bootstrap
    report = analyze_batch(by_prompt, texts_by_m, bootstrap=samples, seed=seed)
    if experiment_dir is not None:
        atomic_write_json(Path(experiment_dir) / TRAJECTORY_FILE, report)
    return report
