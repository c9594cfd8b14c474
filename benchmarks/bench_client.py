"""Web client: time to first paint of the loss chart for a 200 000-step run, side by side with a 1 000-step run.

    python benchmarks/bench_client.py [--steps 200000] [--repeats 3] [--json PATH]

One real dashboard (real Redis) serves both runs; headless Debian Chromium opens each run's chart view in a fresh
page and reads the client's `tidal:chart-painted` performance mark (ms from navigation start to the chart's first
full paint). The server downsamples each series to about the chart's width (min/max buckets, last point kept), so the
long run should cost about what the short one does. "cold" is the first load after the server started (it reads and
parses the whole metrics file); "warm" is the median of the following loads (the server caches the downsampled body
per file version).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

from redis_launcher import EmbeddedRedis
from tests.browser import browser_unavailable, chromium, write_long_experiment
from tests.support import DashboardServer, dashboard_settings

ROOT = Path(__file__).resolve().parents[1]

LONG = "20260104-120000-commit_nogit-config_0123456789"
SHORT = "20260105-120000-commit_nogit-config_0123456789"
TARGET_RATIO = 1.5  # downsampling to the chart's width: a 200k-step run paints about as fast as a 1k-step one


def first_paint_ms(browser, url: str, exp_id: str) -> tuple[float, int]:
    """(ms from navigation start to the chart's first paint, points plotted) for one fresh page load."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        page.goto(f"{url}/#/exp/{exp_id}")
        page.wait_for_function("performance.getEntriesByName('tidal:chart-painted').length > 0", timeout=60_000)
        ms = page.evaluate("performance.getEntriesByName('tidal:chart-painted')[0].startTime")
        points = int(page.get_attribute('[data-testid="chart"][data-key="Losses/Total"]', "data-points"))
        return ms, points
    finally:
        page.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3, help="warm loads per run after the cold one")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "bench_client.json")
    args = parser.parse_args(argv)
    reason = browser_unavailable()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="tidal-bench-client-") as tmp:
        root = Path(tmp) / "experiments"
        write_long_experiment(root, LONG, args.steps)
        write_long_experiment(root, SHORT, 1000)
        redis = EmbeddedRedis().start()
        try:
            with DashboardServer(dashboard_settings(root, redis.url)) as server, chromium() as browser:
                results = {}
                for name, exp_id in (("long", LONG), ("short", SHORT)):
                    runs = [first_paint_ms(browser, server.url, exp_id) for _ in range(1 + args.repeats)]
                    results[name] = {"cold_ms": runs[0][0], "warm_ms": statistics.median(r[0] for r in runs[1:]),
                                     "points_plotted": runs[-1][1]}
        finally:
            redis.stop()
    long, short = results["long"], results["short"]
    ratio = long["warm_ms"] / short["warm_ms"]
    print(f"{'run':>18} | {'cold first paint':>16} | {'warm first paint':>16} | points plotted")
    for name, steps in (("long", args.steps), ("short", 1000)):
        r = results[name]
        print(f"{steps:>12,} steps | {r['cold_ms']:>13.0f} ms | {r['warm_ms']:>13.0f} ms | {r['points_plotted']:,}")
    print(f"warm first paint, {args.steps:,} steps vs 1,000 steps: {ratio:.2f}x (target: <= {TARGET_RATIO}x)")
    summary = {"steps": args.steps, "long": long, "short": short, "ratio_warm": ratio, "target_ratio": TARGET_RATIO,
               "machine": platform.processor() or platform.machine()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
