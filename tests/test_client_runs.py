"""The researcher's tracking features in a real browser (Debian Chromium through Playwright) against a real dashboard
on a real Redis: a run named and tagged from its page keeps its name (metadata.json) and is found by the sidebar's
search; the runs table sorts by any column; the config diff of two runs shows the key that changed; the charts switch
their x axis to time, draw perplexity on a log scale and show the run's system samples; the Ablation tab draws the
held-out study's frontier and explains its columns, and says to rerun an old-format study.
"""
from __future__ import annotations

import json
import unittest

from core.testing import slow
from MetricsLogger import MetricsLogger
from tests.browser import BrowserTestCase, browser_unavailable, study_results, write_rl_experiment
from tests.support import DASHBOARD_TOKEN, write_tiny_experiment

SMALL = "20260101-120000-commit_nogit-config_0123456789"
LARGE = "20260102-120000-commit_nogit-config_9876543210"
STUDY = "20260103-120000-commit_nogit-config_0123456789-rl_abcdef0123"
OLD = "20260104-120000-commit_nogit-config_0123456789-rl_abcdef0123"


@slow
@unittest.skipIf(browser_unavailable(), browser_unavailable() or "")
class ClientRunsTest(BrowserTestCase):
    @classmethod
    def populate(cls, root):
        for exp_id, batch, loss in ((SMALL, 8, 2.0), (LARGE, 16, 1.0)):
            exp_dir = write_tiny_experiment(root, exp_id, steps=0, status=None)
            (exp_dir / "config.yaml").write_text(f"EMBED_DIM: 32\nBATCH_SIZE: {batch}\n")
            logger = MetricsLogger(exp_dir, redis_url="", system_interval_s=0)
            for step in range(20):
                logger.log_metrics({"Losses/Total": loss + 1 / (step + 1), "Perplexity": 100.0 / (step + 1)}, step)
            logger.finalize("completed")
        write_rl_experiment(root, STUDY, source=SMALL)
        write_rl_experiment(root, OLD, source=SMALL, ablation="old")

    # ------------------------------------------------------------------------------------------------ names and tags
    def test_a_name_tags_and_notes_set_on_the_page_persist_and_the_sidebar_finds_the_run_by_tag(self):
        from playwright.sync_api import expect

        self.open(f"#/exp/{LARGE}")
        self.page.click("#run-edit")
        self.page.fill("#run-name-input", "batch sixteen")
        self.page.fill("#run-tags-input", "sweep-batch, baseline")
        self.page.fill("#run-notes-input", "twice the batch")
        self.page.click("#run-info-save")
        self.page.locator("dialog#token-dialog").wait_for(state="visible")
        self.page.fill("#token-input", DASHBOARD_TOKEN)
        self.page.click("#token-save")
        expect(self.page.locator('[data-testid="run-name"]')).to_have_text("batch sixteen")
        meta = json.loads((self.root / LARGE / "metadata.json").read_text())
        self.assertEqual((meta["name"], meta["tags"], meta["notes"]),
                         ("batch sixteen", ["sweep-batch", "baseline"], "twice the batch"))
        self.page.reload()
        expect(self.page.locator('[data-testid="run-name"]')).to_have_text("batch sixteen")
        expect(self.page.locator('[data-testid="run-tag"]')).to_have_text(["sweep-batch", "baseline"])
        item = self.page.locator(f'[data-testid="experiment-item"][data-id="{LARGE}"]')
        expect(item.locator(".exp-name")).to_have_text("batch sixteen")
        self.page.fill("#experiment-search", "sweep-batch")
        expect(self.page.locator('[data-testid="experiment-item"]')).to_have_count(1)
        expect(item).to_have_count(1)
        self.page.fill("#experiment-search", "")
        self.page.select_option("#experiment-type-filter", "rl")
        expect(self.page.locator('[data-testid="experiment-item"]')).to_have_count(2)
        self.assert_no_console_errors()

    # ------------------------------------------------------------------------------------------------ runs table
    def row_ids(self) -> list[str]:
        return self.page.locator('[data-testid="run-row"]').evaluate_all("rows => rows.map(r => r.dataset.id)")

    def test_the_runs_table_sorts_by_a_hyperparameter_and_by_a_final_metric(self):
        from playwright.sync_api import expect

        self.open("#/runs")
        header = self.page.locator('[data-testid="run-col"][data-key="param:BATCH_SIZE"]')
        header.click()
        expect(header).to_have_attribute("aria-sort", "ascending")
        lm_rows = [i for i in self.row_ids() if i in (SMALL, LARGE)]
        self.assertEqual(lm_rows, [SMALL, LARGE])                                # 8 before 16
        header.click()
        expect(header).to_have_attribute("aria-sort", "descending")
        self.assertEqual(self.row_ids()[:2], [LARGE, SMALL])                     # runs without the key stay last
        loss = self.page.locator('[data-testid="run-col"][data-key="final:Losses/Total"]')
        loss.click()
        self.assertEqual(self.row_ids()[:2], [LARGE, SMALL])                     # final loss 1.05 before 2.05
        row = self.page.locator(f'[data-testid="run-row"][data-id="{LARGE}"]')
        expect(row).to_contain_text("16")
        self.assert_no_console_errors()

    def test_the_config_diff_of_two_runs_shows_the_changed_key(self):
        from playwright.sync_api import expect

        self.open("#/runs")
        for exp_id in (SMALL, LARGE):
            self.page.locator(f'[data-testid="run-row"][data-id="{exp_id}"] input.run-select').check()
        self.page.click("#runs-diff")
        diff = self.page.locator('[data-testid="config-diff"] tr[data-key="BATCH_SIZE"]')
        expect(diff).to_contain_text("8")
        expect(diff).to_contain_text("16")
        expect(self.page.locator('[data-testid="config-diff"] tr[data-key="EMBED_DIM"]')).to_have_count(0)
        self.assertIn("diff=", self.page.evaluate("location.hash"))
        self.assert_no_console_errors()

    # ------------------------------------------------------------------------------------------------ charts
    def test_x_axis_by_time_perplexity_on_log_scale_and_system_metrics(self):
        from playwright.sync_api import expect

        self.open(f"#/exp/{SMALL}")
        loss = self.chart("Losses/Total")
        expect(loss).to_have_attribute("data-last-x", "19")
        expect(self.chart("Perplexity")).to_have_attribute("data-log", "true")
        expect(loss).to_have_attribute("data-log", "false")
        self.chart("Perplexity").locator('button[data-action="log"]').click()
        expect(self.chart("Perplexity")).to_have_attribute("data-log", "false")
        system = self.chart("System/CPU %")
        expect(system).to_be_visible()
        self.assertGreaterEqual(int(system.get_attribute("data-points")), 1)
        self.page.select_option("#x-axis", "wall")
        expect(loss).to_have_attribute("data-x-label", "wall-clock time")
        self.assertGreater(float(loss.get_attribute("data-last-x")), 1.7e9)      # epoch seconds
        self.page.select_option("#x-axis", "relative")
        expect(loss).to_have_attribute("data-x-label", "time since start (s)")
        self.assertLess(float(loss.get_attribute("data-last-x")), 600)
        self.page.select_option("#x-axis", "step")
        expect(loss).to_have_attribute("data-last-x", "19")
        self.assert_no_console_errors()

    # ------------------------------------------------------------------------------------------------ ablation
    def test_the_ablation_tab_draws_the_frontier_and_explains_every_column(self):
        from playwright.sync_api import expect

        results = study_results()
        self.open(f"#/exp/{STUDY}?tab=ablation")
        plot = self.page.locator('[data-testid="frontier-plot"]')
        expect(plot.locator("polyline.family-line[data-family]")).to_have_count(len(results["frontier"]))
        expect(plot.locator('[data-testid="learned-point"]')).to_have_count(2)
        expect(plot.locator('[data-testid="oracle-point"]')).to_have_count(1)
        expect(plot.locator('[data-testid="human-line"]')).to_have_count(1)
        expect(self.page.locator('[data-testid="ablation-verdict"]')).to_contain_text("no significant difference")
        points = sum(len(f["test"]) for f in results["families"].values()) + 4
        expect(self.page.locator('[data-testid="ablation-table"] tbody tr')).to_have_count(points)
        legend = self.page.locator('[data-testid="ablation-legend"]')
        for abbreviation in ("prec-4", "dist-2", "self-BLEU", "rep-4", "EOT", "train R"):
            expect(legend.locator("dt", has_text=abbreviation).first).to_be_visible()
        expect(legend).to_contain_text("nats/token")
        self.assert_no_console_errors()

    def test_old_format_ablation_results_say_to_rerun_the_study(self):
        from playwright.sync_api import expect

        self.open(f"#/exp/{OLD}?tab=ablation")
        expect(self.page.locator('[data-testid="old-format-note"]')).to_contain_text("rerun the study")
        self.assert_no_console_errors()


if __name__ == "__main__":
    unittest.main()
