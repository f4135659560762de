"""Deduplication and decontamination (Brown et al. 2020, App. A and C).

1. Exact: documents whose normalised text is identical keep one copy.
2. Fuzzy: MinHash signatures of each document's features (word n-grams, GPT-3's hashed words or
   character n-grams; see :mod:`pipeline.text.minhash`), LSH banding for candidates, candidates
   kept as duplicates when their estimated Jaccard passes ``min_jaccard``; connected documents form
   a cluster, of which the highest-priority document survives. Works within and across sources,
   in one process or with the band keys grouped on Dask (:mod:`pipeline.text.minhash_dask`).
3. Decontamination: training documents sharing a 13-gram with an evaluation set (by default the
   test side of every real task named in ``finetune.tasks`` and ``evaluate.external``, and any
   ``dedup.eval_files``) lose the match
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


def item_text(item: dict[str, Any]) -> str:
    """Every string of a task item (context, choices, sentences...), joined: what a leak would copy."""
    out: list[str] = []
    for v in item.values():
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, list):
            out.extend(x for x in v if isinstance(x, str))
    return " ".join(out)


def task_test_sets(params: Any, root: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The test sides of the real evaluation sets the user named, which decontamination is for:
    ``finetune.tasks`` given a local ``path`` (GLUE, Story Cloze, PIQA files, read as finetune
    reads them) and ``evaluate.external`` folders (test.jsonl) or task YAML files whose data are
    local JSON files. Returns ({set name: {"path", "texts"}}, lines saying which named sets have
    no local test file to read: lm-eval task names and Hub data sets). The embedded tasks are
    built from the mix's validation split, held out from training by construction."""
    from pipeline.eval.loaders import DEFAULT_FILES, _read_local, to_item

    sets: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    for name, spec in params.finetune.tasks.items():
        if spec.path is None:
            continue
        base = Path(spec.path) if Path(spec.path).is_absolute() else root / spec.path
        if not base.exists():
            skipped.append(f"finetune.tasks.{name}: {spec.path} (a Hub data set, no local test file)")
            continue
        path = base if base.is_file() else base / (spec.test or DEFAULT_FILES[spec.kind][1])
        if not path.is_file():
            raise LineageError(f"finetune.tasks.{name}: {path} not found (set `test:` to its file name)")
        rows = _read_local(spec.kind, path)
        items = [to_item(spec.kind, r, f"{path}: row {i + 1}") for i, r in enumerate(rows)]
        sets[f"finetune/{name}"] = {"path": str(path), "texts": [item_text(it) for it in items]}
    for e in params.evaluate.external:
        path = Path(e) if Path(e).is_absolute() else root / e
        files: list[Path] = []
        if path.is_dir():
            files = [path / "test.jsonl"]
        elif path.suffix in (".yaml", ".yml") and path.is_file():
            files = _yaml_test_files(path)
            if not files:
                skipped.append(f"evaluate.external: {e} (its data are not local JSON files)")
        else:
            skipped.append(f"evaluate.external: {e} (an lm-eval task name, no local test file)")
        texts: list[str] = []
        for f in files:
            if not f.is_file():
                raise LineageError(f"evaluate.external: {f} not found")
            texts.extend(item_text(row) for _, row in iter_jsonl(f))
        if files:
            sets[f"evaluate/{path.stem if path.is_file() else path.name}"] = {
                "path": ", ".join(map(str, files)),
                "texts": texts,
            }
    return sets, skipped


def _yaml_test_files(path: Path) -> list[Path]:
    """The local JSON(L) files of an lm-eval task YAML's test split (``dataset_path: json``)."""
    import yaml

    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise LineageError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(spec, dict) or spec.get("dataset_path") != "json":
        return []
    files = ((spec.get("dataset_kwargs") or {}).get("data_files") or {}).get(spec.get("test_split") or "test")
    if files is None:
        return []
    return [
        p if p.is_absolute() else path.parent / p
        for p in map(Path, [files] if isinstance(files, str) else files)
    ]


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
