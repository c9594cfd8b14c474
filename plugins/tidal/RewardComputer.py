"""Dense per-step reward for the gating agent that scores the TEXT, batched over environments (ADR 0015).

No term is the generator's own likelihood or the entropy of the distribution the controller chose (both were
gameable: see research/adrs/0015). Three components, each a (B,) tensor:
  quality     log-probability of the new token under the TRAINING judge (an n-gram LM built on a sample disjoint
              from the generator's data and from the evaluation judge's), clipped: max(ln p, −CLIP) / CLIP ∈ [−1, 0]
  repetition  1 when the n-gram ending at the new token already occurred in the sequence (prompt included), 0.5 when
              the token is a content word already used in the last RL_REPETITION_WINDOW tokens, else 0   (subtracted)
  overlap     1 when the new bigram already occurs in the generation of another sample of the same prompt (rows of a
              group share a prompt): the set-level diversity cost over K samples                      (subtracted)
total = w_q · quality − w_r · repetition − w_o · overlap. In lagrangian mode `overlap` leaves the total and becomes
the constraint cost `cost(...)`, traded by the PPO-Lagrangian multiplier; a λ sweep traces a frontier.
The dynamic gates never touch this scorer: it reads tokens only.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from plugins.tidal.Config import RLConfig

COMPONENTS = ("quality", "repetition", "overlap")
# Function words repeat in every good sentence; repeating them is not the failure the content penalty targets.
_STOP_WORDS = frozenset("""the and was she her his him they them their there then that this with were had have has
for from not but you your are one day said very little into when what who all out saw too can its it's would could
our ours him himself herself over under just some""".split())


def content_token_mask(tokenizer, vocab_size: int) -> torch.Tensor:
    """(V,) bool: tokens that are a word of at least 3 letters and not a function word ("ball", " Lily")."""
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    for i in range(min(vocab_size, tokenizer.n_vocab)):
        try:
            text = tokenizer.decode_single_token_bytes(i).decode("utf-8").strip()
        except (UnicodeDecodeError, KeyError):
            continue
        mask[i] = len(text) >= 3 and text.isalpha() and text.lower() not in _STOP_WORDS
    return mask


def _ngram_keys(history: torch.Tensor, n: int, vocab: int) -> torch.Tensor:
    """(B, H) ids -> (B, H − n + 1) keys of the n-grams starting at each position, Σ t_i · V^(n−1−i): exact for
    n ≤ 3 at V = 50,257 (V³ < 2⁶³). Keys of n-grams that reach padding are meaningless; callers mask by position."""
    powers = torch.tensor([vocab ** (n - 1 - i) for i in range(n)], device=history.device)
    return (history.unfold(1, n, 1) * powers).sum(dim=-1)


class RewardComputer:
    """`compute(history, lengths, prompt_lengths, token, group)` -> dict of (B,) components and their `total`."""
    components = COMPONENTS

    def __init__(self, config: RLConfig | Mapping, judge, content_tokens: torch.Tensor):
        config = RLConfig.of(config)
        self.judge = judge
        self.content_tokens = content_tokens
        self.vocab_size = int(content_tokens.shape[0])
        self.clip = config.RL_QUALITY_CLIP
        self.window = config.RL_REPETITION_WINDOW
        self.ngram = config.RL_REPETITION_NGRAM  # 2 or 3
        self.weights = config.reward_weights()  # by component; set_lagrangian_mode zeroes overlap

    def set_lagrangian_mode(self) -> None:
        """Overlap becomes a constraint handled by a Lagrange multiplier instead of a weighted term."""
        self.weights["overlap"] = 0.0

    def cost(self, components: dict[str, torch.Tensor]) -> torch.Tensor:
        """The constraint cost per step: the set-level overlap."""
        return components["overlap"]

    @torch.no_grad()  # rewards are data, never a gradient path (even while the dynamic gates train)
    def compute(self, history: torch.Tensor, lengths: torch.Tensor, prompt_lengths: torch.Tensor,
                token: torch.Tensor, group: torch.Tensor) -> dict[str, torch.Tensor]:
        """history (B, H): each row's tokens so far (prompt, then generation), -1 after `lengths`; token (B,): the new
        token; prompt_lengths (B,); group (B,): rows with the same group id are samples of the same prompt."""
        B, H = history.shape
        device = history.device
        n, V = self.ngram, self.vocab_size
        last = lengths.unsqueeze(1)                       # (B, 1): where the new token goes
        position = torch.arange(H, device=device)
        # the new n-gram: the n − 1 tokens before the new one, then the token (none while the row is shorter)
        context = history.gather(1, (last - torch.arange(n - 1, 0, -1, device=device)).clamp_min(0))  # (B, n − 1)
        new_key = _ngram_keys(torch.cat([context, token.unsqueeze(1)], dim=1), n, V)                  # (B, 1)
        # ... against every n-gram inside the first `lengths` tokens (which start before position lengths − n + 1)
        inside = position[:H - n + 1] < last - n + 1
        ngram_repeat = ((_ngram_keys(history, n, V) == new_key) & inside).any(dim=1)
        recent = (position >= last - self.window) & (position < last)
        content_repeat = self.content_tokens.to(device)[token] & ((history == token.unsqueeze(1)) & recent).any(dim=1)
        repetition = torch.where(ngram_repeat, 1.0, content_repeat * 0.5)

        # the new bigram against the bigrams other samples of the prompt generated (those ending at a generated token)
        new_bigram = context[:, -1] * V + token           # (B,)
        ends = position[1:]
        generated = (ends >= prompt_lengths.unsqueeze(1)) & (ends < last)
        # (B, H − 1); below every key, even one over the -1 of an empty row
        sibling_keys = _ngram_keys(history, 2, V).masked_fill(~generated, -V - 1)
        siblings = (group.unsqueeze(1) == group.unsqueeze(0)) & ~torch.eye(B, dtype=torch.bool, device=device)
        shared = (sibling_keys.unsqueeze(0) == new_bigram.view(B, 1, 1)).any(dim=2)  # (B, B): row b's bigram in row j
        overlap = (shared & siblings).any(dim=1).float()

        logprob = self.judge.logprob_next(history, lengths, token)
        quality = logprob.float().clamp_min(-self.clip) / self.clip
        out = {"quality": quality, "repetition": repetition, "overlap": overlap}
        out["total"] = self.weights["quality"] * quality - self.weights["repetition"] * out["repetition"] \
            - self.weights["overlap"] * overlap
        return out
