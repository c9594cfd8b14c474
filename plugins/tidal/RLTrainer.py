"""PPO for the gating controller, in the spirit of CleanRL's `ppo_continuous_action.py`.

One iteration: collect RL_ROLLOUT_STEPS steps from the vectorized environment into preallocated (steps, envs)
tensors; compute GAE(γ, λ) backwards, bootstrapping truncated episodes from the value of their final observation
and never across a terminated one; then RL_NUM_EPOCHS passes of shuffled minibatches with the clipped surrogate,
the value loss and the entropy bonus. Optional extras, each a small controller from RLControllers: entropy
homeostasis (or a linear schedule), diversity homeostasis, PPO-Lagrangian with a cost critic, and training of the
LM's dynamic gates through the environment's auxiliary objective.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from plugins.tidal.RLControllers import DiversityHomeostasis, LagrangeMultiplier, combine_advantages, make_entropy_schedule
from plugins.tidal.Utils import TidalError, atomic_torch_save, atomic_write_json

COMPONENTS = ("perplexity", "diversity", "sampling", "repetition", "coherence")


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, ended: torch.Tensor, next_value: torch.Tensor,
                gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over (S, N) tensors.

    `ended[t]` is 1 when the episode ended with action t (terminated or truncated): no bootstrap from the next
    observation, which already belongs to a new episode. Truncated episodes carry their bootstrap γ·V(final obs) in
    `rewards[t]` (see `PPOTrainer.collect_rollout`). `next_value` is V of the observation after the last step."""
    S = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(S)):
        following = next_value if t == S - 1 else values[t + 1]
        alive = 1.0 - ended[t]
        delta = rewards[t] + gamma * following * alive - values[t]
        last = delta + gamma * lam * alive * last
        advantages[t] = last
    return advantages, advantages + values


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    var = target.var()
    return float("nan") if var == 0 else float(1 - (target - predicted).var() / var)


