"""Regenerate the README's screenshots from a real demo run (after `make demo`).

    python scripts/screenshots.py [--experiments DIR] [--out docs/images]

Starts the dashboard on the experiments directory (a private port and token), opens it in headless Debian Chromium
and saves five pictures in docs/images:

- dashboard-training.png: the LM run's charts (the source of the newest RL run with an ablation);
- dashboard-rl-gating.png: that RL run's charts;
- ablation-frontier.png: that RL run's Ablation tab (the verdict, the quality–diversity frontier plot, the table of
  every evaluated decoder and its column legend);
- dashboard-runs.png: the runs table (#/runs) with the LM and the RL run ticked and their config diff shown;
- generation-output.png: a learned-controller sample (on the RL agent's own LM) next to plain temperature / top-k /
  top-p sampling of the same LM and seed, tokens coloured by the action m.
"""
from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

import httpx

from experiment_utils import experiments_root
from tests.browser import browser_unavailable, chromium
from tests.support import DashboardProcess

ROOT = Path(__file__).resolve().parents[1]

VIEWPORT = {"width": 1440, "height": 1000}


class Failure(Exception):
    """A readable reason the screenshots could not be made."""


def pick_runs(url: str) -> tuple[dict, dict]:
    """The newest RL run with an ablation, and the LM run it came from."""
    experiments = httpx.get(url + "/api/experiments", timeout=30).json()["experiments"]
    rl = max((e for e in experiments if e["type"] == "rl" and e["hasAblation"] and e["checkpoints"]),
             key=lambda e: e["createdAt"] or 0, default=None)
    if rl is None:
        raise Failure("no finished RL run with an ablation here: run `make demo` first")
    lm = next((e for e in experiments if e["id"] == rl["sourceExperiment"]), None)
    if lm is None:
        raise Failure(f"the RL run's source LM experiment {rl['sourceExperiment']} is not in this directory")
    return lm, rl


def shoot(url: str, lm: dict, rl: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    saved = []
    with chromium() as browser:
        page = browser.new_page(viewport=VIEWPORT, color_scheme="light")
        page.set_default_timeout(60_000)

        def save(name: str, max_height: int = 2400):
            # the page scrolls inside <main>: grow the viewport to its content (up to max_height) so the picture holds
            # the whole view
            height = page.evaluate("document.querySelector('header').offsetHeight"
                                   " + document.querySelector('main').scrollHeight")
            height = min(max(height, VIEWPORT["height"]), max_height)
            page.set_viewport_size({"width": VIEWPORT["width"], "height": height})
            page.wait_for_timeout(500)  # charts follow their cards' new size
            page.screenshot(path=out / name)
            page.set_viewport_size(VIEWPORT)
            saved.append(out / name)

        def charts_of(exp_id: str, key: str, name: str):
            page.goto(f"{url}/#/exp/{exp_id}")
            page.wait_for_selector(f'[data-testid="chart"][data-key="{key}"][data-points]')
            page.wait_for_timeout(500)  # let every chart of the view finish its first paint
            save(name)

        charts_of(lm["id"], "Losses/Total", "dashboard-training.png")
        charts_of(rl["id"], "episode_rewards", "dashboard-rl-gating.png")

        page.goto(f"{url}/#/exp/{rl['id']}?tab=ablation")
        page.wait_for_selector('[data-testid="frontier-plot"] [data-testid="learned-point"]')
        page.wait_for_selector('[data-testid="ablation-legend"]')
        save("ablation-frontier.png", max_height=6000)  # every row of the table and the legend under it

        page.goto(f"{url}/#/runs")
        for exp_id in (lm["id"], rl["id"]):
            page.locator(f'[data-testid="run-row"][data-id="{exp_id}"] input.run-select').check()
        page.click("#runs-diff")
        page.wait_for_selector('[data-testid="config-diff-box"] h3')  # the diff has answered (table or "same config")
        save("dashboard-runs.png", max_height=VIEWPORT["height"])  # the table and the diff's first rows

        # the final weights, e.g. transformer-lm_v1.0.0
        model = next(c for c in reversed(lm["checkpoints"]) if "_v" in c)
        final_rl = "rl_checkpoint_final.pth"
        controller = final_rl if final_rl in rl["checkpoints"] else rl["checkpoints"][-1]
        page.goto(f"{url}/#/generate")
        page.wait_for_selector("#gen-run")
        page.fill("#gen-prompt", "Once upon a time, there was a little girl named Lily.")
        page.fill("#gen-seed", "7")
        # A: the controller on the LM it was trained on (choosing learned mode selects "The RL agent's own LM")
        page.select_option("#gen-mode", "learned")
        page.select_option("#gen-checkpoint", "")
        page.select_option("#gen-rl-checkpoint", f"experiments/{rl['id']}/{controller}")
        page.check("#gen-compare")  # B: the same model and seed, plain sampling
        page.select_option("#gen-mode-b", "none")  # before the checkpoint: a mode change may reset it
        page.select_option("#gen-checkpoint-b", f"experiments/{lm['id']}/{model}")
        page.select_option("#gen-decoder-b", "plain")
        page.click("#gen-run")
        page.wait_for_selector('[data-testid="gen-output"] span.tok')
        page.wait_for_selector('[data-testid="gen-stop-b"]')  # B has answered too
        page.wait_for_selector("#gen-run:enabled")
        page.wait_for_selector('[data-testid="gen-chart"] canvas')
        save("generation-output.png")
    return saved


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate docs/images/*.png from a real demo run.")
    parser.add_argument("--experiments", type=Path, default=experiments_root(), help="experiments directory")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images", help="where to write the PNGs")
    args = parser.parse_args(argv)
    reason = browser_unavailable()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    if not args.experiments.is_dir():
        print(f"error: no experiments directory at {args.experiments}: run `make demo` first", file=sys.stderr)
        return 2
    # the dashboard on a private port with a token of its own (REDIS_URL unset: the directory's embedded Redis)
    dashboard = DashboardProcess(args.experiments.resolve(), env={"TIDAL_AUTH_TOKEN": secrets.token_urlsafe(24)},
                                 log_level="warning")
    try:
        url = dashboard.start().url
        lm, rl = pick_runs(url)
        for path in shoot(url, lm, rl, args.out):
            print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        return 0
    except (Failure, RuntimeError) as e:  # RuntimeError: the dashboard exited (its output is in the message)
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        dashboard.close()


if __name__ == "__main__":
    sys.exit(main())
