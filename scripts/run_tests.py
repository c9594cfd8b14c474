"""Run every unittest suite (infrastructure `tests/` and model `plugins/tidal/tests/`) and print one summary line.

    python scripts/run_tests.py                       # `make test`: everything
    TIDAL_FAST=1 python scripts/run_tests.py          # `make test-fast`: skips the tests marked @slow (core/testing.py)
    python scripts/run_tests.py --timings FILE.md     # also write every test's wall time, slowest first

Each suite is discovered exactly as the seed's commands do (`python -m unittest discover -s DIR -v`, here through
`python -c` from the project root so sys.path is the same), in its own process so one suite's global state cannot leak
into the other; its result class also records each test's wall time. Exit status is non-zero if any test failed.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITES = ["plugins/tidal/tests", "tests"]
CHILD = "import sys; from core.testing import run_discovery_with_timings; run_discovery_with_timings(*sys.argv[1:])"
SLOW_REASON = "slow: "  # the skip reason of core.testing.slow starts with it


def run_suite(start_dir: str) -> tuple[int, int, int, int, list[dict]]:
    """Returns (ran, failures+errors, skipped, exit code, per-test timings) for one suite, streaming its output."""
    with tempfile.TemporaryDirectory() as tmp:
        timings_path = Path(tmp) / "timings.json"
        proc = subprocess.Popen([sys.executable, "-c", CHILD, start_dir, str(timings_path)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        ran = failed = skipped = 0
        assert proc.stdout is not None  # stdout=PIPE
        for line in proc.stdout:
            sys.stdout.write(line)
            if m := re.match(r"Ran (\d+) tests? in", line):
                ran = int(m.group(1))
            if line.startswith(("FAILED", "OK")):
                failed += sum(int(n) for n in re.findall(r"(?:failures|errors)=(\d+)", line))
                skipped += sum(int(n) for n in re.findall(r"skipped=(\d+)", line))
        code = proc.wait()
        timings = json.loads(timings_path.read_text()) if timings_path.is_file() else []
    if code != 0 and failed == 0:
        failed = 1  # the suite crashed before reporting
    return ran, failed, skipped, code, timings


def timings_table(timings: list[dict], top: int | None = None) -> str:
    """Markdown: the slowest tests first; `setup` is the wall time before the test that is not its own (for the first
    test of a class: the class's setUpClass)."""
    rows = sorted(timings, key=lambda t: t["seconds"] + t["gap_s"], reverse=True)[:top]
    lines = ["| # | test | time (s) | setup before it (s) | outcome |", "|---|---|---|---|---|"]
    for i, t in enumerate(rows, 1):
        outcome = t["outcome"] + (f" ({t['reason']})" if t["reason"] else "")
        lines.append(f"| {i} | `{t['id']}` | {t['seconds']:.2f} | {t['gap_s']:.2f} | {outcome} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timings", type=Path, help="write every test's wall time (markdown, slowest first) here")
    args = parser.parse_args()
    fast = os.environ.get("TIDAL_FAST") == "1"
    start = time.monotonic()
    totals = [0, 0, 0]
    timings: list[dict] = []
    worst = 0
    for suite in SUITES:
        print(f"\n=== {suite} ===", flush=True)
        ran, failed, skipped, code, suite_timings = run_suite(suite)
        totals[0] += ran
        totals[1] += failed
        totals[2] += skipped
        timings += suite_timings
        worst = worst or code
    ran, failed, skipped = totals
    elapsed = time.monotonic() - start
    slow_skipped = sum(t["outcome"] == "skipped" and t["reason"].startswith(SLOW_REASON) for t in timings)
    if args.timings:
        args.timings.write_text(f"# Per-test wall time ({ran} tests, {elapsed:.0f} s, TIDAL_FAST={int(fast)})\n\n"
                                + timings_table(timings))
    ran_timings = [t for t in timings if t["outcome"] != "skipped"]
    if ran_timings:
        print("\nslowest:")
        for t in sorted(ran_timings, key=lambda t: t["seconds"] + t["gap_s"], reverse=True)[:5]:
            print(f"  {t['seconds'] + t['gap_s']:6.2f} s  {t['id']}")
    print(f"\n({elapsed:.0f} s{', TIDAL_FAST=1' if fast else ''})")
    note = f" ({slow_skipped} of them @slow: make test-fast skips them)" if slow_skipped else ""
    print(f"tests: {ran - failed - skipped} passed, {failed} failed, {skipped} skipped{note}")
    return 1 if worst or failed or ran == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
