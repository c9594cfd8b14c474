"""Runs started from the command line, as a researcher sees them in a real browser (Debian Chromium via Playwright)
on a real dashboard and Redis.

With no configuration at all (REDIS_URL unset in the trainer's environment), a `Main.py` run started from a shell
while its page is open moves its chart within 2 s: the dashboard announces its Redis under the experiments directory
and the trainer's MetricsLogger finds it. A failed run's page says why it failed and shows the end of its log.
"""
from __future__ import annotations

import os
import signal
import subprocess
import unittest

import yaml

from core.io import read_jsonl
from core.testing import slow
from MetricsLogger import MetricsLogger
from tests.browser import BrowserTestCase, browser_unavailable
from tests.support import PROJECT_ROOT, PYTHON, tiny_config, wait_for

FAILED = "20260105-120000-commit_nogit-config_0123456789"
HUB_ERROR = "dataset 'x/y': the Hugging Face Hub is unreachable and it is not in the local cache"


@slow
@unittest.skipIf(browser_unavailable(), browser_unavailable() or "")
class LiveCliRunTest(BrowserTestCase):
    @classmethod
    def populate(cls, root):
        exp = root / FAILED
        exp.mkdir()
        (exp / "metadata.json").write_text('{"type": "lm"}')
        MetricsLogger(exp, redis_url="").finalize("failed", error=HUB_ERROR)
        (exp / "training.log").write_text("".join(f"INFO step {i}\n" for i in range(200)) + f"error: {HUB_ERROR}\n")

    def start_cli_run(self) -> subprocess.Popen:
        """`python -m plugins.tidal.Main` as typed in a shell: no REDIS_URL, only the experiments directory."""
        config = self.tmp / "tiny.yaml"
        # many epochs: the run is still training whenever the page looks (the test stops it)
        config.write_text(yaml.safe_dump(tiny_config(DATA_CACHE_DIR=str(self.tmp / "cache"), CHECKPOINT_INTERVAL=0,
                                                     NUM_EPOCHS=100)))
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        env.update(EXPERIMENTS_DIR=str(self.root), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.log = self.tmp / "cli-run.log"  # a file, not a pipe: nobody reads the trainer's output while it runs
        with open(self.log, "wb") as log:
            proc = subprocess.Popen([PYTHON, "-m", "plugins.tidal.Main", "--config", str(config), "--max-steps",
                                     "100000"], cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait()))
        return proc

    def test_a_run_started_from_the_cli_moves_its_chart_within_two_seconds(self):
        before = {p.name for p in self.root.iterdir()}
        proc = self.start_cli_run()

        def new_run():
            return next((p for p in self.root.iterdir() if p.name not in before and p.is_dir()), None)

        def history():
            return new_run() and read_jsonl(new_run() / "dashboard_metrics" / "metrics.jsonl")

        wait_for(lambda: proc.poll() is not None or history(), timeout=120, interval=0.1,
                 message="the CLI run's first metrics")
        self.assertIsNone(proc.poll(), self.log.read_text()[-3000:] if proc.poll() is not None else "")
        self.page.goto(f"{self.server.url}/#/exp/{new_run().name}")
        chart = self.page.locator('[data-testid="chart"][data-key="Losses/Total"][data-last-x]').first
        chart.wait_for(state="attached")
        first = int(chart.get_attribute("data-last-x"))
        # only the live stream moves a chart (no polling): the trainer must be publishing to the dashboard's Redis
        self.page.wait_for_function("([sel, x]) => Number(document.querySelector(sel)?.dataset.lastX) > x",
                                    arg=['[data-testid="chart"][data-key="Losses/Total"][data-last-x]', first],
                                    timeout=2000)
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(timeout=60), 143)
        self.assertEqual(self.errors.messages, [])

    def test_a_failed_run_shows_its_error_and_the_end_of_its_log(self):
        from playwright.sync_api import expect

        self.page.goto(f"{self.server.url}/#/exp/{FAILED}")
        expect(self.page.locator('[data-testid="run-error"]')).to_have_text(HUB_ERROR)
        tail = self.page.locator('[data-testid="run-log-tail"]')
        expect(tail).to_contain_text(f"error: {HUB_ERROR}")
        expect(tail).not_to_contain_text("INFO step 0\n")  # the tail, not the whole log
        self.assertEqual(self.errors.messages, [])


if __name__ == "__main__":
    unittest.main()
