"""The RL environment: N rows of controlled generation that step together in ONE batched, KV-cached LM forward.

Rows come in groups of K = RL_SAMPLES_PER_PROMPT: the K rows of a group generate K samples of the same prompt, so
the reward can score set-level diversity (ADR 0015). A group starts together from a prompt of the given prompt set;
a row whose sample ends (`<|endoftext|>` terminates it, RL_MAX_EPISODE_LENGTH truncates it, and the observation it
ended on is returned in `info["final_obs"]` for the PPO bootstrap; with RL_EOT_BOOTSTRAP an `<|endoftext|>` is
reported as a truncation too, so that ending the text early never saves the policy its future per-token costs)
goes idle until every row of its group has ended;
then the group restarts with the next prompt. Idle rows keep stepping (one batched forward serves all) but their
transitions are flagged `info["active"] = False` and reported as terminated, so nothing learns from or bootstraps
through them.

At every step the agent picks an action per row; the decoder (a `ControlledDecoder` over the action space, or any
fixed decoder of Decoding.py for the study) turns the LM's next-token logits into a sampling distribution; the
token is drawn from the row's own random stream, scored by the RewardComputer and fed back to the LM.

This module is the only place that knows about the language model; the agent sees (N, OBSERVATION_DIM) tensors.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from plugins.tidal.Config import LMConfig, RLConfig
from plugins.tidal.Decoding import LN2, LOG2E, ControlledDecoder, invert_cdf, k_largest
from plugins.tidal.Tokenizer import EOT_TOKEN_ID, get_tokenizer

if TYPE_CHECKING:
    from plugins.tidal.TransformerLM import KVCache

OBSERVATION_DIM = 64  # the one definition of the observation size (RLConfig checks RL_OBSERVATION_DIM against it)
SCALAR_FEATURES = 15                               # slots 0..14, listed in ObservationBuilder
HIDDEN_FEATURES = OBSERVATION_DIM - SCALAR_FEATURES  # a fixed random projection of the final hidden state
TREND_DECAY = 0.8                                  # EMA of entropy and surprise: a few tokens of memory
REPEAT_WINDOW = 16
UNIFORM_BLOCK = 64                                 # token-stream uniforms drawn per row at a time
_BOUNDARY_CHARS = ".!?\n"


@functools.lru_cache(maxsize=4)
def boundary_token_mask(vocab_size: int) -> torch.Tensor:
    """(V,) bool: tokens that end a sentence or a line (decoding 50k tokens takes ~0.5 s: built once per process)."""
    tokenizer = get_tokenizer()
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    for i in range(min(vocab_size, tokenizer.n_vocab)):
        text = tokenizer.decode_single_token_bytes(i).rstrip(b" ")
        mask[i] = bool(text) and text[-1:].decode("latin-1") in _BOUNDARY_CHARS
    return mask


# ------------------------------------------------------------------------------------------- observation
class ObservationBuilder:
    """The observation (OBSERVATION_DIM wide), batched, with no constant slots (the agent normalises it with running
    statistics):
     0 entropy H of the LM's next-token distribution (nats)   1 varentropy     2 top-1 probability
     3 top-1 − top-2 probability margin                      4 top-5 mass      5 H − EMA(H) (entropy trend)
     6 surprise error: last token's surprise − its EMA        7 last token's surprise (nats)
     8 the LM's probability mass on tokens already in the sequence   9 whether the argmax token is already there
    10 tokens since the last sentence boundary / 16         11 remaining budget (1 − step / max steps)
    12 repeated-token share of the last 16 tokens          13 previous action (scaled to [0, 1])   14 log top-1 prob
    15..OBSERVATION_DIM−1 a fixed random projection of the final-LayerNorm hidden state (HIDDEN_FEATURES wide).
    Per-row state (the EMAs and the last surprise) is kept here: `reset(batch)`, `reset_rows(rows)`, and
    `observe(token, logits)` after every sampled token."""

    def __init__(self, rl_config: RLConfig | Mapping, lm_config: LMConfig | Mapping, action_scale: float = 1.0):
        rl_config, lm_config = RLConfig.of(rl_config), LMConfig.of(lm_config)
        self.max_steps = rl_config.RL_MAX_EPISODE_LENGTH
        self.vocab = lm_config.VOCAB_SIZE
        self.action_scale = max(action_scale, 1e-9)
        E = lm_config.EMBED_DIM
        generator = torch.Generator().manual_seed(0)  # fixed: the projection is part of the observation's definition
        self.projection = torch.randn(E, HIDDEN_FEATURES, generator=generator) / math.sqrt(E)
        self.boundary = boundary_token_mask(self.vocab)
        self.state: torch.Tensor | None = None  # (B, 3): EMA entropy, EMA surprise, last surprise
        self._log_norm: torch.Tensor | None = None  # (B, 1) ln Σ exp(logits) of the last observation's logits
        self._logits: torch.Tensor | None = None

    def reset(self, batch: int, device=None) -> None:
        self.state = torch.zeros(batch, 3, device=device)
        self.projection = self.projection.to(device)
        self.boundary = self.boundary.to(device)

    def _rows_state(self) -> torch.Tensor:
        """The per-row state, which `reset` (or the first call) creates."""
        if self.state is None:
            raise RuntimeError("reset(batch) the observation builder first")
        return self.state

    def reset_rows(self, rows: torch.Tensor) -> None:
        self._rows_state()[rows] = 0.0

    def observe(self, token: torch.Tensor, logits: torch.Tensor) -> None:
        """After a token is sampled from the step whose raw logits were `logits` (the last observation's, whose
        normaliser is reused when they are the same tensor)."""
        log_norm = self._log_norm
        if log_norm is None or self._logits is not logits:  # (the two are set together, by `__call__`)
            log_norm = logits.float().logsumexp(dim=-1, keepdim=True)
        surprise = (log_norm - logits.float().gather(1, token.long().unsqueeze(1))).squeeze(1)
        state = self._rows_state()
        state[:, 1] = TREND_DECAY * state[:, 1] + (1 - TREND_DECAY) * surprise
        state[:, 2] = surprise

    def __call__(self, history: torch.Tensor, lengths: torch.Tensor | None, logits: torch.Tensor,
                 hidden: torch.Tensor, steps, prev_action: torch.Tensor) -> torch.Tensor:
        """history (B, H) ids (only the first `lengths` count; all when None), raw next-token logits (B, V), hidden
        (B, E), steps (int or (B,)), prev_action (B,) -> (B, OBSERVATION_DIM). Updates the entropy EMA."""
        B, H = history.shape
        device = logits.device
        if self.state is None or self.state.shape[0] != B:
            self.reset(B, device)
        state = self._rows_state()
        lengths = torch.full((B,), H, device=device) if lengths is None else lengths
        # The statistics from unnormalised probabilities e = 2^d, d = (x − x_max)·log2 e (x the logits; centred, so the
        # moments lose no precision to an offset; exp2 runs at 4x torch.exp's speed on CPU), Z = Σ e: p = e / Z, ln p =
        # (d − log2 Z)·ln 2 and p_max = 1 / Z, hence H = ln Z − E[d]·ln 2 and Var[ln p] = (E[d²] − E[d]²)·ln² 2.
        # Three writes of a (B, V) buffer, each of which costs a trip to memory in the environment (ADR 0016).
        x = logits.float()
        top_logits, top_indices = k_largest(x, 5)
        d = torch.mul(x, LOG2E).sub_(top_logits[:, :1] * LOG2E)  # the max of x·log2 e, rounding being monotone
        e = torch.exp2(d)
        Z = e.sum(dim=-1, keepdim=True)
        mean = torch.linalg.vecdot(e, d).unsqueeze(1) / Z
        second = torch.linalg.vecdot(e, d.mul_(d)).unsqueeze(1) / Z
        log_z = Z.log()                                   # = −ln p_max
        entropy = (log_z - mean * LN2).squeeze(1)
        varentropy = ((second - mean ** 2).clamp_min(0.0) * LN2 ** 2).squeeze(1)
        log_norm = top_logits[:, :1] + log_z  # ln Σ exp x
        self._log_norm, self._logits = log_norm, logits  # `observe` reads the sampled token's surprise from it
        top_log_probs = top_logits - log_norm
        top_values = top_log_probs.exp()
        valid = torch.arange(H, device=device) < lengths.unsqueeze(1)
        ids = history.masked_fill(~valid, -1)
        # each distinct token once: sort, then drop repeats, so the mass is a probability, not a count
        ordered = ids.sort(dim=1).values
        first = torch.ones_like(ordered, dtype=torch.bool)
        first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
        unique = first & (ordered >= 0)
        seen_mass = (e.gather(1, ordered.clamp_min(0)) * unique).sum(dim=1) / Z.squeeze(1)
        argmax_seen = (ids == top_indices[:, :1]).any(dim=1)
        positions = torch.arange(H, device=device).expand(B, H)
        is_boundary = self.boundary[ids.clamp_min(0)] & valid
        last_boundary = torch.where(is_boundary, positions, torch.full_like(positions, -1)).max(dim=1).values
        since_boundary = (lengths - 1 - last_boundary).float()
        idx = lengths.unsqueeze(1) - REPEAT_WINDOW + torch.arange(REPEAT_WINDOW, device=device)
        recent = history.gather(1, idx.clamp_min(0)).masked_fill(idx < 0, -1)
        same = (recent.unsqueeze(2) == recent.unsqueeze(1)) & (recent >= 0).unsqueeze(1)
        earlier = torch.ones(REPEAT_WINDOW, REPEAT_WINDOW, dtype=torch.bool, device=device).tril(-1)
        repeated = (same & earlier).any(dim=2).float().sum(dim=1) / (recent >= 0).sum(dim=1).clamp_min(1)
        steps = torch.as_tensor(steps, device=device, dtype=torch.float32).expand(B)
        ema_entropy = state[:, 0]
        trend = torch.where(ema_entropy == 0, torch.zeros_like(entropy), entropy - ema_entropy)
        state[:, 0] = torch.where(ema_entropy == 0, entropy, TREND_DECAY * ema_entropy + (1 - TREND_DECAY) * entropy)
        scalars = torch.stack([
            entropy, varentropy, top_values[:, 0], top_values[:, 0] - top_values[:, 1], top_values.sum(dim=1),
            trend, state[:, 2] - state[:, 1], state[:, 2], seen_mass, argmax_seen.float(),
            since_boundary / 16.0, 1.0 - steps / self.max_steps, repeated,
            prev_action.to(device).float().reshape(B) / self.action_scale, top_log_probs[:, 0],
        ], dim=1)
        return torch.cat([scalars, hidden.float() @ self.projection.to(device)], dim=1)


# ------------------------------------------------------------------------------------------- environment
def _inference(method):
    """Run an environment method under inference_mode, so its state and what it returns are inference tensors (a
    step's ~700 small ops dispatch past autograd's keys: 3-6 % of a step, ADR 0016); under no_grad instead while the
    dynamic gates train through the forward, since inference tensors cannot be saved for backward."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with torch.no_grad() if self.gate_training else torch.inference_mode():
            return method(self, *args, **kwargs)
    return wrapper


