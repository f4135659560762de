"""Weighted mixing (Brown et al. 2020, Table 2.2).

Each source contributes ``weight * total_tokens`` training tokens whatever its size: a small,
high-quality source is repeated for several epochs, a large one is sampled below one epoch.
Tokens are counted with GPT-2's pre-tokenisation pattern (each piece is at least one BPE token),
since the tokenizer is trained after this stage.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import regex

PRETOKEN_RE = regex.compile(r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def count_tokens(text: str) -> int:
    return sum(1 for _ in PRETOKEN_RE.finditer(text))


def truncate_tokens(text: str, n: int) -> str:
    """The first ``n`` pre-tokens of ``text``."""
    end = 0
    for k, m in enumerate(PRETOKEN_RE.finditer(text)):
        if k == n:
            break
        end = m.end()
    return text[:end]


def split_validation(n_docs: int, fraction: float, min_docs: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of the documents held out for validation (never all of them)."""
    n_val = max(min_docs, round(fraction * n_docs)) if fraction > 0 or min_docs else 0
    n_val = min(n_val, n_docs - 1)
    mask = np.zeros(n_docs, dtype=bool)
    if n_val > 0:
        mask[rng.choice(n_docs, size=n_val, replace=False)] = True
    return mask


def sample_source(tokens: list[int], target: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """(document index, epoch, tokens taken) until ``target`` tokens are reached.

    Whole passes over the shuffled documents first; the last partial pass takes documents in a
    new random order and cuts the final one so the source gets exactly ``target`` tokens.
    """
    total = sum(tokens)
    if total == 0 or target <= 0:
        return []
    picks: list[tuple[int, int, int]] = []
    remaining, epoch = target, 0
    while remaining > 0:
        for i in rng.permutation(len(tokens)):
            if remaining <= 0:
                break
            take = min(tokens[i], remaining)
            if take > 0:
                picks.append((int(i), epoch, take))
                remaining -= take
        epoch += 1
    return picks


def plan_mix(
    docs_by_source: dict[str, list[dict[str, Any]]], weights: dict[str, float], total_tokens: int | None
) -> tuple[int, dict[str, int]]:
    """Total training tokens and each source's target."""
    available = {
        s: sum(d["tokens"] for d in docs) for s, docs in docs_by_source.items() if weights.get(s, 0) > 0
    }
    total = total_tokens if total_tokens is not None else sum(available.values())
    targets = {s: int(round(weights[s] * total)) for s in available}
    return total, targets