class PPOTrainer:
    def __init__(self, agent, env, config: dict, experiment_dir: str | Path | None = None, device="cpu",
                 metrics_logger=None, gate_params: list[torch.nn.Parameter] | None = None):
        self.agent, self.env, self.config = agent, env, config
        self.experiment_dir = Path(experiment_dir) if experiment_dir else None
        self.device = torch.device(device)
        self.metrics = metrics_logger
        self.lagrangian = config["RL_CONSTRAINT_MODE"] == "lagrangian"
        if config["RL_CONSTRAINT_MODE"] not in ("weighted", "lagrangian"):
            raise TidalError(f"RL_CONSTRAINT_MODE must be weighted or lagrangian, got {config['RL_CONSTRAINT_MODE']!r}")
        self.num_envs, self.num_steps = env.num_envs, config["RL_ROLLOUT_STEPS"]
        self.batch_size = self.num_envs * self.num_steps
        self.minibatch_size = min(config["RL_BATCH_SIZE"], self.batch_size)
        self.optimizer = torch.optim.Adam(agent.parameters(), lr=config["RL_LEARNING_RATE"], eps=1e-5)
        self.gate_params = gate_params or []
        self.gate_optimizer = torch.optim.Adam(self.gate_params, lr=config["RL_GATE_LR"]) if self.gate_params else None
        self.lagrange = LagrangeMultiplier(config) if self.lagrangian else None
        if self.lagrangian:
            env.reward_computer.set_lagrangian_mode()
        self.diversity = (DiversityHomeostasis(config)
                          if config["RL_DIVERSITY_HOMEOSTASIS_TARGET"] is not None and not self.lagrangian else None)
        self.global_step, self.iteration = 0, 0
        self.entropy_schedule = None
        self.history: dict[str, list] = {}
        self.stop_requested: str | None = None  # "complete" or "terminate", set from a signal handler

    def request_stop(self, kind: str) -> None:
        """"complete" or "terminate"; safe from a signal handler: the current iteration finishes first."""
        self.stop_requested = self.stop_requested or kind

    # ---------------------------------------------------------------------------------------------- rollout
    def collect_rollout(self, next_obs: torch.Tensor) -> tuple[dict, torch.Tensor, dict]:
        S, N, dev = self.num_steps, self.num_envs, self.device
        buf = {name: torch.zeros(S, N, device=dev) for name in ("actions", "logprobs", "rewards", "ended", "values",
                                                                "costs", "cost_values")}
        buf["obs"] = torch.zeros(S, N, next_obs.shape[1], device=dev)
        stats = {name: 0.0 for name in COMPONENTS}
        stats.update(episode_returns=[], modulation=0.0, entropy_m=0.0)
        gamma = self.config["RL_GAMMA"]
        for t in range(S):
            buf["obs"][t] = next_obs
            with torch.no_grad():
                action, logprob, _, value = self.agent.get_action_and_value(next_obs)
                if self.lagrangian:
                    buf["cost_values"][t] = self.agent.get_cost_value(next_obs)
            buf["actions"][t], buf["logprobs"][t], buf["values"][t] = action, logprob, value
            next_obs, reward, terminated, truncated, info = self.env.step(action)
            cost = self.env.reward_computer.cost(info["components"]["diversity"]) if self.lagrangian else None
            if truncated.any():  # time limit, not a real end: bootstrap from the observation it ended on
                with torch.no_grad():
                    final = info["final_obs"][truncated]
                    reward = reward.clone()
                    reward[truncated] += gamma * self.agent.get_value(final)
                    if self.lagrangian:
                        cost = cost.clone()
                        cost[truncated] += gamma * self.agent.get_cost_value(final)
            buf["rewards"][t] = reward
            buf["ended"][t] = (terminated | truncated).float()
            if self.lagrangian:
                buf["costs"][t] = cost
            for name in COMPONENTS:
                stats[name] += info["components"][name].mean().item() / S
            stats["modulation"] += action.mean().item() / S
            stats["episode_returns"] += info["episode_returns"].tolist()
            self.global_step += N
        return buf, next_obs, stats

    # ---------------------------------------------------------------------------------------------- update
    def update(self, buf: dict, next_obs: torch.Tensor, entropy_coef: float) -> dict:
        cfg = self.config
        with torch.no_grad():
            next_value = self.agent.get_value(next_obs)
            advantages, returns = compute_gae(buf["rewards"], buf["values"], buf["ended"], next_value,
                                              cfg["RL_GAMMA"], cfg["RL_GAE_LAMBDA"])
            if self.lagrangian:
                next_cost_value = self.agent.get_cost_value(next_obs)
                cost_adv, cost_returns = compute_gae(buf["costs"], buf["cost_values"], buf["ended"], next_cost_value,
                                                     cfg["RL_GAMMA"], cfg["RL_GAE_LAMBDA"])
        b_obs = buf["obs"].reshape(self.batch_size, -1)
        b_actions, b_logprobs = buf["actions"].reshape(-1), buf["logprobs"].reshape(-1)
        b_adv, b_returns, b_values = advantages.reshape(-1), returns.reshape(-1), buf["values"].reshape(-1)
        lam = None
        if self.lagrangian:  # λ is updated once per iteration, before the policy update
            lam = self.lagrange.step(buf["costs"].mean().item())
            b_adv = combine_advantages(b_adv, cost_adv.reshape(-1), lam)
            b_cost_returns = cost_returns.reshape(-1)
        clipfracs, approx_kls, pg_losses, v_losses, entropies, cost_v_losses = [], [], [], [], [], []
        for _ in range(cfg["RL_NUM_EPOCHS"]):
            for mb in torch.randperm(self.batch_size, device=self.device).split(self.minibatch_size):
                _, newlogprob, entropy, newvalue = self.agent.get_action_and_value(b_obs[mb], b_actions[mb])
                logratio = newlogprob - b_logprobs[mb]
                ratio = logratio.exp()
                with torch.no_grad():
                    approx_kls.append(((ratio - 1) - logratio).mean().item())  # the k3 estimator
                    clipfracs.append(((ratio - 1.0).abs() > cfg["RL_CLIP_EPSILON"]).float().mean().item())
                mb_adv = b_adv[mb]
                if cfg["RL_NORMALIZE_ADVANTAGES"] and mb_adv.numel() > 1:
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                pg_loss = torch.max(-mb_adv * ratio,
                                    -mb_adv * ratio.clamp(1 - cfg["RL_CLIP_EPSILON"], 1 + cfg["RL_CLIP_EPSILON"])).mean()
                v_loss = 0.5 * ((newvalue - b_returns[mb]) ** 2).mean()
                entropy_mean = entropy.mean()
                loss = pg_loss - entropy_coef * entropy_mean + cfg["RL_VALUE_LOSS_COEF"] * v_loss
                if self.lagrangian:
                    cost_v_loss = 0.5 * ((self.agent.get_cost_value(b_obs[mb]) - b_cost_returns[mb]) ** 2).mean()
                    loss = loss + cfg["RL_VALUE_LOSS_COEF"] * cost_v_loss
                    cost_v_losses.append(cost_v_loss.item())
                self.optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.agent.parameters(), cfg["RL_MAX_GRAD_NORM"])
                self.optimizer.step()
                pg_losses.append(pg_loss.item())
                v_losses.append(v_loss.item())
                entropies.append(entropy_mean.item())
        result = {"policy_loss": float(np.mean(pg_losses)), "value_loss": float(np.mean(v_losses)),
                  "entropy": float(np.mean(entropies)), "approx_kl": float(np.mean(approx_kls)),
                  "clip_fraction": float(np.mean(clipfracs)),
                  "explained_variance": explained_variance(b_values, b_returns)}
        if self.lagrangian:
            result.update(lagrange_multiplier=lam, mean_cost=buf["costs"].mean().item(),
                          cost_value_loss=float(np.mean(cost_v_losses)))
        return result

    # ---------------------------------------------------------------------------------------------- the loop
    def train(self, total_timesteps: int | None = None, progress: bool = True) -> dict:
        total = total_timesteps or self.config["RL_TOTAL_TIMESTEPS"]
        num_iterations = max(1, total // self.batch_size)
        if self.entropy_schedule is None:
            self.entropy_schedule = make_entropy_schedule(self.config, num_iterations)
        next_obs = self.env.reset()
        bar = tqdm(total=num_iterations * self.batch_size, initial=self.iteration * self.batch_size, unit="tok",
                   unit_scale=True, desc="RL training", disable=not progress, dynamic_ncols=True)
        try:
            while self.iteration < num_iterations and not self.stop_requested:
                frac = self.iteration / num_iterations  # LR decays linearly to RL_LR_FINAL_FRACTION of itself
                lr = self.config["RL_LEARNING_RATE"] * (1.0 - (1.0 - self.config["RL_LR_FINAL_FRACTION"]) * frac)
                self.optimizer.param_groups[0]["lr"] = lr
                start = time.perf_counter()
                buf, next_obs, stats = self.collect_rollout(next_obs)
                rollout_seconds = time.perf_counter() - start
                if self.gate_optimizer is not None:
                    self.gate_optimizer.step()
                    self.gate_optimizer.zero_grad()
                entropy_coef = self.entropy_schedule.coef
                losses = self.update(buf, next_obs, entropy_coef)
                self._step_controllers(losses, stats)
                self.iteration += 1
                record = self._record(stats, losses, entropy_coef, lr, rollout_seconds, num_iterations)
                bar.update(self.batch_size)
                bar.set_postfix(reward=f"{record['episode_rewards']:.3f}", m=f"{record['gate_modulation']:.2f}",
                                tok_s=f"{record['steps_per_second']:,.0f}", refresh=False)
                if self.experiment_dir and self.iteration % self.config["RL_CHECKPOINT_INTERVAL"] == 0:
                    self.save_checkpoint(self.experiment_dir / f"rl_checkpoint_iter_{self.iteration}.pth")
        finally:
            bar.close()
        return self.history

    def _step_controllers(self, losses: dict, stats: dict) -> None:
        if self.config["RL_ENTROPY_SCHEDULE"] == "homeostasis":
            self.entropy_schedule.step(losses["entropy"])
        else:
            self.entropy_schedule.step(self.iteration + 1)
        if self.diversity is not None:
            self.env.reward_computer.weights["diversity"] = self.diversity.step(stats["diversity"])

    def _record(self, stats: dict, losses: dict, entropy_coef: float, lr: float, seconds: float,
                num_iterations: int) -> dict:
        returns = stats["episode_returns"]
        record = {
            "episode_rewards": float(np.mean(returns)) if returns else float("nan"),
            "episodes_finished": len(returns), **losses, "entropy_coef": entropy_coef,
            "gate_modulation": stats["modulation"], "learning_rate": lr,
            "steps_per_second": self.batch_size / seconds, "iteration": self.iteration,
            "progress": self.iteration / num_iterations,  # of this run's budget (a --timesteps override included)
            **{f"reward_{name}": stats[name] for name in COMPONENTS},
        }
        if self.diversity is not None:
            record["diversity_weight"] = self.env.reward_computer.weights["diversity"]
        gate_loss = self.env.pop_gate_loss()
        if gate_loss is not None:
            record["gate_loss"] = gate_loss
        for key, value in record.items():
            self.history.setdefault(key, []).append(value)
        if self.metrics is not None:
            self.metrics.log_rl_metrics(record, self.global_step)
        if self.experiment_dir:
            atomic_write_json(self.experiment_dir / "rl_metrics" / "rl_training_metrics.json",
                              {"global_step": self.global_step, "history": self.history})
        return record

    # ---------------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        state = {"agent_state_dict": self.agent.state_dict(), "optimizer_state_dict": self.optimizer.state_dict(),
                 "global_step": self.global_step, "iteration": self.iteration, "config": dict(self.config),
                 "entropy_schedule": self.entropy_schedule.state_dict() if self.entropy_schedule else None,
                 "history": self.history}
        if self.diversity is not None:
            state["diversity_homeostasis"] = self.diversity.state_dict()
            state["reward_weights"] = dict(self.env.reward_computer.weights)
        if self.lagrange is not None:
            state["lagrange_multiplier"] = self.lagrange.state_dict()
        if self.gate_optimizer is not None:
            from plugins.tidal.GatingEnvironment import gate_state_dict

            state["gate_state_dict"] = gate_state_dict(self.env.model)
            state["gate_optimizer_state_dict"] = self.gate_optimizer.state_dict()
        return state

    def save_checkpoint(self, path: str | Path) -> Path:
        atomic_torch_save(self.state_dict(), path)
        return Path(path)

    def load_checkpoint(self, path: str | Path, num_iterations: int | None = None) -> None:
        from plugins.tidal.TransformerLM import read_checkpoint

        state = read_checkpoint(path)
        if not isinstance(state, dict) or "agent_state_dict" not in state:
            raise TidalError(f"{path}: not an RL checkpoint (no agent_state_dict)")
        self.agent.load_state_dict(state["agent_state_dict"])
        self.optimizer.load_state_dict(state["optimizer_state_dict"])
        self.global_step, self.iteration = state["global_step"], state.get("iteration", 0)
        self.history = state.get("history", {})
        total = num_iterations or max(1, self.config["RL_TOTAL_TIMESTEPS"] // self.batch_size)
        self.entropy_schedule = make_entropy_schedule(self.config, total)
        if state.get("entropy_schedule"):
            self.entropy_schedule.load_state_dict(state["entropy_schedule"])
        if self.diversity is not None and "diversity_homeostasis" in state:
            self.diversity.load_state_dict(state["diversity_homeostasis"])
            self.env.reward_computer.weights.update(state["reward_weights"])
        if self.lagrange is not None and "lagrange_multiplier" in state:
            self.lagrange.load_state_dict(state["lagrange_multiplier"])
        if self.gate_optimizer is not None and "gate_state_dict" in state:
            self.env.model.load_state_dict(state["gate_state_dict"], strict=False)
            self.gate_optimizer.load_state_dict(state["gate_optimizer_state_dict"])

