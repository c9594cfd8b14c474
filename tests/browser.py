"""Headless Debian Chromium driven by Playwright (never `playwright install`): one launcher for the browser tests,
`scripts/screenshots.py` and `benchmarks/bench_client.py`.

Chromium is told not to reach the network on its own (component updates, sync, background fetches): this machine has
no internet, and without these flags Chromium keeps retrying in the background.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

from MetricsLogger import MetricsLogger
from tests.support import LiveDashboardTestCase

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
                 "--disable-extensions", "--mute-audio"]


def chromium_path() -> str | None:
    """`$CHROMIUM` or the Debian package's binary; None when neither exists."""
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def browser_unavailable() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (make setup)"
    if chromium_path() is None:
        return "Chromium is not installed (make setup installs it with apt when run as root)"
    return None


@contextlib.contextmanager
def chromium():
    """A started Playwright with a headless Chromium (Playwright gives it a throwaway profile); yields the Browser."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


class ConsoleErrors:
    """Collects console errors and uncaught exceptions of a page (a clean page has none)."""

    def __init__(self, page):
        self.messages: list[str] = []
        page.on("console", lambda m: self.messages.append(f"console.{m.type}: {m.text}") if m.type == "error"
                else None)
        page.on("pageerror", lambda e: self.messages.append(f"uncaught: {e}"))


class BrowserTestCase(LiveDashboardTestCase):
    """A real dashboard (see LiveDashboardTestCase) and one headless Chromium per class; each test gets a fresh
    1400x900 page in `self.page` whose console errors are collected in `self.errors`."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls._browser_cm = chromium()
        cls.browser = cls._browser_cm.__enter__()

    @classmethod
    def tearDownClass(cls):
        cls._browser_cm.__exit__(None, None, None)
        super().tearDownClass()

    def setUp(self):
        self.context = self.browser.new_context(viewport={"width": 1400, "height": 900})
        self.addCleanup(self.context.close)
        self.page = self.context.new_page()
        self.page.set_default_timeout(15_000)
        self.errors = ConsoleErrors(self.page)

    def open(self, route: str = ""):
        self.page.goto(f"{self.server.url}/{route}")

    def chart(self, key: str):
        return self.page.locator(f'[data-testid="chart"][data-key="{key}"]').first

    def assert_no_console_errors(self):
        self.assertEqual(self.errors.messages, [])


# ---------------------------------------------------------------------------------------------- experiments to draw
def write_rl_experiment(root, experiment_id: str, source: str, iterations: int = 40, ablation: str = "study"):
    """An RL run: metadata, RL metric records through the real MetricsLogger, a final checkpoint file and an
    ablation result: the held-out study's (`study_results`), or with ablation="old" the earlier per-policy shape."""
    exp_dir = Path(root) / experiment_id
    exp_dir.mkdir(parents=True)
    (exp_dir / "metadata.json").write_text(json.dumps({"type": "rl", "created_at": time.time(),
                                                       "source_experiment": source}))
    logger = MetricsLogger(exp_dir, redis_url="")
    for it in range(1, iterations + 1):
        logger.log_rl_metrics({"episode_rewards": 1.0 + it / 100, "policy_loss": -0.01, "value_loss": 0.1 / it,
                               "entropy": -0.1, "entropy_coef": 0.01, "gate_modulation": 0.5 - it / 200,
                               "explained_variance": it / iterations, "reward_quality": -0.6,
                               "reward_repetition": 0.1, "reward_overlap": 0.3}, it * 1024)
    logger.finalize("completed")
    (exp_dir / "rl_checkpoint_final.pth").write_bytes(b"not loaded by these tests")

    def policy(mean, m=None):
        stats = {"mean": mean, "std": 0.02, "ci_low": mean - 0.01, "ci_high": mean + 0.01}
        return {"description": "a policy", "constant_m": m, "episodes": 32, "generated_tokens": 1200,
                "mean_length": 40.0, "terminated_fraction": 0.2, "reward": stats,
                "components": {c: stats for c in ("perplexity", "diversity", "sampling", "repetition", "coherence")}}

    results = study_results() if ablation == "study" else {
        "config": {"seeds": [0], "num_prompts": 32}, "best_constant_m": 0.4,
        "policies": {"random": policy(0.012), "fixed_0.5": policy(0.080, 0.5), "best_constant": policy(0.084, 0.4),
                     "learned_deterministic": policy(0.077)}}
    (exp_dir / "ablation_results.json").write_text(json.dumps(results))


