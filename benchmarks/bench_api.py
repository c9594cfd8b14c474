"""API throughput and SSE fan-out latency of the dashboard, side by side with a trivial FastAPI endpoint.

    python benchmarks/bench_api.py [--duration 5] [--clients 50] [--sse-clients 100] [--records 50000]

One script sets everything up: an embedded Redis, a synthetic experiment of `--records` metric records (the
MetricsLogger on-disk format), 50 finished jobs, and the real dashboard (`python -m dashboard`, uvicorn on a free
loopback port) in a child process, so the load generator below does not share the server's interpreter (GIL).
It measures:
  1. requests/s of GET /api/jobs and GET /api/experiments/{id}/metrics?maxPoints=1000 under `--clients`
     concurrent httpx clients, against the reference: a FastAPI app whose endpoint returns a constant, served the
     same way (the framework ceiling on this machine), with the ratio;
  2. the latency from a MetricsLogger write (the record's own `timestamp`) to its delivery as an SSE `metrics`
     event, with `--sse-clients` clients connected to the experiment's stream (p50/p99), and errors.
Targets on a 2-core CPU: p99 delivery < 250 ms, zero errors.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from core.net import free_port
from redis_launcher import EmbeddedRedis
from tests.support import DashboardProcess

ROOT = Path(__file__).resolve().parent.parent

EXP = "20260101-000000-commit_bench-config_0000000000"
REFERENCE_APP = """
import sys, uvicorn
from fastapi import FastAPI
app = FastAPI()
PAYLOAD = {"jobs": []}
@app.get("/const")
async def const():
    return PAYLOAD
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def write_experiment(root: Path, n: int) -> None:
    exp = root / EXP / "dashboard_metrics"
    exp.mkdir(parents=True)
    (root / EXP / "metadata.json").write_text(json.dumps({"type": "lm", "created_at": time.time()}))
    t0 = time.time() - n
    with open(exp / "metrics.jsonl", "w") as f:
        for step in range(n):
            f.write(json.dumps({"step": step, "timestamp": t0 + step, "Losses/Total": 5.0 / (1 + step / 1000),
                                "Learning Rate": 1e-3, "Tokens/Second": 20_000 + step % 97,
                                "Perplexity": 2.0 + 1 / (1 + step)}) + "\n")
    (exp / "status.json").write_text(json.dumps({"status": "training", "timestamp": time.time(),
                                                 "experiment_id": EXP}))


def write_jobs(redis_url: str, n: int) -> None:
    import redis

    r = redis.Redis.from_url(redis_url)
    now = time.time()
    for i in range(n):
        job: dict[str, Any] = {
            "jobId": f"job-{i:016x}", "type": "lm-training", "status": "completed", "provider": "local",
            "config": {"configPath": "plugins/tidal/configs/base_config.yaml"}, "experimentId": EXP,
            "createdAt": now - i, "updatedAt": now - i, "startedAt": now - i, "completedAt": now - i,
            "error": None, "exitCode": 0}
        r.hset("tidal:jobs", job["jobId"], json.dumps(job))
    r.close()


