"""The RL environment: N episodes of modulated generation that step together in ONE batched, KV-cached LM forward.

An episode is a prompt of RL_PROMPT_MIN_LENGTH..RL_PROMPT_MAX_LENGTH tokens cut from the start of a validation story,
then up to RL_MAX_EPISODE_LENGTH generated tokens. At every step the agent picks m per environment; a decoder turns
the LM's next-token logits into a sampling distribution (by default the GatingModulator's parameters for m); the
sampled tokens are scored by the RewardComputer and fed back to the LM in one batched forward (under m when the
dynamic gates are in use). `<|endoftext|>` *terminates* an episode; reaching the length limit *truncates* it, and
the observation after the last token is returned in `info["final_obs"]` so PPO can bootstrap from it. Ended rows
restart at once with a fresh prompt, prefilled into their rows of the shared cache.

This module is the only place that knows about the language model; the agent sees (N, 64) observation tensors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from plugins.tidal.DataPipeline import EOT_TOKEN_ID
from plugins.tidal.GatingModulator import GatingModulator
from plugins.tidal.TransformerLM import apply_repetition_penalty, filter_logits, sample_from_probs

OBSERVATION_DIM = 64
HIDDEN_CHUNKS = 24
RECENT_WINDOW = 10


# ------------------------------------------------------------------------------------------- observation
def distinct_count(keys: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, N) non-negative int64 keys, (B, N) validity -> (B,) number of distinct valid keys, without Python loops."""
    s = keys.masked_fill(~valid, -1).sort(dim=1).values
    first = torch.ones_like(s, dtype=torch.bool)
    first[:, 1:] = s[:, 1:] != s[:, :-1]
    return (first & (s >= 0)).sum(dim=1)


def ngram_diversity(tokens: torch.Tensor, lengths: torch.Tensor, n: int, vocab: int) -> torch.Tensor:
    """Distinct n-grams / n-grams among the first `lengths` tokens of each row (1.0 when a row has no n-gram)."""
    B, T = tokens.shape
    if T < n:
        return torch.ones(B, device=tokens.device)
    keys = torch.zeros(B, T - n + 1, dtype=torch.long, device=tokens.device)
    for i in range(n):  # n <= 3: the key is the n-gram in base V
        keys = keys * vocab + tokens[:, i:T - n + 1 + i].clamp_min(0)
    total = (lengths - n + 1).clamp_min(0)
    valid = torch.arange(T - n + 1, device=tokens.device) < total.unsqueeze(1)
    ratio = distinct_count(keys, valid).float() / total.clamp_min(1).float()
    return torch.where(total > 0, ratio, torch.ones_like(ratio))


def raw_entropy(logits: torch.Tensor, log_probs: torch.Tensor | None = None) -> torch.Tensor:
    """Entropy (nats) of softmax(logits) per row, from log-probabilities when they are already at hand."""
    log_probs = logits.log_softmax(dim=-1) if log_probs is None else log_probs
    return -(log_probs.exp() * log_probs).sum(dim=-1)


