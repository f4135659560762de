"""dedup: exact + MinHash LSH near-duplicate removal within and across sources, then 13-gram
decontamination against the evaluation sets named in params: by default the test side of every
real task given to ``finetune`` and ``evaluate`` (and ``dedup.eval_files``).

Signatures are mapped over shards; the LSH index is datasketch's MinHashLSH in this process
(``dedup.index: lsh``) or band keys shuffled and grouped on a Dask cluster (``distributed``: the
one at ``common.dask_address``, else a local one of ``common.workers`` processes)."""

from __future__ import annotations

import hashlib
import shutil
import sys
import time
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import DedupConfig
from pipeline.io import list_shards, read_parquet, write_table
from pipeline.stage import StageContext, main, make_dirs
from pipeline.text.dedup import (
    contaminated_ngrams,
    decontaminate,
    eval_ngram_set,
    exact_key,
    minhash_signatures,
    near_duplicate_clusters,
    read_eval_texts,
    task_test_sets,
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
    shard: str, work: str, cfg: DedupConfig, eval_file: str | None, seed: int
) -> dict[str, Any]:
    rows = read_parquet(shard, ["id", "source", "text"])
    texts = rows.column("text").to_pylist()
    sig_path = Path(work) / (Path(shard).stem + ".npy")
    np.save(sig_path, minhash_signatures(texts, cfg, seed=seed))
    contaminated: Counter[str] = Counter()
    eval_grams = load_ngrams(eval_file)
    if eval_grams:
        for t in texts:
            contaminated.update(contaminated_ngrams(t, eval_grams, cfg.decontam_ngram))
    return {
        "ids": rows.column("id").to_pylist(),
        "sources": rows.column("source").to_pylist(),
        "lengths": [len(t) for t in texts],
        "keys": [exact_key(t) for t in texts],
        "sig": str(sig_path),
        "count": len(texts),
        "eval_df": dict(contaminated),
    }


def write_shard(
    job: tuple[str, list[str]], out: str, cut_file: str | None, cfg: DedupConfig
) -> dict[str, Any]:
    """Shard ``job[0]`` without the documents ``job[1]`` names, cut where they share an n-gram of
    ``cut_file`` (the evaluation n-grams that decontamination acts on)."""
    shard, removed = job
    table = read_parquet(shard)
    if removed:
        table = table.filter(pc.invert(pc.is_in(table.column("id"), pa.array(removed, pa.string()))))
    cut_grams = load_ngrams(cut_file)
    stats: Counter[str] = Counter()
    per_source: Counter[str] = Counter()
    if not cut_grams:  # nothing to cut: the shard's rows as they are, without a trip through Python
        per_source.update(table.column("source").to_pylist())
        if table.num_rows:
            write_table(Path(out) / "docs" / Path(shard).name, table.cast(SCORED_SCHEMA))
        return {"stats": {}, "sources": dict(per_source)}
    kept: list[dict[str, Any]] = []
    for row in table.to_pylist():
        pieces, matches = decontaminate(row["text"], cut_grams, set(), cfg)
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


# Documents per task: an orchestrator's task costs ~0.1 s of bookkeeping, a whole shard of short
# documents about as much; tasks of whole batches of shards keep that cost a small share.
TASK_DOCS = 20_000


