"""A minimal GPT (nanoGPT-style) used only as the side-by-side reference in the benchmarks.

Same dimensions as TransformerLM (embedding, blocks, heads, FFN, vocabulary, context) and the same dropout (embedding,
attention, residual — as nanoGPT), learned absolute positions, pre-norm blocks, fused QKV, SDPA causal attention,
untied output projection — and nothing else (no gates, no RoPE). `generate` is nanoGPT's sampling loop
(÷ temperature, top-k, softmax, multinomial) with its own KV cache: one buffer per layer preallocated for the whole
sequence and written in place, so a step attends over the filled prefix without a mask.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, E: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.drop = nn.Dropout(dropout)
        self.ln1, self.ln2 = nn.LayerNorm(E), nn.LayerNorm(E)
        self.qkv, self.proj = nn.Linear(E, 3 * E), nn.Linear(E, E)
        self.up, self.down = nn.Linear(E, ffn), nn.Linear(ffn, E)

    def forward(self, x, cache=None, start: int = 0):
        """`cache` is this layer's (keys, values) buffers (B, heads, L, hs); x's T tokens sit at positions start...
        A multi-token call must start at 0 (the prompt), a cached call after it one token at a time."""
        B, T, E = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(E, dim=2)
        q, k, v = (t.view(B, T, self.heads, E // self.heads).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            cache[0][:, :, start:start + T] = k
            cache[1][:, :, start:start + T] = v
            k, v = cache[0][:, :, :start + T], cache[1][:, :, :start + T]
        # a single new token may see every cached key, so only a multi-token call needs the causal mask
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=T > 1)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(B, T, E)))
        return x + self.drop(self.down(F.gelu(self.up(self.ln2(x)))))


class ReferenceGPT(nn.Module):
    def __init__(self, vocab: int, config: dict):
        super().__init__()
        E = config["EMBED_DIM"]
        self.heads = config["NUM_ATTENTION_HEADS"]
        self.context = config["MAX_CONTEXT_LENGTH"]
        self.wte = nn.Embedding(vocab, E)
        self.wpe = nn.Embedding(config["MAX_CONTEXT_LENGTH"], E)
        self.drop = nn.Dropout(config["DROPOUT"])
        self.blocks = nn.ModuleList(Block(E, config["NUM_ATTENTION_HEADS"], config["FFN_HIDDEN_DIM"], config["DROPOUT"])
                                    for _ in range(config["NUM_TRANSFORMER_BLOCKS"]))
        self.ln_f = nn.LayerNorm(E)
        self.head = nn.Linear(E, vocab)

    def forward(self, idx, targets=None, caches=None, start: int = 0):
        positions = torch.arange(start, start + idx.shape[1], device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(positions))
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i], start)
        logits = self.head(self.ln_f(x))
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1))

    @torch.inference_mode()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None):
        """nanoGPT's loop with a KV cache; prompt + new tokens must fit the context (no sliding window)."""
        B, T0 = idx.shape
        total = T0 + max_new_tokens
        if total > self.context:
            raise ValueError(f"{total} tokens exceed the context of {self.context}")
        w = self.head.weight
        hs = w.shape[1] // self.heads
        caches = [(w.new_empty(B, self.heads, total, hs), w.new_empty(B, self.heads, total, hs)) for _ in self.blocks]
        out = torch.empty(B, total, dtype=torch.long, device=idx.device)
        out[:, :T0] = idx
        logits = self(idx, caches=caches)
        for t in range(T0, total):
            logits = logits[:, -1, :].float() / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("Inf")
            out[:, t] = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1).squeeze(1)
            if t + 1 < total:
                logits = self(out[:, t:t + 1], caches=caches, start=t)
        return out
