"""Evaluation of a trained TransformerLM: token-weighted validation loss/perplexity, nats per byte, fixed-prompt
samples.

`validation_loss` is also what the Trainer calls for its periodic validation, so training and the final evaluation
measure exactly the same quantity.
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from core.io import atomic_write_json
from core.names import EVALUATION_FILE
from plugins.tidal.Config import LMConfig
from plugins.tidal.DataPipeline import EOT_TOKEN_ID, TokenDataset, get_tokenizer
from plugins.tidal.TransformerLM import load_pretrained


def token_byte_lengths(vocab_size: int) -> torch.Tensor:
    """(V,) number of UTF-8 bytes each GPT-2 token stands for (`<|endoftext|>` counts as 0: it is not text)."""
    enc = get_tokenizer()
    lengths = [len(enc.decode_single_token_bytes(i)) if i != EOT_TOKEN_ID else 0
               for i in range(min(vocab_size, enc.n_vocab))]
    return torch.tensor(lengths + [0] * (vocab_size - len(lengths)), dtype=torch.float64)


@torch.no_grad()
def validation_loss(model, dataset: TokenDataset, batch_size: int, device: torch.device, max_batches: int | None = None,
                    autocast_dtype: torch.dtype = torch.float32, rank: int = 0, world_size: int = 1,
                    byte_lengths: torch.Tensor | None = None) -> dict:
    """Token-weighted mean cross-entropy over the first `max_batches` batches (all when None), sharded across ranks.

    Returns {loss, tokens, nats_per_byte (when byte_lengths is given)}; with world_size > 1 the sums are all-reduced."""
    was_training = model.training
    model.eval()
    num_batches = math.ceil(len(dataset) / batch_size)
    if max_batches is not None:
        num_batches = min(num_batches, max_batches)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # nats, tokens, bytes
    for b in range(rank, num_batches, world_size):
        x, y = dataset.batch(range(b * batch_size, min((b + 1) * batch_size, len(dataset))))
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype != torch.float32):
            logits = model(x).logits
        nats = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum")
        sums[0] += nats.double()
        sums[1] += y.numel()
        if byte_lengths is not None:
            sums[2] += byte_lengths.to(device)[y].sum()
    if world_size > 1:
        torch.distributed.all_reduce(sums)
    model.train(was_training)
    loss = (sums[0] / sums[1]).item() if sums[1] > 0 else float("nan")
    result = {"loss": loss, "tokens": int(sums[1].item())}
    if byte_lengths is not None and sums[2] > 0:
        result["nats_per_byte"] = (sums[0] / sums[2]).item()
    return result


class Evaluator:
    """Evaluates a checkpoint on the validation split and writes `evaluation_results.json` in the experiment dir."""

    def __init__(self, config: LMConfig | Mapping, experiment_dir: str | Path, model_path: str | Path,
                 device: torch.device | str = "cpu"):
        self.config = config = LMConfig.of(config)
        self.experiment_dir = Path(experiment_dir)
        self.device = torch.device(device)
        self.model = load_pretrained(config, model_path, self.device)
        self.model_path = Path(model_path)

    def compute_perplexity(self, max_batches: int | None = None) -> dict:
        dataset = TokenDataset(self.config, "validation")
        result = validation_loss(self.model, dataset, self.config.EVAL_BATCH_SIZE, self.device, max_batches,
                                 byte_lengths=token_byte_lengths(self.config.VOCAB_SIZE))
        result["perplexity"] = math.exp(result["loss"]) if result["loss"] < 50 else float("inf")
        return result

    def generate_samples(self, prompts: list[str] | None = None, seed: int = 0) -> list[dict]:
        enc = get_tokenizer()
        samples = []
        for i, prompt in enumerate(prompts or self.config.EVAL_PROMPTS):
            ids = torch.tensor([enc.encode_ordinary(prompt)], device=self.device)
            out = self.model.generate(ids, self.config.EVAL_MAX_NEW_TOKENS, temperature=self.config.EVAL_TEMPERATURE,
                                      top_k=self.config.EVAL_TOP_K, top_p=self.config.EVAL_TOP_P,
                                      repetition_penalty=self.config.EVAL_REPETITION_PENALTY,
                                      eos_token_id=EOT_TOKEN_ID, seed=seed + i)
            new = [t for t in out[0, ids.shape[1]:].tolist() if t != EOT_TOKEN_ID]
            samples.append({"prompt": prompt, "generated": prompt + enc.decode(new)})
        return samples

    def run(self, max_batches: int | None = None) -> dict:
        start = time.time()
        metrics = self.compute_perplexity(max_batches)
        results = {
            "checkpoint": self.model_path.name,
            "validation_loss": metrics["loss"],
            "perplexity": metrics["perplexity"],
            "nats_per_byte": metrics.get("nats_per_byte"),
            "validation_tokens": metrics["tokens"],
            "samples": self.generate_samples(),
            "timestamp": time.time(),
            "elapsed_seconds": time.time() - start,
        }
        atomic_write_json(self.experiment_dir / EVALUATION_FILE, results)
        return results

