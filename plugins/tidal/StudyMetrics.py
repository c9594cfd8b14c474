"""Held-out measures, the quality–diversity frontier and the paired verdict of the decoding study.

Pattern: pure functions over token lists and per-prompt arrays (numpy; sacrebleu for BLEU), no model and no RL.
- `measure` turns K samples per prompt into one value per prompt and measure, so every later statistic can be
  clustered by prompt: the prompt, not the sample, is the unit that was drawn at random.
- `corpus_measures` gives distinct-n and self-BLEU at a fixed number of texts, because both drift with the sample
  count; decoders and the human continuations must be compared at the same count.
- The frontier of a family is its non-dominated points (higher diversity and higher quality are both better),
  joined by straight lines; a learned decoder is compared with each family at its own diversity.
- `frontier_gap` is a paired bootstrap: each resample draws prompt indices once and reuses them for every point, so
  prompt difficulty, shared by all decoders, cancels in the gap. Resampled means are one matrix product of
  per-prompt values with (resamples × prompts) multiplicity weights; frontiers and interpolation are vectorised over
  resamples (`_frontier_at`), which the scalar `pareto_frontier` also uses, so both agree by construction.
Text measures (precision, distinct-n, rep-n, self-BLEU) read the tokens before the first EOT; the judge's NLL also
scores the EOT itself, since ending a story well is part of its quality.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from sacrebleu.metrics.bleu import BLEU
from sacrebleu.metrics.helpers import extract_all_word_ngrams
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from plugins.tidal.Judges import NGramJudge, ngram_keys
from plugins.tidal.Tokenizer import EOT_TOKEN_ID, VOCAB_SIZE, decode

VERDICTS = ("learned above the frontier", "no significant difference", "frontier above learned",
            "outside the frontier's range")
_BLEU_ORDER = 4


# =============================================================================================== per-prompt measures
def _before_eos(tokens: Sequence[int], eos_id: int) -> tuple[list[int], bool]:
    """The tokens before the first EOS and whether there was one."""
    tokens = list(tokens)
    return (tokens[:tokens.index(eos_id)], True) if eos_id in tokens else (tokens, False)


def _nanmean(values) -> float:
    """Mean of the finite values; NaN (without a warning) when there is none."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def _ngram_array(texts: Sequence[Sequence[int]], n: int) -> np.ndarray:
    """Keys of all n-grams of the texts, never spanning two texts."""
    keys = [ngram_keys(np.asarray(t, dtype=np.int64), n, VOCAB_SIZE) for t in texts if len(t) >= n]
    return np.concatenate(keys) if keys else np.zeros(0, np.int64)


def distinct_n(texts: Sequence[Sequence[int]], n: int) -> float:
    """Distinct n-grams / all n-grams of the texts pooled (Li et al. 2016); n-grams never span two texts. NaN when
    there is none."""
    keys = _ngram_array(texts, n)
    return np.unique(keys).size / keys.size if keys.size else float("nan")


def _rep_n(tokens: Sequence[int], n: int) -> float:
    """1 − unique / total n-grams within one text (Su et al. 2022); NaN when shorter than n."""
    return 1.0 - distinct_n([tokens], n) if len(tokens) >= n else float("nan")


