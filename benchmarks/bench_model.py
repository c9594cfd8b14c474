"""TransformerLM speed, side by side with references in one process.

Training: tokens/s of a full optimizer step (forward, backward, AdamW) of TransformerLM vs ReferenceGPT, a minimal
GPT of the same dimensions (benchmarks/reference_gpt.py), in fp32 and, where the CPU/GPU supports it, bf16 autocast.
Generation: tokens/s of KV-cached `generate` at batch 1 and 16 vs the naive loop that recomputes the whole context for
every token (`use_cache=False`), and vs Hugging Face GPT2LMHeadModel of the same dimensions when `transformers` is
installed. Runs are interleaved (A B A B ...) and the median is reported, so machine noise hits both sides alike.

    python benchmarks/bench_model.py [--config plugins/tidal/configs/base_config.yaml] [--device auto]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.reference_gpt import ReferenceGPT  # noqa: E402
from experiment_utils import resolve_device  # noqa: E402
from plugins.tidal.TransformerLM import TransformerLM  # noqa: E402
from plugins.tidal.Utils import BASE_CONFIG_PATH, load_config  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict, repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call of each function, calling them in turn `repeats` times after one warm-up each."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def train_step_fn(model, batch, dtype, device):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    x, y = batch

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = model(x, y)
        loss = out[1]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def bench_training(config, device, batch_size, repeats):
    V, T = config["VOCAB_SIZE"], config["MAX_CONTEXT_LENGTH"]
    g = torch.Generator().manual_seed(0)
    batch = tuple(torch.randint(0, V, (batch_size, T), generator=g).to(device) for _ in range(2))
    dtypes = [torch.float32]
    if device.type == "cuda" and torch.cuda.is_bf16_supported() or device.type == "cpu" and _cpu_has_bf16():
        dtypes.append(torch.bfloat16)
    rows = []
    for dtype in dtypes:
        torch.manual_seed(0)
        tidal = TransformerLM(V, config).to(device).train()
        torch.manual_seed(0)
        ref = ReferenceGPT(V, config).to(device).train()
        secs = interleaved({"tidal": train_step_fn(tidal, batch, dtype, device),
                            "reference": train_step_fn(ref, batch, dtype, device)}, repeats, device)
        tokens = batch_size * T
        rows.append({"what": f"training step ({str(dtype).removeprefix('torch.')}, B={batch_size}, T={T})",
                     "tidal_tok_s": tokens / secs["tidal"], "reference": "minimal GPT, same dims",
                     "reference_tok_s": tokens / secs["reference"], "ratio": secs["reference"] / secs["tidal"],
                     "target": 0.95})
        del tidal, ref
    return rows


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def hf_gpt2(config, device):
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return None
    hf_config = GPT2Config(vocab_size=config["VOCAB_SIZE"], n_positions=config["MAX_CONTEXT_LENGTH"],
                           n_embd=config["EMBED_DIM"], n_layer=config["NUM_TRANSFORMER_BLOCKS"],
                           n_head=config["NUM_ATTENTION_HEADS"], n_inner=config["FFN_HIDDEN_DIM"],
                           attn_implementation="sdpa")
    return GPT2LMHeadModel(hf_config).to(device).eval()


def bench_generation(config, device, new_tokens, repeats):
    torch.manual_seed(0)
    model = TransformerLM(config["VOCAB_SIZE"], config).to(device).eval()
    hf = hf_gpt2(config, device)
    rows = []
    for B in (1, 16):
        prompt = torch.randint(0, config["VOCAB_SIZE"], (B, 8), generator=torch.Generator().manual_seed(B)).to(device)
        kw = dict(max_new_tokens=new_tokens, temperature=1.0, top_k=50, seed=0)
        fns = {"cached": lambda: model.generate(prompt, **kw),
               "naive": lambda: model.generate(prompt, use_cache=False, **kw)}
        if hf is not None:
            fns["hf"] = lambda: hf.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                            do_sample=True, top_k=50, pad_token_id=0)
        with torch.no_grad():
            secs = interleaved(fns, repeats, device)
        tokens = B * new_tokens
        rows.append({"what": f"generation, KV cache (B={B}, {new_tokens} new tokens)", "tidal_tok_s": tokens / secs["cached"],
                     "reference": "naive full-recompute loop", "reference_tok_s": tokens / secs["naive"],
                     "ratio": secs["naive"] / secs["cached"], "target": 1.5})
        if hf is not None:
            rows.append({"what": f"generation, KV cache (B={B}, {new_tokens} new tokens)", "tidal_tok_s": tokens / secs["cached"],
                         "reference": "HF GPT2LMHeadModel, same dims", "reference_tok_s": tokens / secs["hf"],
                         "ratio": secs["hf"] / secs["cached"], "target": None})
    return rows


def print_table(title: str, rows: list[dict], device: str) -> None:
    print(f"\n{title} — device: {device}")
    print(f"{'benchmark':<48} {'Tidal tok/s':>12} {'reference':<32} {'ref tok/s':>10} {'ratio':>7} {'target':>7}")
    for r in rows:
        target = f">={r['target']}" if r["target"] else "-"
        print(f"{r['what']:<48} {r['tidal_tok_s']:>12,.0f} {r['reference']:<32} {r['reference_tok_s']:>10,.0f} "
              f"{r['ratio']:>6.2f}x {target:>7}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(BASE_CONFIG_PATH))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=8, help="training micro-batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--only", choices=("training", "generation"), help="run one half of the benchmark")
    args = parser.parse_args()
    config = load_config(args.config)
    device = resolve_device(args.device)
    torch.set_float32_matmul_precision("high")
    torch.set_flush_denormal(True)  # as the Trainer does, for both sides
    rows = [] if args.only == "generation" else bench_training(config, device, args.batch_size, args.repeats)
    rows += [] if args.only == "training" else bench_generation(config, device, args.new_tokens, args.repeats)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print_table("TransformerLM vs references (base config)", rows, machine)
    RESULTS.mkdir(exist_ok=True)
    suffix = f"_{args.only}" if args.only else ""
    (RESULTS / f"bench_model_{device.type}{suffix}.json").write_text(json.dumps({"machine": machine, "rows": rows},
                                                                                indent=2))
    return 0


if __name__ == "__main__":
    from plugins.tidal.Utils import reexec_with_tuned_malloc

    reexec_with_tuned_malloc()  # the same allocator settings as training (ADR 0012)
    sys.exit(main())
