"""Every way Tidal turns next-token logits into a token, behind one protocol (ADR 0015).

Filters are plain functions on (B, V) logits with per-row parameters, so the generator, the RL environment, the
study, the dashboard and MCP share one implementation. A *decoder* composes them:

    step = decoder.decode(logits (B, V), history (B, H) ids with -1 padding, lengths (B,), action (B,) | None)
    token = sample_from_probs(step.probs(), generators)   # step.probs(): removed tokens are 0
    decoder.observe(token, step)                          # stateful decoders (Mirostat) adapt here
    decoder.reset_rows(rows)                              # ... and restart a row's state here

Decoders: `PlainDecoder` (temperature / top-k / top-p / min-p / windowed repetition penalty; greedy is T = 0),
`MirostatDecoder` (v2, τ in bits), `EDTDecoder` (entropy-dependent temperature) and `ControlledDecoder`, whose
parameters come from an action space (`GatingModulator`'s m or a residual grid) driven by a policy.
`make_decoder(name, **params)` builds the fixed ones by name for the CLI, the API and MCP.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict

import torch

LN2 = math.log(2.0)
DECODERS = ("plain", "greedy", "min_p", "mirostat", "edt")
NUCLEUS_CANDIDATES = (64, 1024)


# ------------------------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class SamplingParams:
    """Per-row sampling parameters; each field is a (B,) tensor (top_k long). top_k 0, top_p 1 and min_p 0 are off;
    temperature 0 is greedy; repetition_penalty 1 is off and applies to the last `penalty_window` tokens (0 = all)."""
    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    min_p: torch.Tensor
    repetition_penalty: torch.Tensor
    penalty_window: int = 0

    @classmethod
    def constant(cls, batch: int, device, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
                 penalty_window: int = 0) -> SamplingParams:
        def col(value, dtype=torch.float32):
            return torch.full((batch,), value, dtype=dtype, device=device)
        return cls(col(float(temperature)), col(int(top_k), torch.long), col(float(top_p)), col(float(min_p)),
                   col(float(repetition_penalty)), int(penalty_window))

    def row(self, i: int) -> dict:
        """Row `i` as plain numbers, the shape trajectories and the API report."""
        return {"temperature": float(self.temperature[i]), "top_k": int(self.top_k[i]), "top_p": float(self.top_p[i]),
                "min_p": float(self.min_p[i]), "repetition_penalty": float(self.repetition_penalty[i])}


def validate_sampling(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, min_p=0.0) -> None:
    """Raise ValueError for parameters outside their domain (scalars or per-row tensors)."""
    def values(x):
        return torch.as_tensor(x, dtype=torch.float64).flatten()
    t, k, p, r, mp = (values(x) for x in (temperature, top_k, top_p, repetition_penalty, min_p))
    if not torch.isfinite(t).all() or (t < 0).any():
        raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
    if not torch.isfinite(k).all() or (k < 0).any() or (k != k.round()).any():
        raise ValueError(f"top_k must be a whole number >= 0 (0 disables it), got {top_k}")
    if not torch.isfinite(p).all() or (p <= 0).any() or (p > 1).any():
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not torch.isfinite(r).all() or (r <= 0).any():
        raise ValueError(f"repetition_penalty must be finite and > 0, got {repetition_penalty}")
    if not torch.isfinite(mp).all() or (mp < 0).any() or (mp >= 1).any():
        raise ValueError(f"min_p must be in [0, 1) (0 disables it), got {min_p}")


# ------------------------------------------------------------------------------------------- filters
def _per_row(value, batch: int, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A scalar or (B,) tensor as a (B, 1) column on `like`'s device."""
    t = torch.as_tensor(value, device=like.device, dtype=dtype or like.dtype)
    return t.expand(batch).reshape(batch, 1) if t.dim() == 0 else t.reshape(batch, 1)


