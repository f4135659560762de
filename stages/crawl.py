"""crawl: every configured source -> raw documents (data/crawl/docs/*.parquet) and a fetch log."""

from __future__ import annotations

import collections
import sys
from pathlib import Path
from typing import Any

from pipeline.config import CommonConfig, DistSplit
from pipeline.errors import LineageError
from pipeline.io import write_shards, write_table
from pipeline.stage import StageContext, main, make_dirs
from pipeline.text.sources import FETCH_LOG_SCHEMA, RAW_SCHEMA, env_manifest, read_source

# the embedded kinds read this machine's Python and installed distributions
EMBEDDED_KINDS = {"pydoc", "python_docs", "py_env_docs"}
HEADLINE = [
    "crawl_docs=docs_out",
    "crawl_docs/*=sources/*/docs",
    "crawl_bytes=bytes_out",
    "pages=pages_fetched",
    "embedded_manifest=embedded/manifest_id",
]


def crawl_one(
    item: tuple[str, Any], out: str, root: str, common: CommonConfig, split: DistSplit
) -> dict[str, Any]:
    """One source, one task: read it, write its shards, return its counts."""
    name, src = item
    docs, log = read_source(name, src, Path(root), split)
    if src.max_docs:
        docs = docs[: src.max_docs]
    if not docs:
        errors = collections.Counter(r["error"] for r in log if r["error"])
        why = f" (fetch errors: {dict(errors)})" if errors else ""
        raise LineageError(f"crawl.sources.{name}: produced no documents{why}")
    write_shards(Path(out) / "docs", docs, common.shard_size, prefix=name, schema=RAW_SCHEMA)
    if log:
        write_table(Path(out) / "fetch_log" / f"{name}.parquet", log, FETCH_LOG_SCHEMA)
    status = collections.Counter(str(r["status"]) for r in log if r["status"] is not None)
    errors = collections.Counter(r["error"] for r in log if r["error"])
    kinds = collections.Counter(d["page_kind"] for d in docs if d.get("page_kind"))
    return {
        "name": name,
        "docs": len(docs),
        **({"page_kinds": dict(kinds)} if kinds else {}),
        "truncated": sum(bool(r.get("truncated")) for r in log),
        "bytes": sum(len(d["text"].encode("utf-8", "surrogatepass")) for d in docs),
        "fetched": len(log),
        "status": dict(status),
        "errors": dict(errors),
        "fetch_s": sum(r["fetch_s"] or 0.0 for r in log),
    }


def body(ctx: StageContext) -> dict[str, Any]:
    p = ctx.params
    make_dirs(ctx.out, "docs", "fetch_log")
    sources = list(p.crawl.sources.items())
    results = ctx.orch.map(
        crawl_one, sources, str(ctx.out), str(ctx.root), p.common, p.crawl.dist_split, name="crawl_source"
    )
    per_source = {r.pop("name"): r for r in results}
    fetched = sum(r["fetched"] for r in per_source.values())
    fetch_s = sum(r.pop("fetch_s") for r in per_source.values())
    # which environment the embedded sources read: two machines with the same manifest read the same text
    embedded = any(src.kind in EMBEDDED_KINDS for _, src in sources)
    return {
        **({"embedded": env_manifest()} if embedded else {}),
        "docs_out": sum(r["docs"] for r in per_source.values()),
        "bytes_out": sum(r["bytes"] for r in per_source.values()),
        "pages_fetched": fetched,
        "pages_truncated": sum(r["truncated"] for r in per_source.values()),
        "mean_fetch_s": fetch_s / fetched if fetched else 0.0,
        "sources": per_source,
    }


if __name__ == "__main__":
    sys.exit(main("crawl", body, headline=HEADLINE))
