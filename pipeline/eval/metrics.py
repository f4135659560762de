"""Task metrics, each with its chance level and a 95% interval, so a score near chance at toy
scale reads as what it is.

Accuracy gets a Wilson score interval (exact enough at n of a few hundred, and never outside
[0, 1]); F1 and Matthews correlation a percentile bootstrap over items; Pearson and Spearman the
Fisher z interval. Chance: the majority class for accuracy (what always guessing it scores; 1/K
for balanced K-way choices), the F1 of always answering "positive", and 0 for correlations.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Z95 = 1.959963984540054


def wilson(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def f1_binary(y: np.ndarray, pred: np.ndarray) -> float:
    tp = float(np.sum((pred == 1) & (y == 1)))
    fp = float(np.sum((pred == 1) & (y == 0)))
    fn = float(np.sum((pred == 0) & (y == 1)))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def f1_macro(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    return float(
        np.mean([f1_binary((y == c).astype(int), (pred == c).astype(int)) for c in range(n_classes)])
    )


def mcc(y: np.ndarray, pred: np.ndarray) -> float:
    """Matthews correlation of binary labels (0 when a row or column of the confusion matrix is empty)."""
    tp = float(np.sum((pred == 1) & (y == 1)))
    tn = float(np.sum((pred == 0) & (y == 0)))
    fp = float(np.sum((pred == 1) & (y == 0)))
    fn = float(np.sum((pred == 0) & (y == 1)))
    denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denom if denom else 0.0


def _rank(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    for v in np.unique(x):  # ties share their mean rank
        m = x == v
        if m.sum() > 1:
            ranks[m] = ranks[m].mean()
    return ranks


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(_rank(np.asarray(x, float)), _rank(np.asarray(y, float)))


def fisher_interval(r: float, n: int) -> tuple[float, float]:
    if n <= 3:
        return (float("nan"), float("nan"))
    z = math.atanh(max(-0.999999, min(0.999999, r)))
    half = Z95 / math.sqrt(n - 3)
    return (math.tanh(z - half), math.tanh(z + half))


def bootstrap(fn, y: np.ndarray, pred: np.ndarray, seed: int, iters: int = 1000) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    n = len(y)
    vals = [fn(y[idx], pred[idx]) for idx in (rng.integers(0, n, n) for _ in range(iters))]
    return (float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5)))


def classification_metrics(y: np.ndarray, pred: np.ndarray, names: tuple[str, ...], n_classes: int,
                           seed: int = 0, chance_acc: float | None = None) -> dict[str, Any]:  # fmt: skip
    """``{metric: {value, low, high, chance}}`` for the requested metric names."""
    y, pred = np.asarray(y), np.asarray(pred)
    n = len(y)
    out: dict[str, Any] = {"n": n}
    counts = np.bincount(y.astype(int), minlength=n_classes) if n else np.zeros(n_classes)
    for name in names:
        if name == "acc":
            k = float(np.sum(pred == y))
            lo, hi = wilson(k, n)
            chance = chance_acc if chance_acc is not None else (counts.max() / n if n else float("nan"))
            out["acc"] = {
                "value": k / n if n else float("nan"),
                "low": lo,
                "high": hi,
                "chance": float(chance),
            }
        elif name == "f1":
            if n_classes == 2:
                fn = f1_binary
                p = counts[1] / n if n else 0.0
                chance = 2 * p / (1 + p) if p else 0.0  # always answering the positive class
            else:

                def fn(a, b):
                    return f1_macro(a, b, n_classes)

                chance = f1_macro(y, np.full_like(y, int(counts.argmax())), n_classes) if n else 0.0
            lo, hi = bootstrap(fn, y, pred, seed)
            out["f1"] = {"value": fn(y, pred), "low": lo, "high": hi, "chance": float(chance)}
        elif name == "mcc":
            lo, hi = bootstrap(mcc, y, pred, seed)
            out["mcc"] = {"value": mcc(y, pred), "low": lo, "high": hi, "chance": 0.0}
    return out


def regression_metrics(y: np.ndarray, pred: np.ndarray, names: tuple[str, ...]) -> dict[str, Any]:
    y, pred = np.asarray(y, float), np.asarray(pred, float)
    out: dict[str, Any] = {"n": len(y)}
    for name in names:
        r = pearson(pred, y) if name == "pearson" else spearman(pred, y)
        lo, hi = fisher_interval(r, len(y))
        out[name] = {"value": r, "low": lo, "high": hi, "chance": 0.0}
    return out