def shard_batches(shards: list[str], shard_size: int, workers: int) -> list[list[str]]:
    """Consecutive shards in batches of about ``TASK_DOCS`` documents, at least one per worker."""
    per_task = max(1, min(TASK_DOCS // shard_size, -(-len(shards) // workers)))
    return [shards[i : i + per_task] for i in range(0, len(shards), per_task)]


def signature_batch(batch: list[str], *args: Any) -> list[dict[str, Any]]:
    return [signature_shard(shard, *args) for shard in batch]


def write_batch(jobs: list[tuple[str, list[str]]], *args: Any) -> list[dict[str, Any]]:
    return [write_shard(job, *args) for job in jobs]


@lru_cache(maxsize=4)
def load_ngrams(path: str | None) -> frozenset[str]:
    """The n-grams in ``path`` (one a line), read once per process. The shard tasks get the path,
    not the set: an orchestrator walks every argument of every task (a set of 10^5 n-grams would
    cost it more than the task)."""
    if not path:
        return frozenset()
    return frozenset(Path(path).read_text(encoding="utf-8").split("\n")) - {""}


def save_ngrams(grams: set[str], path: Path) -> str | None:
    """``grams`` one a line in a file named after ``path`` and a hash of its content (so a process's
    cached copy of an earlier run's file under the same name is never read for this one)."""
    if not grams:
        return None
    text = "\n".join(sorted(grams))
    digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    path = path.with_name(f"{path.stem}-{digest}{path.suffix}")
    path.write_text(text, encoding="utf-8")
    return str(path)


def body(ctx: StageContext) -> dict[str, Any]:
    t_stage = time.perf_counter()
    cfg, seed = ctx.params.dedup, ctx.params.common.seed
    shards = [str(p) for p in list_shards(ctx.input("quality", "docs"))]
    eval_sets = {f"eval_files/{f}": {"path": f, "texts": read_eval_texts([f], ctx.root, cfg.eval_text_fields)}
                 for f in cfg.eval_files}  # fmt: skip
    skipped: list[str] = []
    if cfg.decontaminate_tasks:
        task_sets, skipped = task_test_sets(ctx.params, ctx.root)
        eval_sets.update(task_sets)
    set_grams = {name: eval_ngram_set(s["texts"], cfg.decontam_ngram) for name, s in eval_sets.items()}
    eval_texts = [t for s in eval_sets.values() for t in s["texts"]]
    eval_grams = set().union(*set_grams.values())
    work = ctx.out / "_signatures"
    work.mkdir()
    t0 = time.perf_counter()
    eval_file = save_ngrams(eval_grams, work / "eval_ngrams.txt")
    batches = shard_batches(shards, ctx.params.common.shard_size, ctx.params.common.workers)
    parts = [
        p
        for batch in ctx.orch.map(
            signature_batch, batches, str(work), cfg, eval_file, seed, name="minhash_shards"
        )
        for p in batch
    ]
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
    cut_file = save_ngrams(eval_grams - frequent, work / "cut_ngrams.txt")
    make_dirs(ctx.out, "docs")
    removed_by_shard = [[i for i in p["ids"] if i in removed_ids] for p in parts]
    jobs = iter(zip(shards, removed_by_shard, strict=True))
    written = [
        w
        for batch in ctx.orch.map(
            write_batch, [[next(jobs) for _ in b] for b in batches], str(ctx.out), cut_file, cfg,
            name="write_shards",
        )
        for w in batch
    ]  # fmt: skip
    shutil.rmtree(work)
    stats: Counter[str] = Counter()
    out_sources: Counter[str] = Counter()
    for w in written:
        stats.update(w["stats"])
        out_sources.update(w["sources"])
    in_sources = Counter(sources)
    removed_sources = Counter(sources[i] for i in exact_removed | near_removed)
    n_in = len(ids)
    return {
        "perf": {
            "signatures_s": round(signatures_s, 3),
            "near_duplicates_s": round(near_dup_s, 3),
            "stage_s": round(time.perf_counter() - t_stage, 3),
            "tasks": 2 * len(batches),
        },
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
            "sets": {
                name: {
                    "path": eval_sets[name]["path"],
                    "items": len(eval_sets[name]["texts"]),
                    "ngrams": len(grams),
                    "ngrams_in_training": len(grams & eval_df.keys()),
                    "ngrams_cut": len((grams & eval_df.keys()) - frequent),
                }
                for name, grams in set_grams.items()
            },
            "not_read": skipped,
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
