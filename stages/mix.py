"""mix: weighted sampling of the deduplicated sources into train/validation parquet shards."""

from __future__ import annotations

import logging
import sys
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.errors import LineageError
from pipeline.io import list_shards, read_rows, write_csv, write_shards
from pipeline.stage import StageContext, main
from pipeline.text.mix import count_tokens, plan_mix, sample_source, split_validation, truncate_tokens

MIX_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("text", pa.string()),
        ("tokens", pa.int64()),
        ("epoch", pa.int32()),
    ]
)


def body(ctx: StageContext) -> dict[str, Any]:
    cfg, common = ctx.params.mix, ctx.params.common
    rng = np.random.default_rng(common.seed)
    by_source: dict[str, list[dict[str, Any]]] = {}
    for shard in list_shards(ctx.input("dedup", "docs")):
        for r in read_rows(shard, ["id", "source", "text"]):
            by_source.setdefault(r["source"], []).append(r)
    if not by_source:
        raise LineageError("mix: no documents left after dedup; nothing to mix")
    # a weighted source that upstream filters emptied is skipped and its weight spread over the rest
    empty = sorted(s for s, w in cfg.weights.items() if w > 0 and not by_source.get(s))
    weights = {s: w for s, w in cfg.weights.items() if w > 0 and s not in empty}
    if not weights:
        raise LineageError(f"mix.weights: every weighted source is empty after dedup ({empty})")
    for s in empty:
        logging.getLogger("lineage.mix").warning(
            "mix: skipping source %s (weight %s): no documents left after quality/dedup", s, cfg.weights[s]
        )
    weights = {s: w / sum(weights.values()) for s, w in weights.items()}
    unweighted = sorted(set(by_source) - set(weights))

    train_docs: dict[str, list[dict[str, Any]]] = {}
    val_rows: list[dict[str, Any]] = []
    for s in sorted(by_source):
        if s in unweighted:
            continue
        docs = sorted(by_source[s], key=lambda d: d["id"])
        mask = split_validation(len(docs), cfg.val_fraction, cfg.min_val_docs, rng)
        for d, is_val in zip(docs, mask, strict=True):
            d["tokens"] = count_tokens(d["text"])
            if is_val:
                val_rows.append({**d, "epoch": 0})
        train_docs[s] = [d for d, is_val in zip(docs, mask, strict=True) if not is_val]

    total, targets = plan_mix(train_docs, weights, cfg.total_tokens)
    train_rows: list[dict[str, Any]] = []
    per_source: dict[str, Any] = {}
    for s, docs in train_docs.items():
        tokens = [d["tokens"] for d in docs]
        picks = sample_source(tokens, targets[s], rng)
        out_tokens = 0
        for i, epoch, take in picks:
            d = docs[i]
            text = d["text"] if take == d["tokens"] else truncate_tokens(d["text"], take)
            train_rows.append(
                {"id": f"{d['id']}@{epoch}", "source": s, "text": text, "tokens": take, "epoch": epoch}
            )
            out_tokens += take
        available = sum(tokens)
        per_source[s] = {
            "weight": weights[s],
            "docs_available": len(docs),
            "tokens_available": available,
            "tokens_target": targets[s],
            "tokens_out": out_tokens,
            "epochs": targets[s] / available if available else 0.0,
            "val_docs": sum(1 for r in val_rows if r["source"] == s),
            "val_tokens": sum(r["tokens"] for r in val_rows if r["source"] == s),
        }
    tokens_out = sum(v["tokens_out"] for v in per_source.values())
    for v in per_source.values():
        v["share_out"] = v["tokens_out"] / tokens_out if tokens_out else 0.0

    order = rng.permutation(len(train_rows))
    write_shards(ctx.out / "train", (train_rows[i] for i in order), common.shard_size, schema=MIX_SCHEMA)
    write_shards(ctx.out / "val", val_rows, common.shard_size, schema=MIX_SCHEMA)
    write_csv(
        ctx.out / "plots" / "shares.csv",
        [{"source": s, "weight": v["weight"], "share_out": round(v["share_out"], 6), "epochs": round(v["epochs"], 4)}
         for s, v in per_source.items()],
    )  # fmt: skip
    return {
        "total_tokens": total,
        "train_docs": len(train_rows),
        "train_tokens": tokens_out,
        "val_docs": len(val_rows),
        "val_tokens": sum(r["tokens"] for r in val_rows),
        "sources_left_out": len(unweighted),
        "sources_skipped_empty": len(empty),
        "sources": per_source,
    }


if __name__ == "__main__":
    sys.exit(main("mix", body, headline=["train_tokens", "epochs/*=sources/*/epochs"]))
