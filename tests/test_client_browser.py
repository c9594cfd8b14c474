"""The web client in a real browser (Debian Chromium through Playwright) against a real dashboard on a real Redis.

What a researcher does with it: the page loads clean on every view; a metric the trainer logs shows up on the chart
within 2 s (SSE, no polling); a job started from the UI with the token runs, streams its logs, and stops after a
confirmation; generation shows the tokens coloured by their modulation; a wrong token gets a clear message; a
200 000-step run is drawn from a downsampled series that still ends at the last step.
"""
from __future__ import annotations

import unittest
from pathlib import Path

from core.testing import slow
from MetricsLogger import MetricsLogger
from tests.browser import BrowserTestCase, browser_unavailable, write_long_experiment, write_rl_experiment
from tests.support import DASHBOARD_TOKEN, fake_plugin, write_fake_config, write_tiny_experiment

LM = "20260101-120000-commit_nogit-config_0123456789"
LIVE = "20260102-120000-commit_nogit-config_0123456789"
RL = "20260103-120000-commit_nogit-config_0123456789-rl_abcdef0123"
LONG = "20260104-120000-commit_nogit-config_0123456789"
LONG_STEPS = 200_000


@slow
@unittest.skipIf(browser_unavailable(), browser_unavailable() or "")
class ClientBrowserTest(BrowserTestCase):
    @classmethod
    def populate(cls, root):
        write_tiny_experiment(root, LM, steps=30, checkpoint=True)
        write_tiny_experiment(root, LIVE, steps=50, status="training")
        write_rl_experiment(root, RL, source=LM)
        write_long_experiment(root, LONG, LONG_STEPS)
        plugin = root.parent / "plugin"  # a stand-in trainer phase: the job test needs a job that runs, not a model
        cls.settings_overrides = {"manifest_path": fake_plugin(plugin), "worker_env": {"PYTHONPATH": str(plugin)}}
        write_fake_config(plugin, "fake.yaml", STEPS=100_000, SLEEP=0.2)

    def select_option_containing(self, select: str, text: str):
        """Pick the first option of `select` whose value contains `text`, once the app has filled it in."""
        value = self.page.wait_for_function(
            "([sel, text]) => [...document.querySelectorAll(sel + ' option')].map(o => o.value)"
            ".find(v => v.includes(text))", arg=[select, text]).json_value()
        self.page.select_option(select, value)

    def enter_token(self, token: str):
        dialog = self.page.locator("dialog#token-dialog")
        dialog.wait_for(state="visible")
        self.page.fill("#token-input", token)
        self.page.click("#token-save")

    # ------------------------------------------------------------------------------------------------ views
    def test_every_view_loads_without_console_errors(self):
        from playwright.sync_api import expect

        self.open()
        for exp_id in (LM, LIVE, RL, LONG):  # other tests may add runs (a job makes one): look for these four
            expect(self.page.locator(f'[data-testid="experiment-item"][data-id="{exp_id}"]')).to_have_count(1)
        expect(self.page.locator(f'[data-testid="experiment-item"][data-id="{RL}"] .badge-type')).to_have_text("RL")
        expect(self.page.locator(f'[data-testid="experiment-item"][data-id="{LM}"] .badge-status')).to_have_text(
            "completed")
        for route, ready in [(f"#/exp/{LM}", '[data-testid="chart"][data-key="Losses/Total"][data-points]'),
                             (f"#/exp/{RL}", '[data-testid="chart"][data-key="episode_rewards"][data-points]'),
                             (f"#/exp/{RL}?tab=ablation", '[data-testid="frontier-plot"] polyline'),
                             (f"#/exp/{RL}?tab=checkpoints", "text=rl_checkpoint_final.pth"),
                             (f"#/exp/{LM}?tab=config", "text=EMBED_DIM"),
                             ("#/jobs", "#job-form"), ("#/generate", "#gen-run")]:
            with self.subTest(route=route):
                self.open(route)
                self.page.locator(ready).first.wait_for(state="attached")
                if route == f"#/exp/{RL}":
                    expect(self.chart("episode_rewards")).to_have_attribute("data-last-x", str(40 * 1024))
                    # one chart of the reward components the manifest declares (metrics.rl.rewardComponents)
                    expect(self.chart("reward_quality")).to_have_attribute("data-last-x", str(40 * 1024))
        self.assert_no_console_errors()

    def test_an_empty_experiments_directory_is_a_clean_page_too(self):
        # the same page against a server whose directory has nothing yet: a welcome panel, no errors
        import tempfile

        from redis_launcher import EmbeddedRedis
        from tests.support import DashboardServer, dashboard_settings

        redis = EmbeddedRedis().start()
        self.addCleanup(redis.stop)
        with tempfile.TemporaryDirectory() as empty, \
                DashboardServer(dashboard_settings(Path(empty), redis.url)) as server:
            self.page.goto(server.url + "/")
            self.page.locator("#gen-run, [data-testid='error'], main").first.wait_for(state="attached")
            self.page.goto(server.url + "/#/generate")
            self.page.locator("#gen-run").wait_for(state="attached")
            self.assertEqual(self.page.locator('[data-testid="experiment-item"]').count(), 0)
            self.assert_no_console_errors()
            # leave before the server stops: its shutdown cuts the page's live stream, which Chromium logs as an error
            self.page.goto("about:blank")

    # ------------------------------------------------------------------------------------------------ live charts
    def test_a_metric_logged_by_the_trainer_reaches_the_chart_within_two_seconds(self):
        from playwright.sync_api import expect

        self.open(f"#/exp/{LIVE}")
        chart = self.chart("Losses/Total")
        expect(chart).to_have_attribute("data-last-x", "49")
        logger = MetricsLogger(self.root / LIVE, redis_url=self.redis.url)
        self.addCleanup(logger.close)
        logger.log_metrics({"Losses/Total": 1.2345, "Learning Rate": 1e-3}, 50)
        expect(chart).to_have_attribute("data-last-x", "50", timeout=2000)
        expect(self.page.locator('[data-testid="metric-card"][data-key="Losses/Total"] .value')).to_contain_text(
            "1.23")
        self.assert_no_console_errors()

    def test_a_200k_step_run_is_drawn_from_a_bounded_series_ending_at_the_last_step(self):
        from playwright.sync_api import expect

        self.open(f"#/exp/{LONG}")
        chart = self.chart("Losses/Total")
        expect(chart).to_have_attribute("data-last-x", str(LONG_STEPS - 1), timeout=30_000)
        points = int(chart.get_attribute("data-points"))
        self.assertLessEqual(points, 20_000)
        self.assertGreater(points, 100)
        self.assertGreater(self.page.evaluate("performance.getEntriesByName('tidal:chart-painted').length"), 0)

    def test_smoothing_and_log_scale_change_what_is_plotted_and_csv_exports_it(self):
        self.open(f"#/exp/{LM}")
        self.page.wait_for_selector('[data-testid="chart"][data-key="Losses/Total"][data-points]')
        chart = self.chart("Losses/Total")
        self.page.locator("#smoothing").evaluate(
            "el => { el.value = '0.9'; el.dispatchEvent(new Event('input', {bubbles: true})); }")
        self.page.check("#log-scale")
        with self.page.expect_download() as download:
            chart.locator('button[data-action="csv"]').click()
        rows = [r.split(",") for r in Path(download.value.path()).read_text().strip().splitlines()]
        self.assertEqual(len(rows), 1 + 30)  # header + every plotted point of the 30-step run
        self.assertIn("step", rows[0][0].lower())
        self.assertGreaterEqual(len(rows[0]), 3)  # x, the raw series and its smoothed line, as drawn
        raw, smoothed = float(rows[-1][1]), float(rows[-1][2])
        self.assertAlmostEqual(raw, 5.0 - 29 / 30, places=4)
        self.assertGreater(smoothed, raw)  # a debiased EMA of a falling series lags above it
        with self.page.expect_download() as download:
            chart.locator('button[data-action="png"]').click()
        self.assertTrue(Path(download.value.path()).read_bytes().startswith(b"\x89PNG"))
        self.assert_no_console_errors()

    # ------------------------------------------------------------------------------------------------ jobs
    def test_a_job_started_from_the_ui_runs_streams_its_logs_and_stops_after_confirmation(self):
        from playwright.sync_api import expect

        self.open("#/jobs")
        self.page.select_option("#job-type", "fake-training")
        self.select_option_containing("#job-config", "fake.yaml")
        self.page.click("#job-start")
        self.enter_token(DASHBOARD_TOKEN)
        row = self.page.locator('[data-testid="job-row"]').first
        expect(row.locator(".job-status")).to_have_text("running", timeout=30_000)
        row.click()
        expect(self.page.locator("#log-tail .log-line").filter(has_text="step 3")).to_have_count(1, timeout=15_000)
        row.locator('button[data-action="stop"]').click()
        self.page.locator("dialog#confirm-dialog").wait_for(state="visible")
        self.page.click("#confirm-ok")
        expect(row.locator(".job-status")).to_have_text("cancelled", timeout=30_000)
        job_id = row.get_attribute("data-job-id")
        self.assertEqual(self.http.get(f"/api/jobs/{job_id}").json()["job"]["status"], "cancelled")
        self.assertEqual(self.page.evaluate("sessionStorage.getItem('tidal.token')"), DASHBOARD_TOKEN)
        self.assert_no_console_errors()

    def test_a_wrong_token_gets_a_clear_message_and_is_forgotten(self):
        from playwright.sync_api import expect

        jobs_before = len(self.http.get("/api/jobs").json()["jobs"])
        self.open("#/jobs")
        self.page.select_option("#job-type", "fake-training")
        self.select_option_containing("#job-config", "fake.yaml")
        self.page.click("#job-start")
        self.enter_token("not-the-token")
        expect(self.page.locator('[data-testid="error"]')).to_contain_text("401")
        self.assertIsNone(self.page.evaluate("sessionStorage.getItem('tidal.token')"))
        self.assertEqual(len(self.http.get("/api/jobs").json()["jobs"]), jobs_before)

    # ------------------------------------------------------------------------------------------------ generation
    def test_generation_colours_each_token_by_its_modulation(self):
        from playwright.sync_api import expect

        self.open("#/generate")
        self.select_option_containing("#gen-checkpoint", LM)
        self.page.select_option("#gen-mode", "fixed")
        self.page.fill("#gen-prompt", "Once upon a time")
        self.page.click("#gen-run")
        tokens = self.page.locator('[data-testid="gen-output"] span.tok')
        expect(tokens.first).to_be_visible(timeout=30_000)
        first = tokens.first
        self.assertGreater(tokens.count(), 0)
        self.assertRegex(first.get_attribute("data-m"), r"^\d(\.\d+)?$")
        background = first.evaluate("el => getComputedStyle(el).backgroundColor")
        self.assertNotIn(background, ("rgba(0, 0, 0, 0)", "transparent"))
        expect(self.page.locator('[data-testid="gen-stats"]')).to_contain_text("tokens")
        self.page.locator('[data-testid="gen-chart"] canvas').first.wait_for()
        self.assert_no_console_errors()


if __name__ == "__main__":
    unittest.main()
