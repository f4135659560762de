"""Heuristic document filters after Gopher (Rae et al. 2021, App. A) plus a language check.

Each rule answers with the name of the rule that drops a document, or None to keep it; the first
failing rule is the document's drop reason, so every dropped document is explained. The answer is a
:class:`Drop`: a plain string (the rule's name) that also carries what was measured and the limit
it crossed, so a sample of drops can show why.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from pipeline.config import CleanConfig

WORD_RE = re.compile(r"\S+")
ALPHA_RE = re.compile(r"[^\W\d_]")
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS = ("\u2022", "\u2023", "\u25e6", "\u2043", "\u2219", "-", "*", "\u00b7")
ELLIPSES = ("...", "\u2026")
# trafilatura writes a table row as "| cell | cell |" and a header rule as "|---|---|": markup the
# extractor adds, not words of the page (counted as words, a table of names fails min_alpha_words)
TABLE_MARKUP_RE = re.compile(r"^\|[-|:]*$")


class Drop(str):
    """A drop reason: the rule's name (compared and counted as a plain string), with the value the
    rule measured, the threshold it crossed and, where useful, a note (the detected language)."""

    value: float | None
    threshold: float | None
    note: str

    def __new__(cls, reason: str, value: float | None = None, threshold: float | None = None, note: str = ""):
        self = super().__new__(cls, reason)
        self.value, self.threshold, self.note = value, threshold, note
        return self

    def __reduce__(self) -> tuple[Any, ...]:  # keep value and threshold across process-based runners
        return (Drop, (str(self), self.value, self.threshold, self.note))


def _dup_fraction(items: list[str]) -> tuple[float, float]:
    """Fraction of items that repeat an earlier item, and the share of characters they hold."""
    if not items:
        return 0.0, 0.0
    seen: set[str] = set()
    dup_n = dup_chars = 0
    for it in items:
        if it in seen:
            dup_n += 1
            dup_chars += len(it)
        else:
            seen.add(it)
    total_chars = sum(len(it) for it in items) or 1
    return dup_n / len(items), dup_chars / total_chars


def top_ngram_char_frac(words: list[str], n: int) -> float:
    """Share of word characters covered by the most frequent word n-gram (counted with repeats)."""
    if len(words) < n:
        return 0.0
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    gram, count = grams.most_common(1)[0]
    if count < 2:
        return 0.0
    total = sum(len(w) for w in words) or 1
    return count * sum(len(w) for w in gram) / total


def dup_ngram_char_frac(words: list[str], n: int) -> float:
    """Share of word characters inside any word n-gram that occurs more than once."""
    if len(words) < n:
        return 0.0
    first_seen: dict[tuple[str, ...], int] = {}
    covered = [False] * len(words)
    for i in range(len(words) - n + 1):
        g = tuple(words[i : i + n])
        j = first_seen.setdefault(g, i)
        if j != i:
            for k in range(n):
                covered[i + k] = True
                covered[j + k] = True
    total = sum(len(w) for w in words) or 1
    return sum(len(w) for w, c in zip(words, covered, strict=True) if c) / total


@functools.lru_cache(maxsize=1)
def _language_identifier():  # noqa: ANN202 - py3langid has no public type for it
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def detect_language(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, probability) from py3langid's naive Bayes model shipped in the package."""
    lang, prob = _language_identifier().classify(text[:5000])
    return lang, float(prob)


def gopher_quality(text: str, words: list[str], cfg: CleanConfig) -> Drop | None:
    n = len(words)
    if n < cfg.min_words:
        return Drop("min_words", n, cfg.min_words)
    if n > cfg.max_words:
        return Drop("max_words", n, cfg.max_words)
    mean_len = sum(len(w) for w in words) / n
    if mean_len < cfg.min_mean_word_length:
        return Drop("min_mean_word_length", mean_len, cfg.min_mean_word_length)
    if mean_len > cfg.max_mean_word_length:
        return Drop("max_mean_word_length", mean_len, cfg.max_mean_word_length)
    symbols = text.count("#") + sum(text.count(e) for e in ELLIPSES)
    if symbols / n > cfg.max_symbol_word_ratio:
        return Drop("symbol_word_ratio", symbols / n, cfg.max_symbol_word_ratio)
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if lines:
        bullets = sum(ln.lstrip().startswith(BULLETS) for ln in lines) / len(lines)
        if bullets > cfg.max_bullet_lines:
            return Drop("bullet_lines", bullets, cfg.max_bullet_lines)
        ellipses = sum(ln.rstrip().endswith(ELLIPSES) for ln in lines) / len(lines)
        if ellipses > cfg.max_ellipsis_lines:
            return Drop("ellipsis_lines", ellipses, cfg.max_ellipsis_lines)
    alpha = sum(1 for w in words if ALPHA_RE.search(w)) / n
    if alpha < cfg.min_alpha_words:
        return Drop("alpha_words", alpha, cfg.min_alpha_words)
    stop = len(STOP_WORDS.intersection(w.lower() for w in words))
    if stop < cfg.min_stop_words:
        return Drop("stop_words", stop, cfg.min_stop_words)
    return None


def gopher_repetition(text: str, words: list[str], cfg: CleanConfig) -> Drop | None:
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    line_frac, line_chars = _dup_fraction(lines)
    para_frac, para_chars = _dup_fraction(paras)
    if line_frac > cfg.max_dup_line_frac:
        return Drop("dup_line_frac", line_frac, cfg.max_dup_line_frac)
    if para_frac > cfg.max_dup_para_frac:
        return Drop("dup_para_frac", para_frac, cfg.max_dup_para_frac)
    if line_chars > cfg.max_dup_line_char_frac:
        return Drop("dup_line_char_frac", line_chars, cfg.max_dup_line_char_frac)
    if para_chars > cfg.max_dup_para_char_frac:
        return Drop("dup_para_char_frac", para_chars, cfg.max_dup_para_char_frac)
    lowered = [w.lower() for w in words]
    for n, limit in sorted(cfg.max_top_ngram_char_frac.items()):
        frac = top_ngram_char_frac(lowered, n)
        if frac > limit:
            return Drop(f"top_{n}gram_char_frac", frac, limit)
    if cfg.dup_ngram_unit == "line":
        units = [[w.lower() for w in WORD_RE.findall(ln)] for ln in lines]
    else:
        units = [lowered]
    chars = sum(len(w) for w in lowered) or 1
    for n, limit in sorted(cfg.max_dup_ngram_char_frac.items()):
        frac = sum(dup_ngram_char_frac(u, n) * sum(len(w) for w in u) for u in units) / chars
        if frac > limit:
            return Drop(f"dup_{n}gram_char_frac", frac, limit)
    return None


def language_check(text: str, cfg: CleanConfig) -> Drop | None:
    if not cfg.languages:
        return None
    lang, prob = detect_language(text)
    if lang not in cfg.languages or prob < cfg.min_language_score:
        return Drop("language", prob, cfg.min_language_score, note=f"detected {lang}")
    return None


FilterFn = Callable[[str, list[str], CleanConfig], Drop | None]
FILTERS: list[FilterFn] = [gopher_quality, gopher_repetition, lambda t, _w, c: language_check(t, c)]


def drop_reason(text: str, cfg: CleanConfig) -> Drop | None:
    """The first rule ``text`` fails, or None when it passes them all."""
    if not text.strip():
        return Drop("empty")
    words = [w for w in WORD_RE.findall(text) if not TABLE_MARKUP_RE.match(w)]
    for f in FILTERS:
        reason = f(text, words, cfg)
        if reason:
            return reason
    return None
