"""Statistics of modulation trajectories (ADR 0005), standard library only, so the dashboard and the inference
server can use it without torch.

A trajectory is the lightweight format the generator and the server return:
    {"gateSignals": [[m], ...] or [m, ...], "effects": [...], "tokenIds": [...], "tokenTexts": [...]}
Every report is strict JSON (no NaN or Infinity): an undefined statistic is None.
"""
from __future__ import annotations

import math
import random
import statistics
from collections.abc import Mapping, Sequence

NUM_WINDOWS = 4
PHASE_CHANGE_T = 2.0  # |Welch t| above this between consecutive windows marks a phase change
NUM_EXTREMES = 5


def _modulations(trajectory: Mapping) -> list[float]:
    return [float(s[0]) if isinstance(s, (list, tuple)) else float(s) for s in trajectory["gateSignals"]]


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default, Excel's PERCENTILE.INC)."""
    position = q * (len(sorted_values) - 1)
    lo = math.floor(position)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (position - lo) * (sorted_values[hi] - sorted_values[lo])


def _windows(values: list[float]) -> list[list[float]]:
    """NUM_WINDOWS contiguous windows whose sizes differ by at most one (the first ones take the remainder)."""
    size, extra = divmod(len(values), NUM_WINDOWS)
    windows, start = [], 0
    for i in range(NUM_WINDOWS):
        end = start + size + (i < extra)
        windows.append(values[start:end])
        start = end
    return windows


def _welch_t(earlier: list[float], later: list[float]) -> float | None:
    """(mean later − mean earlier) / sqrt(s²₁/n₁ + s²₂/n₂). 0.0 when both windows are constant and equal,
    None (undefined, infinitely significant) when both are constant and differ."""
    difference = statistics.fmean(later) - statistics.fmean(earlier)
    standard_error = math.sqrt(statistics.variance(earlier) / len(earlier) + statistics.variance(later) / len(later))
    if standard_error == 0.0:
        return 0.0 if difference == 0.0 else None
    return difference / standard_error


def analyze_trajectory(trajectory: Mapping) -> dict:
    """Summary of one trajectory's m: mean, std (population), min, max, quartiles; the means of 4 windows over
    time (None for an empty window); phase changes between consecutive windows; the tokens with the highest and
    lowest m as (token_text, m)."""
    values = _modulations(trajectory)
    if not values:
        raise ValueError("trajectory has no steps")
    texts = trajectory.get("tokenTexts") or [str(t) for t in trajectory.get("tokenIds") or [""] * len(values)]
    ordered = sorted(values)
    windows = _windows(values)

    phase_changes = []
    for i in range(NUM_WINDOWS - 1):
        earlier, later = windows[i], windows[i + 1]
        if len(earlier) < 2 or len(later) < 2:
            continue
        t = _welch_t(earlier, later)
        if t is None or abs(t) > PHASE_CHANGE_T:
            phase_changes.append({"from": i, "to": i + 1, "t": t})

    by_value = sorted(range(len(values)), key=lambda i: values[i])  # stable: earlier tokens first among ties
    highest = sorted(range(len(values)), key=lambda i: -values[i])
    return {
        "steps": len(values),
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values),
        "min": ordered[0],
        "max": ordered[-1],
        "q1": _quantile(ordered, 0.25),
        "median": _quantile(ordered, 0.5),
        "q3": _quantile(ordered, 0.75),
        "windows": [statistics.fmean(w) if w else None for w in windows],
        "phase_changes": phase_changes,
        "extremes": {
            "highest": [(texts[i], values[i]) for i in highest[:NUM_EXTREMES]],
            "lowest": [(texts[i], values[i]) for i in by_value[:NUM_EXTREMES]],
        },
    }


# ------------------------------------------------------------------------------------------- across prompts
def _decompose(groups: Sequence[tuple[int, float, float]]) -> tuple[float, float]:
    """Law of total variance over groups (count, mean, population variance), weighted by step count:
    between + within = the population variance of all steps together."""
    total = sum(n for n, _, _ in groups)
    grand_mean = sum(n * mean for n, mean, _ in groups) / total
    between = sum(n * (mean - grand_mean) ** 2 for n, mean, _ in groups) / total
    within = sum(n * variance for n, _, variance in groups) / total
    return between, within


def _ratio(between: float, within: float) -> float | None:
    return between / within if within > 0 else None


def cross_prompt_variance(trajectories_by_prompt: Sequence[Sequence[Mapping]], bootstrap: int = 1000,
                          seed: int = 0) -> dict:
    """How much m depends on the prompt: between-prompt variance of the per-prompt means, within-prompt variance
    around them (both step-weighted, summing to the total variance), their ratio (None when within is 0), and
    95 % percentile-bootstrap intervals that resample prompts (the independent unit). `bootstrap=0` skips them."""
    groups = []
    for trajectories in trajectories_by_prompt:
        values = [m for t in trajectories for m in _modulations(t)]
        if values:
            groups.append((len(values), statistics.fmean(values), statistics.pvariance(values)))
    if not groups:
        raise ValueError("no steps in any trajectory")
    between, within = _decompose(groups)

    ci95 = None
    if bootstrap > 0:
        rng = random.Random(seed)
        samples: dict[str, list[float]] = {"between": [], "within": [], "ratio": []}
        for _ in range(bootstrap):
            b, w = _decompose([rng.choice(groups) for _ in groups])
            samples["between"].append(b)
            samples["within"].append(w)
            if (r := _ratio(b, w)) is not None:
                samples["ratio"].append(r)
        ci95 = {key: [_quantile(sorted(s), 0.025), _quantile(sorted(s), 0.975)] if s else None
                for key, s in samples.items()}
    return {"between": between, "within": within, "ratio": _ratio(between, within), "ci95": ci95}


# ------------------------------------------------------------------------------------------- sweep over m
def _text_properties(text: str) -> tuple[int, float, int]:
    words = text.split()
    return len(words), (len(set(words)) / len(words) if words else 0.0), len(text)


def sweep_text_properties(texts_by_m: Mapping[float, Sequence[str]]) -> dict:
    """Per m, the mean over its texts of: word count, unique-word ratio, and characters."""
    result = {}
    for m, texts in texts_by_m.items():
        properties = [_text_properties(t) for t in texts] or [(0, 0.0, 0)]
        word_counts, unique_ratios, characters = zip(*properties, strict=True)
        result[m] = {"word_count": statistics.fmean(word_counts),
                     "unique_token_ratio": statistics.fmean(unique_ratios),
                     "characters": statistics.fmean(characters)}
    return result


def analyze_batch(trajectories_by_prompt: Mapping[str, Sequence[Mapping]],
                  texts_by_m: Mapping[float, Sequence[str]] | None = None, bootstrap: int = 1000,
                  seed: int = 0) -> dict:
    """One JSON-able report: {"per_prompt": {prompt: [analyze_trajectory per trajectory]}, "cross_prompt":
    cross_prompt_variance(...), and with `texts_by_m` "sweep": {str(m): text properties}}."""
    report = {
        "per_prompt": {prompt: [analyze_trajectory(t) for t in trajectories]
                       for prompt, trajectories in trajectories_by_prompt.items()},
        "cross_prompt": cross_prompt_variance(list(trajectories_by_prompt.values()), bootstrap=bootstrap, seed=seed),
    }
    if texts_by_m is not None:
        report["sweep"] = {str(float(m)): props for m, props in sweep_text_properties(texts_by_m).items()}
    return report
