"""The decoding study: can the learned controller beat every tuned fixed decoder at matched diversity? (ADR 0015)

Protocol, in the order it runs:
1. Prompt sets cut from different stories the LM never trained on (StudyData): train (the RL environment's), dev
   (tuning) and test (the verdict), each prompt played as K samples (K = RL_SAMPLES_PER_PROMPT sampling streams).
2. Every fixed family is swept on DEV over a grid of comparable size: temperature, top-p × T, top-k × T, min-p × T,
   Mirostat (τ around the LM's own cross-entropy on dev text), EDT, greedy, and the constants of the controller's
   own action space. Each family's dev Pareto frontier (held-out quality vs set diversity) is replayed on TEST.
3. The learned controller (one per RL seed), the per-token oracle over its action space and the prompts' true
   continuations (the human point) are measured on TEST with the same held-out measures: NLL under the EVALUATION
   judge (neither the generator nor the training reward's judge), 4-gram precision against the judge's disjoint
   sample, set distinct-2 over the K samples, distinct-n and self-BLEU at a fixed sample count, rep-4, length and
   EOT rate. The training reward is reported as a diagnostic only.
4. The verdict (StudyMetrics.frontier_gap): the learned point against every family's interpolated test frontier at
   its own diversity, with a paired bootstrap over prompts; a win only when the whole CI lies above zero.

Every decoder plays through the same `GatingEnvironment` (same batched KV-cached forward, same prompts, same
per-(prompt, sample) random streams: common random numbers), so differences are the decoders'.
"""
from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from core.io import atomic_write_json
from core.names import ABLATION_FILE
from plugins.tidal.Config import RLConfig
from plugins.tidal.Decoding import ControlledDecoder, EDTDecoder, MirostatDecoder, PlainDecoder
from plugins.tidal.GatingEnvironment import GatingEnvironment, OraclePolicy
from plugins.tidal.GatingModulator import FixedGatingPolicy, GatingModulator, ResidualActionSpace
from plugins.tidal.StudyData import PromptSet
from plugins.tidal.StudyMetrics import bootstrap_mean_ci, corpus_measures, frontier_gap, measure, pareto_frontier
from plugins.tidal.Tokenizer import EOT_TOKEN_ID

CI_LEVEL = 0.95
BOOTSTRAP_SEED = 0
PRIMARY_QUALITY = "judge_nll"        # lower is better; the frontier's quality axis is its negative
PRIMARY_DIVERSITY = "set_distinct_2"
FAMILY_LABELS = {
    "temperature": "temperature sweep", "top_p": "top-p × T", "top_k": "top-k × T", "min_p": "min-p × T",
    "mirostat": "Mirostat v2 (τ around the LM's cross-entropy)", "edt": "EDT (T0 · N^(θ/H))", "greedy": "greedy",
    "constant_action": "constants of the controller's action space",
}


# ------------------------------------------------------------------------------------------- the grids
def family_grids(rl_config: RLConfig | Mapping, model_ce_bits: float, action_space=None
                 ) -> dict[str, list[tuple[dict, Callable]]]:
    """{family: [(params, decoder factory), ...]}; the factories make fresh (stateful) decoders per wave. The
    constants of the controller's action space are a family only when an action space is given."""
    rl_config = RLConfig.of(rl_config)
    temps, grid_temps = rl_config.RL_STUDY_TEMPERATURES, rl_config.RL_STUDY_GRID_TEMPERATURES

    def plain(**p):
        return p, lambda: PlainDecoder(**p)

    grids = {
        "temperature": [plain(temperature=t) for t in temps],
        "top_p": [plain(temperature=t, top_p=float(p)) for t, p in
                  itertools.product(grid_temps, rl_config.RL_STUDY_TOP_PS)],
        "top_k": [plain(temperature=t, top_k=int(k)) for t, k in
                  itertools.product(grid_temps, rl_config.RL_STUDY_TOP_KS)],
        "min_p": [plain(temperature=t, min_p=float(p)) for t, p in
                  itertools.product(grid_temps, rl_config.RL_STUDY_MIN_PS)],
        "mirostat": [({"tau": round(model_ce_bits * f, 3), "eta": 0.1},
                      lambda f=f: MirostatDecoder(tau=model_ce_bits * f, eta=0.1))
                     for f in rl_config.RL_STUDY_MIROSTAT_TAU_FACTORS],
        "edt": [({"t0": float(t0), "theta": float(th), "n": 0.8},
                 lambda t0=t0, th=th: EDTDecoder(t0=float(t0), theta=float(th), n=0.8))
                for t0, th in itertools.product(rl_config.RL_STUDY_EDT_T0S, rl_config.RL_STUDY_EDT_THETAS)],
        "greedy": [plain(temperature=0.0)],
    }
    if action_space is None:
        return grids
    grids["constant_action"] = [({"action": a, **action_space(torch.tensor([a])).row(0)},
                                 lambda: ControlledDecoder(action_space))
                                for a in action_space.constant_actions(rl_config.RL_STUDY_CONSTANT_POINTS)]
    return grids


