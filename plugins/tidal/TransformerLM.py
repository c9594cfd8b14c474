"""The gated Transformer language model, its KV cache, the sampling filters and batched generation.

Reads top to bottom in dependency order: rotary positions -> KVCache -> DynamicGate -> CausalSelfAttention ->
FeedForward -> GatedTransformerBlock -> TransformerLM -> sampling filters -> checkpoint helpers.
Shapes: B batch, T new tokens, C cache capacity, E embedding, nh heads, hs head size, V vocabulary.
"""
from __future__ import annotations

import math
from pathlib import Path
import torch
import torch.nn as nn
import torch.nn.functional as F

from plugins.tidal.Utils import TidalError, describe_exception

GateSignals = torch.Tensor | None


# ------------------------------------------------------------------------------------------- rotary positions
def rope_frequencies(positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """(B, T) or (T,) absolute positions -> unit complex rotations e^{i·pos·θ_j} of shape (B|1, T, 1, hs/2)."""
    angles = positions.to(inv_freq.dtype).unsqueeze(-1) * inv_freq  # (..., T, hs/2)
    if angles.dim() == 2:
        angles = angles.unsqueeze(0)
    return torch.polar(torch.ones_like(angles), angles).unsqueeze(2)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of x (B, T, heads, hs) by `freqs` (llama layout): one complex multiply."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # (B, T, heads, hs/2)
    return torch.view_as_real(pairs * freqs).flatten(3).type_as(x)


# ------------------------------------------------------------------------------------------- KV cache
class KVCache:
    """Per-layer keys/values in a ring buffer of C slots per row, with the absolute position held in each slot.

    Rows advance independently (`next_pos` per row), so a batch may mix sequences of different lengths, rows can be
    restarted (`replace_rows`) and left padding can be masked out. Because rotary embeddings make attention depend
    only on relative positions, overwriting the oldest slot is exactly a sliding context window.
    """

    def __init__(self, num_layers: int, batch: int, num_heads: int, capacity: int, head_size: int,
                 device: torch.device, dtype: torch.dtype):
        shape = (batch, num_heads, capacity, head_size)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.key_pos = torch.full((batch, capacity), -1, device=device, dtype=torch.long)  # -1: empty or padding
        self.next_pos = torch.zeros(batch, device=device, dtype=torch.long)
        self.capacity = capacity

    @property
    def batch_size(self) -> int:
        return self.key_pos.shape[0]

    def advance(self, T: int, valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reserve slots for T new tokens per row; returns positions (B,T), slots (B,T), attention mask (B,1,T,C)."""
        if T > 1 and bool((self.next_pos + T > self.capacity).any()) and bool((self.next_pos > 0).any()):
            raise ValueError("a multi-token append would wrap the KV cache; append one token at a time past capacity")
        if T > self.capacity:
            raise ValueError(f"{T} tokens do not fit a KV cache of {self.capacity} slots")
        positions = self.next_pos.unsqueeze(1) + torch.arange(T, device=self.next_pos.device)  # (B, T)
        slots = positions % self.capacity
        stored = positions if valid is None else positions.masked_fill(~valid, -1)
        self.key_pos.scatter_(1, slots, stored)
        self.next_pos += T
        kp = self.key_pos.unsqueeze(1)                                      # (B, 1, C)
        allowed = (kp >= 0) & (kp <= positions.unsqueeze(-1))               # (B, T, C) causal over valid keys
        # Every query may see its own slot, so a padding query never has an empty row (which would give NaN).
        allowed |= torch.arange(self.capacity, device=slots.device) == slots.unsqueeze(-1)
        return positions, slots, allowed.unsqueeze(1)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, nh, T, hs) keys/values at `slots` (B, T); return the layer's full (B, nh, C, hs) buffers.
        Stored values are detached: the cache is inference state, so a gradient (e.g. when the RL trainer tunes the
        gates) flows through the current step only and never chains back through earlier steps."""
        index = slots[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
        self.k[layer].scatter_(2, index, k.detach().to(self.k[layer].dtype))
        self.v[layer].scatter_(2, index, v.detach().to(self.v[layer].dtype))
        return self.k[layer], self.v[layer]

    def replace_rows(self, rows: torch.Tensor, other: "KVCache") -> None:
        """Overwrite `rows` of this cache with the rows of `other` (same capacity), e.g. a freshly prefilled prompt."""
        if other.capacity != self.capacity:
            raise ValueError("caches must have the same capacity")
        for layer in range(len(self.k)):
            self.k[layer][rows] = other.k[layer]
            self.v[layer][rows] = other.v[layer]
        self.key_pos[rows] = other.key_pos
        self.next_pos[rows] = other.next_pos


# ------------------------------------------------------------------------------------------- model
class DynamicGate(nn.Module):
    """Maps the modulation signal to a per-dimension scale in (0, 1): Linear(G->32) -> GELU -> Linear(32->E) -> sigmoid."""

    def __init__(self, gate_dim: int, embed_dim: int, hidden_dim: int, init_bias: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(gate_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, embed_dim))
        self.init_bias = init_bias

    def reset_parameters(self) -> None:
        self.net[0].reset_parameters()
        nn.init.zeros_(self.net[2].weight)  # the gate starts independent of the signal ...
        nn.init.constant_(self.net[2].bias, self.init_bias)  # ... at sigmoid(2) = 0.88 everywhere

    def forward(self, gate_signals: torch.Tensor) -> torch.Tensor:
        scale = torch.sigmoid(self.net(gate_signals))  # (B, E) or (B, T, E)
        return scale.unsqueeze(1) if gate_signals.dim() == 2 else scale  # broadcast over the sequence


class CausalSelfAttention(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        self.embed_dim = config["EMBED_DIM"]
        self.num_heads = config["NUM_ATTENTION_HEADS"]
        if self.embed_dim % self.num_heads:
            raise ValueError("EMBED_DIM must be divisible by NUM_ATTENTION_HEADS")
        self.head_size = self.embed_dim // self.num_heads
        self.qkv = nn.Linear(self.embed_dim, 3 * self.embed_dim)
        self.proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.dropout = config["DROPOUT"]

    def forward(self, x: torch.Tensor, freqs: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                slots: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, E = x.shape
        nh, hs = self.num_heads, self.head_size
        qkv = self.qkv(x)                                                       # (B, T, 3E)
        qk = apply_rope(qkv[..., :2 * E].view(B, T, 2 * nh, hs), freqs)          # q and k rotated in one op
        q, k = qk.transpose(1, 2).split(nh, dim=1)                               # (B, nh, T, hs) each
        v = qkv[..., 2 * E:].view(B, T, nh, hs).transpose(1, 2)                  # (B, nh, T, hs)
        dropout = self.dropout if self.training else 0.0
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            k, v = cache.write(layer, k, v, slots)  # (B, nh, C, hs)
            y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, E)  # (B, nh, T, hs) -> (B, T, E)
        return self.proj(y)


class FeedForward(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        self.up = nn.Linear(config["EMBED_DIM"], config["FFN_HIDDEN_DIM"])
        self.down = nn.Linear(config["FFN_HIDDEN_DIM"], config["EMBED_DIM"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class GatedTransformerBlock(nn.Module):
    """Pre-norm block; the attention and FFN outputs are each scaled by a DynamicGate before the residual add."""

    def __init__(self, config: dict):
        super().__init__()
        E = config["EMBED_DIM"]
        self.ln1 = nn.LayerNorm(E)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(E)
        self.ffn = FeedForward(config)
        gate = (config["GATE_DIM"], E, config["GATE_HIDDEN_DIM"], config["GATE_INIT_BIAS"])
        self.attn_gate = DynamicGate(*gate)
        self.ffn_gate = DynamicGate(*gate)
        self.dropout = nn.Dropout(config["DROPOUT"])

    def forward(self, x: torch.Tensor, freqs: torch.Tensor, gate_signals: GateSignals = None,
                cache: KVCache | None = None, layer: int = 0, slots: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        a = self.attn(self.ln1(x), freqs, cache, layer, slots, mask)
        if gate_signals is not None:  # None skips the multiply: bit-identical to an ungated model
            a = a * self.attn_gate(gate_signals)
        x = x + self.dropout(a)
        f = self.ffn(self.ln2(x))
        if gate_signals is not None:
            f = f * self.ffn_gate(gate_signals)
        return x + self.dropout(f)


class TransformerLM(nn.Module):
    def __init__(self, vocab_size: int, config: dict):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.max_context_length = config["MAX_CONTEXT_LENGTH"]
        self.gate_dim = config["GATE_DIM"]
        E = config["EMBED_DIM"]
        self.token_embeddings = nn.Embedding(vocab_size, E)
        self.embedding_dropout = nn.Dropout(config["DROPOUT"])
        self.transformer_blocks = nn.ModuleList(GatedTransformerBlock(config) for _ in range(config["NUM_TRANSFORMER_BLOCKS"]))
        self.final_layer_norm = nn.LayerNorm(E)
        self.output_projection = nn.Linear(E, vocab_size)  # untied from the embedding (SPEC §3)
        hs = E // config["NUM_ATTENTION_HEADS"]
        inv_freq = 1.0 / (config["ROPE_THETA"] ** (torch.arange(0, hs, 2, dtype=torch.float32) / hs))
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # derived, so not part of checkpoints
        self._init_weights()

    def _init_weights(self) -> None:
        std = self.config["INIT_STD"]
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        # GPT-2: residual projections scaled by 1/sqrt(2 * layers) so the residual stream's variance stays put.
        for block in self.transformer_blocks:
            for proj in (block.attn.proj, block.ffn.down):
                nn.init.normal_(proj.weight, mean=0.0, std=std / math.sqrt(2 * len(self.transformer_blocks)))
            block.attn_gate.reset_parameters()
            block.ffn_gate.reset_parameters()

    def _check_gate_signals(self, gate_signals: GateSignals, B: int, T: int) -> GateSignals:
        if gate_signals is None:
            return None
        g = gate_signals.to(self.output_projection.weight.dtype)
        if g.dim() == 1:
            g = g.unsqueeze(-1)  # (B,) -> (B, 1)
        ok = (g.dim() == 2 and g.shape == (B, self.gate_dim)) or (g.dim() == 3 and g.shape == (B, T, self.gate_dim))
        if not ok:
            raise ValueError(f"gate_signals must be (B, {self.gate_dim}) or (B, T, {self.gate_dim}) with B={B}, "
                             f"T={T}; got {tuple(gate_signals.shape)}")
        return g

    def forward(self, input_ids: torch.Tensor, target_ids: torch.Tensor | None = None,
                gate_signals: GateSignals = None, past_key_values: KVCache | None = None, use_cache: bool = False,
                return_hidden: bool = False, attention_mask: torch.Tensor | None = None,
                cache_capacity: int | None = None):
        """Returns logits (B, T, V), then in order: loss (if target_ids), the KVCache (if use_cache), the final-LayerNorm
        hidden states (B, T, E) (if return_hidden). `attention_mask` (B, T) marks real (True) vs padding tokens."""
        B, T = input_ids.shape
        gate_signals = self._check_gate_signals(gate_signals, B, T)
        x = self.embedding_dropout(self.token_embeddings(input_ids))  # (B, T, E)
        cache, slots, mask = past_key_values, None, None
        if cache is None and (use_cache or attention_mask is not None):
            cache = self.new_cache(B, cache_capacity or self.max_context_length, x.device, x.dtype)
        if cache is None:
            if T > self.max_context_length:
                raise ValueError(f"sequence of {T} tokens exceeds MAX_CONTEXT_LENGTH {self.max_context_length}")
            freqs = rope_frequencies(torch.arange(T, device=x.device), self.inv_freq)
        else:
            positions, slots, mask = cache.advance(T, attention_mask)
            freqs = rope_frequencies(positions, self.inv_freq)
        for layer, block in enumerate(self.transformer_blocks):
            x = block(x, freqs, gate_signals, cache, layer, slots, mask)
        hidden = self.final_layer_norm(x)
        logits = self.output_projection(hidden)  # (B, T, V)
        out = [logits]
        if target_ids is not None:
            out.append(F.cross_entropy(logits.view(-1, logits.size(-1)).float(), target_ids.reshape(-1), ignore_index=-100))
        if use_cache:
            out.append(cache)
        if return_hidden:
            out.append(hidden)
        return out[0] if len(out) == 1 else tuple(out)

    def new_cache(self, batch: int, capacity: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        if capacity > self.max_context_length:
            raise ValueError(f"cache capacity {capacity} exceeds MAX_CONTEXT_LENGTH {self.max_context_length}")
        attn = self.transformer_blocks[0].attn
        return KVCache(len(self.transformer_blocks), batch, attn.num_heads, capacity, attn.head_size, device, dtype)

    @staticmethod
    def validate_sampling(temperature, top_k, top_p, repetition_penalty) -> None:
        """Raise ValueError for parameters outside their domain (scalars or per-row tensors)."""
        def values(x):
            return torch.as_tensor(x, dtype=torch.float64).flatten()
        t, k, p, r = values(temperature), values(top_k), values(top_p), values(repetition_penalty)
        if not torch.isfinite(t).all() or (t < 0).any():
            raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
        if not torch.isfinite(k).all() or (k < 0).any() or (k != k.round()).any():
            raise ValueError(f"top_k must be a whole number >= 0 (0 disables it), got {top_k}")
        if not torch.isfinite(p).all() or (p <= 0).any() or (p > 1).any():
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if not torch.isfinite(r).all() or (r <= 0).any():
            raise ValueError(f"repetition_penalty must be finite and > 0, got {repetition_penalty}")

    @torch.no_grad()
    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int, temperature=1.0, top_k=0, top_p=1.0,
                 repetition_penalty=1.0, gate_signals: GateSignals | "GenerationController" = None,
                 eos_token_id: int | None = None, seed: int | None = None, use_cache: bool = True) -> torch.Tensor:
        """Sample up to `max_new_tokens` per row; returns (B, T + new). Rows that emit `eos_token_id` are padded with it
        and generation stops when every row has finished. `seed` gives each row b its own generator (seed + b), so a
        row's tokens do not depend on the rest of the batch. `gate_signals` is a constant (B, 1) signal or a
        controller whose `decide` picks the signal and the sampling parameters at every step (gated generation)."""
        if prompt_ids.dim() != 2 or prompt_ids.shape[1] == 0:
            raise ValueError(f"prompt_ids must be a non-empty (B, T) tensor, got shape {tuple(prompt_ids.shape)}")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens}")
        self.validate_sampling(temperature, top_k, top_p, repetition_penalty)
        controller = gate_signals if hasattr(gate_signals, "decide") else None
        signal = controller.initial_signal(prompt_ids.shape[0]) if controller else gate_signals
        if controller is not None and not use_cache:
            raise ValueError("controller-driven generation needs the KV cache")
        B, device = prompt_ids.shape[0], prompt_ids.device
        generators = None if seed is None else [torch.Generator(device=device).manual_seed(seed + b) for b in range(B)]
        tokens = prompt_ids
        seen = torch.zeros(B, self.vocab_size, dtype=torch.bool, device=device).scatter_(1, prompt_ids, True)
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        context = prompt_ids[:, -self.max_context_length:]
        if use_cache:
            capacity = min(self.max_context_length, context.shape[1] + max_new_tokens)
            logits, cache, hidden = self(context, gate_signals=signal, use_cache=True, return_hidden=True,
                                         cache_capacity=capacity)
        for step in range(max_new_tokens):
            if not use_cache:
                logits = self(tokens[:, -self.max_context_length:], gate_signals=signal)
            params = dict(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty)
            next_logits = logits[:, -1, :].float()
            if controller is not None:
                signal, params = controller.decide(step, tokens, next_logits, hidden[:, -1, :])
            filtered = apply_repetition_penalty(next_logits, seen, params["repetition_penalty"])
            next_token = sample_next_token(filtered, params["temperature"], params["top_k"], params["top_p"], generators)
            if controller is not None:
                controller.record(next_token, filtered)
            if eos_token_id is not None:
                next_token = next_token.masked_fill(finished, eos_token_id)
                finished |= next_token == eos_token_id
            tokens = torch.cat([tokens, next_token.unsqueeze(1)], dim=1)
            seen.scatter_(1, next_token.unsqueeze(1), True)
            if eos_token_id is not None and bool(finished.all()):
                break
            if use_cache and step + 1 < max_new_tokens:
                logits, cache, hidden = self(next_token.unsqueeze(1), gate_signals=signal, past_key_values=cache,
                                             use_cache=True, return_hidden=True)
        return tokens


class GenerationController:
    """Protocol for gated generation: picks the gate signal and sampling parameters before every token.

    `initial_signal(B)` is the signal under which the prompt is processed; `decide(step, tokens (B, T), logits (B, V),
    hidden (B, E))` returns (signal (B, 1) or None, dict of temperature/top_k/top_p/repetition_penalty, scalars or
    (B,) tensors); `record(token (B,), filtered_logits (B, V))` observes the sampled token."""

    def initial_signal(self, batch: int) -> GateSignals:
        return None

    def decide(self, step: int, tokens: torch.Tensor, logits: torch.Tensor, hidden: torch.Tensor):
        raise NotImplementedError

    def record(self, token: torch.Tensor, filtered_logits: torch.Tensor) -> None:
        pass


# ------------------------------------------------------------------------------------------- sampling filters
def _per_row(value, batch: int, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A scalar or (B,) tensor as a (B, 1) column on `like`'s device."""
    t = torch.as_tensor(value, device=like.device, dtype=dtype or like.dtype)
    return t.expand(batch).reshape(batch, 1) if t.dim() == 0 else t.reshape(batch, 1)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty) -> torch.Tensor:
    """CTRL penalty over tokens already present: positive logits / p, negative logits * p.

    `seen` is a (B, V) bool mask, or (B, H) int64 token ids padded with -1 whose first column is a real token — then
    only those H entries per row are touched instead of all V (the RL environment's per-step path)."""
    p = _per_row(penalty, logits.shape[0], logits)
    if seen.dtype == torch.bool:
        return torch.where(seen, torch.where(logits > 0, logits / p, logits * p), logits)
    ids = torch.where(seen < 0, seen[:, :1], seen)  # padding repeats a real id: duplicates write the same value
    values = logits.gather(1, ids)
    return logits.scatter(1, ids, torch.where(values > 0, values / p, values * p))


def filter_logits(logits: torch.Tensor, temperature=1.0, top_k=0, top_p=1.0) -> torch.Tensor:
    """÷ temperature, then top-k (0 = off), then nucleus top-p on the renormalised top-k distribution (the token that
    crosses p is kept). Parameters are scalars or per-row (B,) tensors; removed entries become -inf."""
    B, V = logits.shape
    t = _per_row(temperature, B, logits)
    logits = logits / torch.where(t > 0, t, torch.ones_like(t))  # temperature 0 is greedy: the argmax is unchanged
    k = _per_row(top_k, B, logits, torch.long).squeeze(1)
    k = torch.where((k <= 0) | (k > V), torch.full_like(k, V), k)
    p = _per_row(top_p, B, logits).squeeze(1)
    use_p = p < 1.0
    if not bool(use_p.any()):
        if bool((k >= V).all()):
            return logits
        kth = logits.topk(int(k.max()), dim=-1).values.gather(1, (k - 1).unsqueeze(1))  # (B, 1)
        return logits.masked_fill(logits < kth, float("-inf"))
    kmax = int(k.max())
    values, indices = logits.topk(kmax, dim=-1)  # (B, kmax), sorted descending; one sort serves both filters
    values = values.masked_fill(torch.arange(kmax, device=logits.device) >= k.unsqueeze(1), float("-inf"))
    probs = values.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    values = values.masked_fill(use_p.unsqueeze(1) & (mass_before >= p.unsqueeze(1)), float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(1, indices, values)


def sample_from_probs(probs: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None = None
                      ) -> torch.Tensor:
    """One token per row of (B, V) probabilities -> (B,). A list of generators gives every row its own random stream:
    one uniform per row, inverted through the row's CDF, so a row's draw never depends on the rest of the batch."""
    if not isinstance(generator, (list, tuple)):
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    u = torch.stack([torch.rand((), generator=g, device=probs.device) for g in generator])
    cdf = probs.float().cumsum(dim=-1)
    # right=True: the first index whose CDF exceeds u·total, which is never a zero-probability token
    return torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1).clamp(max=probs.shape[1] - 1)


def sample_next_token(logits: torch.Tensor, temperature=1.0, top_k=0, top_p=1.0,
                      generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
    """Filter (see `filter_logits`) and sample one token per row -> (B,). Rows with temperature 0 take the argmax."""
    filtered = filter_logits(logits, temperature, top_k, top_p)
    greedy = _per_row(temperature, logits.shape[0], logits).squeeze(1) == 0
    if bool(greedy.all()):
        return filtered.argmax(dim=-1)
    sampled = sample_from_probs(filtered.float().softmax(dim=-1), generator)
    return torch.where(greedy, filtered.argmax(dim=-1), sampled)


# ------------------------------------------------------------------------------------------- checkpoints
def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain TransformerLM behind torch.compile (`_orig_mod`) and DistributedDataParallel (`module`) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if inner is None:
            return model
        model = inner


def model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The raw state_dict checkpoints store: no `_orig_mod.` or `module.` prefixes."""
    return unwrap_model(model).state_dict()


def read_checkpoint(source: str | Path) -> dict:
    path = Path(source)
    if not path.is_file():
        raise TidalError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/corrupt files
        raise TidalError(f"{path}: not a readable checkpoint ({describe_exception(exc)})") from None


def load_model_weights(model: nn.Module, source: str | Path | dict) -> nn.Module:
    """Load a raw state dict, or a dict holding `model_state_dict`, from a path or a mapping, with clear errors."""
    name = str(source) if isinstance(source, (str, Path)) else "checkpoint"
    state = read_checkpoint(source) if isinstance(source, (str, Path)) else source
    if not isinstance(state, dict):
        raise TidalError(f"{name}: expected a state dict, got {type(state).__name__}")
    state = state.get("model_state_dict", state)
    state = {k.replace("_orig_mod.", "").removeprefix("module."): v for k, v in state.items()}
    target = unwrap_model(model)
    expected = target.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise TidalError(f"{name}: does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]}); "
                         "is it a TransformerLM checkpoint for this config?")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise TidalError(f"{name}: tensor {key} has shape {tuple(state[key].shape)} but the model expects "
                             f"{tuple(tensor.shape)}; does the config match the checkpoint?")
    target.load_state_dict(state)
    return model


def load_pretrained(config: dict, checkpoint: str | Path, device: torch.device | str = "cpu") -> TransformerLM:
    """Build a TransformerLM from `config`, load `checkpoint`, move it to `device`, and put it in eval mode."""
    model = TransformerLM(config["VOCAB_SIZE"], config)
    load_model_weights(model, checkpoint)
    return model.to(device).eval()

