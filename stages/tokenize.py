"""tokenize: train a tokenizer on the mixed training text, then encode both splits into flat token files.

Output (data/tokenize/): tokenizer.json, meta.json, train.bin/.idx.npy/.src.npy, val.bin/.idx.npy/.src.npy
(formats in pipeline/tokenizer.py). Shards are encoded in parallel as tasks, each into a work folder,
then joined in shard order, so document order is that of data/mix.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from pipeline.config import EOT
from pipeline.errors import LineageError
from pipeline.io import list_shards, read_parquet, write_json
from pipeline.stage import StageContext, main
from pipeline.tokenizer import (
    MAX_SOURCES,
    check_transformers,
    concat_tokens,
    decode,
    dtype_name,
    encode_documents,
    eot_id,
    load_tokenizer,
    save_tokenizer,
    special_token_ids,
    take_bytes,
    token_dtype,
    train_tokenizer,
    write_tokens,
)

SPLITS = ("train", "val")
ROUNDTRIP_DOCS = 8


def read_texts(shards: list[str]) -> Iterator[str]:
    for shard in shards:
        yield from (t or "" for t in read_parquet(shard, ["text"]).column("text").to_pylist())


def source_names(shards: list[str]) -> list[str]:
    names: set[str] = set()
    for shard in shards:
        names.update(read_parquet(shard, ["source"]).column("source").unique().to_pylist())
    return sorted(n for n in names if n is not None)


def encode_shard(
    item: tuple[str, int, str], tokenizer_path: str, work: str, index: dict[str, int], batch_docs: int
) -> dict[str, Any]:
    """Encode one parquet shard of ``split`` into the token files ``<split>-<i>.*`` in ``work``."""
    split, i, shard = item
    tok = load_tokenizer(tokenizer_path)
    table = read_parquet(shard, ["source", "text"])
    texts = [t or "" for t in table.column("text").to_pylist()]
    sources = table.column("source").to_pylist()
    t0 = time.perf_counter()
    docs = encode_documents(tok, texts, batch_docs)
    encode_s = time.perf_counter() - t0
    name = f"{split}-{i:05d}"
    written = write_tokens(
        work, name, docs, [index[s] for s in sources], tok.get_vocab_size(), eot_id=eot_id(tok)
    )
    per_source: dict[str, Counter[str]] = {}
    for s, text, ids in zip(sources, texts, docs, strict=True):
        c = per_source.setdefault(s, Counter())
        c["docs"] += 1
        c["bytes"] += len(text.encode("utf-8"))
        c["tokens"] += len(ids)  # without the end-of-text id
    return {
        "split": split,
        "name": name,
        **written,
        "sources": {s: dict(c) for s, c in per_source.items()},
        "encode_s": encode_s,
    }


def body(ctx: StageContext) -> dict[str, Any]:
    cfg = ctx.params.tokenize
    shards = {split: [str(p) for p in list_shards(ctx.input("mix", split))] for split in SPLITS}
    names = source_names(shards["train"] + shards["val"])
    if len(names) > MAX_SOURCES:
        raise LineageError(f"tokenize: {len(names)} sources do not fit the int16 source index")
    index = {s: i for i, s in enumerate(names)}

    # 1. the tokenizer, on training text only, in file order up to max_train_bytes
    used: Counter[str] = Counter()

    def training_texts() -> Iterator[str]:
        for text in take_bytes(read_texts(shards["train"]), cfg.max_train_bytes):
            used["docs"] += 1
            used["bytes"] += len(text.encode("utf-8"))
            yield text

    t0 = time.perf_counter()
    tok = train_tokenizer(training_texts(), cfg)
    train_s = time.perf_counter() - t0
    if not used["bytes"]:
        raise LineageError(
            f"tokenize: {ctx.input('mix', 'train')} holds no text ({len(shards['train'])} shards); "
            "nothing to train the tokenizer on"
        )
    tok_path = save_tokenizer(tok, ctx.out / "tokenizer.json")
    first = next(read_texts(shards["val"] or shards["train"]), "")
    check_transformers(tok_path, [first[:2000], f"{first[:200]}{EOT}<|unknown|> 🎉\n"])

    # 2. every shard of both splits, in parallel, then joined in shard order
    work = ctx.out / ".work"
    work.mkdir()
    items = [(split, i, shard) for split in SPLITS for i, shard in enumerate(shards[split])]
    t0 = time.perf_counter()
    results = ctx.orch.map(
        encode_shard, items, str(tok_path), str(work), index, cfg.batch_docs, name="encode_shard"
    )
    totals = {
        split: concat_tokens(ctx.out, split, [(work, r["name"]) for r in results if r["split"] == split])
        for split in SPLITS
    }
    encode_s = time.perf_counter() - t0
    shutil.rmtree(work)

    per: dict[str, dict[str, Counter[str]]] = {split: {s: Counter() for s in names} for split in SPLITS}
    for r in results:
        for s, c in r["sources"].items():
            per[r["split"]][s].update(c)

    # 3. lossless check on a few validation documents
    sample = [t for t in read_texts(shards["val"] or shards["train"]) if t][:ROUNDTRIP_DOCS]
    bad = [t for t, ids in zip(sample, encode_documents(tok, sample), strict=True) if decode(tok, ids) != t]
    if bad and cfg.kind == "bpe":
        raise LineageError(f"tokenize: byte-level BPE does not decode {bad[0][:40]!r} back to itself")
    if bad:
        logging.getLogger("lineage.tokenize").warning(
            "tokenize: %d of %d sample documents hold characters outside the char vocabulary",
            len(bad),
            len(sample),
        )

    vocab_size = tok.get_vocab_size()
    meta = {
        "kind": cfg.kind,
        "vocab_size": vocab_size,
        "dtype": dtype_name(token_dtype(vocab_size)),
        "eot_id": eot_id(tok),
        "special_tokens": special_token_ids(tok),
        "sources": names,
        "splits": totals,
        "val_bytes_per_source": {s: per["val"][s]["bytes"] for s in names},
        "val_tokens_per_source": {s: per["val"][s]["tokens"] for s in names},
        "val_docs_per_source": {s: per["val"][s]["docs"] for s in names},
    }
    write_json(ctx.out / "meta.json", meta)
    ctx.tracker.log_artifact(tok_path)
    ctx.tracker.log_artifact(ctx.out / "meta.json")

    def ratio(c: Counter[str]) -> float:
        return c["bytes"] / c["tokens"] if c["tokens"] else 0.0

    both = {s: per["train"][s] + per["val"][s] for s in names}
    tokens = totals["train"]["tokens"] + totals["val"]["tokens"]
    return {
        "vocab_size": vocab_size,
        "train_docs": totals["train"]["docs"],
        "train_tokens": totals["train"]["tokens"],
        "val_docs": totals["val"]["docs"],
        "val_tokens": totals["val"]["tokens"],
        "bytes_per_token": ratio(sum(both.values(), Counter())),
        "roundtrip_ok": int(not bad),
        "tokenizer_train_docs": used["docs"],
        "tokenizer_train_bytes": used["bytes"],
        "sources": {
            s: {
                "bytes_per_token": ratio(both[s]),
                "train_docs": per["train"][s]["docs"],
                "val_docs": per["val"][s]["docs"],
                "val_bytes": per["val"][s]["bytes"],
                "val_tokens": per["val"][s]["tokens"],
            }
            for s in names
        },
        "perf": {
            "train_s": round(train_s, 3),
            "encode_s": round(encode_s, 3),
            "encode_tokens_per_s": round(tokens / encode_s, 1) if encode_s > 0 else 0.0,
        },
    }


if __name__ == "__main__":
    sys.exit(main("tokenize", body, headline=["vocab=vocab_size", "bytes_per_token"]))