class GatingEnvironment:
    """`num_envs` rows in groups of `samples_per_prompt` stepping together. Row b draws its tokens from its own
    generator seeded by (seed, env_offset + b), so a batch reproduces the same rows run alone."""

    def __init__(self, model, action_space, reward_computer, prompts: list[list[int]], rl_config: RLConfig | Mapping,
                 num_envs: int | None = None, device: torch.device | str | None = None, seed: int = 0,
                 env_offset: int = 0, decoder=None, gate_training: bool = False, use_gates: bool | None = None,
                 sequential_prompts: bool = False, samples_per_prompt: int | None = None, observations: bool = True):
        if not prompts:
            raise ValueError("the environment needs at least one prompt")
        self.model = model.eval()
        self.action_space = action_space
        self.reward_computer = reward_computer
        self.prompts = prompts
        self.config = rl_config = RLConfig.of(rl_config)
        self.num_envs = num_envs or rl_config.RL_NUM_ENVS
        self.group_size = samples_per_prompt or rl_config.RL_SAMPLES_PER_PROMPT
        if self.num_envs % self.group_size:
            raise ValueError(f"{self.num_envs} environments do not split into groups of {self.group_size} samples "
                             "per prompt (RL_NUM_ENVS must be a multiple of RL_SAMPLES_PER_PROMPT)")
        self.num_groups = self.num_envs // self.group_size
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.decoder = decoder or ControlledDecoder(action_space)
        self.gate_training = gate_training
        self.use_gates = gate_training if use_gates is None else use_gates  # the action feeds the DynamicGates
        if self.use_gates and getattr(action_space, "kind", "continuous") != "continuous":
            raise ValueError("the dynamic gates take the continuous modulation m; use RL_ACTION_MODE modulation")
        self.sequential_prompts = sequential_prompts
        self.observations = observations  # the study's fixed decoders need none: zeros, nothing computed
        scale = (action_space.num_actions - 1) if getattr(action_space, "kind", "") == "discrete" else 1.0
        self.observe = ObservationBuilder(rl_config, model.config, action_scale=scale)
        self.max_steps = rl_config.RL_MAX_EPISODE_LENGTH
        self.eot_bootstraps = rl_config.RL_EOT_BOOTSTRAP
        self.history_len = max(len(p) for p in prompts) + self.max_steps
        if self.history_len > model.max_context_length:
            raise ValueError(f"prompt + episode ({self.history_len} tokens) exceed MAX_CONTEXT_LENGTH "
                             f"{model.max_context_length}")
        self.initial_action = 0.0 if scale != 1.0 else 0.5  # the base decoder / the midpoint of m
        streams = [seed * 1_000_003 + env_offset + b for b in range(self.num_envs)]
        # a group's prompt stream is its first row's: a batch reproduces its groups run alone at the same offset
        self.prompt_rngs = [torch.Generator().manual_seed(streams[g * self.group_size])
                            for g in range(self.num_groups)]
        self.token_rngs = [torch.Generator(device=self.device).manual_seed(s) for s in streams]
        self._uniforms, self._drawn = torch.empty(0), UNIFORM_BLOCK  # a block of draws per row, and how many are used
        self.group = torch.arange(self.num_envs, device=self.device) // self.group_size
        self.episodes_started = torch.zeros(self.num_groups, dtype=torch.long)
        self.gate_loss_sum, self.gate_loss_steps = 0.0, 0
        self.cache: KVCache | None = None  # created by reset()

    # ---------------------------------------------------------------------------------------------- episodes
    def _next_prompt(self, group: int) -> list[int]:
        if self.sequential_prompts:  # the study: every decoder sees the same prompts in the same order
            index = (int(self.episodes_started[group]) * self.num_groups + group) % len(self.prompts)
        else:
            index = int(torch.randint(len(self.prompts), (1,), generator=self.prompt_rngs[group]))
        return self.prompts[index]

    @_inference
    def reset(self) -> torch.Tensor:
        """Start a fresh episode in every row; returns the first observations (N, OBSERVATION_DIM)."""
        N = self.num_envs
        self.cache = self.model.new_cache(N, self.history_len, self.device, torch.float32)
        self.history = torch.full((N, self.history_len), -1, dtype=torch.long, device=self.device)
        self.lengths = torch.zeros(N, dtype=torch.long, device=self.device)
        self.prompt_lengths = torch.zeros(N, dtype=torch.long, device=self.device)
        self.steps = torch.zeros(N, dtype=torch.long, device=self.device)
        self.active = torch.ones(N, dtype=torch.bool, device=self.device)
        self.prev_action = torch.full((N,), self.initial_action, device=self.device)
        self.logits = torch.zeros(N, self.model.vocab_size, device=self.device)
        self.hidden = torch.zeros(N, self.model.config.EMBED_DIM, device=self.device)
        self.episode_return = torch.zeros(N, device=self.device)
        self.episodes_started.zero_()
        self.observe.reset(N, self.device)
        self._start_groups(list(range(self.num_groups)))
        return self._observation()

    def _start_groups(self, groups: list[int]) -> None:
        """Pick a prompt per group, prefill its K rows (left-padded) in one forward, splice them into the cache."""
        prompts = []
        for g in groups:
            prompts += [self._next_prompt(g)] * self.group_size
            self.episodes_started[g] += 1
        rows = torch.tensor([g * self.group_size + k for g in groups for k in range(self.group_size)],
                            device=self.device)
        width = max(len(p) for p in prompts)
        ids = torch.zeros(len(prompts), width, dtype=torch.long, device=self.device)
        mask = torch.zeros(len(prompts), width, dtype=torch.bool, device=self.device)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p, device=self.device)
            mask[i, width - len(p):] = True
        signal = torch.full((len(prompts), 1), self.initial_action, device=self.device) if self.use_gates else None
        out = self.model(ids, gate_signals=signal, use_cache=True, return_hidden=True, attention_mask=mask,
                         cache_capacity=self.history_len, last_only=True)
        assert self.cache is not None, "reset() creates the cache before any group starts"
        self.cache.replace_rows(rows, out.cache)
        self.logits[rows], self.hidden[rows] = out.logits[:, -1].float(), out.hidden[:, -1].float()
        self.history[rows] = -1
        for i, (r, p) in enumerate(zip(rows.tolist(), prompts, strict=True)):
            self.history[r, :len(p)] = ids[i, width - len(p):]
        self.lengths[rows] = self.prompt_lengths[rows] = torch.tensor([len(p) for p in prompts], device=self.device)
        self.steps[rows] = 0
        self.active[rows] = True
        self.prev_action[rows] = self.initial_action
        self.episode_return[rows] = 0.0
        self.decoder.reset_rows(rows)
        self.observe.reset_rows(rows)

    def _observation(self) -> torch.Tensor:
        if not self.observations:
            return torch.zeros(self.num_envs, OBSERVATION_DIM, device=self.device)
        return self.observe(self.history, self.lengths, self.logits, self.hidden, self.steps.float(),
                            self.prev_action)

    # ---------------------------------------------------------------------------------------------- stepping
    def draw_uniforms(self) -> torch.Tensor:
        """The next uniform of every row's token stream (N,): what `step` inverts through the sampling CDF. Drawn
        UNIFORM_BLOCK at a time per row, not one generator call per row per step; on CPU a block holds exactly the
        draws one at a time would give."""
        if self._drawn >= UNIFORM_BLOCK:
            self._uniforms = torch.stack([torch.rand(UNIFORM_BLOCK, generator=g, device=self.device)
                                          for g in self.token_rngs], dim=1)  # (UNIFORM_BLOCK, N)
            self._drawn = 0
        self._drawn += 1
        return self._uniforms[self._drawn - 1]

    def decide(self, action: torch.Tensor, uniforms: torch.Tensor):
        """What `step` would sample and score for `action` with these uniforms, changing no state: (token (N,),
        reward components, DecodeStep). The per-token oracle compares actions with it."""
        decided = self.decoder.decode(self.logits, self.history, self.lengths, action)
        token = invert_cdf(decided.probs(), uniforms)
        token = torch.where(self.active, token, torch.full_like(token, EOT_TOKEN_ID))
        components = self.reward_computer.compute(self.history, self.lengths, self.prompt_lengths, token, self.group)
        return token, {k: v * self.active for k, v in components.items()}, decided

    @_inference
    def step(self, action: torch.Tensor, uniforms: torch.Tensor | None = None):
        """action (N,) -> (observation (N, OBSERVATION_DIM), reward (N,), terminated (N,), truncated (N,), info);
        inference tensors unless the gates train: clone one before changing it in place."""
        if self.cache is None:
            raise RuntimeError("call reset() before step()")
        action = action.detach().to(self.device).float().reshape(self.num_envs)
        uniforms = self.draw_uniforms() if uniforms is None else uniforms
        active = self.active.clone()
        token, components, decided = self.decide(action, uniforms)
        self.decoder.observe(token, decided)
        if self.observations:
            self.observe.observe(token, self.logits)
        reward = components["total"]
        rows = active.nonzero().squeeze(1)
        self.history[rows, self.lengths[rows]] = token[rows]
        self.lengths += active
        self.steps += active
        self.episode_return += reward
        ended_text = active & (token == EOT_TOKEN_ID)
        truncated = active & (self.steps >= self.max_steps) & ~ended_text
        if self.eot_bootstraps:  # the text ended, the return does not: ending early saves no future (negative) reward
            terminated, truncated = torch.zeros_like(ended_text), truncated | ended_text
        else:
            terminated = ended_text
        self._forward(token, action)  # the one batched LM forward of this step
        self.prev_action = torch.where(active, action, self.prev_action)
        obs = self._observation()
        ended = terminated | truncated
        self.active &= ~ended
        info = {"components": components, "tokens": token, "action": action, "params": decided.params,
                "active": active, "final_obs": obs.clone(), "episode_returns": self.episode_return[ended].clone(),
                "episode_lengths": self.steps[ended].clone()}
        idle_groups = (~self.active).view(self.num_groups, self.group_size).all(dim=1)
        if bool(idle_groups.any()):
            self._start_groups(idle_groups.nonzero().squeeze(1).tolist())
            obs = self._observation()
        return obs, reward, terminated | ~active, truncated, info

    def _forward(self, token: torch.Tensor, action: torch.Tensor) -> None:
        signal = action.unsqueeze(1) if self.use_gates else None
        with torch.set_grad_enabled(self.gate_training):
            out = self.model(token.unsqueeze(1), gate_signals=signal, past_key_values=self.cache, use_cache=True,
                             return_hidden=True)
            self.cache = out.cache
            if self.gate_training:
                self._gate_objective(out.logits[:, -1], action)
        self.logits, self.hidden = out.logits[:, -1].detach().float(), out.hidden[:, -1].detach().float()

    def _gate_objective(self, logits: torch.Tensor, m: torch.Tensor) -> None:
        """Auxiliary loss for the dynamic gates: the LM's own next-token entropy should follow m, from
        RL_GATE_ENTROPY_MIN nats at m=0 to RL_GATE_ENTROPY_MAX at m=1. Gradients accumulate in the gate parameters
        (the only ones requiring grad); the trainer steps their optimizer once per rollout."""
        entropy = torch.special.entr(logits.float().softmax(dim=-1)).sum(dim=-1)
        lo, hi = self.config.RL_GATE_ENTROPY_MIN, self.config.RL_GATE_ENTROPY_MAX
        loss = self.config.RL_GATE_ENTROPY_WEIGHT * ((entropy - (lo + m * (hi - lo))) ** 2).mean()
        loss.backward()
        self.gate_loss_sum += loss.item()
        self.gate_loss_steps += 1

    def pop_gate_loss(self) -> float | None:
        """Mean auxiliary gate loss since the last call (None when gates are not trained)."""
        if not self.gate_loss_steps:
            return None
        mean = self.gate_loss_sum / self.gate_loss_steps
        self.gate_loss_sum, self.gate_loss_steps = 0.0, 0
        return mean


