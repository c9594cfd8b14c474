"""Prompt sets for the decoding study: train / dev / test prompts cut from different stories, never reused.

Pattern: one pass over a stream of held-out stories. Each story is tokenized once, offered to one set (drawn with
probability proportional to what that set still needs, so every set samples the same stretch of the stream) and
cut at a random length k in [min_len, max_len]; a story that would collide with an accepted prompt is skipped,
never retried elsewhere, and no story is ever used twice.

Where the stories come from (the generator LM must never have trained on them):
- `builtin:tinytales`: TinyTales(SEED).story(i) for i >= BUILTIN_NUM_STORIES, beyond the LM's whole corpus (its
  train and validation splits), so the supply is unlimited and cheap;
- any other source: the validation split (`load_stories(config, "validation")`), in a seeded order; running out
  is a TidalError, never a silent cycle.

Collisions (why): the tinytales templates make story starts repeat, and a dev/test prompt that equals, extends or
is extended by a train prompt leaks the controller's training inputs into its evaluation. So no two prompts in all
sets are token-identical, and no prompt is a prefix of a prompt of another set (dev vs test included: decoders are
tuned on dev and reported on test). Prefix relations inside one set are harmless and allowed.

The continuation (the "human" point) is the story's true next tokens after the prompt, up to continuation_len, with
EOT appended at the story's end, so it ends early there exactly as a sample that emits EOT does.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from core.errors import TidalError
from plugins.tidal.Config import LMConfig
from plugins.tidal.DataPipeline import BUILTIN_DATASET, EOT_TOKEN_ID, TinyTales, get_tokenizer, load_stories

_CHUNK = 256             # stories tokenized per batch
_MAX_SCAN_FACTOR = 20    # builtin stream: give up after scanning this many stories per requested prompt


@dataclass
class PromptSet:
    name: str
    prompts: list[list[int]]          # the story's first k tokens
    continuations: list[list[int]]    # the story's next tokens (EOT at the story's end), at most continuation_len
    story_ids: list[int]              # TinyTales index (builtin) or index into the validation split


class _PromptRegistry:
    """The accepted prompts, answering "would this prompt collide?" in O(len(prompt)) dictionary look-ups."""

    def __init__(self) -> None:
        self._owner: dict[tuple[int, ...], str] = {}            # accepted prompt -> its set
        self._prefix_sets: dict[tuple[int, ...], set[str]] = {}  # every prefix of an accepted prompt -> its sets

    def collides(self, prompt: tuple[int, ...], name: str) -> bool:
        if prompt in self._owner:
            return True
        if self._prefix_sets.get(prompt, {name}) - {name}:  # a prefix of another set's prompt
            return True
        return any(self._owner.get(prompt[:j], name) != name for j in range(1, len(prompt)))  # extends one

    def add(self, prompt: tuple[int, ...], name: str) -> None:
        self._owner[prompt] = name
        for j in range(1, len(prompt) + 1):
            self._prefix_sets.setdefault(prompt[:j], set()).add(name)


def build_prompt_sets(lm_config: LMConfig | Mapping, sizes: dict[str, int], min_len: int, max_len: int,
                      continuation_len: int, seed: int) -> dict[str, PromptSet]:
    """Prompt sets {name: PromptSet} of exactly `sizes[name]` prompts each, from stories the LM did not train on,
    each story used at most once, no identical prompts and no prefix relation between sets. Deterministic in
    (lm_config's data source, sizes, lengths, seed). Raises TidalError when the source cannot supply them."""
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
    if continuation_len < 1 or not sizes or min(sizes.values()) < 1:
        raise ValueError(f"need continuation_len >= 1 and every size >= 1, got {continuation_len}, {sizes}")
    lm_config = LMConfig.of(lm_config)
    rng = np.random.default_rng(seed)
    names = list(sizes)
    sets = {name: PromptSet(name, [], [], []) for name in names}
    needed = np.array([sizes[name] for name in names], dtype=np.int64)
    registry = _PromptRegistry()
    scanned = 0
    for story_id, ids in _story_stream(lm_config, rng, max_stories=_MAX_SCAN_FACTOR * int(needed.sum())):
        scanned += 1
        remaining = needed - np.array([len(sets[name].prompts) for name in names])
        target = names[rng.choice(len(names), p=remaining / remaining.sum())]
        k = int(rng.integers(min_len, max_len + 1))
        if len(ids) <= k:  # the prompt would be the whole story: nothing left to continue
            continue
        prompt = tuple(ids[:k])
        if registry.collides(prompt, target):
            continue
        registry.add(prompt, target)
        chosen = sets[target]
        chosen.prompts.append(list(prompt))
        chosen.continuations.append((ids + [EOT_TOKEN_ID])[k:k + continuation_len])
        chosen.story_ids.append(story_id)
        if remaining.sum() == 1:  # that was the last prompt needed
            return sets
    found = sum(len(s.prompts) for s in sets.values())
    raise TidalError(f"the prompt sets need {int(needed.sum())} distinct prompts from different held-out stories but "
                     f"only {found} were found in {scanned} {_source_name(lm_config)} stories; use fewer prompts, "
                     "longer prompts (min_len/max_len) or a source with more held-out stories")


def _source_name(lm_config: LMConfig) -> str:
    if lm_config.DATASET == BUILTIN_DATASET:
        return f"tinytales (from index {lm_config.BUILTIN_NUM_STORIES})"
    return f"validation-split ({lm_config.DATASET})"


def _story_stream(lm_config: LMConfig, rng: np.random.Generator, max_stories: int) -> Iterator[tuple[int, list[int]]]:
    """(story id, story tokens) of held-out stories, each at most once, tokenized in chunks as they are needed."""
    encoder = get_tokenizer()
    threads = lm_config.NUM_CPU_CORE_WORKERS
    fetch: Callable[[int], str]  # story id -> text
    if lm_config.DATASET == BUILTIN_DATASET:
        tales = TinyTales(lm_config.SEED)
        first = lm_config.BUILTIN_NUM_STORIES
        order = range(first, first + max_stories)
        fetch = tales.story
    else:
        stories = load_stories(lm_config, "validation")
        order = rng.permutation(len(stories)).tolist()
        fetch = stories.__getitem__
    for start in range(0, len(order), _CHUNK):
        chunk = list(order[start:start + _CHUNK])
        encoded = encoder.encode_ordinary_batch([fetch(i) for i in chunk], num_threads=threads)
        yield from zip(chunk, encoded, strict=True)