def model_cross_entropy_bits(model, prompts: PromptSet, device) -> float:
    """The generator's mean per-token cross-entropy (bits) on the dev prompts' true continuations: where Mirostat's
    target surprise τ belongs (above it the text gets confused, below it bored)."""
    total, count = 0.0, 0
    with torch.inference_mode():
        for prompt, continuation in zip(prompts.prompts, prompts.continuations, strict=True):
            if not continuation:
                continue
            ids = torch.tensor([prompt + continuation], device=device)[:, -model.max_context_length:]
            logits = model(ids[:, :-1]).logits.float()
            targets = ids[:, 1:]
            nll = torch.nn.functional.cross_entropy(logits[0], targets[0], reduction="none")[-len(continuation):]
            total, count = total + float(nll.sum()), count + nll.numel()
    return total / max(count, 1) / math.log(2.0)


# ------------------------------------------------------------------------------------------- playing
@dataclass
class Samples:
    """K generations per prompt (prompt excluded, EOT kept when sampled) and the mean training reward per prompt."""
    tokens: list[list[list[int]]]
    train_reward: np.ndarray
    actions: np.ndarray | None


@dataclass
class Player:
    """What stays the same across the decoders of one study."""
    model: torch.nn.Module
    action_space: GatingModulator | ResidualActionSpace | None  # None: a study of the fixed decoders only
    reward_computer: object
    rl_config: RLConfig
    device: torch.device
    use_gates: bool = False

    def __post_init__(self):
        self.rl_config = RLConfig.of(self.rl_config)

    @property
    def group_size(self) -> int:
        return self.rl_config.RL_SAMPLES_PER_PROMPT

    def play(self, prompts: list[list[int]], seed: int = 0, decoder_factory: Callable | None = None,
             policy=None, oracle_actions: list[float] | None = None, oracle_lambda: float = 0.0,
             deterministic: bool = True) -> Samples:
        """Every prompt once as K samples, in waves of RL_STUDY_BATCH rows. Prompt p's sample k always draws from the
        stream (seed, p·K + k), whatever the decoder: the comparison is paired."""
        K = self.group_size
        wave_prompts = max(1, self.rl_config.RL_STUDY_BATCH // K)
        tokens, rewards, actions = [], [], []
        with torch.random.fork_rng(devices=[]):  # a stochastic policy draws from a seeded, private stream
            torch.manual_seed(seed)
            for w in range(0, len(prompts), wave_prompts):
                wave = prompts[w:w + wave_prompts]
                decoder = decoder_factory() if decoder_factory else None
                t, r, a = self._play_wave(wave, seed, w * K, decoder, policy, oracle_actions, oracle_lambda,
                                          deterministic)
                tokens += t
                rewards.append(r)
                actions.append(a)
        return Samples(tokens, np.concatenate(rewards), np.concatenate(actions))

    @torch.no_grad()
    def _play_wave(self, prompts, seed, offset, decoder, policy, oracle_actions, oracle_lambda, deterministic):
        K, n = self.group_size, len(prompts) * self.group_size
        env = GatingEnvironment(self.model, self.action_space, self.reward_computer, prompts, self.rl_config,
                                num_envs=n, device=self.device, seed=seed, env_offset=offset, decoder=decoder,
                                use_gates=self.use_gates, sequential_prompts=True, samples_per_prompt=K,
                                observations=policy is not None and not isinstance(policy, FixedGatingPolicy))
        obs = env.reset()
        oracle = OraclePolicy(env, oracle_actions, oracle_lambda) if oracle_actions is not None else None
        generated = [[] for _ in range(n)]
        reward_sum, action_sum = torch.zeros(n), torch.zeros(n)
        alive = torch.ones(n, dtype=torch.bool)
        while bool(alive.any()):
            uniforms = None
            if oracle is not None:
                action = oracle.choose()
                uniforms = oracle.uniforms
            elif policy is not None:
                action = policy.act(obs, deterministic=deterministic)
            else:
                action = torch.full((n,), env.initial_action, device=self.device)
            obs, reward, terminated, truncated, info = env.step(action, uniforms)
            live = alive & info["active"].cpu()
            for b in live.nonzero().squeeze(1).tolist():
                generated[b].append(int(info["tokens"][b]))
            reward_sum += reward.cpu() * live
            action_sum += info["action"].cpu() * live
            alive &= ~((terminated | truncated).cpu() & live) & info["active"].cpu()
        lengths = torch.tensor([max(len(g), 1) for g in generated], dtype=torch.float32)
        per_row_reward = (reward_sum / lengths).view(len(prompts), K).mean(dim=1).double().numpy()
        per_row_action = (action_sum / lengths).view(len(prompts), K).mean(dim=1).double().numpy()
        return [generated[p * K:(p + 1) * K] for p in range(len(prompts))], per_row_reward, per_row_action


# ------------------------------------------------------------------------------------------- points
def make_point(name: str, family: str, params: dict, prompts: list[list[int]], samples: Samples | None,
               judge, bootstrap: int, texts: list[list[list[int]]] | None = None) -> tuple[dict, dict]:
    """(the JSON point, its per-prompt arrays {quality, diversity}) for one decoder's samples on a prompt set."""
    if samples is not None:
        tokens = samples.tokens
    elif texts is not None:
        tokens = texts
    else:
        raise ValueError("make_point needs the samples or the texts")
    per_prompt = measure(prompts, tokens, judge, EOT_TOKEN_ID)
    corpus = corpus_measures([s[0] for s in tokens], len(tokens))
    nll = per_prompt[PRIMARY_QUALITY]
    has_set = len(tokens[0]) > 1
    # a prompt whose samples hold no bigram (all ended at once) has no diversity to speak of: 0, for every decoder
    div = np.nan_to_num(per_prompt[PRIMARY_DIVERSITY], nan=0.0) if has_set else None
    point: dict[str, Any] = {
        "name": name, "family": family, "params": params,
        "judge_nll": float(nll.mean()), "judge_nll_ci": list(bootstrap_mean_ci(nll, bootstrap, BOOTSTRAP_SEED)),
        "diversity": None if div is None else float(div.mean()),
        "diversity_ci": None if div is None else list(bootstrap_mean_ci(div, bootstrap, BOOTSTRAP_SEED)),
        "metrics": {"prec_4": float(np.nanmean(per_prompt["prec_4"])), **{k: float(v) for k, v in corpus.items()},
                    "rep_4": float(np.nanmean(per_prompt["rep_4"])), "length": float(per_prompt["length"].mean()),
                    "eot_rate": float(per_prompt["eot_rate"].mean()),
                    "train_reward": None if samples is None else float(samples.train_reward.mean())},
    }
    if samples is not None and samples.actions is not None and family in ("learned", "oracle", "constant_action"):
        point["metrics"]["mean_action"] = float(samples.actions.mean())
    arrays = {"quality": -nll, "diversity": div}
    return point, arrays


def nearest_on_frontier(points: list[dict], diversity: float, count: int) -> list[dict]:
    """The dev points a family replays on test: its Pareto points (all when count is 0, else `count` of them around
    `diversity`, half just below and half just above where the family has them), plus its least diverse point when
    that one is dominated — it is what shows the family reaching down to low diversity, which the verdict needs
    (StudyMetrics.frontier_gap) even where the family's text is worse there."""
    front = sorted((p for p in points if p["name"] in _frontier_names(points)), key=lambda p: p["diversity"])
    if 0 < count < len(front):
        below = [p for p in front if p["diversity"] <= diversity][::-1]
        above = [p for p in front if p["diversity"] > diversity]
        take_below = min(len(below), max(count // 2, count - len(above)))
        front = below[:take_below] + above[:count - take_below]
    lowest = min(points, key=lambda p: p["diversity"])
    keep = front + ([lowest] if lowest not in front else [])
    return sorted(keep, key=lambda p: p["diversity"])


def _frontier_names(points: list[dict]) -> set[str]:
    """The names of the points on the (diversity, −judge NLL) Pareto frontier."""
    front = pareto_frontier([(p["diversity"], -p["judge_nll"]) for p in points])
    on = {(round(d, 12), round(q, 12)) for d, q in front}
    return {p["name"] for p in points if (round(p["diversity"], 12), round(-p["judge_nll"], 12)) in on}


# ------------------------------------------------------------------------------------------- the study
def tune_on_dev(player: Player, dev: PromptSet, eval_judge, rl_config: RLConfig | Mapping,
                families: tuple[str, ...] | None = None, ce_bits: float | None = None, progress: bool = True) -> dict:
    """Sweep the families (all by default; the action space's constants only when the player has one) on the dev
    prompts: {"ce_bits", "families": {family: [point...]}, "factories": {point name: (factory, policy)}}."""
    rl_config = RLConfig.of(rl_config)
    ce_bits = model_cross_entropy_bits(player.model, dev, player.device) if ce_bits is None else ce_bits
    grids = family_grids(rl_config, ce_bits, player.action_space)
    grids = {f: g for f, g in grids.items() if families is None or f in families}
    bootstrap = rl_config.RL_ABLATION_BOOTSTRAP_SAMPLES
    swept: dict[str, list[dict]] = {}
    factories, arrays = {}, {}
    total = sum(len(g) for g in grids.values())
    bar = tqdm(total=total, desc="study: dev sweep", unit="decoder", disable=not progress, dynamic_ncols=True)
    for family, grid in grids.items():
        swept[family] = []
        for params, factory in grid:
            name = f"{family} {_label(params)}"
            policy = FixedGatingPolicy(params["action"]) if family == "constant_action" else None
            samples = player.play(dev.prompts, 0, factory, policy)
            point, arrays[name] = make_point(name, family, params, dev.prompts, samples, eval_judge, bootstrap)
            swept[family].append(point)
            factories[name] = (factory, policy)
            bar.update(1)
    bar.close()
    return {"ce_bits": ce_bits, "families": swept, "factories": factories, "arrays": arrays}


def merge_tuning(dev: dict, more: dict) -> dict:
    """`dev` with the families, factories and arrays of a second sweep added (e.g. the action space's constants)."""
    for key in ("families", "factories", "arrays"):
        dev[key].update(more[key])
    return dev


def oracle_check(player: Player, dev: PromptSet, eval_judge, rl_config: RLConfig | Mapping, dev_tuning: dict,
                 lagrange_multiplier: float = 0.0) -> dict:
    """Before any PPO: the per-token oracle over the action space on the dev prompts, against every fixed family's
    dev frontier on the held-out measures. If even the oracle cannot clear the frontier, the training reward (not
    the optimiser) is what needs changing — the caller says so."""
    rl_config = RLConfig.of(rl_config)
    if player.action_space is None:
        raise ValueError("the oracle plays the constants of the player's action space, and it has none")
    actions = player.action_space.constant_actions(rl_config.RL_STUDY_CONSTANT_POINTS)
    samples = player.play(dev.prompts, 0, oracle_actions=actions, oracle_lambda=lagrange_multiplier)
    bootstrap = rl_config.RL_ABLATION_BOOTSTRAP_SAMPLES
    point, arrays = make_point("per-token oracle (dev)", "oracle", {"actions": len(actions)}, dev.prompts, samples,
                               eval_judge, bootstrap)
    families = {f: [dev_tuning["arrays"][p["name"]] for p in points] for f, points in dev_tuning["families"].items()}
    return {"point": point, **frontier_gap(arrays, families, bootstrap, BOOTSTRAP_SEED, CI_LEVEL)}


def residual_base(dev_families: dict) -> dict:
    """The residual action space's base: the min-p × T dev point with the highest training reward (the objective
    the controller then optimises), so "no change" is already the best decoder of its kind."""
    best = max(dev_families["min_p"], key=lambda p: p["metrics"]["train_reward"])
    return {"temperature": best["params"]["temperature"], "min_p": best["params"]["min_p"], "top_k": 0, "top_p": 1.0}


def _label(params: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in params.items()
                     if k in ("temperature", "top_p", "top_k", "min_p", "tau", "t0", "theta", "action"))


def run_study(player: Player, sets: dict[str, PromptSet], eval_judge, rl_config: RLConfig | Mapping, dev_tuning: dict,
              agents: Sequence[tuple[str, object]] = (), oracle_lambda: float = 0.0, protocol: str = "demo",
              experiment_dir: str | Path | None = None, judge_provenance: dict | None = None,
              oracle_dev: dict | None = None, progress: bool = True) -> dict:
    """Replay each family's dev frontier on test, measure the learned agents, the oracle and the human
    continuations, and give the verdict. Writes `experiment_dir/ablation_results.json` when a directory is given."""
    rl_config = RLConfig.of(rl_config)
    action_space = player.action_space
    if action_space is None:
        raise ValueError("the study's oracle plays the constants of the player's action space, and it has none")
    test = sets["test"]
    bootstrap = rl_config.RL_ABLATION_BOOTSTRAP_SAMPLES
    families: dict[str, dict] = {}
    arrays: dict[str, list[dict]] = {}
    learned, learned_arrays = [], []
    bar = tqdm(total=len(agents) + 1, desc="study: test (learned, oracle)", unit="decoder", disable=not progress,
               dynamic_ncols=True)
    for name, agent in agents:
        samples = player.play(test.prompts, 0, policy=agent, deterministic=True)
        point, per_prompt = make_point(name, "learned", {}, test.prompts, samples, eval_judge, bootstrap)
        learned.append(point)
        learned_arrays.append(per_prompt)
        bar.update(1)
    oracle_actions = action_space.constant_actions(rl_config.RL_STUDY_CONSTANT_POINTS)
    samples = player.play(test.prompts, 0, oracle_actions=oracle_actions, oracle_lambda=oracle_lambda)
    oracle, oracle_arrays = make_point("per-token oracle", "oracle", {"actions": len(oracle_actions)}, test.prompts,
                                       samples, eval_judge, bootstrap)
    bar.update(1)
    bar.close()
    # the diversity where the verdict is read: the learned points' (else the oracle's)
    target = float(np.mean([p["diversity"] for p in learned])) if learned else oracle["diversity"]
    per_family = rl_config.RL_STUDY_TEST_POINTS_PER_FAMILY
    chosen = {family: nearest_on_frontier(points, target, per_family)
              for family, points in dev_tuning["families"].items()}
    bar = tqdm(total=sum(len(v) for v in chosen.values()), desc="study: test (fixed decoders)", unit="decoder",
               disable=not progress, dynamic_ncols=True)
    for family, dev_points in chosen.items():
        families[family] = {"label": FAMILY_LABELS[family], "dev": dev_tuning["families"][family], "test": []}
        arrays[family] = []
        for dev_point in dev_points:
            factory, policy = dev_tuning["factories"][dev_point["name"]]
            samples = player.play(test.prompts, 0, factory, policy)
            point, per_prompt = make_point(dev_point["name"], family, dev_point["params"], test.prompts, samples,
                                           eval_judge, bootstrap)
            families[family]["test"].append(point)
            arrays[family].append(per_prompt)
            bar.update(1)
    bar.close()
    human, _ = make_point("human continuation", "human", {}, test.prompts, None, eval_judge, bootstrap,
                          texts=[[c] for c in test.continuations])
    family_arrays = {f: a for f, a in arrays.items() if a and a[0]["diversity"] is not None}
    verdict = {"verdict": "no learned policy evaluated", "gap": None, "ci": None, "best_family": None,
               "at_diversity": None}
    if learned_arrays:
        mean_arrays = {k: np.mean([a[k] for a in learned_arrays], axis=0) for k in ("quality", "diversity")}
        if len(learned_arrays) > 1:  # the seeds' mean, clustered by prompt: each prompt's mean over seeds
            learned.append({
                "name": "learned (mean over seeds)", "family": "learned", "params": {"seeds": len(learned_arrays)},
                "judge_nll": float(-mean_arrays["quality"].mean()),
                "judge_nll_ci": sorted(-x for x in bootstrap_mean_ci(mean_arrays["quality"], bootstrap,
                                                                       BOOTSTRAP_SEED)),
                "diversity": float(mean_arrays["diversity"].mean()),
                "diversity_ci": list(bootstrap_mean_ci(mean_arrays["diversity"], bootstrap, BOOTSTRAP_SEED)),
                "metrics": {k: float(np.mean([p["metrics"][k] for p in learned])) for k in learned[0]["metrics"]}})
        verdict = frontier_gap(mean_arrays, family_arrays, bootstrap, BOOTSTRAP_SEED, CI_LEVEL)
    oracle_gap = frontier_gap(oracle_arrays, family_arrays, bootstrap, BOOTSTRAP_SEED, CI_LEVEL)
    verdict.update(oracle_gap=oracle_gap["gap"], oracle_ci=oracle_gap["ci"], oracle_verdict=oracle_gap["verdict"],
                   oracle_best_family=oracle_gap["best_family"], oracle_at_diversity=oracle_gap["at_diversity"],
                   oracle_short_families=oracle_gap["short_families"])
    verdict["text"] = _verdict_text(verdict, len(agents))
    results = {
        "protocol": {
            "protocol": protocol, "primary_quality": PRIMARY_QUALITY, "primary_diversity": PRIMARY_DIVERSITY,
            "quality_label": "held-out judge NLL (nats/token, lower is better)",
            "diversity_label": f"set distinct-2 over the {player.group_size} samples of a prompt",
            "test_prompts": len(test.prompts), "dev_prompts": len(sets["dev"].prompts),
            "train_prompts": len(sets["train"].prompts), "samples_per_prompt": player.group_size,
            "sampling_seeds": list(range(player.group_size)), "rl_seeds": [name for name, _ in agents],
            "episode_length": rl_config.RL_MAX_EPISODE_LENGTH, "bootstrap_samples": bootstrap,
            "ci_level": CI_LEVEL, "model_cross_entropy_bits": dev_tuning["ce_bits"], "judge": judge_provenance,
            "action_space": action_space.describe(),
            "selection": "each family's dev Pareto frontier replayed on test" + (
                "" if not per_family else f" (the {per_family} points around the learned diversity)")
            + ", with the family's least diverse dev point",
        },
        "families": families,
        "frontier": {f: [[p["diversity"], p["judge_nll"]] for p in sorted(v["test"], key=lambda p: p["diversity"] or 0)]
                     for f, v in families.items()},
        "learned": learned, "oracle": oracle, "human": human, "verdict": verdict,
        "oracle_check_dev": None if oracle_dev is None else
        {k: oracle_dev[k] for k in ("point", "gap", "ci", "best_family", "at_diversity", "verdict")},
        "timestamp": time.time(),
    }
    if experiment_dir is not None:
        atomic_write_json(Path(experiment_dir) / ABLATION_FILE, results)
    return results


def gap_text(who: str, g: dict) -> str:
    """One sentence for a `frontier_gap` result."""
    if g.get("gap") is None:
        short = g.get("short_families")
        return f"{who}: {g['verdict']}" + (f" (less diverse than every point of {', '.join(short)})." if short else ".")
    return (f"{who} − the best interpolated fixed decoder ({g['best_family']}) at diversity {g['at_diversity']:.3f} "
            f"= {g['gap']:+.3f} [{g['ci'][0]:+.3f}, {g['ci'][1]:+.3f}] in −judge NLL (nats/token): {g['verdict']}.")


def _verdict_text(v: dict, seeds: int) -> str:
    oracle = gap_text(" The per-token oracle", {"gap": v["oracle_gap"], "ci": v["oracle_ci"], "verdict":
                                                 v["oracle_verdict"], "best_family": v.get("oracle_best_family"),
                                                 "at_diversity": v.get("oracle_at_diversity"),
                                                 "short_families": v.get("oracle_short_families")})
    return gap_text(f"learned ({seeds} RL seed{'s' if seeds != 1 else ''})", v) + oracle


# ------------------------------------------------------------------------------------------- the table
_COLUMNS = (("decoder", 34), ("judge NLL", 9), ("div", 6), ("prec-4", 6), ("dist-2", 6), ("self-BLEU", 9),
            ("rep-4", 6), ("len", 5), ("EOT", 5), ("reward", 7))


def format_study_table(results: dict) -> str:
    """The test points (each family's frontier, learned, oracle, human) as a fixed-width table, then the verdict."""
    header = " ".join(n.ljust(w) if i == 0 else n.rjust(w) for i, (n, w) in enumerate(_COLUMNS))
    lines = [header, "-" * len(header)]

    def row(p: dict) -> str:
        m = p["metrics"]

        def cell(value, width, spec=".3f"):
            return ("-" if value is None else format(value, spec)).rjust(width)
        return " ".join([p["name"][:34].ljust(34), cell(p["judge_nll"], 9), cell(p["diversity"], 6),
                         cell(m["prec_4"], 6), cell(m["distinct_2"], 6), cell(m["self_bleu"], 9, ".1f"),
                         cell(m["rep_4"], 6), cell(m["length"], 5, ".1f"), cell(m["eot_rate"], 5, ".2f"),
                         cell(m["train_reward"], 7, "+.3f")])
    for family in results["families"].values():
        lines += [row(p) for p in family["test"]]
    lines += [row(p) for p in results["learned"]]
    if results["oracle"]:
        lines.append(row(results["oracle"]))
    lines.append(row(results["human"]))
    lines += ["", "div = set distinct-2 over the K samples of a prompt; judge NLL under the held-out evaluation judge; "
              "reward = the training reward (diagnostic only).", f"verdict: {results['verdict']['text']}"]
    return "\n".join(lines)
