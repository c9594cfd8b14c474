"""TransformerLM speed, side by side with its peers in one process.

Training: tokens/s of a full optimizer step (forward, backward, AdamW) of TransformerLM as the Trainer runs it (fused
AdamW) vs ReferenceGPT, a minimal GPT of the same dimensions (benchmarks/reference_gpt.py) as nanoGPT configures it
(fused AdamW on CUDA only), in fp32 and, where the CPU/GPU supports it, bf16 autocast.
Generation (random weights, 8-token prompts, 128 new tokens, temperature 0.8, top-k 50, no eos): tokens/s of Tidal's
`generate`, the minimal GPT's KV-cached nanoGPT loop, and Hugging Face GPT2LMHeadModel.generate (same dimensions,
KV cache, inference mode) at batch 1 and 16, in fp32 and in bf16 (Tidal's INFERENCE_WEIGHTS bf16; the peers cast
to bf16, as Hugging Face's CPU inference guide recommends on bf16 hardware), plus a roofline line: weight bytes
read per token at batch 1 × tokens/s against this machine's copy bandwidth. Runs are interleaved (A B C A B C ...)
and the median is reported, so machine noise hits every side alike.

    python benchmarks/bench_model.py [--config plugins/tidal/configs/base_config.yaml] [--device auto]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from reference_gpt import ReferenceGPT  # the sibling file (run as a file, its folder is importable)

from experiment_utils import resolve_device
from plugins.tidal.TransformerLM import TransformerLM
from plugins.tidal.Utils import BASE_CONFIG_PATH, load_config

RESULTS = Path(__file__).resolve().parent / "results"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call of each function, calling them in turn `repeats` times after one warm-up each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def train_step_fn(model, batch, dtype, device, fused: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    x, y = batch

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = model(x, y)
        loss = out[1]  # the loss of either model: LMOutput's second field, the reference's (logits, loss)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def bench_training(config, device, batch_size, repeats):
    V, T = config["VOCAB_SIZE"], config["MAX_CONTEXT_LENGTH"]
    g = torch.Generator().manual_seed(0)
    batch = tuple(torch.randint(0, V, (batch_size, T), generator=g).to(device) for _ in range(2))
    rows = []
    for dtype in [torch.float32] + ([torch.bfloat16] if has_bf16(device) else []):
        torch.manual_seed(0)
        tidal = TransformerLM(V, config).to(device).train()
        torch.manual_seed(0)
        ref = ReferenceGPT(V, config).to(device).train()
        secs = interleaved({"tidal": train_step_fn(tidal, batch, dtype, device, fused=device.type in ("cuda", "cpu")),
                            "reference": train_step_fn(ref, batch, dtype, device, fused=device.type == "cuda")},
                           repeats, device)
        tokens = batch_size * T
        rows.append({"what": f"training step ({str(dtype).removeprefix('torch.')}, B={batch_size}, T={T})",
                     "tidal_tok_s": tokens / secs["tidal"], "reference": "minimal GPT, same dims",
                     "reference_tok_s": tokens / secs["reference"], "ratio": secs["reference"] / secs["tidal"],
                     "target": 1.05})
        del tidal, ref
    return rows


def has_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def hf_gpt2(config, device, dtype):
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return None
    hf_config = GPT2Config(vocab_size=config["VOCAB_SIZE"], n_positions=config["MAX_CONTEXT_LENGTH"],
                           n_embd=config["EMBED_DIM"], n_layer=config["NUM_TRANSFORMER_BLOCKS"],
                           n_head=config["NUM_ATTENTION_HEADS"], n_inner=config["FFN_HIDDEN_DIM"],
                           attn_implementation="sdpa")
    model = GPT2LMHeadModel(hf_config).to(device, dtype).eval()
    model.generation_config.eos_token_id = None  # every side generates all its tokens, with no stopping check
    return model


def hf_cache(batch: int) -> str:
    """The KV cache that was faster for GPT-2 on the development CPU: the static cache at batch 16 (+30 % in fp32,
    equal in bf16), the default dynamic one at batch 1 (static was 15 % slower)."""
    return "static" if batch > 1 else "dynamic"


def generation_fns(tidal, ref, hf, prompt, new_tokens: int, cache: str) -> dict[str, Callable[[], object]]:
    """Each side's generate call on one prompt (closures over this call's arguments)."""
    fns: dict[str, Callable[[], object]] = {
        "tidal": lambda: tidal.generate(prompt, new_tokens, temperature=0.8, top_k=50, seed=0),
        "minimal GPT": lambda: ref.generate(prompt, new_tokens, temperature=0.8, top_k=50)}
    if hf is not None:
        fns["HF GPT2LMHeadModel.generate"] = lambda: hf.generate(
            prompt, max_new_tokens=new_tokens, do_sample=True, top_k=50, temperature=0.8, pad_token_id=0,
            use_cache=True, **({} if cache == "dynamic" else {"cache_implementation": cache}))
    return fns


def bench_generation_dtype(config, device, dtype, new_tokens, repeats) -> list[dict]:
    """The batch-1 and batch-16 generation rows in one dtype; its models are freed when it returns."""
    rows: list[dict] = []
    name = str(dtype).removeprefix("torch.")
    torch.manual_seed(0)
    packing = {"float32": "fp32", "bfloat16": "bf16"}[name]
    tidal = TransformerLM(config.VOCAB_SIZE, config.replace(INFERENCE_WEIGHTS=packing)).to(device).eval()
    torch.manual_seed(0)
    ref = ReferenceGPT(config["VOCAB_SIZE"], config).to(device, dtype).eval()
    hf = hf_gpt2(config, device, dtype)
    for B in (1, 16):
        prompt = torch.randint(0, config["VOCAB_SIZE"], (B, 8), generator=torch.Generator().manual_seed(B))
        prompt = prompt.to(device)
        fns = generation_fns(tidal, ref, hf, prompt, new_tokens, hf_cache(B))
        with torch.inference_mode():
            secs = interleaved(fns, repeats, device)
        tokens = B * new_tokens
        peers = {k: tokens / v for k, v in secs.items() if k != "tidal"}
        best = max(peers, key=lambda k: peers[k])
        rows.append({"what": f"generation ({name}, B={B}, {new_tokens} new tokens)",
                     "tidal_tok_s": tokens / secs["tidal"], "reference": f"best peer: {best}",
                     "reference_tok_s": peers[best], "ratio": tokens / secs["tidal"] / peers[best],
                     "target": 1.3 if B == 1 else 1.5, "peers": peers, "batch": B, "dtype": name,
                     "hf_cache": hf_cache(B) if hf is not None else None})
    rows[-2]["roofline"] = roofline(tidal, rows[-2]["tidal_tok_s"], device)  # the batch-1 row
    return rows


def bench_generation(config, device, new_tokens, repeats):
    rows = []
    for dtype in [torch.float32] + ([torch.bfloat16] if has_bf16(device) else []):
        rows += bench_generation_dtype(config, device, dtype, new_tokens, repeats)
    return rows


def weight_bytes_per_token(model: TransformerLM) -> int:
    """Bytes of weights one batch-1 decode step reads: every parameter once, in the dtype its forward reads (the
    packed bf16 copies where INFERENCE_WEIGHTS is bf16), except the embedding, of which it reads one row."""
    total = 0
    for name, p in model.named_parameters():
        if name.startswith("token_embeddings"):
            total += p.shape[1] * p.element_size()
        elif "_gate." not in name:  # generate() without gate signals skips the gates
            module = model.get_submodule(name.rsplit(".", 1)[0])
            total += p.numel() * (2 if getattr(module, "inference_weights", None) == "bf16" else p.element_size())
    return total


def copy_bandwidth(device: torch.device) -> float:
    """Bytes/s of a 512 MiB tensor copy (read + write counted), the best of five."""
    src = torch.ones(128 * 2 ** 20, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * src.element_size() / best


def roofline(model: TransformerLM, tok_s: float, device: torch.device) -> dict:
    per_token = weight_bytes_per_token(model)
    bandwidth = copy_bandwidth(device)
    return {"weight_bytes_per_token": per_token, "bytes_per_s": per_token * tok_s, "copy_bandwidth": bandwidth,
            "percent": 100 * per_token * tok_s / bandwidth}


def print_table(title: str, rows: list[dict], device: str) -> None:
    print(f"\n{title} — device: {device}")
    print(f"{'benchmark':<44} {'Tidal tok/s':>12} {'reference':<44} {'ref tok/s':>10} {'ratio':>7} {'target':>7}")
    for r in rows:
        target = f">={r['target']}" if r["target"] else "-"
        print(f"{r['what']:<44} {r['tidal_tok_s']:>12,.0f} {r['reference']:<44} {r['reference_tok_s']:>10,.0f} "
              f"{r['ratio']:>6.2f}x {target:>7}")
    generation = [r for r in rows if "peers" in r]
    if generation:
        names = list(generation[0]["peers"])
        print(f"\n{'generation tok/s':<16} {'Tidal':>8} " + " ".join(f"{n:>28}" for n in names) + f" {'vs best':>8}")
        for r in generation:
            print(f"{r['dtype'] + ', B=' + str(r['batch']):<16} {r['tidal_tok_s']:>8,.0f} "
                  + " ".join(f"{r['peers'].get(n, float('nan')):>28,.0f}" for n in names) + f" {r['ratio']:>7.2f}x")
        for r in generation:
            if "roofline" in r:
                f = r["roofline"]
                print(f"roofline {r['dtype']}, B=1: {f['weight_bytes_per_token'] / 2 ** 20:.1f} MiB of weights per "
                      f"token x {r['tidal_tok_s']:.0f} tok/s = {f['bytes_per_s'] / 1e9:.1f} GB/s = "
                      f"{f['percent']:.0f} % of the measured copy bandwidth ({f['copy_bandwidth'] / 1e9:.1f} GB/s)")


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