def recent_tokens(history: torch.Tensor, lengths: torch.Tensor | None, window: int) -> torch.Tensor:
    """The last `window` tokens of each row's first `lengths` (all when window is 0) as (B, W) ids, -1 padded."""
    if lengths is None:
        return history if window <= 0 else history[:, -window:]
    if window <= 0:
        return history.masked_fill(torch.arange(history.shape[1], device=history.device) >= lengths.unsqueeze(1), -1)
    idx = lengths.unsqueeze(1) - window + torch.arange(window, device=history.device)  # (B, W)
    return history.gather(1, idx.clamp_min(0)).masked_fill(idx < 0, -1)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty) -> torch.Tensor:
    """CTRL penalty over tokens already present: positive logits / p, negative logits * p.

    `seen` is a (B, V) bool mask, or (B, H) int64 token ids padded with -1 — then only those H entries per row are
    touched instead of all V (a sparse update)."""
    if seen.dtype == torch.bool:
        p = _per_row(penalty, logits.shape[0], logits)
        return torch.where(seen, torch.where(logits > 0, logits / p, logits * p), logits)
    return _penalise_(logits.clone(), seen, penalty) if seen.shape[1] else logits


def _penalise_(logits: torch.Tensor, seen: torch.Tensor, penalty) -> torch.Tensor:
    """`apply_repetition_penalty` with (B, H) ids, in place. The penalty depends only on the sign of a logit, so it
    commutes with a positive per-row scale (the tempered path penalises the scaled logits)."""
    p = _per_row(penalty, logits.shape[0], logits)
    real = seen >= 0
    has_real = real.any(dim=1, keepdim=True)
    # padding repeats the row's first real id, so duplicates write the same value; a row with none touches id 0
    first = seen.gather(1, real.float().argmax(dim=1, keepdim=True)).clamp_min(0)
    ids = torch.where(real, seen, first)
    values = logits.gather(1, ids)
    penalised = torch.where(values > 0, values / p, values * p)
    return logits.scatter_(1, ids, torch.where(has_real, penalised, values))


TOP_K_CHUNK = 64  # k_largest's chunk width: measured fastest at 16 rows x 50,257 (4x torch.topk for k = 5, 1.7x for 51)


