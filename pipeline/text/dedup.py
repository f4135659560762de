"""Deduplication and decontamination (Brown et al. 2020, App. A and C).

1. Exact: documents whose normalised text is identical keep one copy.
2. Fuzzy: MinHash signatures of each document's features (word n-grams, GPT-3's hashed words or
   character n-grams; see :mod:`pipeline.text.minhash`), LSH banding for candidates, candidates
   kept as duplicates when their estimated Jaccard passes ``min_jaccard``; connected documents form
   a cluster, of which the highest-priority document survives. Works within and across sources,
   in one process or with the band keys grouped on Dask (:mod:`pipeline.text.minhash_dask`).
3. Decontamination: training documents sharing a 13-gram with an evaluation set lose the match
   plus 200 characters each side; pieces under 200 characters are dropped, a document cut into more
   than 10 pieces is dropped whole, and 13-grams found in more than 10 training documents are left
   alone (they are boilerplate, not leaked test items).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pipeline.config import DedupConfig
from pipeline.errors import LineageError
from pipeline.io import iter_jsonl, read_parquet
from pipeline.text.minhash import (  # noqa: F401 - the fuzzy half of dedup, importable from here
    TOKEN_RE,
    UnionFind,
    estimated_jaccard,
    lsh_candidates,
    minhash_signatures,
    near_duplicate_clusters,
    normalized,
    shingles,
)


# ------------------------------------------------------------------------------------------------ exact
def exact_key(text: str) -> str:
    """Hash of the text with case, punctuation and whitespace differences removed."""
    return hashlib.sha1(normalized(text).encode("utf-8", "surrogatepass")).hexdigest()


# ------------------------------------------------------------------------------------- decontamination
def words_with_spans(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    words, spans = [], []
    for m in TOKEN_RE.finditer(text):
        words.append(m.group().lower())
        spans.append(m.span())
    return words, spans


def ngrams(words: list[str], n: int) -> Iterator[str]:
    for i in range(len(words) - n + 1):
        yield " ".join(words[i : i + n])


def read_eval_texts(paths: list[str], root: Path, fields: list[str]) -> list[str]:
    """Texts of the evaluation sets named in ``dedup.eval_files`` (txt: one per paragraph)."""

    texts: list[str] = []
    for p in paths:
        path = Path(p) if Path(p).is_absolute() else root / p
        if not path.is_file():
            raise LineageError(f"dedup.eval_files: {p} not found")
        if path.suffix == ".jsonl":
            for _, row in iter_jsonl(path):
                texts.append(" ".join(_field_texts(row, fields)))
        elif path.suffix == ".parquet":
            for row in read_parquet(path).to_pylist():
                texts.append(" ".join(_field_texts(row, fields)))
        else:
            texts.extend(t for t in re.split(r"\n\s*\n", path.read_text(errors="replace")) if t.strip())
    return texts


def _field_texts(row: dict[str, Any], fields: list[str]) -> list[str]:
    out = []
    for f in fields:
        v = row.get(f)
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, list):
            out.extend(str(x) for x in v if isinstance(x, str))
    return out


def eval_ngram_set(texts: list[str], n: int) -> set[str]:
    grams: set[str] = set()
    for t in texts:
        grams.update(ngrams(words_with_spans(t)[0], n))
    return grams


def contaminated_ngrams(text: str, eval_grams: set[str], n: int) -> set[str]:
    return {g for g in ngrams(words_with_spans(text)[0], n) if g in eval_grams}


def decontaminate(
    text: str, eval_grams: set[str], frequent: set[str], cfg: DedupConfig
) -> tuple[list[str] | None, int]:
    """Pieces of ``text`` left after cutting eval-set matches, and the number of matches cut.

    Returns (None, matches) when the document is dropped (too many pieces), ([text], 0) when clean.
    """
    words, spans = words_with_spans(text)
    n = cfg.decontam_ngram
    cuts: list[tuple[int, int]] = []
    for i, g in enumerate(ngrams(words, n)):
        if g in eval_grams and g not in frequent:
            start = max(0, spans[i][0] - cfg.decontam_margin)
            end = min(len(text), spans[i + n - 1][1] + cfg.decontam_margin)
            if cuts and start <= cuts[-1][1]:
                cuts[-1] = (cuts[-1][0], max(cuts[-1][1], end))
            else:
                cuts.append((start, end))
    if not cuts:
        return [text], 0
    pieces, pos = [], 0
    for start, end in cuts:
        pieces.append(text[pos:start])
        pos = end
    pieces.append(text[pos:])
    pieces = [p.strip() for p in pieces if len(p.strip()) >= cfg.decontam_min_piece]
    if len(pieces) > cfg.decontam_max_pieces:
        return None, len(cuts)
    return pieces, len(cuts)


def doc_frequency(texts: Iterable[str], eval_grams: set[str], n: int) -> Counter[str]:
    """In how many training documents each evaluation n-gram appears."""
    counts: Counter[str] = Counter()
    for t in texts:
        counts.update(contaminated_ngrams(t, eval_grams, n))
    return counts
