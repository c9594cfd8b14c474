"""Dense per-step reward for the gating agent (SPEC §7), batched over environments.

Five components, each a (B,) tensor:
  perplexity  −min(−log p(token), ln CLIP) / ln CLIP                   ∈ [−1, 0]
  diversity   Gaussian in the entropy of the modulated distribution   ∈ (0, 1]
  sampling    Gaussian in the entropy of the final sampling distribution ∈ (0, 1]
  repetition  penalty from the new token's count in the recent window   ∈ [0, 1]   (subtracted)
  coherence   add-one-smoothed bigram probability, 1 + ln p / ln V    ∈ [0, 1]
total = Σ weight · component, with repetition subtracted.

Bigram statistics are sparse (sorted int64 keys prev·V + next with counts) because a dense V × V table is
impossible at V = 50,257; lookups are one `torch.searchsorted`.
"""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
import torch

COMPONENTS = ("perplexity", "diversity", "sampling", "repetition", "coherence")


class BigramStatistics(NamedTuple):
    """Sparse bigram counts over a vocabulary of V tokens.

    unigram_counts (V,): how many bigrams start with each token (its count in the stream, less one for the final
    token), which makes the add-one-smoothed conditional sum to exactly one.
    bigram_keys (K,): sorted unique prev·V + next. bigram_counts (K,): their counts.
    """
    unigram_counts: np.ndarray
    bigram_keys: np.ndarray
    bigram_counts: np.ndarray


