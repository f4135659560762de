"""How many test items of each task overlap the training text (Brown et al. 2020, Appendix C).

An item is "dirty" when an N-gram of its words appears in the training split, with N per task
the 5th-percentile item length in words clipped to 8..13 (GPT-3's rule for short-example
tasks); an item shorter than N counts as dirty when all its words appear there in a row.
Words are lower-cased ``\\w+`` runs, as in the dedup stage's 13-gram decontamination.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

WORD_RE = re.compile(r"\w+")


def ngram_size(lengths: list[int], lo: int = 8, hi: int = 13) -> int:
    return int(min(hi, max(lo, np.percentile(lengths, 5)))) if lengths else hi


def dirty_counts(tasks: dict[str, list[str]], train_texts: Iterable[str]) -> dict[str, int]:
    """``{task: number of dirty test items}`` for the test texts of each task."""
    wanted: dict[str, list[set[tuple[str, ...]]]] = {}
    lengths_needed: set[int] = set()
    for name, texts in tasks.items():
        words = [WORD_RE.findall(t.lower()) for t in texts]
        n = ngram_size([len(w) for w in words])
        per_item = []
        for w in words:
            size = min(n, len(w))
            grams = {tuple(w[i : i + size]) for i in range(len(w) - size + 1)} if size else set()
            per_item.append(grams)
            if size:
                lengths_needed.add(size)
        wanted[name] = per_item
    all_grams = {g for items in wanted.values() for grams in items for g in grams}
    found: set[tuple[str, ...]] = set()
    for text in train_texts:
        w = WORD_RE.findall(text.lower())
        for size in lengths_needed:
            for i in range(len(w) - size + 1):
                g = tuple(w[i : i + size])
                if g in all_grams:
                    found.add(g)
    return {name: sum(1 for grams in items if grams & found) for name, items in wanted.items()}
