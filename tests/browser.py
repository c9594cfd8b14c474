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


# ---------------------------------------------------------------------------------------------- experiments to draw
def write_rl_experiment(root, experiment_id: str, source: str, iterations: int = 40):
    """An RL run: metadata, RL metric records through the real MetricsLogger, a final checkpoint file and an
    ablation result in the shape `Ablation.run_ablation_study` writes."""
    exp_dir = Path(root) / experiment_id
    exp_dir.mkdir(parents=True)
    (exp_dir / "metadata.json").write_text(json.dumps({"type": "rl", "created_at": time.time(),
                                                       "source_experiment": source}))
    logger = MetricsLogger(exp_dir, redis_url="")
    for it in range(1, iterations + 1):
        logger.log_rl_metrics({"episode_rewards": 1.0 + it / 100, "policy_loss": -0.01, "value_loss": 0.1 / it,
                               "entropy": -0.1, "entropy_coef": 0.01, "gate_modulation": 0.5 - it / 200,
                               "explained_variance": it / iterations, "reward_perplexity": -0.6,
                               "reward_diversity": 0.6, "reward_sampling": 0.6, "reward_repetition": 0.0,
                               "reward_coherence": 0.3}, it * 1024)
    logger.finalize("completed")
    (exp_dir / "rl_checkpoint_final.pth").write_bytes(b"not loaded by these tests")

    def policy(mean, m=None):
        stats = {"mean": mean, "std": 0.02, "ci_low": mean - 0.01, "ci_high": mean + 0.01}
        return {"description": "a policy", "constant_m": m, "episodes": 32, "generated_tokens": 1200,
                "mean_length": 40.0, "terminated_fraction": 0.2, "reward": stats,
                "components": {c: stats for c in ("perplexity", "diversity", "sampling", "repetition", "coherence")}}

    (exp_dir / "ablation_results.json").write_text(json.dumps({
        "config": {"seeds": [0], "num_prompts": 32}, "best_constant_m": 0.4,
        "policies": {"random": policy(0.012), "fixed_0.5": policy(0.080, 0.5), "best_constant": policy(0.084, 0.4),
                     "learned_deterministic": policy(0.077)}}))


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
