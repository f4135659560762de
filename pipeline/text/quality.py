"""GPT-3's quality filter (Brown et al. 2020, App. A).

A logistic regression on hashed whitespace-token features (raw term counts, as Spark's HashingTF
that GPT-3 used, or L2-normalised ones) separates curated reference text
(positives) from raw web text (negatives). Each web document is then kept when
``np.random.pareto(alpha) > 1 - score``, so high scores are almost always kept while low scores
still get through now and then: P(keep | s) = (2 - s) ** -alpha.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.config import QualityConfig
from pipeline.errors import LineageError
from pipeline.io import read_parquet, write_table
from pipeline.text.clean import CLEAN_SCHEMA

SCORED_SCHEMA = CLEAN_SCHEMA.append(pa.field("score", pa.float64()))


def make_classifier(cfg: QualityConfig, seed: int) -> Any:
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(
        HashingVectorizer(
            n_features=cfg.n_features, lowercase=True, token_pattern=r"(?u)\S+", alternate_sign=False,
            norm=None if cfg.features == "counts" else "l2",
        ),
        # Newton-CG: a few second-order steps, where L-BFGS needs ~150 on raw counts (their scale
        # makes the problem ill-conditioned); the same L2-regularised optimum either way
        LogisticRegression(
            C=cfg.C, max_iter=cfg.max_iter, random_state=seed, solver="newton-cg",
            class_weight="balanced" if cfg.class_weight == "balanced" else None,
        ),
    )  # fmt: skip


def train_classifier(
    positives: list[str], negatives: list[str], cfg: QualityConfig, seed: int
) -> tuple[Any, dict[str, float], np.ndarray, np.ndarray]:
    """Fit the classifier and score its own training documents out of fold.

    A model with 2^18 weights memorises its training set, so in-sample scores would make every
    negative look hopeless. Each document is scored by a model fitted on the other folds
    (k = 1 / test_fraction); metrics come from those held-out scores. The returned classifier is
    fitted on everything, for documents outside the training set.
    Returns (classifier, held-out metrics, labels, held-out scores) in positives+negatives order.
    """
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    texts = positives + negatives
    labels = np.array([1] * len(positives) + [0] * len(negatives))
    k = max(2, min(round(1 / cfg.test_fraction), int(np.bincount(labels).min())))
    scores = np.zeros(len(texts))
    for train_idx, test_idx in StratifiedKFold(k, shuffle=True, random_state=seed).split(texts, labels):
        clf = make_classifier(cfg, seed).fit([texts[i] for i in train_idx], labels[train_idx])
        scores[test_idx] = clf.predict_proba([texts[i] for i in test_idx])[:, 1]
    pred = (scores >= 0.5).astype(int)
    metrics = {
        "auc": float(roc_auc_score(labels, scores)),
        "precision": float(precision_score(labels, pred, zero_division=0)),
        "recall": float(recall_score(labels, pred, zero_division=0)),
        "f1": float(f1_score(labels, pred, zero_division=0)),
        "folds": k,
        "positives": len(positives),
        "negatives": len(negatives),
    }
    return make_classifier(cfg, seed).fit(texts, labels), metrics, labels, scores


def pareto_keep(scores: np.ndarray, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """GPT-3's rule: keep a document when a Pareto(alpha) draw exceeds 1 - score."""
    return rng.pareto(alpha, size=len(scores)) > 1.0 - np.asarray(scores)


def keep_probability(score: Any, alpha: float) -> Any:
    """P(keep | score) of :func:`pareto_keep` (a float or an array): numpy's Pareto is Lomax,
    P(X > x) = (1 + x)^-alpha, so P(keep | score) = (2 - score)^-alpha."""
    return (2.0 - score) ** -alpha


def save_classifier(clf: Any, path: Path) -> None:
    import skops.io as sio

    tmp = path.with_name(f".{path.name}.tmp")
    sio.dump(clf, tmp)
    tmp.replace(path)


def load_classifier(path: Path) -> Any:
    """Load a classifier this stage wrote (skops: no pickle, only the sklearn/numpy types we use).
    Cached per process and file version, so scoring many shards on one worker loads it once."""
    stat = Path(path).stat()
    return _load_classifier(str(path), stat.st_mtime_ns, stat.st_size)


