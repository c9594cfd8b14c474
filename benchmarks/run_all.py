"""Run every benchmark, then rewrite the README's performance table from their results.

    python benchmarks/run_all.py            # all benchmarks (~20 min on a 2-core CPU), then the README table
    python benchmarks/run_all.py --table    # only rebuild the table from benchmarks/results/*.json

Each benchmark runs Tidal and a reference side by side in one process and writes JSON to benchmarks/results/; the
README section between the `perf-table` markers is replaced, so its figures always come from one run of this script.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
START, END = "<!-- perf-table:start -->", "<!-- perf-table:end -->"

BENCHMARKS = [
    ["benchmarks/bench_model.py"],
    ["benchmarks/bench_rl.py"],
    # the environment before (the code issue 14 measured) and now, alternating runs of each tree's own benchmark
    ["benchmarks/bench_rl.py", "--before", "--threads", "1"],
    ["benchmarks/bench_rl.py", "--before", "--threads", "1", "--inference-weights", "bf16"],
    ["benchmarks/bench_api.py", "--json", str(RESULTS / "bench_api.json")],
    ["benchmarks/bench_metrics_logger.py"],
    # the full 60 s x 3 rounds figures in RELIABILITY.md come from a direct run; 20 s rounds keep `make bench` short
    ["benchmarks/bench_load.py", "--duration", "20", "--json", str(RESULTS / "bench_load.json")],
    ["benchmarks/bench_client.py", "--json", str(RESULTS / "bench_client.json")],
]


def run_benchmarks() -> None:
    RESULTS.mkdir(exist_ok=True)
    for args in BENCHMARKS:
        print(f"\n$ python {' '.join(args)}", flush=True)
        proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
        sys.stdout.write(proc.stdout)
        if args[0].endswith("bench_metrics_logger.py"):  # its last line is its JSON summary
            (RESULTS / "bench_metrics_logger.json").write_text(proc.stdout.strip().splitlines()[-1] + "\n")
        if proc.returncode not in (0, 1):  # 1 = ran, but missed a target: still reported
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"{args[0]} failed (exit {proc.returncode})")


def load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def fmt(x: float, unit: str = "") -> str:
    return f"{x:,.0f}{unit}" if x >= 100 else f"{x:,.1f}{unit}"


def table() -> str:
    rows = ["| benchmark | Tidal | reference, side by side | ratio | target |", "|---|---|---|---|---|"]
    model = load("bench_model_cpu.json")
    if model:
        for r in model["rows"]:
            target = f"≥ {r['target']}×" if r["target"] else "—"
            rows.append(f"| {r['what']} | {fmt(r['tidal_tok_s'])} tok/s | {r['reference']}: "
                        f"{fmt(r['reference_tok_s'])} tok/s | **{r['ratio']:.2f}×** | {target} |")
        for r in model["rows"]:
            if "roofline" in r:
                f = r["roofline"]
                rows.append(f"| Roofline, {r['what']}: {f['weight_bytes_per_token'] / 2 ** 20:.1f} MiB of weights per "
                            f"token × tokens/s | {f['bytes_per_s'] / 1e9:.1f} GB/s | measured copy bandwidth: "
                            f"{f['copy_bandwidth'] / 1e9:.1f} GB/s | **{f['percent']:.0f} %** | — |")
    rl = load("bench_rl.json")
    if rl:
        for r in rl["rows"]:
            rows.append(f"| RL environment steps, {r['num_envs']} vectorized envs ({r['config']} model) | "
                        f"{fmt(r['vectorized_steps_per_s'])} steps/s | one env at a time: "
                        f"{fmt(r['single_steps_per_s'])} steps/s | **{r['ratio']:.2f}×** | ≥ {r['target']:g}× |")
    for suffix, weights in (("", "fp32"), ("_bf16", "INFERENCE_WEIGHTS bf16")):
        history = load(f"bench_rl_before_after{suffix}.json")
        if history is None:
            continue
        for r in history["rows"]:
            rows.append(f"| RL environment steps/s, {r['config']} model, now ({weights}, 1 thread) vs before "
                        f"({history['ref']}) | {fmt(r['after_steps_per_s'])} steps/s | the environment at "
                        f"{history['ref']}: {fmt(r['before_steps_per_s'])} steps/s | **{r['ratio']:.2f}×** | "
                        f"≥ {r['target']:g}× |")
    api = load("bench_api.json")
    if api:
        ref = api["reference GET /const (trivial FastAPI)"]
        for key, value in api.items():
            if key.startswith("GET /api"):
                rows.append(f"| {key}, 50 concurrent clients (p99 {value['p99_ms']:.0f} ms, "
                            f"{value['errors']} errors) | {fmt(value['rps'])} req/s | "
                            f"trivial FastAPI endpoint: {fmt(ref['rps'])} req/s | "
                            f"**{value['rps'] / ref['rps']:.2f}×** | 0 errors |")
        sse = api["sse"]
        rows.append(f"| MetricsLogger write → SSE delivery, {sse['clients']} clients "
                    f"({sse['deliveries']:,} deliveries, {sse['missing']} missing, {sse['errors']} errors) | "
                    f"p50 {sse['p50_ms']:.0f} ms, p99 **{sse['p99_ms']:.0f} ms** | — | — | p99 < 250 ms |")
    logger = load("bench_metrics_logger.json")
    if logger:
        rows.append(f"| MetricsLogger overhead per training step (worst of Redis up / down / disk only) | "
                    f"**{logger['worst_overhead_pct']:.2f} %** of a ~30 ms step | the same step without logging | — | "
                    f"< {logger['requirement_pct']:g} % |")
    load_run = load("bench_load.json")
    if load_run:
        rounds, a = load_run["rounds"], load_run["args"]
        worst = max(r["api"]["p99_ms"] for r in rounds)
        rows.append(f"| Sustained load: {a['api_clients']} API + {a['sse_clients']} SSE clients, "
                    f"{len(rounds)} rounds × {a['duration']:g} s ({sum(r['api']['server_errors'] for r in rounds)} "
                    f"5xx, server RSS {rounds[0]['rss_mb']:.0f} → {rounds[-1]['rss_mb']:.0f} MiB) | p50 "
                    f"{max(r['api']['p50_ms'] for r in rounds):.0f} ms, p99 **{worst:.0f} ms** (worst round) "
                    f"| — | — | 0 5xx, RSS growth ≤ 10 % |")
    client = load("bench_client.json")
    if client:
        long, short = client["long"], client["short"]
        rows.append(f"| Web client: first paint of the loss chart, {client['steps']:,}-step run (Chromium; cold "
                    f"{long['cold_ms']:,.0f} ms, {long['points_plotted']} points plotted) | "
                    f"{long['warm_ms']:,.0f} ms | 1,000-step run: {short['warm_ms']:,.0f} ms | "
                    f"**{client['ratio_warm']:.2f}×** | ≤ {client['target_ratio']:g}× |")
    machine = (model or {}).get("machine") or platform.processor()
    rows.append("")
    rows.append(f"Machine: {platform.machine()} {machine}; Python {platform.python_version()}. "
                "Regenerate with `python benchmarks/run_all.py` (or `make bench`).")
    return "\n".join(rows)


def write_readme(text: str) -> None:
    readme = README.read_text()
    if START not in readme or END not in readme:
        raise SystemExit(f"README.md has no {START} … {END} section")
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    README.write_text(pattern.sub(lambda _: f"{START}\n{text}\n{END}", readme))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="only rebuild the README table from saved results")
    args = parser.parse_args()
    if not args.table:
        run_benchmarks()
    text = table()
    write_readme(text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