def _study_point(name: str, family: str, params: dict, nll: float, diversity: float | None) -> dict:
    """One POINT of the held-out study's ablation_results.json: judge NLL and diversity with CIs, and the metrics."""
    return {"name": name, "family": family, "params": params, "judge_nll": nll,
            "judge_nll_ci": [round(nll - 0.03, 4), round(nll + 0.03, 4)], "diversity": diversity,
            "diversity_ci": None if diversity is None else [round(diversity - 0.01, 4), round(diversity + 0.01, 4)],
            "metrics": {"prec_4": 0.12, "distinct_1": 0.4, "distinct_2": diversity or 0.7, "distinct_3": 0.85,
                        "self_bleu": 0.3, "rep_4": 0.02, "length": 41.5, "eot_rate": 0.3,
                        "train_reward": None if family == "human" else 0.5}}


def study_results(learned_nll: float = 2.78) -> dict:
    """A realistic `ablation_results.json` of the held-out quality–diversity study (the shape the dashboard's
    Ablation tab and MCP `get_ablation` read): eight fixed-decoder families tuned on dev, a learned controller with
    one RL seed and its mean, the per-token oracle, the human continuations and the verdict."""
    grids: dict[str, list[tuple[str, float]]] = {
        "temperature": [("T", t) for t in (0.5, 0.7, 0.9, 1.0, 1.2)], "top_p": [("p", p) for p in (0.8, 0.9, 0.95)],
        "top_k": [("k", k) for k in (10, 40, 100)], "min_p": [("min_p", m) for m in (0.02, 0.05, 0.1, 0.2)],
        "mirostat": [("tau", t) for t in (2.0, 3.0, 4.0)], "edt": [("theta", t) for t in (0.5, 1.0)],
        "greedy": [("T", 0.0)], "constant_action": [("m", m) for m in (0.3, 0.5)]}
    families, frontier = {}, {}
    for f, (family, grid) in enumerate(grids.items()):
        points: dict[str, list[dict]] = {}
        for split, shift in (("test", 0.0), ("dev", 0.01)):
            points[split] = []
            for i, (param, value) in enumerate(grid):
                diversity = round(0.30 + 0.12 * i + 0.01 * f, 4) if family != "greedy" else 0.12
                nll = round(2.60 + 0.35 * max(diversity - 0.3, 0.0) ** 1.5 + 0.02 * f + shift, 4)
                points[split].append(_study_point(f"{family} {param}={value}", family, {param: value}, nll, diversity))
        families[family] = {"label": family.replace("_", " ") + " sweep", **points}
        frontier[family] = sorted([p["diversity"], p["judge_nll"]] for p in points["test"])
    learned = [_study_point("learned (seed 0)", "learned", {"seed": 0}, learned_nll, 0.62),
               _study_point("learned (mean over seeds)", "learned", {}, learned_nll, 0.62)]
    return {
        "protocol": {"primary_quality": "judge_nll", "primary_diversity": "set_distinct_2",
                     "quality_label": "held-out judge NLL (nats/token, lower is better)",
                     "diversity_label": "set distinct-2 over K samples per prompt", "test_prompts": 256,
                     "dev_prompts": 128, "train_prompts": 500, "samples_per_prompt": 3, "sampling_seeds": [0, 1, 2],
                     "rl_seeds": [0], "episode_length": 48, "bootstrap_samples": 1000, "ci_level": 0.95,
                     "protocol": "demo"},
        "families": families, "frontier": frontier, "learned": learned,
        "oracle": _study_point("oracle (per-token)", "oracle", {}, 2.55, 0.66),
        "human": _study_point("human continuation", "human", {}, 2.41, None),
        "verdict": {"verdict": "no significant difference", "gap": -0.012, "ci": [-0.041, 0.017],
                    "best_family": "min_p", "at_diversity": 0.62, "oracle_gap": 0.21, "oracle_ci": [0.17, 0.25],
                    "text": "The learned controller is not distinguishable from the min_p frontier at diversity 0.62 "
                            "(gap -0.012 nats/token, 95 % CI [-0.041, 0.017])."},
    }


def write_long_experiment(root, experiment_id: str, steps: int) -> None:
    """A finished LM run with `steps` records, written straight to metrics.jsonl (the MetricsLogger format) because
    logging 200 000 records one by one would dominate the test."""
    exp_dir = Path(root) / experiment_id
    (exp_dir / "dashboard_metrics").mkdir(parents=True)
    (exp_dir / "metadata.json").write_text(json.dumps({"type": "lm", "created_at": time.time() - 3600}))
    with open(exp_dir / "dashboard_metrics" / "metrics.jsonl", "w") as f:
        f.writelines(f'{{"step":{s},"timestamp":{1.7e9 + s},"Losses/Total":{5.0 / (1 + s / 1000):.6f},'
                     f'"Learning Rate":0.001}}\n' for s in range(steps))
    (exp_dir / "dashboard_metrics" / "status.json").write_text(json.dumps({"status": "completed"}))
