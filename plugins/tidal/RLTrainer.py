"""PPO for the gating controller, in the spirit of CleanRL's `ppo_continuous_action.py`.

One iteration: collect RL_ROLLOUT_STEPS steps from the vectorized environment into preallocated (steps, envs)
tensors; compute GAE(γ, λ) backwards (γ = 0 is a contextual bandit: A = r − V), bootstrapping truncated episodes
from the value of their final observation and never across a terminated one; then up to RL_NUM_EPOCHS passes of
shuffled minibatches with the clipped surrogate, the value loss (clipped when RL_CLIP_VALUE_LOSS) and the entropy
bonus, stopping early once an epoch's mean approx_kl exceeds RL_TARGET_KL; finally the agent's observation
normaliser learns from the rollout. Transitions the environment reports idle (info["active"] False: the row waits
for the rest of its prompt group) are stored but take part in nothing. Optional extras, each a small controller
from RLControllers: an entropy schedule, PPO-Lagrangian with a cost critic, and training of
the LM's dynamic gates through the environment's auxiliary objective.
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from core.errors import TidalError
from core.io import atomic_torch_save, atomic_write_json
from core.names import RL_METRICS_DIRNAME, RL_TRAINING_METRICS_FILE
from plugins.tidal.Config import RLConfig
from plugins.tidal.RLControllers import (
    LagrangeMultiplier,
    _EntropySchedule,
    combine_advantages,
    make_entropy_schedule,
)


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, ended: torch.Tensor, next_value: torch.Tensor,
                gamma: float, lam: float, active: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over (S, N) tensors.

    `ended[t]` is 1 when the episode ended with action t (terminated or truncated): no bootstrap from the next
    observation, which already belongs to a new episode. Truncated episodes carry their bootstrap γ·V(final obs) in
    `rewards[t]` (see `PPOTrainer.collect_rollout`). `next_value` is V of the observation after the last step.
    `active[t]` (bool) False marks an idle transition: neither its value nor its advantage reaches step t − 1,
    even when the environment did not mark t − 1 ended. Without `active` every transition counts."""
    S = rewards.shape[0]
    cut = ended > 0
    if active is not None:
        next_idle = torch.cat([~active[1:], torch.zeros_like(active[:1])])  # the step after the rollout: unknown
        cut = cut | ~active | next_idle
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(S)):
        following = next_value if t == S - 1 else values[t + 1]
        alive = 1.0 - cut[t].float()
        delta = rewards[t] + gamma * following * alive - values[t]
        last = delta + gamma * lam * alive * last
        advantages[t] = last
    return advantages, advantages + values


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    var = target.var()
    return float("nan") if var == 0 else float(1 - (target - predicted).var() / var)


def value_loss(new_values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               clip_epsilon: float | None) -> torch.Tensor:
    """0.5 · mean squared error to the returns. With `clip_epsilon`, CleanRL's clipped form: the worse of the new
    prediction and the rollout's prediction moved by at most ±ε, so one update cannot drag the critic far."""
    loss = (new_values - returns) ** 2
    if clip_epsilon is not None:
        clipped = old_values + (new_values - old_values).clamp(-clip_epsilon, clip_epsilon)
        loss = torch.max(loss, (clipped - returns) ** 2)
    return 0.5 * loss.mean()