def measure(prompts: Sequence[Sequence[int]], samples: Sequence[Sequence[Sequence[int]]], judge: NGramJudge,
            eos_id: int = EOT_TOKEN_ID, precision_n: int = 4) -> dict[str, np.ndarray]:
    """Per-prompt measures (P,) of K samples per prompt (the prompt excluded from each sample; EOS included when it
    was sampled, anything after it ignored):
      judge_nll       mean per-token NLL under the judge given the prompt (EOS scored), averaged over the samples
      prec_{n}        share of the sample's n-grams (those joining the prompt included) found in the judge's corpus
      set_distinct_2  distinct bigrams / bigrams of the K samples pooled: diversity of the set a prompt yields
      rep_4           1 − unique/total 4-grams within a sample, averaged
      length          tokens before EOS, averaged;  eot_rate  share of samples that emitted EOS
    A measure with nothing to average (e.g. no bigram at all) is NaN for that prompt."""
    if len(prompts) != len(samples):
        raise ValueError(f"{len(prompts)} prompts but samples for {len(samples)}")
    cut = [[_before_eos(s, eos_id) for s in group] for group in samples]
    scored = [(prompt, text + [eos_id] * ended)
              for prompt, group in zip(prompts, cut, strict=True) for text, ended in group]
    nll = iter([-lp.mean() if lp.size else np.nan for lp in judge.score_many(scored)])
    out: dict[str, list[float]] = {name: [] for name in
                                   ("judge_nll", f"prec_{precision_n}", "set_distinct_2", "rep_4", "length",
                                    "eot_rate")}
    for prompt, group in zip(prompts, cut, strict=True):
        texts = [text for text, _ in group]
        out["judge_nll"].append(_nanmean([next(nll) for _ in group]))
        out[f"prec_{precision_n}"].append(_nanmean([judge.precision(t, precision_n, prompt) for t in texts]))
        out["set_distinct_2"].append(distinct_n(texts, 2))
        out["rep_4"].append(_nanmean([_rep_n(t, 4) for t in texts]))
        out["length"].append(_nanmean([len(t) for t in texts]))
        out["eot_rate"].append(_nanmean([ended for _, ended in group]))
    return {name: np.asarray(values, dtype=np.float64) for name, values in out.items()}


# =============================================================================================== corpus measures
def self_bleu(texts: Sequence[str]) -> float:
    """Mean sentence BLEU (0–100) of each text against all the others as references (Zhu et al. 2018), exactly as
    `sacrebleu.sentence_bleu(text, others)` (13a tokens, exp smoothing, effective order) — but each text's n-grams
    are counted once and each reference maximum comes from the top two counts per n-gram, O(N) instead of O(N²)."""
    if len(texts) < 2:
        raise ValueError("self-BLEU needs at least 2 texts")
    tokenize = Tokenizer13a()
    grams: list[Counter] = []
    lengths = np.zeros(len(texts), np.int64)
    for i, text in enumerate(texts):
        counter, lengths[i] = extract_all_word_ngrams(tokenize(text.rstrip()), 1, _BLEU_ORDER)
        grams.append(counter)
    top: dict[tuple, list[int]] = {}  # n-gram -> [highest count, how many texts have it, second highest]
    for counter in grams:
        for gram, count in counter.items():
            best = top.setdefault(gram, [0, 0, 0])
            if count > best[0]:
                best[:] = [count, 1, best[0]]
            elif count == best[0]:
                best[1] += 1
            elif count > best[2]:
                best[2] = count
    scores = []
    for i, counter in enumerate(grams):
        correct, total = [0] * _BLEU_ORDER, [0] * _BLEU_ORDER
        for gram, count in counter.items():
            highest, holders, second = top[gram]
            reference = second if count == highest and holders == 1 else highest  # the others' maximum
            correct[len(gram) - 1] += min(count, reference)
            total[len(gram) - 1] += count
        others = np.delete(lengths, i)
        ref_len = int(others[np.lexsort((others, np.abs(others - lengths[i])))[0]])  # closest, shorter on ties
        scores.append(BLEU.compute_bleu(correct, total, int(lengths[i]), ref_len, smooth_method="exp",
                                        effective_order=True, max_ngram_order=_BLEU_ORDER).score)
    return float(np.mean(scores))


def corpus_measures(texts: Sequence[Sequence[int]], num_samples: int, eos_id: int = EOT_TOKEN_ID) -> dict[str, float]:
    """distinct_1/2/3 and self_bleu of the first `num_samples` texts (tokens before EOS); a fixed count so that
    decoders and the human continuations are comparable. Fewer texts than num_samples is a ValueError."""
    if len(texts) < num_samples:
        raise ValueError(f"corpus measures are taken at {num_samples} texts, got {len(texts)}")
    kept = [_before_eos(t, eos_id)[0] for t in texts[:num_samples]]
    out = {f"distinct_{n}": distinct_n(kept, n) for n in (1, 2, 3)}
    out["self_bleu"] = self_bleu([decode(t) for t in kept])
    out["num_samples"] = num_samples
    return out


