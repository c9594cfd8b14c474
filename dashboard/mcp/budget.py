"""Answers sized for an assistant: a few KB by default (every byte is context it pays for), with the tools'
parameters to ask for more. `fit_list` trims the one list that makes an answer large and says so in `trimmed`;
`summarise_ablation` turns the study's results file into its verdict, frontiers and reference points.
"""
from __future__ import annotations

import json
from typing import Any

DEFAULT_MAX_BYTES = 4000
MAX_BYTES_LIMIT = 1_000_000
SIGNIFICANT_DIGITS = 5


def size(body: Any) -> int:
    return len(json.dumps(body, separators=(",", ":"), default=str))


def round_floats(value: Any, key: str | None = None) -> Any:
    """Floats to SIGNIFICANT_DIGITS (an assistant reads trends, not the 17th digit); epoch timestamps to 0.1 s."""
    if isinstance(value, float):
        return round(value, 1) if key == "timestamp" else float(f"{value:.{SIGNIFICANT_DIGITS}g}")
    if isinstance(value, dict):
        return {k: round_floats(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [round_floats(v, key) for v in value]
    return value


def spread(items: list, n: int) -> list:
    """n items evenly spaced over `items`, the first and the last always among them."""
    if n >= len(items):
        return list(items)
    if n <= 1:
        return items[-1:]
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


def fit_list(body: dict, field: str, max_bytes: int, keep: str = "spread", hint: str = "") -> dict:
    """`body` with `body[field]` cut to the most items that keep the answer within max_bytes: evenly spaced with the
    last kept ("spread", for series) or the first ones ("head", for pages and newest-first lists). A cut is reported
    as `trimmed` {field, kept, of, hint}."""
    items = body.get(field)
    if not isinstance(items, list) or not items or size(body) <= max_bytes:
        return body
    pick = (lambda n: spread(items, n)) if keep == "spread" else (lambda n: items[:n])
    note = {"field": field, "kept": 0, "of": len(items),
            "hint": hint or f"answer cut to max_bytes={max_bytes}; raise max_bytes or ask for less"}
    lo, hi = 0, len(items)
    while lo < hi:  # the largest n whose answer fits (size grows with n)
        mid = (lo + hi + 1) // 2
        if size({**body, field: pick(mid), "trimmed": {**note, "kept": mid}}) <= max_bytes:
            lo = mid
        else:
            hi = mid - 1
    return {**body, field: pick(max(lo, 1)), "trimmed": {**note, "kept": max(lo, 1)}}


def last_values(metrics: Any, last_n: int, keys: list[str] | None) -> tuple[Any, int | None]:
    """An RL record or history with each list cut to its last `last_n` values (one value: the value itself), only
    `keys` when given; and the longest history length seen (None for a single record)."""
    if not isinstance(metrics, dict):
        return metrics, None
    out, longest = {}, None
    for key, value in metrics.items():
        if keys and key not in keys:
            continue
        if isinstance(value, list):
            longest = max(longest or 0, len(value))
            value = value[-1] if last_n == 1 and value else value[-last_n:]
        out[key] = value
    return out, longest


_POINT_FIELDS = ("name", "family", "params", "judge_nll", "judge_nll_ci", "diversity", "diversity_ci")
_PROTOCOL_FIELDS = ("primary_quality", "primary_diversity", "quality_label", "diversity_label", "test_prompts",
                    "samples_per_prompt", "sampling_seeds", "rl_seeds", "ci_level", "protocol")
OLD_FORMAT_NOTE = ("old-format results (mean training reward per policy, no held-out judge or frontier); rerun the "
                   "study (train_rl.py --ablation) to get the quality-diversity frontier and a verdict")


def _point(point: Any) -> dict | None:
    return {k: point.get(k) for k in _POINT_FIELDS} if isinstance(point, dict) else None


def summarise_ablation(results: Any, frontier_points: int) -> dict:
    """The held-out study in brief: verdict (gap, CI, best family, oracle gap), the protocol's labels, each fixed
    family's test frontier as `frontier_points` (diversity, judge NLL) pairs, and the learned, oracle and human
    points without their metric tables. Older per-policy results give a note and each policy's mean reward."""
    if not isinstance(results, dict):
        return {"format": None, "verdict": None, "note": "no ablation results for this run yet"}
    if not isinstance(results.get("families"), dict) or not isinstance(results.get("verdict"), dict):
        policies = results["policies"] if isinstance(results.get("policies"), dict) else {}
        return {"format": "old", "verdict": None, "note": OLD_FORMAT_NOTE,
                "policies": {name: (p.get("reward") or {}).get("mean") if isinstance(p, dict) else None
                             for name, p in policies.items()}}
    protocol = results["protocol"] if isinstance(results.get("protocol"), dict) else {}
    frontier = results["frontier"] if isinstance(results.get("frontier"), dict) else {}
    return {
        "format": "study",
        "verdict": results["verdict"],
        "protocol": {k: protocol.get(k) for k in _PROTOCOL_FIELDS if k in protocol},
        "frontiers": {family: spread(points, frontier_points) for family, points in frontier.items()
                      if isinstance(points, list)},
        "frontierFormat": "[diversity, judge_nll] pairs sorted by diversity; lower judge_nll is better",
        "learned": [_point(p) for p in results.get("learned") or []],
        "oracle": _point(results.get("oracle")),
        "human": _point(results.get("human")),
    }