class ObservationBuilder:
    """The 64-D observation of SPEC §7, batched and on the tokens' device:
    [0:10] token statistics, [10:58] 24 chunk means then 24 chunk stds of the final-LayerNorm hidden state,
    [58:64] step / max steps, 1.0, previous modulation, 0, 0, 0."""

    def __init__(self, rl_config: dict, lm_config: dict):
        self.max_steps = max(1, rl_config["RL_MAX_EPISODE_LENGTH"])
        self.vocab = lm_config["VOCAB_SIZE"]
        self.chunk = max(1, lm_config["EMBED_DIM"] // HIDDEN_CHUNKS)

    def __call__(self, tokens: torch.Tensor, logits: torch.Tensor, hidden: torch.Tensor, step,
                 previous_m: torch.Tensor, lengths: torch.Tensor | None = None,
                 entropy: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, T) (only the first `lengths` per row count; all when None), raw next-token logits (B, V),
        hidden (B, E), step (int or (B,)), previous_m (B,) -> (B, 64). `entropy` (B,) of softmax(logits) may be
        passed when the caller has it already."""
        B, T = tokens.shape
        device = logits.device
        lengths = torch.full((B,), T, device=device) if lengths is None else lengths
        n = lengths.float()
        obs = torch.zeros(B, OBSERVATION_DIM, device=device)
        valid = torch.arange(T, device=device) < lengths.unsqueeze(1)
        obs[:, 0] = torch.where(n > 0, 1.0 - distinct_count(tokens, valid).float() / n.clamp_min(1), torch.zeros_like(n))
        obs[:, 1] = (raw_entropy(logits.float()) if entropy is None else entropy) / 10.0
        obs[:, 2] = ngram_diversity(tokens, lengths, 2, self.vocab)
        obs[:, 3] = ngram_diversity(tokens, lengths, 3, self.vocab)
        idx = lengths.unsqueeze(1) - RECENT_WINDOW + torch.arange(RECENT_WINDOW, device=device)  # (B, 10)
        in_window = idx >= 0
        recent = tokens.gather(1, idx.clamp_min(0))
        count = in_window.sum(dim=1).clamp_min(1).float()
        obs[:, 4] = torch.where(in_window.any(1), distinct_count(recent, in_window).float() / count, torch.ones_like(n))
        same = (recent.unsqueeze(2) == recent.unsqueeze(1)) & in_window.unsqueeze(1) & in_window.unsqueeze(2)
        obs[:, 5] = same.sum(dim=2).max(dim=1).values.float() / count
        obs[:, 6] = (n / 100.0).clamp(max=1.0)
        chunks = hidden.float()[:, :HIDDEN_CHUNKS * self.chunk].reshape(B, -1, self.chunk)  # (B, 24, chunk)
        means = chunks.mean(dim=2)
        obs[:, 10:10 + means.shape[1]] = means
        if self.chunk > 1:
            obs[:, 34:34 + means.shape[1]] = chunks.std(dim=2)
        obs[:, 58] = torch.as_tensor(step, device=device, dtype=torch.float32) / self.max_steps
        obs[:, 59] = 1.0
        obs[:, 60] = previous_m.to(device).float().reshape(B)
        return obs


# ------------------------------------------------------------------------------------------- decoders
class ModulatedDecoder:
    """The default decoder: m -> GatingModulator parameters -> repetition penalty, temperature, top-k, top-p.
    `decode(logits (N, V), seen, m (N,))` gets the episode's tokens so far as `seen` ((N, H) ids, -1 padding — the
    form `apply_repetition_penalty` accepts) and returns the modulated logits (penalty + temperature; the reward's
    'diversity' distribution), the sampling logits (after top-k/top-p; -inf elsewhere) and the effects."""

    def __init__(self, modulator: GatingModulator):
        self.modulator = modulator

    def decode(self, logits: torch.Tensor, seen: torch.Tensor, m: torch.Tensor):
        effects = self.modulator(m)
        penalized = apply_repetition_penalty(logits, seen, effects.repetition_penalty)
        modulated = filter_logits(penalized, temperature=effects.temperature)
        sampling = filter_logits(modulated, top_k=effects.top_k, top_p=effects.top_p)
        return modulated, sampling, effects

    def observe(self, token: torch.Tensor, sampling_logits: torch.Tensor) -> None:
        """Stateless; stateful decoders (Mirostat) adapt here after each sampled token."""

    def reset_rows(self, rows: torch.Tensor) -> None:
        """Stateless; stateful decoders restart their per-row state here when an episode ends."""


# ------------------------------------------------------------------------------------------- environment
class GatingEnvironment:
    """`num_envs` episodes stepping together. Row b draws its prompts and its tokens from its own generators seeded
    by (seed, env_offset + b), so a batch of N environments reproduces N single environments with offsets 0..N-1."""

    def __init__(self, model, modulator: GatingModulator, reward_computer, prompts: list[list[int]], rl_config: dict,
                 num_envs: int | None = None, device: torch.device | str | None = None, seed: int = 0,
                 env_offset: int = 0, decoder=None, gate_training: bool = False, use_gates: bool | None = None,
                 sequential_prompts: bool = False):
        if not prompts:
            raise ValueError("the environment needs at least one prompt")
        self.model = model.eval()
        self.reward_computer = reward_computer
        self.prompts = prompts
        self.config = rl_config
        self.num_envs = num_envs or rl_config["RL_NUM_ENVS"]
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.decoder = decoder or ModulatedDecoder(modulator)
        self.gate_training = gate_training
        self.use_gates = gate_training if use_gates is None else use_gates  # m feeds the DynamicGates
        self.sequential_prompts = sequential_prompts
        self.observe = ObservationBuilder(rl_config, model.config)
        self.max_steps = rl_config["RL_MAX_EPISODE_LENGTH"]
        self.prompt_range = (rl_config["RL_PROMPT_MIN_LENGTH"], rl_config["RL_PROMPT_MAX_LENGTH"])
        self.initial_m = 0.5
        self.history_len = max(self.prompt_range[1], max(len(p) for p in prompts) if sequential_prompts else 0) \
            + self.max_steps
        if self.history_len > model.max_context_length:
            raise ValueError(f"prompt + episode ({self.history_len} tokens) exceed MAX_CONTEXT_LENGTH "
                             f"{model.max_context_length}")
        streams = [seed * 1_000_003 + env_offset + b for b in range(self.num_envs)]
        self.prompt_rngs = [torch.Generator().manual_seed(s) for s in streams]
        self.token_rngs = [torch.Generator(device=self.device).manual_seed(s) for s in streams]
        self.episodes_started = torch.zeros(self.num_envs, dtype=torch.long)
        self.gate_loss_sum, self.gate_loss_steps = 0.0, 0
        self.cache = None

    # ---------------------------------------------------------------------------------------------- episodes
    def _next_prompt(self, row: int) -> list[int]:
        if self.sequential_prompts:  # ablation: every policy sees the same prompts in the same order
            index = (int(self.episodes_started[row]) * self.num_envs + row) % len(self.prompts)
            return self.prompts[index]
        g = self.prompt_rngs[row]
        prompt = self.prompts[int(torch.randint(len(self.prompts), (1,), generator=g))]
        lo, hi = min(self.prompt_range[0], len(prompt)), min(self.prompt_range[1], len(prompt))
        return prompt[:int(torch.randint(lo, hi + 1, (1,), generator=g))]

    def reset(self) -> torch.Tensor:
        """Start a fresh episode in every row; returns the first observations (N, 64)."""
        N = self.num_envs
        self.cache = self.model.new_cache(N, self.history_len, self.device, torch.float32)
        self.history = torch.full((N, self.history_len), -1, dtype=torch.long, device=self.device)
        self.lengths = torch.zeros(N, dtype=torch.long, device=self.device)
        self.steps = torch.zeros(N, dtype=torch.long, device=self.device)
        self.prev_m = torch.full((N,), self.initial_m, device=self.device)
        self.logits = torch.zeros(N, self.model.vocab_size, device=self.device)
        self.hidden = torch.zeros(N, self.model.config["EMBED_DIM"], device=self.device)
        self.episode_return = torch.zeros(N, device=self.device)
        self.episodes_started.zero_()
        self._start_episodes(torch.arange(N, device=self.device))
        return self._observation()

    @torch.no_grad()
    def _start_episodes(self, rows: torch.Tensor) -> None:
        """Pick prompts for `rows`, prefill them (left-padded) in one forward and splice them into the shared cache."""
        prompts = [self._next_prompt(int(r)) for r in rows]
        self.episodes_started[rows.cpu()] += 1
        width = max(len(p) for p in prompts)
        ids = torch.zeros(len(prompts), width, dtype=torch.long, device=self.device)
        mask = torch.zeros(len(prompts), width, dtype=torch.bool, device=self.device)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p, device=self.device)
            mask[i, width - len(p):] = True
        signal = torch.full((len(prompts), 1), self.initial_m, device=self.device) if self.use_gates else None
        logits, fresh, hidden = self.model(ids, gate_signals=signal, use_cache=True, return_hidden=True,
                                           attention_mask=mask, cache_capacity=self.history_len)
        self.cache.replace_rows(rows, fresh)
        self.logits[rows], self.hidden[rows] = logits[:, -1].float(), hidden[:, -1].float()
        self.history[rows] = -1
        for i, (r, p) in enumerate(zip(rows.tolist(), prompts)):
            self.history[r, :len(p)] = ids[i, width - len(p):]
        self.lengths[rows] = torch.tensor([len(p) for p in prompts], device=self.device)
        self.steps[rows] = 0
        self.prev_m[rows] = self.initial_m
        self.episode_return[rows] = 0.0
        self.decoder.reset_rows(rows)

    def _observation(self) -> torch.Tensor:
        """The observation for the current logits; also keeps their log-probabilities for the next step's reward."""
        self.log_probs = self.logits.log_softmax(dim=-1)
        return self.observe(self.history, self.logits, self.hidden, self.steps.float(), self.prev_m, self.lengths,
                            raw_entropy(self.logits, self.log_probs))

    # ---------------------------------------------------------------------------------------------- stepping
    def step(self, m: torch.Tensor):
        """m (N,) in [0, 1] -> (observation (N, 64), reward (N,), terminated (N,), truncated (N,), info)."""
        if self.cache is None:
            raise RuntimeError("call reset() before step()")
        m = m.detach().to(self.device).float().reshape(self.num_envs).clamp(0.0, 1.0)
        rows = torch.arange(self.num_envs, device=self.device)
        with torch.no_grad():
            # the episode's tokens so far (prompt included) are what the repetition penalty counts
            modulated, sampling, effects = self.decoder.decode(self.logits, self.history, m)
            probs = sampling.softmax(dim=-1)
            token = sample_from_probs(probs, self.token_rngs)
            token_logprob = self.log_probs[rows, token]
            prev_token = self.history[rows, self.lengths - 1]
            recent_idx = self.lengths.unsqueeze(1) - RECENT_WINDOW + torch.arange(RECENT_WINDOW, device=self.device)
            recent = self.history.gather(1, recent_idx.clamp_min(0)).masked_fill(recent_idx < 0, -1)
            sampling_entropy = torch.special.entr(probs).sum(dim=-1)
            components = self.reward_computer.compute(token_logprob, modulated, sampling, token, prev_token, recent,
                                                      sampling_entropy)
            self.decoder.observe(token, sampling)
        reward = components["total"]
        self.history[rows, self.lengths] = token
        self.lengths += 1
        self.steps += 1
        self.episode_return += reward
        terminated = token == EOT_TOKEN_ID
        truncated = (self.steps >= self.max_steps) & ~terminated
        self._forward(token, m)  # the one batched LM forward of this step
        self.prev_m = m.clone()  # a copy: restarting rows reset prev_m in place, m stays what the agent chose
        obs = self._observation()
        ended = terminated | truncated
        info = {"components": components, "tokens": token, "modulation": m, "effects": effects,
                "sampling_entropy": sampling_entropy, "final_obs": obs.clone(),
                "episode_returns": self.episode_return[ended].clone(), "episode_lengths": self.steps[ended].clone()}
        if bool(ended.any()):
            self._start_episodes(ended.nonzero().squeeze(1))
            obs = self._observation()
        return obs, reward, terminated, truncated, info

    def _forward(self, token: torch.Tensor, m: torch.Tensor) -> None:
        signal = m.unsqueeze(1) if self.use_gates else None
        with torch.set_grad_enabled(self.gate_training):
            logits, self.cache, hidden = self.model(token.unsqueeze(1), gate_signals=signal, past_key_values=self.cache,
                                                    use_cache=True, return_hidden=True)
            if self.gate_training:
                self._gate_objective(logits[:, -1], m)
        self.logits, self.hidden = logits[:, -1].detach().float(), hidden[:, -1].detach().float()

    def _gate_objective(self, logits: torch.Tensor, m: torch.Tensor) -> None:
        """Auxiliary loss for the dynamic gates: the LM's own next-token entropy should follow m, from
        RL_GATE_ENTROPY_MIN nats at m=0 to RL_GATE_ENTROPY_MAX at m=1. Gradients accumulate in the gate parameters
        (the only ones requiring grad); the trainer steps their optimizer once per rollout."""
        entropy = torch.special.entr(logits.float().softmax(dim=-1)).sum(dim=-1)
        lo, hi = self.config["RL_GATE_ENTROPY_MIN"], self.config["RL_GATE_ENTROPY_MAX"]
        loss = self.config["RL_GATE_ENTROPY_WEIGHT"] * ((entropy - (lo + m * (hi - lo))) ** 2).mean()
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