# Every type our classifier file legitimately names (what make_classifier builds, fitted), and no other.
# skops trusts many of these by default; listing them all makes the file's whole vocabulary explicit, so a
# replaced file naming anything else (os.system, builtins.eval, another estimator) is refused unread.
ALLOWED_SKOPS_TYPES = frozenset(
    {
        "sklearn.pipeline.Pipeline",
        "sklearn.feature_extraction.text.HashingVectorizer",
        "sklearn.linear_model._logistic.LogisticRegression",
        "numpy.ndarray",
        "numpy.float64",  # HashingVectorizer's dtype parameter, stored as a type
        *(f"builtins.{t}" for t in ("dict", "list", "tuple", "str", "int", "float", "bool", "NoneType")),
    }
)


def _skops_types(path: str) -> set[str]:
    """``module.class`` of every node in the file's schema.json, read as JSON without building anything."""
    import json
    import zipfile

    found: set[str] = set()
    stack: list[Any] = [json.loads(zipfile.ZipFile(path).read("schema.json"))]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "__class__" in node:
                found.add(f"{node.get('__module__')}.{node['__class__']}")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


@functools.lru_cache(maxsize=4)
def _load_classifier(path: str, mtime_ns: int, size: int) -> Any:
    """Refuse the file unless every type it names is on the allowlist, by our reading of the schema and
    by skops' own; then load it trusting exactly those types (skops refuses anything else itself)."""
    import zipfile

    import skops.io as sio

    rebuild = "rerun `dvc repro -f quality` to rebuild it"
    try:
        untrusted = set(sio.get_untrusted_types(file=path))
        bad = sorted((_skops_types(path) | untrusted) - ALLOWED_SKOPS_TYPES)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise LineageError(
            f"{path}: not a readable skops file ({type(e).__name__}: {e}); {rebuild}"
        ) from None
    if bad:
        raise LineageError(f"{path}: refuses to load untrusted type(s) {bad}; {rebuild}")
    return sio.load(path, trusted=sorted(untrusted))


def score_shard(
    item: tuple[int, str],
    out_dir: str,
    classifier: str,
    held_out: dict[str, float],
    negatives: list[str],
    cfg: QualityConfig,
    seed: int,
) -> dict[str, Any]:
    """Score every document of one shard (held-out score where it was a training document) and
    filter the negatives' documents with the Pareto rule. Stays in Arrow: no per-row Python dicts."""

    index, shard = item
    table = read_parquet(shard)
    if table.num_rows == 0:
        return {"scores": {}, "kept": {}, "total": {}}
    ids = table.column("id").to_pylist()
    sources = np.array(table.column("source").to_pylist(), dtype=object)
    seen = np.array([i in held_out for i in ids])
    scores = np.array([held_out.get(i, np.nan) for i in ids], dtype=np.float64)
    if not seen.all():
        texts = table.column("text").filter(pa.array(~seen)).to_pylist()
        scores[~seen] = load_classifier(Path(classifier)).predict_proba(texts)[:, 1]
    # numpy's SIMD reductions can differ in the last bits from run to run (memory alignment): six
    # decimals make the scores, the keep decisions and so every output after this stage repeatable
    scores = np.round(scores, 6)
    rng = np.random.default_rng([seed, index])  # per shard, so the result does not depend on task order
    keep = pareto_keep(scores, cfg.alpha, rng) | ~np.isin(sources, list(negatives))
    table = table.append_column("score", pa.array(scores, pa.float64())).cast(SCORED_SCHEMA)
    name = Path(shard).name
    if keep.any():
        write_table(Path(out_dir) / "docs" / name, table.filter(pa.array(keep)))
    if not keep.all():
        write_table(Path(out_dir) / "dropped" / name, table.filter(pa.array(~keep)))
    # a source whose documents carry a page kind (the embedded web: api / prose) is also counted per
    # kind, under "source:kind"
    kinds = table.column("page_kind").to_pylist() if "page_kind" in table.column_names else [None] * len(ids)
    groups = np.array([f"{s}:{k}" if k else "" for s, k in zip(sources, kinds, strict=True)], dtype=object)
    per_scores: dict[str, list[float]] = {}
    kept_n: dict[str, int] = {}
    total_n: dict[str, int] = {}
    for key, column in [(src, sources) for src in np.unique(sources)] + [
        (g, groups) for g in np.unique(groups) if g
    ]:
        mask = column == key
        per_scores[key] = scores[mask].tolist()
        total_n[key] = int(mask.sum())
        kept_n[key] = int((mask & keep).sum())
    return {"scores": per_scores, "kept": kept_n, "total": total_n}
