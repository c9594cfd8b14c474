"""A minimal GPT (nanoGPT-style) used only as the side-by-side reference in the benchmarks.

Same dimensions as TransformerLM (embedding, blocks, heads, FFN, vocabulary, context) and the same dropout (embedding,
attention, residual — as nanoGPT), learned absolute positions, pre-norm blocks, fused QKV, SDPA causal attention,
untied output projection — and nothing else (no gates, no RoPE).
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

    def forward(self, x):
        B, T, E = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(E, dim=2)
        q, k, v = (t.view(B, T, self.heads, E // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(B, T, E)))
        return x + self.drop(self.down(F.gelu(self.up(self.ln2(x)))))


class ReferenceGPT(nn.Module):
    def __init__(self, vocab: int, config: dict):
        super().__init__()
        E = config["EMBED_DIM"]
        self.wte = nn.Embedding(vocab, E)
        self.wpe = nn.Embedding(config["MAX_CONTEXT_LENGTH"], E)
        self.drop = nn.Dropout(config["DROPOUT"])
        self.blocks = nn.ModuleList(Block(E, config["NUM_ATTENTION_HEADS"], config["FFN_HIDDEN_DIM"], config["DROPOUT"])
                                    for _ in range(config["NUM_TRANSFORMER_BLOCKS"]))
        self.ln_f = nn.LayerNorm(E)
        self.head = nn.Linear(E, vocab)

    def forward(self, idx, targets=None):
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device)))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1))