class OraclePolicy:
    """The per-token oracle over a finite set of actions: at every step it tries each action with the SAME random
    draw (common random numbers) and takes the one whose token scores the highest training reward,
    total − λ · cost. It sees the future draw, so it bounds what a myopic controller could reach on the training
    reward; the study reports how far that bound lies above the fixed decoders on the held-out measures."""

    def __init__(self, env: GatingEnvironment, actions: list[float], lagrange_multiplier: float = 0.0):
        self.env, self.actions, self.lam = env, [float(a) for a in actions], float(lagrange_multiplier)
        self.uniforms: torch.Tensor | None = None

    def choose(self) -> torch.Tensor:
        """The best action per row for the env's next step; keeps the uniforms for that step."""
        env = self.env
        self.uniforms = env.draw_uniforms()
        best_value = torch.full((env.num_envs,), -math.inf, device=env.device)
        best = torch.zeros(env.num_envs, device=env.device)
        for a in self.actions:
            _, components, _ = env.decide(torch.full((env.num_envs,), a, device=env.device), self.uniforms)
            value = components["total"] - self.lam * env.reward_computer.cost(components)
            better = value > best_value
            best = torch.where(better, torch.full_like(best, a), best)
            best_value = torch.where(better, value, best_value)
        return best


def freeze_lm_except_gates(model) -> list[torch.nn.Parameter]:
    """Freeze the LM; unfreeze and return the DynamicGate parameters (RL_UNFREEZE_DYNAMIC_GATES)."""
    gates = []
    for name, p in model.named_parameters():
        p.requires_grad_("_gate." in name)
        if p.requires_grad:
            gates.append(p)
    return gates


def gate_state_dict(model) -> dict[str, torch.Tensor]:
    """Only the DynamicGate weights, as stored in RL checkpoints and loaded (strict=False) at inference."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if "_gate." in k}