class PPOTrainer:
    def __init__(self, agent, env, config: RLConfig | Mapping, experiment_dir: str | Path | None = None, device="cpu",
                 metrics_logger=None, gate_params: list[torch.nn.Parameter] | None = None,
                 extra_state: dict | None = None):
        """`extra_state` is stored as-is in every checkpoint (e.g. the residual base decoder and the LM checkpoint the
        agent was trained on, which generation needs to rebuild the same action space on the same LM)."""
        self.agent, self.env = agent, env
        self.config = config = RLConfig.of(config)
        self.extra_state = dict(extra_state or {})
        self.experiment_dir = Path(experiment_dir) if experiment_dir else None
        self.device = torch.device(device)
        self.metrics = metrics_logger
        self.lagrangian = config.RL_CONSTRAINT_MODE == "lagrangian"  # else weighted (RLConfig admits no other)
        self.num_envs, self.num_steps = env.num_envs, config.RL_ROLLOUT_STEPS
        self.batch_size = self.num_envs * self.num_steps
        self.minibatch_size = min(config.RL_BATCH_SIZE, self.batch_size)
        self.target_kl = config.RL_TARGET_KL  # None: every epoch runs
        self.value_clip = config.RL_CLIP_EPSILON if config.RL_CLIP_VALUE_LOSS else None
        self.optimizer = torch.optim.Adam(agent.parameters(), lr=config.RL_LEARNING_RATE, eps=1e-5)
        self.gate_params = gate_params or []
        self.gate_optimizer = torch.optim.Adam(self.gate_params, lr=config.RL_GATE_LR) if self.gate_params else None
        self.lagrange = LagrangeMultiplier(config) if self.lagrangian else None
        if self.lagrangian:
            env.reward_computer.set_lagrangian_mode()
        self.global_step, self.iteration = 0, 0
        self.entropy_schedule: _EntropySchedule | None = None  # made by train() or load_checkpoint()
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
        buf["active"] = torch.ones(S, N, dtype=torch.bool, device=dev)
        # sums over active rows, kept on the device: one synchronisation at the end, not one per step
        component_sums: dict[str, torch.Tensor] = {}
        modulation_sum = torch.zeros((), device=dev)
        episode_returns: list[float] = []
        gamma = self.config.RL_GAMMA
        for t in range(S):
            buf["obs"][t] = next_obs
            with torch.no_grad():
                action, logprob, _, value = self.agent.get_action_and_value(next_obs)
                if self.lagrangian:
                    buf["cost_values"][t] = self.agent.get_cost_value(next_obs)
            buf["actions"][t], buf["logprobs"][t], buf["values"][t] = action, logprob, value
            next_obs, reward, terminated, truncated, info = self.env.step(action)
            cost = self.env.reward_computer.cost(info["components"]) if self.lagrangian else None
            if truncated.any():  # time limit, not a real end: bootstrap from the observation it ended on
                with torch.no_grad():
                    final = info["final_obs"][truncated]
                    reward = reward.clone()
                    reward[truncated] += gamma * self.agent.get_value(final)
                    if cost is not None:  # (the Lagrangian mode's)
                        cost = cost.clone()
                        cost[truncated] += gamma * self.agent.get_cost_value(final)
            buf["rewards"][t] = reward
            buf["ended"][t] = (terminated | truncated).float()
            if cost is not None:
                buf["costs"][t] = cost
            if "active" in info:  # without it every row is active
                buf["active"][t] = info["active"]
            active = buf["active"][t]
            for name, values in info["components"].items():
                if name != "total":  # means over active rows: an idle row's components describe no decision
                    component_sums[name] = component_sums.get(name, 0.0) + torch.where(active, values, 0.0).sum()
            modulation_sum += torch.where(active, action, 0.0).sum()
            episode_returns += info["episode_returns"].tolist()
            self.global_step += N
        num_active = int(buf["active"].sum())
        if num_active == 0:
            raise TidalError("every transition of the rollout was idle: the environment reported no active row")
        stats = {"components": {name: float(total) / num_active for name, total in component_sums.items()},
                 "modulation": float(modulation_sum) / num_active, "active_fraction": num_active / (S * N),
                 "episode_returns": episode_returns}
        return buf, next_obs, stats

    # ---------------------------------------------------------------------------------------------- update
    def update(self, buf: dict, next_obs: torch.Tensor, entropy_coef: float) -> dict:
        cfg = self.config
        with torch.no_grad():
            next_value = self.agent.get_value(next_obs)
            advantages, returns = compute_gae(buf["rewards"], buf["values"], buf["ended"], next_value,
                                              cfg.RL_GAMMA, cfg.RL_GAE_LAMBDA, buf["active"])
            if self.lagrangian:
                next_cost_value = self.agent.get_cost_value(next_obs)
                cost_adv, cost_returns = compute_gae(buf["costs"], buf["cost_values"], buf["ended"], next_cost_value,
                                                     cfg.RL_GAMMA, cfg.RL_GAE_LAMBDA, buf["active"])
        # idle transitions leave here: every loss, normalisation statistic and diagnostic below sees active ones only
        active = buf["active"].reshape(-1)
        b_obs = buf["obs"].reshape(self.batch_size, -1)[active]
        b_actions, b_logprobs, b_values = (buf[k].reshape(-1)[active] for k in ("actions", "logprobs", "values"))
        b_adv, b_returns = advantages.reshape(-1)[active], returns.reshape(-1)[active]
        lam = None
        if self.lagrange is not None:  # Lagrangian mode: λ is updated once per iteration, before the policy update
            b_costs = buf["costs"].reshape(-1)[active]
            lam = self.lagrange.step(b_costs.mean().item())
            b_adv = combine_advantages(b_adv, cost_adv.reshape(-1)[active], lam)
            b_cost_values, b_cost_returns = buf["cost_values"].reshape(-1)[active], cost_returns.reshape(-1)[active]
        n = b_obs.shape[0]
        # near-equal minibatches: the active count varies, and a trailing minibatch of one would be all noise
        num_minibatches = math.ceil(n / self.minibatch_size)
        clipfracs, approx_kls, pg_losses, v_losses, entropies, cost_v_losses = [], [], [], [], [], []
        epochs_run = 0
        for _ in range(cfg.RL_NUM_EPOCHS):
            for mb in torch.randperm(n, device=self.device).tensor_split(num_minibatches):
                _, newlogprob, entropy, newvalue = self.agent.get_action_and_value(b_obs[mb], b_actions[mb])
                logratio = newlogprob - b_logprobs[mb]
                ratio = logratio.exp()
                with torch.no_grad():
                    approx_kls.append(((ratio - 1) - logratio).mean().item())  # the k3 estimator
                    clipfracs.append(((ratio - 1.0).abs() > cfg.RL_CLIP_EPSILON).float().mean().item())
                mb_adv = b_adv[mb]
                if cfg.RL_NORMALIZE_ADVANTAGES and mb_adv.numel() > 1:
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                pg_loss = torch.max(-mb_adv * ratio,
                                    -mb_adv * ratio.clamp(1 - cfg.RL_CLIP_EPSILON, 1 + cfg.RL_CLIP_EPSILON)).mean()
                v_loss = value_loss(newvalue, b_values[mb], b_returns[mb], self.value_clip)
                entropy_mean = entropy.mean()
                loss = pg_loss - entropy_coef * entropy_mean + cfg.RL_VALUE_LOSS_COEF * v_loss
                if self.lagrangian:
                    cost_v_loss = value_loss(self.agent.get_cost_value(b_obs[mb]), b_cost_values[mb],
                                             b_cost_returns[mb], self.value_clip)
                    loss = loss + cfg.RL_VALUE_LOSS_COEF * cost_v_loss
                    cost_v_losses.append(cost_v_loss.item())
                self.optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.agent.parameters(), cfg.RL_MAX_GRAD_NORM)
                self.optimizer.step()
                pg_losses.append(pg_loss.item())
                v_losses.append(v_loss.item())
                entropies.append(entropy_mean.item())
            epochs_run += 1
            if self.target_kl is not None and np.mean(approx_kls[-num_minibatches:]) > self.target_kl:
                break  # this epoch moved the policy further than the target: the next would leave the trust region
        result = {"policy_loss": float(np.mean(pg_losses)), "value_loss": float(np.mean(v_losses)),
                  "entropy": float(np.mean(entropies)), "approx_kl": float(np.mean(approx_kls)),
                  "clip_fraction": float(np.mean(clipfracs)),
                  "explained_variance": explained_variance(b_values, b_returns)}
        if self.target_kl is not None:
            result["epochs_run"] = epochs_run
        if lam is not None:  # Lagrangian mode
            result.update(lagrange_multiplier=lam, mean_cost=b_costs.mean().item(),
                          cost_value_loss=float(np.mean(cost_v_losses)))
        return result

    # ---------------------------------------------------------------------------------------------- the loop
    def train(self, total_timesteps: int | None = None, progress: bool = True) -> dict:
        total = total_timesteps or self.config.RL_TOTAL_TIMESTEPS
        num_iterations = max(1, total // self.batch_size)
        if self.entropy_schedule is None:
            self.entropy_schedule = make_entropy_schedule(self.config, num_iterations)
        schedule = self.entropy_schedule
        next_obs = self.env.reset()
        bar = tqdm(total=num_iterations * self.batch_size, initial=self.iteration * self.batch_size, unit="tok",
                   unit_scale=True, desc="RL training", disable=not progress, dynamic_ncols=True)
        try:
            while self.iteration < num_iterations and not self.stop_requested:
                frac = self.iteration / num_iterations  # LR decays linearly to RL_LR_FINAL_FRACTION of itself
                lr = self.config.RL_LEARNING_RATE * (1.0 - (1.0 - self.config.RL_LR_FINAL_FRACTION) * frac)
                self.optimizer.param_groups[0]["lr"] = lr
                start = time.perf_counter()
                buf, next_obs, stats = self.collect_rollout(next_obs)
                rollout_seconds = time.perf_counter() - start
                if self.gate_optimizer is not None:
                    self.gate_optimizer.step()
                    self.gate_optimizer.zero_grad()
                entropy_coef = schedule.coef
                losses = self.update(buf, next_obs, entropy_coef)
                # after the update, not during the rollout: the stored log-probs and the update then see the same
                # normalisation, and the next rollout acts with statistics that include this one
                self.agent.update_obs_norm(buf["obs"][buf["active"]])
                self._step_controllers(schedule, losses, stats)
                self.iteration += 1
                record = self._record(stats, losses, entropy_coef, lr, rollout_seconds, num_iterations)
                bar.update(self.batch_size)
                bar.set_postfix(reward=f"{record['episode_rewards']:.3f}", m=f"{record['gate_modulation']:.2f}",
                                tok_s=f"{record['steps_per_second']:,.0f}", refresh=False)
                if self.experiment_dir and self.iteration % self.config.RL_CHECKPOINT_INTERVAL == 0:
                    self.save_checkpoint(self.experiment_dir / f"rl_checkpoint_iter_{self.iteration}.pth")
        finally:
            bar.close()
        return self.history

    def _step_controllers(self, schedule: _EntropySchedule, losses: dict, stats: dict) -> None:
        if self.config.RL_ENTROPY_SCHEDULE == "homeostasis":
            schedule.step(losses["entropy"])
        else:
            schedule.step(self.iteration + 1)

    def _record(self, stats: dict, losses: dict, entropy_coef: float, lr: float, seconds: float,
                num_iterations: int) -> dict:
        returns = stats["episode_returns"]
        record = {
            "episode_rewards": float(np.mean(returns)) if returns else float("nan"),
            "episodes_finished": len(returns), **losses, "entropy_coef": entropy_coef,
            "gate_modulation": stats["modulation"], "active_fraction": stats["active_fraction"], "learning_rate": lr,
            "steps_per_second": self.batch_size / seconds, "iteration": self.iteration,
            "progress": self.iteration / num_iterations,  # of this run's budget (a --timesteps override included)
            **{f"reward_{name}": value for name, value in stats["components"].items()},
        }
        gate_loss = self.env.pop_gate_loss()
        if gate_loss is not None:
            record["gate_loss"] = gate_loss
        for key, value in record.items():
            self.history.setdefault(key, []).append(value)
        if self.metrics is not None:
            self.metrics.log_rl_metrics(record, self.global_step)
        if self.experiment_dir:
            atomic_write_json(self.experiment_dir / RL_METRICS_DIRNAME / RL_TRAINING_METRICS_FILE,
                              {"global_step": self.global_step, "history": self.history})
        return record

    # ---------------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        state = {"agent_state_dict": self.agent.state_dict(), "optimizer_state_dict": self.optimizer.state_dict(),
                 "global_step": self.global_step, "iteration": self.iteration, "config": self.config.to_dict(),
                 "entropy_schedule": self.entropy_schedule.state_dict() if self.entropy_schedule else None,
                 "history": self.history, **self.extra_state}
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
        try:
            self.agent.load_state_dict(state["agent_state_dict"])
        except RuntimeError as e:  # another RL_AGENT_TYPE, or an agent from before the running observation normaliser
            raise TidalError(f"{path}: the saved agent does not match this config's agent: {e}") from e
        self.optimizer.load_state_dict(state["optimizer_state_dict"])
        self.global_step, self.iteration = state["global_step"], state.get("iteration", 0)
        self.history = state.get("history", {})
        total = num_iterations or max(1, self.config.RL_TOTAL_TIMESTEPS // self.batch_size)
        self.entropy_schedule = make_entropy_schedule(self.config, total)
        if state.get("entropy_schedule"):
            self.entropy_schedule.load_state_dict(state["entropy_schedule"])
        if self.lagrange is not None and "lagrange_multiplier" in state:
            self.lagrange.load_state_dict(state["lagrange_multiplier"])
        if self.gate_optimizer is not None and "gate_state_dict" in state:
            self.env.model.load_state_dict(state["gate_state_dict"], strict=False)
            self.gate_optimizer.load_state_dict(state["gate_optimizer_state_dict"])

