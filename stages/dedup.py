"""dedup: exact + MinHash LSH near-duplicate removal within and across sources, then 13-gram
decontamination against the evaluation sets named in params.

Signatures are mapped over shards; the LSH index is datasketch's MinHashLSH in this process
(``dedup.index: lsh``) or band keys shuffled and grouped on a Dask cluster (``distributed``: the
one at ``common.dask_address``, else a local one of ``common.workers`` processes)."""

from __future__ import annotations

import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.config import DedupConfig
from pipeline.io import list_shards, read_rows, write_table
from pipeline.stage import StageContext, main, make_dirs
from pipeline.text.dedup import (
    contaminated_ngrams,
    decontaminate,
    eval_ngram_set,
    exact_key,
    minhash_signatures,
    near_duplicate_clusters,
    read_eval_texts,
)
from pipeline.text.minhash_dask import dask_client, distributed_clusters
from pipeline.text.quality import SCORED_SCHEMA

CLUSTER_SCHEMA = pa.schema(
    [
        ("cluster", pa.int64()),
        ("kind", pa.string()),
        ("kept_id", pa.string()),
        ("kept_source", pa.string()),
        ("removed_ids", pa.list_(pa.string())),
        ("removed_sources", pa.list_(pa.string())),
        ("jaccard", pa.list_(pa.float64())),
    ]
)


def signature_shard(
    shard: str, work: str, cfg: DedupConfig, eval_grams: set[str], seed: int
) -> dict[str, Any]:
    rows = read_rows(shard, ["id", "source", "text"])
    texts = [r["text"] for r in rows]
    sig_path = Path(work) / (Path(shard).stem + ".npy")
    np.save(sig_path, minhash_signatures(texts, cfg, seed=seed))
    contaminated: Counter[str] = Counter()
    if eval_grams:
        for t in texts:
            contaminated.update(contaminated_ngrams(t, eval_grams, cfg.decontam_ngram))
    return {
        "ids": [r["id"] for r in rows],
        "sources": [r["source"] for r in rows],
        "lengths": [len(t) for t in texts],
        "keys": [exact_key(t) for t in texts],
        "sig": str(sig_path),
        "count": len(rows),
        "eval_df": dict(contaminated),
    }


def write_shard(
    shard: str, out: str, removed: set[str], eval_grams: set[str], frequent: set[str], cfg: DedupConfig
) -> dict[str, Any]:
    kept: list[dict[str, Any]] = []
    stats: Counter[str] = Counter()
    per_source: Counter[str] = Counter()
    for row in read_rows(shard):
        if row["id"] in removed:
            continue
        pieces, matches = (
            decontaminate(row["text"], eval_grams, frequent, cfg) if eval_grams else ([row["text"]], 0)
        )
        if matches:
            stats["docs_contaminated"] += 1
            stats["matches_cut"] += matches
        if pieces is None:
            stats["docs_dropped_too_many_pieces"] += 1
            continue
        if not pieces:
            stats["docs_dropped_no_piece_left"] += 1
            continue
        if matches:
            stats["pieces_out"] += len(pieces)
            stats["chars_removed"] += len(row["text"]) - sum(len(p) for p in pieces)
        for k, piece in enumerate(pieces):
            doc = (
                row if len(pieces) == 1 and not matches else {**row, "id": f"{row['id']}#p{k}", "text": piece}
            )
            kept.append(doc)
            per_source[row["source"]] += 1
    if kept:
        write_table(Path(out) / "docs" / Path(shard).name, kept, SCORED_SCHEMA)
    return {"stats": dict(stats), "sources": dict(per_source)}