def k_largest(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`x.topk(k, dim=-1)` for (B, V) x, sorted descending, without a selection over all of V: the k largest lie in
    the k chunks (of TOP_K_CHUNK) with the largest maxima, so one max per chunk and a top-k over k chunks suffice.
    Ties may return other indices of equal values (as topk may)."""
    B, V = x.shape
    chunks = V // TOP_K_CHUNK
    if chunks <= k:
        return x.topk(k, dim=-1)
    span = torch.arange(TOP_K_CHUNK, device=x.device)
    best = x[:, :chunks * TOP_K_CHUNK].reshape(B, chunks, TOP_K_CHUNK).amax(dim=-1).topk(k, dim=-1).indices
    idx = (best.unsqueeze(-1) * TOP_K_CHUNK + span).view(B, -1)
    if chunks * TOP_K_CHUNK < V:  # the ragged tail is always a candidate
        idx = torch.cat([idx, torch.arange(chunks * TOP_K_CHUNK, V, device=x.device).expand(B, -1)], dim=1)
    values, order = x.gather(1, idx).topk(k, dim=-1)
    return values, idx.gather(1, order)


def filter_logits(logits: torch.Tensor, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0) -> torch.Tensor:
    """÷ temperature (0 keeps the argmax only), then top-k (0 = off), then min-p (keep p >= min_p · p_max) and nucleus
    top-p (the token that crosses p is kept) on what top-k kept. Parameters are scalars or per-row (B,) tensors;
    removed entries become -inf. Top-k runs first so the sort covers k tokens, not the vocabulary."""
    B, V = logits.shape
    t = _per_row(temperature, B, logits)
    greedy = t == 0
    t = torch.where(greedy, torch.ones_like(t), t)
    k = _per_row(top_k, B, logits, torch.long).squeeze(1)
    k = torch.where((k <= 0) | (k > V), torch.full_like(k, V), k)
    k = torch.where(greedy.squeeze(1), torch.ones_like(k), k)
    p = _per_row(top_p, B, logits).squeeze(1)
    mp = _per_row(min_p, B, logits).squeeze(1)
    only_top_k = not bool((mp > 0).any() | (p < 1.0).any() | (k >= V).any())
    if only_top_k and (kept := _top_k_only(logits, t, k)) is not None:
        return kept
    logits = logits / t  # a new tensor: the filters below write into it in place
    if bool((mp > 0).any()):  # min-p needs no sort: logit >= max + ln(min_p); ln 0 = -inf keeps every logit
        threshold = logits.amax(dim=-1, keepdim=True) + torch.log(mp).unsqueeze(1)
        logits.masked_fill_(logits < threshold, float("-inf"))
    use_p = p < 1.0
    if not bool(use_p.any()):
        if bool((k >= V).all()):
            return logits
        kth = k_largest(logits, int(k.max()))[0].gather(1, (k - 1).unsqueeze(1))  # (B, 1)
        return logits.masked_fill(logits < kth, float("-inf"))
    kmax = int(k.max())
    # A nucleus over the whole vocabulary needs no full sort when the top c tokens already hold mass p: the cut is then
    # among them (exact). Try c = 64, then 1024 (a partial sort costs ~c/V of a full one), then sort everything.
    whole = (k >= V).unsqueeze(1)  # these rows renormalise over the whole (min-p-filtered) vocabulary
    for candidates in [c for c in NUCLEUS_CANDIDATES if c < kmax] + [kmax]:
        if candidates == V:
            values, indices = logits.sort(dim=-1, descending=True)  # a sort beats topk(V) on CPU
        else:
            values, indices = k_largest(logits, candidates)  # (B, c) sorted descending: serves top-k and top-p
        values = values.masked_fill(torch.arange(candidates, device=logits.device) >= k.unsqueeze(1), float("-inf"))
        norm = torch.where(whole, logits.logsumexp(dim=-1, keepdim=True), values.logsumexp(dim=-1, keepdim=True))
        probs = (values - norm).exp()
        if candidates == kmax or bool(((probs.sum(dim=-1) >= p) | ~use_p).all()):
            break
    mass_before = probs.cumsum(dim=-1) - probs
    values = values.masked_fill(use_p.unsqueeze(1) & (mass_before >= p.unsqueeze(1)), float("-inf"))
    kept = torch.full_like(logits, float("-inf")).scatter_(1, indices, values)  # in place: no copy of V
    return torch.where(whole & ~use_p.unsqueeze(1), logits, kept)  # rows with neither filter keep everything


def _top_k_only(logits: torch.Tensor, t: torch.Tensor, k: torch.Tensor) -> torch.Tensor | None:
    """`filter_logits` when top-k is the only filter, touching the vocabulary twice (one top-k, one fill) instead of
    five times: ÷ t commutes with the ranking (t > 0), so only the k kept values are divided. None when a row's k-th
    and (k+1)-th scaled values tie: the general path keeps every tied value, this one would keep exactly k."""
    kmax = int(k.max())
    raw, indices = k_largest(logits, kmax + 1)                                  # (B, kmax + 1), sorted descending
    values = raw / t                                                         # bit-identical to dividing all of V
    kth, after = values.gather(1, (k - 1).unsqueeze(1)), values.gather(1, k.unsqueeze(1))
    if bool((kth == after).any()):
        return None
    values = values[:, :kmax].masked_fill(torch.arange(kmax, device=logits.device) >= k.unsqueeze(1), float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter_(1, indices[:, :kmax], values)  # in place: no copy of V


LOG2E = 1.0 / LN2
MIN_P_FLOOR = 2.0 ** -100  # the relative probability below which the tempered path drops a token even without min-p


def tempered_probs(logits: torch.Tensor, temperature, min_p, seen: torch.Tensor | None = None,
                   penalty=1.0) -> torch.Tensor:
    """Unnormalised probabilities of softmax(penalised logits / t) with min-p, zero where removed: the sampling
    distribution of `filter_logits` without top-k or top-p, in five passes over the vocabulary where the logits and
    a softmax took eight, and cheaper ones.

    z = x · log2(e) / t is the log2-probability up to a constant; shifting it by max(z) + log2(min_p) makes the
    min-p cut (p ≥ min_p · p_max) the scalar test 2^z > 1 for every row at once, where a per-row comparison costs
    five times as much (ADR 0016, round 3). min_p is floored at MIN_P_FLOOR so a row without min-p cannot overflow:
    it drops only tokens under 2^-100 of the top one, which float32 sampling can never pick. t must be > 0."""
    B = logits.shape[0]
    z = logits.float() * (LOG2E / _per_row(temperature, B, logits, torch.float32))
    if seen is not None and seen.shape[1]:
        _penalise_(z, seen, penalty)
    floor = torch.log2(_per_row(min_p, B, z).clamp_min(MIN_P_FLOOR))
    z.sub_(z.amax(dim=-1, keepdim=True) + floor).exp2_()
    return torch.nn.functional.threshold(z, 1.0, 0.0, inplace=True)


def apply_params(logits: torch.Tensor, history: torch.Tensor, lengths: torch.Tensor | None,
                 params: SamplingParams) -> DecodeStep:
    """The windowed repetition penalty, then the filters, as a DecodeStep. Without top-k or top-p (and with t > 0)
    the step holds `tempered_probs`; otherwise the logits of `filter_logits`."""
    penalised = bool((params.repetition_penalty != 1.0).any())
    seen = recent_tokens(history, lengths, params.penalty_window) if penalised else None
    V = logits.shape[-1]
    if bool(((params.top_k <= 0) | (params.top_k >= V)).all() & (params.top_p >= 1.0).all()
            & (params.temperature > 0).all()):
        return DecodeStep(params=params, probs=tempered_probs(logits, params.temperature, params.min_p, seen,
                                                              params.repetition_penalty))
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    return DecodeStep(filter_logits(logits, params.temperature, params.top_k, params.top_p, params.min_p), params)


# ------------------------------------------------------------------------------------------- sampling
def sample_from_probs(probs: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None = None
                      ) -> torch.Tensor:
    """One token per row of (B, V) probabilities -> (B,). A list of generators gives every row its own random stream:
    one uniform per row, inverted through the row's CDF, so a row's draw never depends on the rest of the batch."""
    if not isinstance(generator, (list, tuple)):
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    u = torch.stack([torch.rand((), generator=g, device=probs.device) for g in generator])
    return invert_cdf(probs, u)


CDF_BLOCK = 256  # invert_cdf's block width: a cumsum over V is one long serial chain, block sums vectorise


def invert_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The token whose CDF interval holds u (B,) in [0, 1); never a zero-probability token. Probabilities need not
    be normalised. Two levels — find the block of CDF_BLOCK tokens, then the token inside it — so the serial cumsum
    covers V / CDF_BLOCK + CDF_BLOCK entries rather than V (ADR 0016)."""
    probs = probs.float()
    B, V = probs.shape
    if V <= 2 * CDF_BLOCK:
        cdf = probs.cumsum(dim=-1)
        return _first_above(cdf, u * cdf[:, -1])
    full = V // CDF_BLOCK * CDF_BLOCK
    sums = torch.cat([probs[:, :full].reshape(B, -1, CDF_BLOCK).sum(dim=-1), probs[:, full:].sum(-1, keepdim=True)], 1)
    cdf = sums.cumsum(dim=-1)                                               # (B, blocks)
    target = u * cdf[:, -1]
    block = _first_above(cdf, target)
    before = torch.cat([cdf.new_zeros(B, 1), cdf[:, :-1]], dim=1).gather(1, block.unsqueeze(1)).squeeze(1)
    offsets = block.unsqueeze(1) * CDF_BLOCK + torch.arange(CDF_BLOCK, device=probs.device)  # (B, CDF_BLOCK)
    inner = probs.gather(1, offsets.clamp(max=V - 1)).masked_fill(offsets >= V, 0.0).cumsum(dim=-1)
    # the two levels round differently: keep the target inside the block's own mass, so a token with mass is found
    target = torch.minimum((target - before).clamp_min(0.0), torch.nextafter(inner[:, -1], torch.zeros_like(target)))
    return (block * CDF_BLOCK + _first_above(inner, target)).clamp(max=V - 1)


def _first_above(cdf: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per row, the first index whose CDF value exceeds target (B,), clamped to the last index."""
    return torch.searchsorted(cdf, target.unsqueeze(1), right=True).squeeze(1).clamp(max=cdf.shape[1] - 1)


def sample_tokens(logits: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None = None
                  ) -> torch.Tensor:
    """Sample one token per row of filtered (B, V) logits (-inf = removed) -> (B,)."""
    return sample_from_probs(logits.float().softmax(dim=-1), generator)


# ------------------------------------------------------------------------------------------- decoders
class DecodeStep:
    """What a decoder decided for one step: the sampling distribution, as logits (−inf where removed) or as
    unnormalised probabilities (zero where removed), whichever the decoder computed; the other is derived on first
    use. Logits derived from probabilities equal the filtered logits up to a per-row constant. `params`: the per-row
    values applied, for decoders with temperature/top-k/... parameters."""

    def __init__(self, logits: torch.Tensor | None = None, params: SamplingParams | None = None,
                 probs: torch.Tensor | None = None):
        if logits is None and probs is None:
            raise ValueError("a decode step needs its logits or its probabilities")
        self._logits, self.unnormalised_probs = logits, probs
        self.params = params

    @property
    def logits(self) -> torch.Tensor:
        if self._logits is None:
            assert self.unnormalised_probs is not None  # (__init__ checks that one of them is given)
            self._logits = self.unnormalised_probs.log()
        return self._logits

    def probs(self) -> torch.Tensor:
        """Probabilities to sample from (B, V); not necessarily normalised (`invert_cdf` and multinomial need not)."""
        if self.unnormalised_probs is None:
            self.unnormalised_probs = self.logits.float().softmax(dim=-1)
        return self.unnormalised_probs


class Decoder:
    """The protocol; stateless decoders inherit the no-op `observe` and `reset_rows`."""
    name = "decoder"

    def decode(self, logits: torch.Tensor, history: torch.Tensor, lengths: torch.Tensor | None,
               action: torch.Tensor | None = None) -> DecodeStep:
        raise NotImplementedError

    def observe(self, token: torch.Tensor, step: DecodeStep) -> None:
        """Called with the sampled tokens (B,) after every step."""

    def reset_rows(self, rows: torch.Tensor) -> None:
        """Called when rows start a new sequence."""

    def describe(self) -> dict:
        return {"decoder": self.name}


class _PlainSettings(TypedDict):
    """A PlainDecoder's parameters, as `SamplingParams.constant` takes them."""
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repetition_penalty: float
    penalty_window: int


class PlainDecoder(Decoder):
    """Fixed temperature / top-k / top-p / min-p and an optional repetition penalty over the last `penalty_window`
    tokens (0 = the whole sequence). Temperature 0 is greedy."""
    name = "plain"

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                 repetition_penalty: float = 1.0, penalty_window: int = 0):
        validate_sampling(temperature, top_k, top_p, repetition_penalty, min_p)
        self.settings = _PlainSettings(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                                       min_p=float(min_p), repetition_penalty=float(repetition_penalty),
                                       penalty_window=int(penalty_window))

    def decode(self, logits, history, lengths, action=None) -> DecodeStep:
        params = SamplingParams.constant(logits.shape[0], logits.device, **self.settings)
        return apply_params(logits, history, lengths, params)

    def describe(self) -> dict:
        kind = "greedy" if self.settings["temperature"] == 0 else "min_p" if self.settings["min_p"] > 0 else self.name
        return {"decoder": kind, **self.settings}


class MirostatDecoder(Decoder):
    """Mirostat v2 (Basu et al. 2021), batched: each row keeps its own μ (bits), starting at 2τ. Tokens whose surprise
    −log2 p (after temperature) exceeds μ are removed (the top token always stays). After sampling,
    μ ← μ − η (s − τ), s the sampled token's surprise under the truncated, renormalised distribution. τ should sit
    near the model's own cross-entropy in bits (the study sweeps it there)."""
    name = "mirostat"

    def __init__(self, tau: float = 3.0, eta: float = 0.1, temperature: float = 1.0):
        if not tau > 0.0 or not eta > 0.0 or not temperature > 0.0:
            raise ValueError(f"tau, eta and temperature must be > 0, got tau={tau}, eta={eta}, T={temperature}")
        self.tau, self.eta, self.temperature = float(tau), float(eta), float(temperature)
        self.mu: torch.Tensor | None = None  # (B,)

    def _state(self, batch: int, device) -> torch.Tensor:
        if self.mu is None or self.mu.shape[0] != batch:
            self.mu = torch.full((batch,), 2.0 * self.tau, device=device)
        return self.mu.to(device)

    def reset_rows(self, rows: torch.Tensor) -> None:
        if self.mu is not None:
            self.mu[torch.as_tensor(rows, device=self.mu.device).long()] = 2.0 * self.tau

    def decode(self, logits, history, lengths, action=None) -> DecodeStep:
        mu = self._state(logits.shape[0], logits.device)
        scaled = logits / self.temperature
        surprise = -scaled.float().log_softmax(dim=-1) / LN2  # (B, V) bits
        keep = surprise <= mu.unsqueeze(1)
        keep.scatter_(1, scaled.argmax(dim=-1, keepdim=True), True)
        return DecodeStep(scaled.masked_fill(~keep, float("-inf")))

    def observe(self, token, step) -> None:
        logprob = step.logits.float().log_softmax(dim=-1).gather(1, token.long().unsqueeze(1)).squeeze(1)
        self.mu = self.mu - self.eta * (-logprob / LN2 - self.tau)

    def describe(self) -> dict:
        return {"decoder": self.name, "tau": self.tau, "eta": self.eta, "temperature": self.temperature}


class EDTDecoder(Decoder):
    """Entropy-dependent temperature (Zhang et al. 2024): T = T0 · N^(θ / H), H the entropy (nats) of the model's
    next-token distribution — sharp where the model is sure, hotter where it is not. Optional min-p truncation."""
    name = "edt"

    def __init__(self, t0: float = 1.0, theta: float = 1.0, n: float = 0.8, min_p: float = 0.0):
        if not t0 > 0 or not 0 < n < 1 or not theta > 0:
            raise ValueError(f"EDT needs t0 > 0, 0 < N < 1, theta > 0; got t0={t0}, N={n}, theta={theta}")
        validate_sampling(min_p=min_p)
        self.t0, self.theta, self.n, self.min_p = float(t0), float(theta), float(n), float(min_p)

    def decode(self, logits, history, lengths, action=None) -> DecodeStep:
        log_probs = logits.float().log_softmax(dim=-1)
        entropy = (-(log_probs.exp() * log_probs).sum(dim=-1)).clamp_min(1e-3)
        temperature = (self.t0 * self.n ** (self.theta / entropy)).clamp_min(1e-3)
        B = logits.shape[0]
        params = SamplingParams(temperature, torch.zeros(B, dtype=torch.long, device=logits.device),
                                torch.ones(B, device=logits.device), torch.full((B,), self.min_p, device=logits.device),
                                torch.ones(B, device=logits.device))
        return DecodeStep(params=params, probs=tempered_probs(logits, temperature, self.min_p))

    def describe(self) -> dict:
        return {"decoder": self.name, "t0": self.t0, "theta": self.theta, "n": self.n, "min_p": self.min_p}


class ControlledDecoder(Decoder):
    """Parameters chosen per row by an action: `action_space(action (B,)) -> SamplingParams` (the GatingModulator's
    m, or a residual grid around a fixed decoder). This is how the learned controller, the constants of its action
    space and the per-token oracle decode."""
    name = "controlled"

    def __init__(self, action_space):
        self.action_space = action_space

    def decode(self, logits, history, lengths, action=None) -> DecodeStep:
        if action is None:
            raise ValueError("a controlled decoder needs an action per row")
        params = self.action_space(action.to(logits.device))
        return apply_params(logits, history, lengths, params)

    def describe(self) -> dict:
        return {"decoder": self.name, **self.action_space.describe()}


def make_decoder(name: str, **params) -> Decoder:
    """A fixed decoder by name (the CLI's --decoder, the API's and MCP's `decoder`) with its own parameters; None
    values are dropped so callers can pass every field. Unknown names or parameters raise ValueError."""
    params = {k: v for k, v in params.items() if v is not None}
    builders: dict[str, Callable[..., Decoder]] = {
        "plain": PlainDecoder, "greedy": lambda **p: PlainDecoder(**{**p, "temperature": 0.0}),
        "min_p": lambda min_p=0.1, **p: PlainDecoder(min_p=min_p, **p), "mirostat": MirostatDecoder,
        "edt": EDTDecoder}
    if name not in builders:
        raise ValueError(f"unknown decoder {name!r}; valid: {', '.join(DECODERS)}")
    try:
        return builders[name](**params)
    except TypeError as exc:  # an unexpected keyword: name the decoder and the bad parameter
        raise ValueError(f"decoder {name!r}: {exc}") from None