def wait_up(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


async def load(urls: str | list[str], clients: int, duration: float) -> dict:
    """`clients` concurrent clients, each sending requests back to back for `duration` seconds (client i cycles
    through `urls` from the i-th one, so a list gives a mixed load).
    The clients are made (and their connections opened) before the clock starts: building an httpx client
    costs tens of ms of CPU, which would otherwise dominate a short run on 2 cores."""
    urls = [urls] if isinstance(urls, str) else list(urls)
    done, errors, server_errors, latencies = 0, 0, 0, []
    statuses: dict[int, int] = {}
    pool = [httpx.AsyncClient(timeout=30, verify=False) for _ in range(clients)]
    await asyncio.gather(*(c.get(urls[0]) for c in pool))  # warm: connect once

    async def client(i: int, c: httpx.AsyncClient, stop_at: float):
        nonlocal done, errors, server_errors
        n = i
        while time.perf_counter() < stop_at:
            url = urls[n % len(urls)]
            n += 1
            t = time.perf_counter()
            try:
                r = await c.get(url)
            except httpx.HTTPError:
                errors += 1
                continue
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code >= 500:
                server_errors += 1
            if r.is_success:
                done += 1
                latencies.append(time.perf_counter() - t)
            else:
                errors += 1

    start = time.perf_counter()
    await asyncio.gather(*(client(i, c, start + duration) for i, c in enumerate(pool)))
    elapsed = time.perf_counter() - start
    await asyncio.gather(*(c.aclose() for c in pool))
    latencies.sort()
    return {"rps": done / elapsed, "requests": done, "errors": errors, "server_errors": server_errors,
            "statuses": statuses,
            "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
            "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else None}


async def sse_events(client: httpx.AsyncClient, url: str, headers: dict | None = None):
    """(event, data) of each event of one Server-Sent Events connection, as they arrive (comments skipped)."""
    async with client.stream("GET", url, headers=headers) as response:
        response.raise_for_status()
        event, data = None, None
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
            elif line == "":
                if event is not None:
                    yield event, data
                event, data = None, None


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MiB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def sse_latency(base: str, redis_url: str, root: Path, clients: int, records: int, rate: float) -> dict:
    from MetricsLogger import MetricsLogger

    url = f"{base}/api/experiments/{EXP}/stream"
    latencies: list[float] = []
    received = [0] * clients
    ready = asyncio.Event()
    connected = 0
    errors = 0

    async def client(i: int):
        nonlocal connected, errors
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=None), verify=False) as c:
                subscribed = False
                async for event, data in sse_events(c, url):
                    if event == "heartbeat" and not subscribed:  # the subscription is in place
                        subscribed = True
                        connected += 1
                        if connected == clients:
                            ready.set()
                    elif event == "metrics":
                        latencies.append(time.time() - json.loads(data)["timestamp"])
                        received[i] += 1
                        if received[i] >= records:
                            return
        except httpx.HTTPError:
            errors += 1

    tasks = [asyncio.create_task(client(i)) for i in range(clients)]
    await asyncio.wait_for(ready.wait(), 60)
    logger = MetricsLogger(root / EXP, redis_url=redis_url)

    def write():
        for step in range(records):
            logger.log_metrics({"Losses/Total": 1.0, "bench": step}, 10**6 + step)
            time.sleep(1 / rate)
        logger.close()

    await asyncio.to_thread(write)
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    except TimeoutError:
        pass
    missing = sum(records - r for r in received)
    latencies.sort()
    return {"clients": clients, "records": records, "deliveries": len(latencies), "missing": missing,
            "errors": errors, "p50_ms": 1000 * statistics.median(latencies) if latencies else None,
            "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else None,
            "max_ms": 1000 * latencies[-1] if latencies else None}


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--sse-clients", type=int, default=100)
    p.add_argument("--records", type=int, default=50_000)
    p.add_argument("--sse-records", type=int, default=200)
    p.add_argument("--sse-rate", type=float, default=50.0, help="metric records written per second")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis() as redis_server:
        root = Path(tmp) / "experiments"
        write_experiment(root, args.records)
        write_jobs(redis_server.url, 50)
        dashboard = DashboardProcess(root, redis_server.url, log_level="warning")
        ref_port, reference = free_port(), None
        try:
            dashboard.start()
            reference = subprocess.Popen([sys.executable, "-c", REFERENCE_APP, str(ref_port)], cwd=ROOT)
            base, ref = dashboard.url, f"http://127.0.0.1:{ref_port}"
            wait_up(ref + "/const")
            metrics_url = f"{base}/api/experiments/{EXP}/metrics?maxPoints=1000"
            first = httpx.get(metrics_url, timeout=60).json()  # warm: parse the 50k records once
            assert first["originalCount"] == args.records, first["originalCount"]
            results: dict[str, dict[str, Any]] = {
                "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()}}
            for name, url in [("reference GET /const (trivial FastAPI)", ref + "/const"),
                              ("GET /api/jobs (50 jobs)", base + "/api/jobs"),
                              ("GET /api/experiments/{id}/metrics?maxPoints=1000", metrics_url)]:
                results[name] = asyncio.run(load(url, args.clients, args.duration))
            results["sse"] = asyncio.run(sse_latency(base, redis_server.url, root, args.sse_clients,
                                                     args.sse_records, args.sse_rate))
        finally:
            dashboard.close()
            if reference is not None:
                reference.terminate()
                try:
                    reference.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    reference.kill()

    ref_rps = results["reference GET /const (trivial FastAPI)"]["rps"]
    print(f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
          f"Python {results['machine']['python']}")
    print(f"{'endpoint':52s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>6s} {'vs ref':>7s}")
    for name, r in results.items():
        if name in ("machine", "sse"):
            continue
        print(f"{name:52s} {r['rps']:8.0f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} {r['errors']:6d} "
              f"{r['rps'] / ref_rps:7.2f}")
    s = results["sse"]
    print(f"SSE fan-out: {s['clients']} clients x {s['records']} records at {args.sse_rate:g}/s -> "
          f"{s['deliveries']} deliveries, p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, "
          f"max {s['max_ms']:.1f} ms, missing {s['missing']}, errors {s['errors']}")
    ok = s["p99_ms"] is not None and s["p99_ms"] < 250 and s["missing"] == 0 and s["errors"] == 0 and all(
        r["errors"] == 0 for k, r in results.items() if k not in ("machine", "sse"))
    print("targets (p99 < 250 ms, zero errors):", "met" if ok else "NOT met")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