def body(ctx: StageContext) -> dict[str, Any]:
    cfg, seed = ctx.params.dedup, ctx.params.common.seed
    shards = [str(p) for p in list_shards(ctx.input("quality", "docs"))]
    eval_texts = read_eval_texts(cfg.eval_files, ctx.root, cfg.eval_text_fields)
    eval_grams = eval_ngram_set(eval_texts, cfg.decontam_ngram)
    work = ctx.out / "_signatures"
    work.mkdir()
    t0 = time.perf_counter()
    parts = ctx.orch.map(signature_shard, shards, str(work), cfg, eval_grams, seed, name="minhash_shard")
    signatures_s = time.perf_counter() - t0

    ids = [i for p in parts for i in p["ids"]]
    sources = [s for p in parts for s in p["sources"]]
    lengths = [n for p in parts for n in p["lengths"]]
    keys = [k for p in parts for k in p["keys"]]
    rank = {s: i for i, s in enumerate(cfg.priority)}
    # lower survives: priority list first, then longer documents, then id for a stable tie-break
    order_key = sorted(
        range(len(ids)), key=lambda i: (rank.get(sources[i], len(rank)), sources[i], -lengths[i], ids[i])
    )
    order = [0] * len(ids)
    for pos, i in enumerate(order_key):
        order[i] = pos

    clusters: list[dict[str, Any]] = []
    by_key: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        by_key.setdefault(k, []).append(i)
    exact_removed: set[int] = set()
    for members in by_key.values():
        if len(members) > 1:
            members.sort(key=lambda i: order[i])
            clusters.append(
                {
                    "kind": "exact",
                    "kept": members[0],
                    "removed": members[1:],
                    "jaccard": [1.0] * (len(members) - 1),
                }
            )
            exact_removed.update(members[1:])

    t0 = time.perf_counter()
    if cfg.index == "distributed":
        alive = np.ones(len(ids), bool)
        alive[sorted(exact_removed)] = False
        with dask_client(ctx.params.common) as client:
            near = distributed_clusters(
                [p["sig"] for p in parts],
                [p["count"] for p in parts],
                alive,
                order,
                cfg,
                client,
                cfg.partitions,
            )
    else:
        survivors = [i for i in range(len(ids)) if i not in exact_removed]
        sigs = (
            np.concatenate([np.load(p["sig"]) for p in parts])
            if parts
            else np.zeros((0, cfg.num_perm), np.uint32)
        )
        near = [
            {**c, "kept": survivors[c["kept"]], "removed": [survivors[r] for r in c["removed"]]}
            for c in near_duplicate_clusters(sigs[survivors], [order[i] for i in survivors], cfg, seed)
        ]
    near_dup_s = time.perf_counter() - t0
    clusters.extend({**c, "kind": "near"} for c in near)
    shutil.rmtree(work)
    near_removed = {r for c in clusters if c["kind"] == "near" for r in c["removed"]}
    removed_ids = {ids[i] for i in exact_removed | near_removed}

    write_table(
        ctx.out / "clusters.parquet",
        [
            {
                "cluster": n, "kind": c["kind"], "kept_id": ids[c["kept"]], "kept_source": sources[c["kept"]],
                "removed_ids": [ids[r] for r in c["removed"]], "removed_sources": [sources[r] for r in c["removed"]],
                "jaccard": c["jaccard"],
            }
            for n, c in enumerate(clusters)
        ],
        CLUSTER_SCHEMA,
    )  # fmt: skip

    eval_df: Counter[str] = Counter()
    for p in parts:
        eval_df.update(p["eval_df"])
    frequent = {g for g, n in eval_df.items() if n > cfg.decontam_max_doc_freq}
    make_dirs(ctx.out, "docs")
    written = ctx.orch.map(
        write_shard, shards, str(ctx.out), removed_ids, eval_grams, frequent, cfg, name="write_shard"
    )
    stats: Counter[str] = Counter()
    out_sources: Counter[str] = Counter()
    for w in written:
        stats.update(w["stats"])
        out_sources.update(w["sources"])
    in_sources = Counter(sources)
    removed_sources = Counter(sources[i] for i in exact_removed | near_removed)
    n_in = len(ids)
    return {
        "perf": {"signatures_s": round(signatures_s, 3), "near_duplicates_s": round(near_dup_s, 3)},
        "docs_in": n_in,
        "docs_out": sum(out_sources.values()),
        "exact_duplicates": len(exact_removed),
        "near_duplicates": len(near_removed),
        "duplicate_rate": (len(exact_removed) + len(near_removed)) / n_in if n_in else 0.0,
        "clusters": len(clusters),
        "cross_source_clusters": sum(
            1 for c in clusters if len({sources[c["kept"]], *(sources[r] for r in c["removed"])}) > 1
        ),
        "decontamination": {
            "eval_texts": len(eval_texts),
            "eval_ngrams": len(eval_grams),
            "frequent_ngrams_ignored": len(frequent),
            **{
                k: stats.get(k, 0)
                for k in (
                    "docs_contaminated",
                    "matches_cut",
                    "pieces_out",
                    "chars_removed",
                    "docs_dropped_too_many_pieces",
                    "docs_dropped_no_piece_left",
                )
            },
        },  # fmt: skip
        "sources": {
            s: {"in": in_sources[s], "duplicates": removed_sources[s], "out": out_sources[s]}
            for s in sorted(in_sources)
        },
    }


if __name__ == "__main__":
    sys.exit(
        main(
            "dedup",
            body,
            headline=[
                "dedup_docs=docs_out",
                "dup_rate=duplicate_rate",
                "clusters",
                "contaminated=decontamination/docs_contaminated",
            ],
        )
    )
