"""Sustained load on one dashboard: mixed API clients plus SSE clients on a live experiment, in rounds.

    python benchmarks/bench_load.py [--duration 60] [--rounds 3] [--api-clients 200] [--sse-clients 100]
                                    [--rate 10] [--records 10000] [--json benchmarks/results/bench_load.json]

The set-up is bench_api.py's (an embedded Redis, a synthetic experiment of `--records` metric records, 50 finished
jobs, `python -m dashboard` in a child process). Each round, for `--duration` seconds:
  - `--api-clients` concurrent clients send mixed GETs back to back: /api/jobs, /api/experiments,
    /api/experiments/{id}/metrics?maxPoints=1000 and /api/health;
  - `--sse-clients` clients follow /api/experiments/{id}/stream while a MetricsLogger writes `--rate` records/s;
then every client disconnects and the server's resident memory is read. Reported per round: requests, 5xx answers
(target 0), other errors, p50/p99 latency, SSE events received against those expected, the server's SSE readers
after the round (target 0: every reader cleaned up) and its RSS. Memory must not grow across rounds beyond noise
(target: last round within 10 % of the first). Exit 0 when every target is met, 1 when not.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx
from bench_api import EXP, cpu_name, load, rss_mb, sse_events, write_experiment, write_jobs  # the sibling file

from redis_launcher import EmbeddedRedis
from tests.support import DashboardProcess

ROOT = Path(__file__).resolve().parent.parent

RSS_GROWTH_LIMIT = 0.10


async def sse_round(base: str, clients: int, write_records, duration: float) -> dict:
    """`clients` SSE clients on the experiment stream; once all are subscribed, `write_records(duration)` runs (in a
    thread) and returns how many records it wrote; the clients then drain for a moment and disconnect."""
    url = f"{base}/api/experiments/{EXP}/stream"
    received = [0] * clients
    subscribed = 0
    all_in = asyncio.Event()
    errors = 0

    async def client(i: int):
        nonlocal subscribed, errors
        first = True
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=None)) as c:
                async for event, _ in sse_events(c, url):
                    if first:  # the first event (a heartbeat) is sent once the subscription is in place
                        first = False
                        subscribed += 1
                        if subscribed == clients:
                            all_in.set()
                    if event == "metrics":
                        received[i] += 1
        except httpx.HTTPError:
            errors += 1

    tasks = [asyncio.create_task(client(i)) for i in range(clients)]
    await asyncio.wait_for(all_in.wait(), 120)
    written = await asyncio.to_thread(write_records, duration)
    deadline = time.monotonic() + 10  # let the last events arrive (the server may lag under load)
    while time.monotonic() < deadline and sum(received) < written * clients:
        await asyncio.sleep(0.1)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"clients": clients, "records_written": written, "events_expected": written * clients,
            "events_received": sum(received), "errors": errors}


def make_writer(root: Path, redis_url: str, rate: float):
    """A function writing live metric records for `duration` seconds through the real MetricsLogger."""
    from MetricsLogger import MetricsLogger

    logger = MetricsLogger(root / EXP, redis_url=redis_url)
    step = [10**6]

    def write(duration: float) -> int:
        n, start = 0, time.monotonic()
        while time.monotonic() - start < duration:
            logger.log_metrics({"Losses/Total": 1.0, "bench": n}, step[0])
            step[0] += 1
            n += 1
            time.sleep(max(0.0, start + n / rate - time.monotonic()))
        return n

    return write, logger


async def one_round(base: str, args, write_records) -> dict:
    urls = [f"{base}/api/jobs", f"{base}/api/experiments", f"{base}/api/experiments/{EXP}/metrics?maxPoints=1000",
            f"{base}/api/health"]
    api, sse = await asyncio.gather(load(urls, args.api_clients, args.duration),
                                    sse_round(base, args.sse_clients, write_records, args.duration))
    return {"api": api, "sse": sse}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--api-clients", type=int, default=200)
    p.add_argument("--sse-clients", type=int, default=100)
    p.add_argument("--rate", type=float, default=10.0, help="metric records written per second during a round")
    p.add_argument("--records", type=int, default=10_000, help="records already in the experiment's history")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "bench_load.json"))
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis() as redis_server:
        root = Path(tmp) / "experiments"
        write_experiment(root, args.records)
        write_jobs(redis_server.url, 50)
        server = DashboardProcess(root, redis_server.url, log_level="warning")
        write_records, logger = make_writer(root, redis_server.url, args.rate)
        rounds = []
        try:
            base = server.start().url
            assert server.process is not None  # start() has launched it
            pid = server.process.pid
            httpx.get(f"{base}/api/experiments/{EXP}/metrics?maxPoints=1000", timeout=60)  # warm the history cache
            rss_start = rss_mb(pid)
            for n in range(args.rounds):
                result = asyncio.run(one_round(base, args, write_records))
                time.sleep(1.0)  # disconnects processed, readers released
                result["sse_readers_after"] = httpx.get(base + "/api/health", timeout=30).json()["sseReaders"]
                result["rss_mb"] = rss_mb(pid)
                rounds.append(result)
                print(f"round {n + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        finally:
            logger.close()
            server.close()

    growth = (rounds[-1]["rss_mb"] - rounds[0]["rss_mb"]) / rounds[0]["rss_mb"]
    ok = (all(r["api"]["server_errors"] == 0 and r["api"]["errors"] == 0 and r["sse"]["errors"] == 0
              and r["sse"]["events_received"] == r["sse"]["events_expected"] and r["sse_readers_after"] == 0
              for r in rounds) and growth <= RSS_GROWTH_LIMIT)
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()}
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}; "
          f"{args.api_clients} API clients + {args.sse_clients} SSE clients, {args.rounds} rounds x "
          f"{args.duration:g} s, {args.rate:g} records/s; server RSS {rss_start:.0f} MiB before the first round")
    print(f"{'round':>5s} {'requests':>9s} {'req/s':>7s} {'5xx':>5s} {'errors':>6s} {'p50 ms':>8s} {'p99 ms':>8s} "
          f"{'SSE events':>21s} {'readers':>7s} {'RSS MiB':>8s}")
    for n, r in enumerate(rounds, 1):
        a, s = r["api"], r["sse"]
        print(f"{n:5d} {a['requests']:9d} {a['rps']:7.0f} {a['server_errors']:5d} {a['errors']:6d} "
              f"{a['p50_ms']:8.1f} {a['p99_ms']:8.1f} {s['events_received']:>10d}/{s['events_expected']:<10d} "
              f"{r['sse_readers_after']:7d} {r['rss_mb']:8.1f}")
    print(f"RSS growth first -> last round: {growth * 100:+.1f} % (limit {RSS_GROWTH_LIMIT * 100:.0f} %); targets "
          f"(0 5xx, 0 errors, every SSE event, readers released, no growth): {'met' if ok else 'NOT met'}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": machine, "args": vars(args), "rss_start_mb": rss_start,
                                               "rss_growth": growth, "targets_met": ok, "rounds": rounds}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
