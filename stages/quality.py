"""quality: GPT-3's logistic-regression quality classifier and Pareto keep rule over web documents."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from pipeline.errors import LineageError
from pipeline.io import list_shards, read_rows, write_csv
from pipeline.stage import StageContext, main, make_dirs
from pipeline.text.quality import keep_probability, save_classifier, score_shard, train_classifier


def histogram_figure(scores: dict[str, list[float]], bins: int, negatives: list[str], alpha: float) -> Any:
    """Score density per source (a source with page kinds: per kind), under the keep curve at alpha."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    edges = np.linspace(0, 1, bins + 1)
    split = {k.split(":")[0] for k in scores if ":" in k}
    for src, vals in sorted(scores.items()):
        if src in split:
            continue  # drawn per page kind
        base = src.split(":")[0]
        ax.hist(
            vals,
            bins=edges,
            histtype="step",
            density=True,
            label=f"{src} ({'web' if base in negatives else 'ref'})",
        )
    ax.set_xlabel("quality score P(reference | text)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8, loc="upper left")
    twin = ax.twinx()
    s = np.linspace(0, 1, 201)
    twin.plot(s, keep_probability(s, alpha), "k--", lw=1.2, label=f"P(keep | score), alpha={alpha:g}")
    twin.set_ylim(0, 1.02)
    twin.set_ylabel("keep probability")
    twin.legend(fontsize=8, loc="upper center")
    fig.tight_layout()
    return fig


def body(ctx: StageContext) -> dict[str, Any]:
    cfg, seed = ctx.params.quality, ctx.params.common.seed
    shards = [str(p) for p in list_shards(ctx.input("clean", "docs"))]
    # positives: cleaned reference documents; negatives: every extracted web document, kept or
    # dropped by clean's heuristics (GPT-3 used unfiltered Common Crawl as the negative class)
    pos: list[dict[str, Any]] = []
    neg: list[dict[str, Any]] = []
    clean_dir = ctx.input("clean")
    dropped = list_shards(clean_dir / "dropped") if (clean_dir / "dropped").is_dir() else []
    for shard in [*shards, *map(str, dropped)]:
        for r in read_rows(shard, ["id", "source", "text"]):
            if not r["text"].strip():
                continue
            if r["source"] in cfg.positives and shard in shards:
                pos.append(r)
            elif r["source"] in cfg.negatives:
                neg.append(r)
    for key, texts in (("quality.positives", pos), ("quality.negatives", neg)):
        if len(texts) < 5:
            raise LineageError(
                f"{key}: only {len(texts)} cleaned documents from {getattr(cfg, key.split('.')[1])}; need at least 5 to train"
            )

    clf, held_out, y_te, s_te = train_classifier(
        [r["text"] for r in pos], [r["text"] for r in neg], cfg, seed
    )
    oof = {r["id"]: float(s) for r, s in zip(pos + neg, s_te, strict=True)}
    classifier = ctx.out / "classifier.skops"
    save_classifier(clf, classifier)
    ctx.tracker.log_artifact(classifier)

    make_dirs(ctx.out, "docs", "dropped")
    results = ctx.orch.map(
        score_shard,
        list(enumerate(shards)),
        str(ctx.out),
        str(classifier),
        oof,
        cfg.negatives,
        cfg,
        seed,
        name="score_shard",
    )
    scores: dict[str, list[float]] = {}
    kept: dict[str, int] = {}
    total: dict[str, int] = {}
    for r in results:
        for src, vals in r["scores"].items():
            scores.setdefault(src, []).extend(vals)
            kept[src] = kept.get(src, 0) + r["kept"][src]
            total[src] = total.get(src, 0) + r["total"][src]

    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y_te, s_te)
    edges = np.linspace(0, 1, cfg.histogram_bins + 1)
    counts = {src: np.histogram(vals, bins=edges)[0] for src, vals in sorted(scores.items())}
    # documents per score bin for each source and, for a source with page kinds, each "source:kind";
    # keep_probability is the Pareto rule's P(keep | score) at this run's alpha, for the curve over it
    centers = (edges[:-1] + edges[1:]) / 2
    hist_rows = [
        {
            "score": round(float(centers[i]), 4),
            **{src: int(c[i]) for src, c in counts.items()},
            "keep_probability": round(float(keep_probability(centers[i], cfg.alpha)), 6),
        }
        for i in range(cfg.histogram_bins)
    ]
    write_csv(ctx.out / "plots" / "score_hist.csv", hist_rows)
    write_csv(
        ctx.out / "plots" / "roc.csv",
        [{"fpr": float(a), "tpr": float(b)} for a, b in zip(fpr, tpr, strict=True)],
    )
    fig = histogram_figure(scores, cfg.histogram_bins, cfg.negatives, cfg.alpha)
    fig.savefig(ctx.out / "score_histogram.png", dpi=100)
    ctx.tracker.log_figure(fig, "score_histogram.png")

    web_total = sum(total.get(s, 0) for s in cfg.negatives)
    web_kept = sum(kept.get(s, 0) for s in cfg.negatives)
    sources = sorted(k for k in total if ":" not in k)  # "source:kind" keys count documents again
    by_kind: dict[str, list[str]] = {}
    for key in total:
        src, _, kind = key.partition(":")
        if kind and src in cfg.negatives:
            by_kind.setdefault(kind, []).append(key)
    docs_in, docs_out = sum(total[s] for s in sources), sum(kept[s] for s in sources)
    if docs_out == 0:
        raise LineageError(
            f"quality: no document left of {docs_in}; lower quality.alpha to keep more web text"
        )
    return {
        "classifier": held_out,
        "docs_in": docs_in,
        "docs_out": docs_out,
        "web_keep_rate": web_kept / web_total if web_total else 1.0,
        "sources": {s: _keep_stats(kept[s], total[s], scores[s]) for s in sources},
        # the filtered (web) documents by page kind, where their source tags it (embedded web: api / prose)
        "page_kinds": {
            kind: _keep_stats(sum(kept[k] for k in keys), sum(total[k] for k in keys),
                              [v for k in keys for v in scores[k]])
            for kind, keys in sorted(by_kind.items())
        },
    }  # fmt: skip


def _keep_stats(kept: int, total: int, scores: list[float]) -> dict[str, Any]:
    return {"docs": total, "kept": kept, "keep_rate": kept / total if total else 0.0,
            "mean_score": float(np.mean(scores)) if scores else float("nan")}  # fmt: skip


if __name__ == "__main__":
    sys.exit(
        main(
            "quality",
            body,
            headline=["auc=classifier/auc", "quality_docs=docs_out", "web_keep=web_keep_rate"],
        )
    )
