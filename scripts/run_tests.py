"""Run every unittest suite (infrastructure `tests/` and model `plugins/tidal/tests/`) and print one summary line.

Each suite is discovered exactly as the seed's commands do (`python -m unittest discover -s DIR -v`), in its own
process so one suite's global state cannot leak into the other. Exit status is non-zero if any test failed.
"""
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITES = ["plugins/tidal/tests", "tests"]


def run_suite(start_dir: str) -> tuple[int, int, int, int]:
    """Returns (ran, failures+errors, skipped, exit code) for one suite, streaming its output."""
    proc = subprocess.Popen([sys.executable, "-m", "unittest", "discover", "-s", start_dir, "-v"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ran = failed = skipped = 0
    for line in proc.stdout:
        sys.stdout.write(line)
        if m := re.match(r"Ran (\d+) tests? in", line):
            ran = int(m.group(1))
        if line.startswith(("FAILED", "OK")):
            failed += sum(int(n) for n in re.findall(r"(?:failures|errors)=(\d+)", line))
            skipped += sum(int(n) for n in re.findall(r"skipped=(\d+)", line))
    code = proc.wait()
    if code != 0 and failed == 0:
        failed = 1  # the suite crashed before reporting
    return ran, failed, skipped, code


def main() -> int:
    start = time.monotonic()
    totals = [0, 0, 0]
    worst = 0
    for suite in SUITES:
        print(f"\n=== {suite} ===", flush=True)
        ran, failed, skipped, code = run_suite(suite)
        totals[0] += ran
        totals[1] += failed
        totals[2] += skipped
        worst = worst or code
    ran, failed, skipped = totals
    print(f"\n({time.monotonic() - start:.0f} s)")
    print(f"tests: {ran - failed - skipped} passed, {failed} failed, {skipped} skipped")
    return 1 if worst or failed or ran == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