def _gaussian(x: torch.Tensor, target: float) -> torch.Tensor:
    """exp(−½((x − target)/(target/2))²): 1 at the target, bandwidth half the target."""
    return torch.exp(-0.5 * ((x - target) / (0.5 * target)) ** 2)


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(logits) per row; −inf logits contribute 0 (entr(0) = 0), not NaN."""
    return torch.special.entr(torch.softmax(logits.float(), dim=-1)).sum(dim=-1)


def _renormalised(weights: dict[str, float], disabled: set[str]) -> dict[str, float]:
    """Zero the disabled components and rescale the others so the total weight is unchanged."""
    total = sum(weights.values())
    kept = sum(w for name, w in weights.items() if name not in disabled)
    if kept <= 0:
        raise ValueError("at least one reward component with a positive weight must stay enabled")
    scale = total / kept
    return {name: 0.0 if name in disabled else w * scale for name, w in weights.items()}


class RewardComputer:
    """`compute(...)` returns a dict of (B,) reward components and their weighted `total`.

    `weights` is a plain dict that controllers may change between rollouts (diversity homeostasis writes
    `weights["diversity"]`); `set_lagrangian_mode()` moves diversity into a constraint (see `cost`).
    """

    def __init__(self, config: dict, vocab_size: int, bigram_counts: BigramStatistics | None = None):
        self.vocab_size = vocab_size
        self.weights = {name: float(config[f"RL_REWARD_{name.upper()}_WEIGHT"]) for name in COMPONENTS}
        self.log_perplexity_clip = math.log(config["RL_PERPLEXITY_CLIP"])
        self.entropy_target = config["RL_ENTROPY_TARGET"]
        self.sampling_entropy_target = config["RL_SAMPLING_ENTROPY_TARGET"]
        self.repetition_window = config["RL_REPETITION_WINDOW"]
        self.diversity_threshold = config["RL_DIVERSITY_CONSTRAINT_THRESHOLD"]
        if bigram_counts is None:
            warnings.warn("RewardComputer without bigram statistics: coherence is the same for every token "
                          "(pass RewardComputer.bigram_statistics_from_tokens(...))", stacklevel=2)
            bigram_counts = BigramStatistics(np.zeros(vocab_size, np.int64), np.zeros(0, np.int64),
                                             np.zeros(0, np.int64))
        self._stats = {name: torch.as_tensor(np.asarray(array, dtype=np.int64))
                       for name, array in BigramStatistics(*bigram_counts)._asdict().items()}

    @staticmethod
    def bigram_statistics_from_tokens(tokens: np.ndarray, vocab_size: int) -> BigramStatistics:
        """Count the bigrams of a flat token stream (e.g. uint16 GPT-2 ids, stories separated by <|endoftext|>)."""
        tokens = np.asarray(tokens).astype(np.int64)  # before multiplying: prev·V overflows uint16 and int32
        if tokens.ndim != 1 or tokens.size < 2:
            raise ValueError("bigram statistics need a flat stream of at least 2 tokens")
        if tokens.min() < 0 or tokens.max() >= vocab_size:
            raise ValueError(f"token ids must lie in [0, {vocab_size})")
        keys, counts = np.unique(tokens[:-1] * vocab_size + tokens[1:], return_counts=True)  # sorted
        return BigramStatistics(np.bincount(tokens[:-1], minlength=vocab_size), keys, counts.astype(np.int64))

    # ---------------------------------------------------------------------------------------- modes
    def set_lagrangian_mode(self) -> None:
        """Diversity becomes a constraint handled by a Lagrange multiplier: drop it (and repetition) from the
        reward and rescale perplexity, sampling and coherence to the same total weight."""
        self.weights = _renormalised(self.weights, {"diversity", "repetition"})

    def cost(self, diversity: torch.Tensor) -> torch.Tensor:
        """Constraint cost per step: max(0, RL_DIVERSITY_CONSTRAINT_THRESHOLD − diversity)."""
        return (self.diversity_threshold - diversity).clamp_min(0.0)

    # ---------------------------------------------------------------------------------------- reward
    @torch.no_grad()  # rewards are data, never a gradient path (even while the dynamic gates train)
    def compute(self, token_logprob: torch.Tensor, modulated_logits: torch.Tensor, sampling_logits: torch.Tensor,
                new_token: torch.Tensor, prev_token: torch.Tensor, recent_tokens: torch.Tensor,
                sampling_entropy: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """All inputs are batched over B environments.

        token_logprob (B,): log-probability of the sampled token. modulated_logits (B, V): after repetition
        penalty and temperature. sampling_logits (B, V): after top-k/top-p, removed entries −inf.
        new_token, prev_token (B,): the sampled token and the one before it. recent_tokens (B, W): the tokens
        before the new one, most recent last, −1 for padding; only the last RL_REPETITION_WINDOW columns count.
        sampling_entropy (B,), optional: the entropy of softmax(sampling_logits) when the caller already has it
        (a full pass over the vocabulary saved per step).
        """
        nll = -token_logprob.float()  # ln perplexity of the token; clipping it avoids exp overflow
        out = {
            "perplexity": -nll.clamp(max=self.log_perplexity_clip) / self.log_perplexity_clip,
            "diversity": _gaussian(_entropy(modulated_logits), self.entropy_target),
            "sampling": _gaussian(_entropy(sampling_logits) if sampling_entropy is None else sampling_entropy,
                                  self.sampling_entropy_target),
            "repetition": self._repetition(new_token, prev_token, recent_tokens),
            "coherence": self._coherence(prev_token, new_token),
        }
        out["total"] = sum(self.weights[name] * out[name] for name in COMPONENTS if name != "repetition") \
            - self.weights["repetition"] * out["repetition"]
        return out

    def _repetition(self, new_token: torch.Tensor, prev_token: torch.Tensor, recent_tokens: torch.Tensor
                    ) -> torch.Tensor:
        window = recent_tokens[:, -self.repetition_window:]
        count = (window == new_token.unsqueeze(1)).sum(dim=1).float()  # padding (−1) never equals a token
        penalty = torch.where(count < 3, 0.25 * count, (0.75 + 0.05 * (count - 3)).clamp(max=1.0))
        penalty = penalty + 0.3 * (new_token == prev_token).float()
        return penalty.clamp(max=1.0)

    def _coherence(self, prev_token: torch.Tensor, new_token: torch.Tensor) -> torch.Tensor:
        stats = self._stats_on(new_token.device)
        keys, counts = stats["bigram_keys"], stats["bigram_counts"]
        prev, new = prev_token.long(), new_token.long()
        pair_count = torch.zeros_like(new)
        if keys.numel():
            query = prev * self.vocab_size + new
            idx = torch.searchsorted(keys, query).clamp(max=keys.numel() - 1)
            pair_count = torch.where(keys[idx] == query, counts[idx], pair_count)
        p = (pair_count + 1).float() / (stats["unigram_counts"][prev] + self.vocab_size).float()
        return (1.0 + torch.log(p) / math.log(self.vocab_size)).clamp(0.0, 1.0)

    def _stats_on(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The statistics on the device of the batch (moved once, on first use there)."""
        if self._stats["bigram_keys"].device != device:
            self._stats = {name: t.to(device) for name, t in self._stats.items()}
        return self._stats


class AblationRewardComputer(RewardComputer):
    """A RewardComputer with some components switched off (weight 0, the rest rescaled to the same total).
    It requires bigram statistics: an ablation with constant coherence is the SPEC §14 defect."""

    def __init__(self, config: dict, vocab_size: int, bigram_counts: BigramStatistics | None,
                 enable_perplexity: bool = True, enable_diversity: bool = True, enable_sampling: bool = True,
                 enable_repetition: bool = True, enable_coherence: bool = True):
        if bigram_counts is None:
            raise ValueError("the ablation needs bigram statistics; without them coherence is constant")
        super().__init__(config, vocab_size, bigram_counts)
        enabled = dict(perplexity=enable_perplexity, diversity=enable_diversity, sampling=enable_sampling,
                       repetition=enable_repetition, coherence=enable_coherence)
        self.weights = _renormalised(self.weights, {name for name, on in enabled.items() if not on})
