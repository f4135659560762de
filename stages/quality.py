"""quality: GPT-3's logistic-regression quality classifier and Pareto keep rule over web documents."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from pipeline.errors import LineageError
from pipeline.io import list_shards, read_rows, write_csv
from pipeline.stage import StageContext, main, make_dirs
from pipeline.text.quality import save_classifier, score_shard, train_classifier


def histogram_figure(scores: dict[str, list[float]], bins: int, negatives: list[str]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    edges = np.linspace(0, 1, bins + 1)
    for src, vals in sorted(scores.items()):
        ax.hist(
            vals,
            bins=edges,
            histtype="step",
            density=True,
            label=f"{src} ({'web' if src in negatives else 'ref'})",
        )
    ax.set_xlabel("quality score P(reference | text)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
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
    hist_rows = [
        {
            "score": round(float((edges[i] + edges[i + 1]) / 2), 4),
            **{src: int(c[i]) for src, c in counts.items()},
        }
        for i in range(cfg.histogram_bins)
    ]
    write_csv(ctx.out / "plots" / "score_hist.csv", hist_rows)
    write_csv(
        ctx.out / "plots" / "roc.csv",
        [{"fpr": float(a), "tpr": float(b)} for a, b in zip(fpr, tpr, strict=True)],
    )
    fig = histogram_figure(scores, cfg.histogram_bins, cfg.negatives)
    fig.savefig(ctx.out / "score_histogram.png", dpi=100)
    ctx.tracker.log_figure(fig, "score_histogram.png")

    web_total = sum(total.get(s, 0) for s in cfg.negatives)
    web_kept = sum(kept.get(s, 0) for s in cfg.negatives)
    if sum(kept.values()) == 0:
        raise LineageError(
            f"quality: no document left of {sum(total.values())}; lower quality.alpha to keep more web text"
        )
    return {
        "classifier": held_out,
        "docs_in": sum(total.values()),
        "docs_out": sum(kept.values()),
        "web_keep_rate": web_kept / web_total if web_total else 1.0,
        "sources": {
            s: {
                "docs": total[s],
                "kept": kept[s],
                "keep_rate": kept[s] / total[s],
                "mean_score": float(np.mean(scores[s])),
            }
            for s in sorted(total)
        },
    }


if __name__ == "__main__":
    sys.exit(
        main(
            "quality",
            body,
            headline=["auc=classifier/auc", "quality_docs=docs_out", "web_keep=web_keep_rate"],
        )
    )
