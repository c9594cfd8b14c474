"""The gated Transformer language model, its KV cache and batched generation.

Reads top to bottom in dependency order: rotary positions -> KVCache -> PackedLinear -> DynamicGate ->
CausalSelfAttention -> FeedForward -> GatedTransformerBlock -> TransformerLM (and its generation loop) -> checkpoint
helpers. Sampling filters and decoders live in Decoding.py, shared with the RL environment and the study.
Shapes: B batch, T new tokens, C cache capacity, E embedding, nh heads, hs head size, V vocabulary.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple, cast, get_args

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.errors import TidalError, describe_exception
from plugins.tidal.Config import InferenceWeights, LMConfig
from plugins.tidal.Decoding import Decoder, DecodeStep, PlainDecoder, sample_from_probs

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

    While every row has advanced together from empty without padding (`generate`'s case), `aligned` holds their
    common position as a Python int: new keys then go to one contiguous range of slots, written by a slice copy, and
    attention reads the filled prefix with no mask (ADR 0016). Any other use switches to the per-row bookkeeping.
    Every row fills its slots from 0 (a replaced row too), so a one-token step reads only the first `width` slots:
    up to the furthest row's position, which `high` tracks on the host, or all of them once the ring has wrapped.
    """

    def __init__(self, num_layers: int, batch: int, num_heads: int, capacity: int, head_size: int,
                 device: torch.device, dtype: torch.dtype):
        shape = (batch, num_heads, capacity, head_size)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.key_pos = torch.full((batch, capacity), -1, device=device, dtype=torch.long)  # -1: empty or padding
        self.next_pos = torch.zeros(batch, device=device, dtype=torch.long)
        self.capacity = capacity
        self.aligned: int | None = 0  # the rows' common position while they advance together unpadded, else None
        self.high = 0                 # the largest next_pos of any row
        self.width = 0                # the slots attention reads this step (`write` returns them)

    @property
    def batch_size(self) -> int:
        return self.key_pos.shape[0]

    def advance(self, T: int, valid: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor | slice, torch.Tensor | None]:
        """Reserve slots for T new tokens per row. Returns positions (B|1, T), where to write (slots (B, T), or a
        slice of slots shared by every row) and the attention mask (B, 1, T|1, C), or None for "causal over what
        `write` returns"."""
        if self.aligned is not None and valid is None and (T == 1 or self.aligned == 0) and T <= self.capacity:
            return self._advance_aligned(self.aligned, T)
        if T == 1 and valid is None:  # rows that are not aligned
            return self._advance_one()
        if T > 1 and bool((self.next_pos + T > self.capacity).any()) and bool((self.next_pos > 0).any()):
            raise ValueError("a multi-token append would wrap the KV cache; append one token at a time past capacity")
        if T > self.capacity:
            raise ValueError(f"{T} tokens do not fit a KV cache of {self.capacity} slots")
        self.aligned = None if valid is not None or self.aligned is None else self.aligned + T
        self.high += T
        self.width = self.capacity
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

    def _advance_aligned(self, aligned: int, T: int) -> tuple[torch.Tensor, slice, None]:
        """`advance` while aligned; `aligned` is `self.aligned`, the rows' common position."""
        positions = torch.arange(aligned, aligned + T, device=self.next_pos.device).unsqueeze(0)  # (1, T)
        start = aligned % self.capacity
        where = slice(start, start + T)  # T > 1 only from empty, and one token never straddles the ring's end
        self.key_pos[:, where] = positions
        self.next_pos += T
        self.aligned = self.high = aligned + T
        self.width = min(self.aligned, self.capacity)
        return positions, where, None

    def _advance_one(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The decode step's advance in a few small ops: every stored key sits at or before the new position (rows only
        move forward), so the causal mask reduces to "slot holds a real token", and the new slot is one of them. The
        mask is additive (0 or −inf, in the cache's dtype), built once for every layer's `decode_attention`."""
        positions = self.next_pos.unsqueeze(1).clone()                      # (B, 1)
        slots = positions % self.capacity
        self.key_pos.scatter_(1, slots, positions)
        self.next_pos += 1
        self.high += 1
        self.width = min(self.high, self.capacity)
        empty = self.key_pos[:, :self.width] < 0
        mask = torch.zeros(empty.shape, dtype=self.k[0].dtype, device=empty.device).masked_fill_(empty, float("-inf"))
        return positions, slots, mask[:, None, None, :]                     # (B, 1, 1, width)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor | slice
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, nh, T, hs) keys/values at `slots` (B, T), or at a shared slice of slots, and return the layer's
        first `width` slots (B, nh, width, hs). Stored values are detached: the cache is inference state, so a
        gradient (e.g. when the RL trainer tunes the gates) flows through the current step only and never chains back
        through earlier steps."""
        if isinstance(slots, slice):
            self.k[layer][:, :, slots] = k.detach()
            self.v[layer][:, :, slots] = v.detach()
        else:
            index = slots[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
            self.k[layer].scatter_(2, index, k.detach().to(self.k[layer].dtype))
            self.v[layer].scatter_(2, index, v.detach().to(self.v[layer].dtype))
        return self.k[layer][:, :, :self.width], self.v[layer][:, :, :self.width]

    def replace_rows(self, rows: torch.Tensor, other: KVCache) -> None:
        """Overwrite `rows` of this cache with the rows of `other` (same capacity), e.g. a freshly prefilled prompt."""
        if other.capacity != self.capacity:
            raise ValueError("caches must have the same capacity")
        for layer in range(len(self.k)):
            self.k[layer][rows] = other.k[layer]
            self.v[layer][rows] = other.v[layer]
        self.key_pos[rows] = other.key_pos
        self.next_pos[rows] = other.next_pos
        self.high = max(self.high, other.high)
        self.aligned = None


# ------------------------------------------------------------------------------------------- model
class PackedLinear(nn.Linear):
    """nn.Linear whose no-grad forward (decoding, evaluation) multiplies by a packed copy of its weights (ADR 0016).

    With grad enabled (training) it is a plain nn.Linear. Without grad, per `INFERENCE_WEIGHTS`: "fp32" keeps fp32
    weights, "bf16" bf16 weights (half the bytes; AVX512-BF16/AMX CPUs, tensor cores), "eager" the trained weights
    as they are. On a CPU with oneDNN, a product of at least ONEDNN_MIN_MACS multiply-adds runs on a copy in oneDNN's
    blocked layout (2.5x addmm's speed at 16 rows, faster at one row too); smaller fp32 products keep a transposed
    (in, out) copy for `addmm`, because a oneDNN call costs ~12 us before it starts. The copies are rebuilt when the
    weights change (an optimizer step, load_state_dict, .to()), which the tensors' version counters and storage
    pointers reveal — writes through `.data` bypass the counter and are not seen."""

    MODES = get_args(InferenceWeights)  # direct construction is checked too (a config already is)
    ONEDNN_MIN_MACS = 1 << 20  # rows x in x out; measured crossover on the development CPU (ADR 0016)
    ONEDNN_ROWS_HINT = 16  # the batch the blocked layout is tuned for; it serves 1 to 256 rows within 10 %

    def __init__(self, in_features: int, out_features: int, inference_weights: str):
        super().__init__(in_features, out_features)
        if inference_weights not in self.MODES:
            raise ValueError(f"INFERENCE_WEIGHTS must be one of {self.MODES}, got {inference_weights!r}")
        self.inference_weights = inference_weights
        # (key, weight, bias, oneDNN weight): derived state, never in the state dict; either weight may be None
        self._packed: tuple | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a compiled model (the Trainer's, in evaluation) traces the plain product: inductor picks its own layout,
        # and the packed copy's version check would become a guard that recompiles after every optimizer step;
        # under autocast (the Trainer's evaluation with AMP_DTYPE bf16) the activations arrive in the autocast dtype,
        # which only the plain product casts for
        if self.inference_weights == "eager" or torch.is_grad_enabled() or torch.compiler.is_compiling() \
                or torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        _, weight, bias, onednn = self._packed_weights(x.device)
        bf16 = self.inference_weights == "bf16"
        if onednn is not None and (weight is None or x.numel() * self.out_features >= self.ONEDNN_MIN_MACS):
            xin = x.to(torch.bfloat16) if bf16 else x
            return torch.ops.mkldnn._linear_pointwise(xin, onednn, bias, "none", [], "").to(x.dtype)
        if bf16:
            return F.linear(x.to(weight.dtype), weight, bias).to(x.dtype)
        return torch.addmm(bias, x.reshape(-1, x.shape[-1]), weight).view(*x.shape[:-1], -1)  # (N, in) @ (in, out)

    def _packed_weights(self, device: torch.device) -> tuple:
        w, b = self.weight, self.bias
        key = (w.data_ptr(), w._version, b.data_ptr(), b._version, self.inference_weights, self.ONEDNN_MIN_MACS)
        if self._packed is None or self._packed[0] != key:
            with torch.inference_mode(False), torch.no_grad():  # normal tensors, usable outside inference mode too
                dtype = torch.bfloat16 if self.inference_weights == "bf16" else w.dtype  # fp32: as stored
                bias = b.detach().to(dtype)
                onednn = None
                if device.type == "cpu" and torch.backends.mkldnn.is_available():
                    onednn = torch.ops.mkldnn._reorder_linear_weight(w.detach().to(dtype), self.ONEDNN_ROWS_HINT)
                # the plain copy serves products below the threshold (one-row fp32 GEMVs) and devices without oneDNN
                small = self.in_features * self.out_features < self.ONEDNN_MIN_MACS
                if onednn is None or (small and dtype == torch.float32):
                    weight = w.detach().to(dtype) if dtype == torch.bfloat16 else w.detach().t().contiguous()
                else:
                    weight = None
            self._packed = (key, weight, bias, onednn)
        return self._packed


class DynamicGate(nn.Module):
    """Maps the modulation signal to a per-dimension scale in (0, 1):
    Linear(G->32) -> GELU -> Linear(32->E) -> sigmoid."""

    def __init__(self, gate_dim: int, embed_dim: int, hidden_dim: int, init_bias: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(gate_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, embed_dim))
        self.init_bias = init_bias

    def reset_parameters(self) -> None:
        first, last = cast(nn.Linear, self.net[0]), cast(nn.Linear, self.net[2])
        first.reset_parameters()
        nn.init.zeros_(last.weight)  # the gate starts independent of the signal ...
        nn.init.constant_(last.bias, self.init_bias)  # ... at sigmoid(2) = 0.88 everywhere

    def forward(self, gate_signals: torch.Tensor) -> torch.Tensor:
        scale = torch.sigmoid(self.net(gate_signals))  # (B, E) or (B, T, E)
        return scale.unsqueeze(1) if gate_signals.dim() == 2 else scale  # broadcast over the sequence


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Attention of one query per row, q (B, nh, 1, hs), over k, v (B, nh, W, hs) with an additive (B, 1, 1, W) or
    boolean mask, as two batched matrix products. SDPA's CPU flash kernel tiles for many queries: with one query and
    keys not in cache (the output projection's weights have just streamed through it) it took 1.35x as long (ADR 0016).
    """
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))    # (B, nh, 1, W)
    if mask is not None:
        scores = scores.masked_fill_(~mask, float("-inf")) if mask.dtype == torch.bool else scores.add_(mask)
    return torch.matmul(scores.softmax(dim=-1), v)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: LMConfig):
        super().__init__()
        self.embed_dim = config.EMBED_DIM
        self.num_heads = config.NUM_ATTENTION_HEADS  # LMConfig checks that the heads divide the width
        self.head_size = self.embed_dim // self.num_heads
        packing = config.INFERENCE_WEIGHTS
        self.qkv = PackedLinear(self.embed_dim, 3 * self.embed_dim, packing)
        self.proj = PackedLinear(self.embed_dim, self.embed_dim, packing)
        self.dropout = config.DROPOUT

    def forward(self, x: torch.Tensor, freqs: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                slots: torch.Tensor | slice | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
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
            assert slots is not None, "a KV cache needs the slots its advance() returned"
            k, v = cache.write(layer, k, v, slots)  # (B, nh, width, hs)
            k, v = k.to(q.dtype), v.to(q.dtype)
            if T == 1 and not dropout:
                y = decode_attention(q, k, v, mask)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                   is_causal=mask is None and T > 1)
        y = y.transpose(1, 2).contiguous().view(B, T, E)  # (B, nh, T, hs) -> (B, T, E)
        return self.proj(y)


class FeedForward(nn.Module):
    def __init__(self, config: LMConfig):
        super().__init__()
        self.up = PackedLinear(config.EMBED_DIM, config.FFN_HIDDEN_DIM, config.INFERENCE_WEIGHTS)
        self.down = PackedLinear(config.FFN_HIDDEN_DIM, config.EMBED_DIM, config.INFERENCE_WEIGHTS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class GatedTransformerBlock(nn.Module):
    """Pre-norm block; the attention and FFN outputs are each scaled by a DynamicGate before the residual add."""

    def __init__(self, config: LMConfig):
        super().__init__()
        E = config.EMBED_DIM
        self.ln1 = nn.LayerNorm(E)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(E)
        self.ffn = FeedForward(config)
        gate = (config.GATE_DIM, E, config.GATE_HIDDEN_DIM, config.GATE_INIT_BIAS)
        self.attn_gate = DynamicGate(*gate)
        self.ffn_gate = DynamicGate(*gate)
        self.dropout = nn.Dropout(config.DROPOUT)

    def forward(self, x: torch.Tensor, freqs: torch.Tensor, gate_signals: GateSignals = None,
                cache: KVCache | None = None, layer: int = 0, slots: torch.Tensor | slice | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        a = self.attn(self.ln1(x), freqs, cache, layer, slots, mask)
        if gate_signals is not None:  # None skips the multiply: bit-identical to an ungated model
            a = a * self.attn_gate(gate_signals)
        x = x + self.dropout(a)
        f = self.ffn(self.ln2(x))
        if gate_signals is not None:
            f = f * self.ffn_gate(gate_signals)
        return x + self.dropout(f)


class LMOutput(NamedTuple):
    """What `TransformerLM.forward` returns; what the call did not ask for is None."""
    logits: torch.Tensor                 # (B, T, V), or (B, 1, V) with last_only
    loss: torch.Tensor | None = None     # mean cross-entropy over the targets, with target_ids
    cache: KVCache | None = None         # the KV cache to continue from, with use_cache
    hidden: torch.Tensor | None = None   # final-LayerNorm hidden states (B, T | 1, E), with return_hidden


class TransformerLM(nn.Module):
    EOS_CHECK_INTERVAL = 8  # generate() checks for "every row finished" every this many tokens
    inv_freq: torch.Tensor  # a non-persistent buffer (registered in __init__)

    def __init__(self, vocab_size: int, config: LMConfig | Mapping):
        super().__init__()
        self.config = config = LMConfig.of(config)
        self.vocab_size = vocab_size
        self.max_context_length = config.MAX_CONTEXT_LENGTH
        self.gate_dim = config.GATE_DIM
        E = config.EMBED_DIM
        self.token_embeddings = nn.Embedding(vocab_size, E)
        self.embedding_dropout = nn.Dropout(config.DROPOUT)
        self.transformer_blocks = nn.ModuleList(GatedTransformerBlock(config)
                                                for _ in range(config.NUM_TRANSFORMER_BLOCKS))
        self.final_layer_norm = nn.LayerNorm(E)
        self.output_projection = PackedLinear(E, vocab_size, config.INFERENCE_WEIGHTS)  # untied (ADR 0002)
        hs = E // config.NUM_ATTENTION_HEADS
        inv_freq = 1.0 / (config.ROPE_THETA ** (torch.arange(0, hs, 2, dtype=torch.float32) / hs))
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # derived, so not part of checkpoints
        self._init_weights()

    def _init_weights(self) -> None:
        std = self.config.INIT_STD
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                bias = getattr(module, "bias", None)  # an Embedding has none
                if bias is not None:
                    nn.init.zeros_(bias)
        # GPT-2: residual projections scaled by 1/sqrt(2 * layers) so the residual stream's variance stays put.
        for block in cast("Iterable[GatedTransformerBlock]", self.transformer_blocks):
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
                cache_capacity: int | None = None, last_only: bool = False) -> LMOutput:
        """Returns an LMOutput: logits (B, T, V), and the loss (with target_ids), the KVCache (with use_cache) and the
        final-LayerNorm hidden states (B, T, E) (with return_hidden), None when not asked for. `attention_mask` (B, T)
        marks real (True) vs padding tokens. `last_only` keeps the last position only (logits and hidden (B, 1, ·)): a
        prefill then skips T − 1 rows of the vocabulary-wide output projection, its largest matmul."""
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
        hidden = self.final_layer_norm(x[:, -1:] if last_only else x)
        logits = self.output_projection(hidden)  # (B, T | 1, V)
        loss = None
        if target_ids is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), target_ids.reshape(-1), ignore_index=-100)
        return LMOutput(logits, loss, cache if use_cache else None, hidden if return_hidden else None)

    def new_cache(self, batch: int, capacity: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        if capacity > self.max_context_length:
            raise ValueError(f"cache capacity {capacity} exceeds MAX_CONTEXT_LENGTH {self.max_context_length}")
        attn = cast(GatedTransformerBlock, self.transformer_blocks[0]).attn
        return KVCache(len(self.transformer_blocks), batch, attn.num_heads, capacity, attn.head_size, device, dtype)

    @torch.inference_mode()
    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int, temperature=1.0, top_k=0, top_p=1.0,
                 repetition_penalty=1.0, min_p=0.0, decoder: Decoder | None = None,
                 controller: GenerationController | None = None, gate_signals: GateSignals = None,
                 eos_token_id: int | None = None, seed: int | None = None, use_cache: bool = True) -> torch.Tensor:
        """Sample up to `max_new_tokens` per row; returns (B, T + new). Rows that emit `eos_token_id` are padded with it
        and generation stops when every row has finished. `seed` gives each row b its own generator (seed + b), so a
        row's tokens do not depend on the rest of the batch.

        The decoder is `decoder` (any Decoding decoder), else the controller's, else a PlainDecoder from the keyword
        parameters. A `controller` (gated generation) picks the gate signal and the decoder's action before every
        token; `gate_signals` is a constant (B, G) signal otherwise."""
        if prompt_ids.dim() != 2 or prompt_ids.shape[1] == 0:
            raise ValueError(f"prompt_ids must be a non-empty (B, T) tensor, got shape {tuple(prompt_ids.shape)}")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens}")
        if controller is not None and not use_cache:
            raise ValueError("controller-driven generation needs the KV cache")
        decoder = decoder or (controller.decoder if controller is not None else
                              PlainDecoder(temperature, top_k, top_p, min_p, repetition_penalty))
        B, T0, device = prompt_ids.shape[0], prompt_ids.shape[1], prompt_ids.device
        signal = controller.initial_signal(B) if controller is not None else gate_signals
        generators = None if seed is None else [torch.Generator(device=device).manual_seed(seed + b) for b in range(B)]
        tokens = torch.empty(B, T0 + max_new_tokens, dtype=torch.long, device=device)  # written in place, never cat
        tokens[:, :T0] = prompt_ids
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        decoder.reset_rows(torch.arange(B, device=device))
        if use_cache:
            context = prompt_ids[:, -self.max_context_length:]
            capacity = min(self.max_context_length, context.shape[1] + max_new_tokens)
            out = self(context, gate_signals=signal, use_cache=True, return_hidden=True, cache_capacity=capacity,
                       last_only=True)
            logits, cache, hidden = out.logits, out.cache, out.hidden
        length = T0
        for step in range(max_new_tokens):
            if not use_cache:
                out = self(tokens[:, max(0, length - self.max_context_length):length], gate_signals=signal,
                           return_hidden=True)
                logits, hidden = out.logits, out.hidden
            history = tokens[:, :length]
            next_logits = logits[:, -1, :].float()
            action = None
            if controller is not None:
                signal, action = controller.decide(step, history, next_logits, hidden[:, -1, :])
            decided = decoder.decode(next_logits, history, None, action)
            next_token = sample_from_probs(decided.probs(), generators)
            decoder.observe(next_token, decided)
            if controller is not None:
                controller.record(next_token, decided)
            if eos_token_id is not None:
                next_token = next_token.masked_fill(finished, eos_token_id)
                finished |= next_token == eos_token_id
            tokens[:, length] = next_token
            length += 1
            # reading `finished` on the host waits for the device: do it every few tokens, then trim to the exact end
            if eos_token_id is not None and (step + 1) % self.EOS_CHECK_INTERVAL == 0 and bool(finished.all()):
                break
            if use_cache and step + 1 < max_new_tokens:
                out = self(next_token.unsqueeze(1), gate_signals=signal, past_key_values=cache, use_cache=True,
                           return_hidden=True)
                logits, cache, hidden = out.logits, out.cache, out.hidden
        if eos_token_id is not None and bool(finished.all()):
            # the first step at which every row had emitted eos; later columns hold eos only
            emitted = tokens[:, T0:length] == eos_token_id                  # (B, new)
            length = T0 + int(emitted.float().argmax(dim=1).max()) + 1
        return tokens[:, :length]


class GenerationController:
    """Protocol for gated generation: picks the gate signal and the decoder's action before every token.

    `decoder` is the (controlled) decoder the actions drive; `initial_signal(B)` is the signal under which the prompt
    is processed; `decide(step, tokens (B, T), logits (B, V), hidden (B, E))` returns (signal (B, G) or None,
    action (B,)); `record(token (B,), decided: DecodeStep)` observes the sampled token."""
    decoder: Decoder

    def initial_signal(self, batch: int) -> GateSignals:
        return None

    def decide(self, step: int, tokens: torch.Tensor, logits: torch.Tensor, hidden: torch.Tensor):
        raise NotImplementedError

    def record(self, token: torch.Tensor, decided: DecodeStep) -> None:
        pass


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


def load_pretrained(config: LMConfig | Mapping, checkpoint: str | Path, device: torch.device | str = "cpu"
                    ) -> TransformerLM:
    """Build a TransformerLM from `config`, load `checkpoint`, move it to `device`, and put it in eval mode."""
    config = LMConfig.of(config)
    model = TransformerLM(config.VOCAB_SIZE, config)
    load_model_weights(model, checkpoint)
    return model.to(device).eval()