# =============================================================================================== frontier
def _sorted_frontier(diversity: np.ndarray, quality: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """R sets of m points (R, m) sorted by diversity (then quality), and which points are on their set's Pareto
    frontier: nothing at least as diverse is at least as good (of equal points, the last one is kept)."""
    order = np.lexsort((quality, diversity), axis=-1)
    d = np.take_along_axis(diversity, order, axis=1)
    q = np.take_along_axis(quality, order, axis=1)
    later_best = np.full_like(q, -np.inf)
    later_best[:, :-1] = np.maximum.accumulate(q[:, ::-1], axis=1)[:, ::-1][:, 1:]  # max quality further right
    return d, q, q > later_best


def _frontier_at(diversity: np.ndarray, quality: np.ndarray, at: np.ndarray, extend: bool = False) -> np.ndarray:
    """For R sets of m points (R, m), the quality of each set's Pareto frontier linearly interpolated at `at` (R,);
    NaN outside the frontier's diversity range. With `extend`, the frontier is read as "the best quality the family
    reaches at this diversity or more": past its most diverse point it stays at that point's quality (quality only
    falls along a frontier, so this bounds what the family reaches there), and below its least diverse frontier point
    it stays at that point's quality too, as long as some point of the family is at least that undiverse (the family
    reaches down there, only with worse text). Both favour the family. NaN remains where the family never gets as
    low as `at`: its grid stops short, and it might do better there than anything it shows."""
    d, q, on_frontier = _sorted_frontier(diversity, quality)
    rows, m = d.shape
    index = np.arange(m)
    left = np.where(on_frontier & (d <= at[:, None]), index, -1).max(axis=1)   # last frontier point at or below
    right = np.where(on_frontier & (d >= at[:, None]), index, m).min(axis=1)   # first frontier point at or above
    if extend:
        inside = ((left >= 0) | (at >= d[:, 0])) & ((right < m) | (left >= 0))
        left = np.where(left >= 0, left, right)    # below the frontier: its first point
        right = np.where(right < m, right, left)   # past the frontier: its last point
    else:
        inside = (left >= 0) & (right < m)
    left, right = left.clip(0, m - 1), right.clip(0, m - 1)
    r = np.arange(rows)
    d_left, d_right, q_left, q_right = d[r, left], d[r, right], q[r, left], q[r, right]
    span = np.where(d_right > d_left, d_right - d_left, 1.0)
    value = q_left + (q_right - q_left) * np.where(right > left, (at - d_left) / span, 0.0)
    return np.where(inside, value, np.nan)


def _as_rows(points: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """(1, m) diversity and quality arrays of (diversity, quality) points."""
    d, q = (np.asarray(column, dtype=np.float64)[None, :] for column in zip(*points, strict=True))
    return d, q


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (diversity, quality) points no other point matches or beats on both, sorted by diversity (so quality
    falls along it); duplicates appear once."""
    if not points:
        return []
    d, q, on_frontier = _sorted_frontier(*_as_rows(points))
    return [(float(x), float(y)) for x, y in zip(d[on_frontier], q[on_frontier], strict=True)]


# =============================================================================================== bootstrap
def _resample_weights(num_prompts: int, samples: int, seed: int) -> np.ndarray:
    """(samples, P) multiplicities of each prompt in each bootstrap resample of the prompts, divided by P, so that
    weights @ values are the resampled means."""
    draws = np.random.default_rng(seed).integers(0, num_prompts, size=(samples, num_prompts))
    offsets = (np.arange(samples) * num_prompts)[:, None]
    counts = np.bincount((draws + offsets).ravel(), minlength=samples * num_prompts)
    return counts.reshape(samples, num_prompts) / num_prompts


def _percentile_ci(values: np.ndarray, level: float) -> list[float]:
    tail = 50.0 * (1.0 - level)
    return [float(v) for v in np.percentile(values, [tail, 100.0 - tail])]


def _per_prompt(values, name: str, num_prompts: int | None = None) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or (num_prompts is not None and values.size != num_prompts):
        raise ValueError(f"{name}: expected one value per prompt ({num_prompts}), got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(f"{name}: per-prompt values must be finite (drop or fill NaN prompts for every point alike)")
    return values


def bootstrap_mean_ci(per_prompt_values, samples: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean over prompts. Clustered by prompt: pass one value per prompt (the
    caller averages its seeds and samples within the prompt first)."""
    values = _per_prompt(per_prompt_values, "per_prompt_values")
    low, high = _percentile_ci(_resample_weights(values.size, samples, seed) @ values, level)
    return low, high


def frontier_gap(learned: dict[str, np.ndarray], families: dict[str, list[dict[str, np.ndarray]]], samples: int,
                 seed: int, level: float = 0.95) -> dict:
    """Whether the learned point lies above every family's frontier at its own diversity.

    Every point is a dict of per-prompt "quality" (higher is better) and "diversity" arrays over the same prompts.
    On each of `samples` resamples of the prompt indices (the same for every point: paired), each point's means are
    recomputed, each family's frontier is interpolated at the learned point's diversity (read as the best quality
    the family reaches at that diversity or more, see `_frontier_at`), and the gap is learned quality − the best
    family's. Returns
      gap, ci          point estimate and percentile interval of that gap (None when outside)
      best_family      the family highest at the learned diversity on the full sample
      at_diversity     the learned point's mean diversity;  learned_quality  its mean quality
      per_family       {family: learned − family at that diversity, or None where the learned point is less diverse
                       than every point of the family}
      outside_share    share of resamples where the learned point lies below some family's range
      short_families   the families whose frontier does not reach down to the learned diversity (full sample)
      verdict          a win only when the whole interval is above zero; "outside the frontier's range" when the
                       full-sample point lies below a family's range or more than 1 − level of the resamples do
    """
    quality = _per_prompt(learned["quality"], "learned quality")
    num_prompts = quality.size
    names = list(families)
    points = [learned] + [point for name in names for point in families[name]]
    Q = np.stack([_per_prompt(p["quality"], "quality", num_prompts) for p in points])      # (M, P)
    D = np.stack([_per_prompt(p["diversity"], "diversity", num_prompts) for p in points])  # (M, P)
    weights = np.vstack([np.full((1, num_prompts), 1.0 / num_prompts),                    # row 0: the full sample
                         _resample_weights(num_prompts, samples, seed)])
    mean_q, mean_d = weights @ Q.T, weights @ D.T                                        # (1 + samples, M)
    at = mean_d[:, 0]
    bounds = np.cumsum([1] + [len(families[name]) for name in names])
    per_family = np.stack([_frontier_at(mean_d[:, lo:hi], mean_q[:, lo:hi], at, extend=True)  # (1 + S, F)
                           for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)], axis=1)
    # every family must reach the learned diversity: one whose least diverse frontier point is still more diverse
    # might do better down there (its grid stops short), so a point (or resample) below any family's range is not
    # scored at all, rather than scored against the families that happen to reach it
    reached = ~np.isnan(per_family).any(axis=1)
    best = np.where(reached, np.nanmax(np.where(np.isnan(per_family), -np.inf, per_family), axis=1), np.nan)
    gaps = mean_q[:, 0] - best
    outside_share = float(np.isnan(gaps[1:]).mean())
    result: dict[str, Any] = {
        "gap": None, "ci": None, "best_family": None, "at_diversity": float(at[0]),
        "learned_quality": float(mean_q[0, 0]), "outside_share": outside_share,
        "per_family": {name: None if np.isnan(v) else float(mean_q[0, 0] - v)
                       for name, v in zip(names, per_family[0], strict=True)},
        "short_families": [name for name, v in zip(names, per_family[0], strict=True) if np.isnan(v)],
        "verdict": VERDICTS[3]}
    if np.isnan(gaps[0]) or outside_share > 1.0 - level:
        return result
    low, high = _percentile_ci(gaps[1:][~np.isnan(gaps[1:])], level)
    result.update(gap=float(gaps[0]), ci=[low, high], best_family=names[int(np.nanargmax(per_family[0]))],
                  verdict=VERDICTS[0] if low > 0 else VERDICTS[2] if high < 0 else VERDICTS[1])
    return result
