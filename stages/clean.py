"""clean: raw documents -> main text, normalised, Gopher-filtered; every drop keeps its reason."""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import pyarrow as pa

from pipeline.errors import LineageError
from pipeline.io import list_shards, write_json, write_table
from pipeline.stage import StageContext, main, make_dirs
from pipeline.text.clean import clean_shard, sample_key

DROP_TABLE = pa.schema([("reason", pa.string()), ("documents", pa.int64()), ("share", pa.float64())])


def body(ctx: StageContext) -> dict[str, Any]:
    shards = [str(p) for p in list_shards(ctx.input("crawl", "docs"))]
    make_dirs(ctx.out, "docs", "dropped")
    results = ctx.orch.map(clean_shard, shards, str(ctx.out), ctx.params.clean, name="clean_shard")
    totals: dict[str, Counter[str]] = {
        k: Counter() for k in ("in", "out", "reasons", "extractors", "kinds_in", "kinds_out")
    }
    candidates: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        for k, c in totals.items():
            c.update(r[k])
        for reason, docs in r["samples"].items():
            candidates.setdefault(reason, []).extend(docs)
    docs_in, docs_out = sum(totals["in"].values()), sum(totals["out"].values())
    if docs_out == 0:
        raise LineageError(
            f"clean: all {docs_in} documents were filtered out (drop reasons: {dict(totals['reasons'])}); "
            "relax the clean.* thresholds"
        )
    table = [{"reason": r, "documents": n, "share": n / docs_in} for r, n in totals["reasons"].most_common()]
    write_table(ctx.out / "drop_reasons.parquet", table, DROP_TABLE)
    ctx.tracker.log_dict(
        {"drop_reasons": table, "extractors": dict(totals["extractors"])}, "drop_reasons.json"
    )
    # a few dropped documents per rule, with the value measured and the threshold crossed: what a
    # rule costs is visible, not only how often it fires
    samples = {
        reason: {
            "documents": totals["reasons"][reason],
            "threshold": docs[0]["threshold"] if docs else None,
            "samples": sorted(docs, key=lambda d: sample_key(d["id"]))[: ctx.params.clean.dropped_samples],
        }
        for reason, docs in sorted(candidates.items(), key=lambda kv: -totals["reasons"][kv[0]])
    }
    write_json(ctx.out / "dropped_samples.json", samples)
    ctx.tracker.log_artifact(ctx.out / "dropped_samples.json")
    return {
        "docs_in": docs_in,
        "docs_out": docs_out,
        "keep_rate": docs_out / docs_in,
        "drops": dict(totals["reasons"]),
        "extractors": dict(totals["extractors"]),
        "sources": {s: {"in": n, "out": totals["out"][s]} for s, n in sorted(totals["in"].items())},
        **(
            {"page_kinds": {k: {"in": n, "out": totals["kinds_out"][k], "keep_rate": totals["kinds_out"][k] / n}
                            for k, n in sorted(totals["kinds_in"].items())}}
            if totals["kinds_in"] else {}
        ),
    }  # fmt: skip


if __name__ == "__main__":
    sys.exit(main("clean", body, headline=["clean_docs=docs_out", "clean_keep=keep_rate"]))
