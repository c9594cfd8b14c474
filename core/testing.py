"""Test helpers shared by every suite (`tests/` and `plugins/tidal/tests/`).

`slow` marks a test (or a whole TestCase) that `make test-fast` skips. A test is slow when it starts a real
process (a CLI, the worker, `python -m dashboard`, torchrun/DDP, a Ray head; a bare `python -c` import check is not),
drives a browser, starts a uvicorn server of its own for every test (a TestCase that shares one server across its
tests is not), or takes more than about 0.7 s on the 2-core development machine, alone or, for a whole class, its
tests together take seconds (`scripts/run_tests.py --timings FILE` measures every test). Marking a whole class skips
its setUpClass too. `make test` runs everything; `make test-fast` sets TIDAL_FAST=1 and scripts/run_tests.py
reports how many tests it skipped as slow.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import unittest
from pathlib import Path

FAST = os.environ.get("TIDAL_FAST") == "1"

slow = unittest.skipIf(FAST, "slow: make test-fast skips it")


def kill_process_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process started with start_new_session=True and everything it started, if still running."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)



class TimedTextTestResult(unittest.TextTestResult):
    """A TextTestResult that also records each test's wall time, outcome and skip reason (scripts/run_tests.py).

    `gap_s` is the wall time between the previous test's end and this test's start: for the first test of a class it
    holds the class's setUpClass (and the previous class's tearDownClass), so a class fixture's cost is not lost."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.timings: list[dict] = []
        self._last_end = time.perf_counter()
        self._start = 0.0
        self._outcome: tuple[str, str] = ("passed", "")

    def startTest(self, test):
        self._start = time.perf_counter()
        self._outcome = ("passed", "")
        super().startTest(test)

    def stopTest(self, test):
        super().stopTest(test)
        end = time.perf_counter()
        self.timings.append({"id": test.id(), "seconds": end - self._start, "gap_s": self._start - self._last_end,
                             "outcome": self._outcome[0], "reason": self._outcome[1]})
        self._last_end = end

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._outcome = ("skipped", reason)

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._outcome = ("failed", "")

    def addError(self, test, err):
        super().addError(test, err)
        self._outcome = ("error", "")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            self._outcome = ("failed", "")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._outcome = ("failed", "unexpected success")


def run_discovery_with_timings(start_dir: str, timings_path: str) -> None:
    """`python -m unittest discover -s START_DIR -v`, writing every test's timing to TIMINGS_PATH (JSON) at the end.

    Run it with `python -c` from the project root so sys.path is exactly what `python -m unittest` gives."""
    results: list[TimedTextTestResult] = []

    class Runner(unittest.TextTestRunner):
        resultclass = TimedTextTestResult

        def _makeResult(self):
            result = super()._makeResult()
            results.append(result)
            return result

    program = unittest.main(module=None, argv=["python -m unittest", "discover", "-s", start_dir, "-v"],
                            testRunner=Runner(verbosity=2), exit=False)
    Path(timings_path).write_text(json.dumps([t for r in results for t in r.timings]))
    sys.exit(not program.result.wasSuccessful())
