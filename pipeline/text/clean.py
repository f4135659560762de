"""The clean step over one shard: extract, normalise, filter; kept and dropped documents both written."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.config import CleanConfig
from pipeline.io import DOC_SCHEMA, read_rows, write_table
from pipeline.text.extract import extract_text, normalize_text
from pipeline.text.filters import WORD_RE, Drop, drop_reason

CLEAN_SCHEMA = pa.schema(
    [
        *DOC_SCHEMA,
        ("page_kind", pa.string()),  # from the crawl where the source knows it (embedded web: api / prose)
        ("extractor", pa.string()),
        ("words", pa.int64()),
    ]
)
# every dropped document keeps why: the rule, the value it measured and the threshold it crossed
DROPPED_SCHEMA = pa.schema(
    [
        *CLEAN_SCHEMA,
        ("reason", pa.string()),
        ("value", pa.float64()),
        ("threshold", pa.float64()),
    ]
)

HTML_TYPES = ("text/html", "application/xhtml+xml")
SAMPLE_CHARS = 600  # characters of text shown per sampled dropped document


def clean_doc(doc: dict[str, Any], cfg: CleanConfig) -> tuple[dict[str, Any], Drop | None]:
    """The cleaned document and its drop reason (None = kept)."""
    raw = doc["text"] or ""
    if doc["content_type"] in HTML_TYPES:
        text, extractor = extract_text(
            raw, use_trafilatura=cfg.extractor == "trafilatura", fallback=cfg.fallback, focus=cfg.focus,
            include_tables=cfg.include_tables,
        )  # fmt: skip
    else:
        text, extractor = raw, "plain"
    text = normalize_text(text, cfg.normalization)
    out = {
        "id": doc["id"], "source": doc["source"], "role": doc["role"], "url": doc["url"], "text": text,
        "content_type": doc["content_type"], "page_kind": doc.get("page_kind"), "extractor": extractor,
        "words": len(WORD_RE.findall(text)),
    }  # fmt: skip
    reason = Drop("extraction") if extractor == "none" else drop_reason(text, cfg)
    return out, reason


def drop_sample(doc: dict[str, Any]) -> dict[str, Any]:
    """What a reader needs to judge one drop: where it came from, the measurement, the text's start."""
    keys = ("id", "source", "url", "page_kind", "words", "value", "threshold", "note")
    text = doc["text"]
    return {
        **{k: doc.get(k) for k in keys},
        "text": text[:SAMPLE_CHARS] + ("..." if len(text) > SAMPLE_CHARS else ""),
    }


def sample_key(doc_id: str) -> str:
    """Order of dropped documents for sampling: a hash of the id, so a sample spreads over every
    source and shard and is the same whatever the task order."""
    return hashlib.sha1(doc_id.encode("utf-8", "surrogatepass")).hexdigest()


def clean_shard(shard: str, out_dir: str, cfg: CleanConfig) -> dict[str, Any]:
    kept, dropped = [], []
    reasons: Counter[str] = Counter()
    extractors: Counter[str] = Counter()
    per_source_in: Counter[str] = Counter()
    per_source_out: Counter[str] = Counter()
    kinds_in: Counter[str] = Counter()
    kinds_out: Counter[str] = Counter()
    samples: dict[str, list[dict[str, Any]]] = {}
    for doc in read_rows(shard):
        cleaned, reason = clean_doc(doc, cfg)
        per_source_in[doc["source"]] += 1
        extractors[cleaned["extractor"]] += 1
        kind = cleaned["page_kind"]
        if kind:
            kinds_in[kind] += 1
        if reason is None:
            kept.append(cleaned)
            per_source_out[doc["source"]] += 1
            if kind:
                kinds_out[kind] += 1
            continue
        reasons[reason] += 1
        row = {**cleaned, "reason": str(reason), "value": reason.value, "threshold": reason.threshold}
        dropped.append(row)
        if cfg.dropped_samples:
            samples.setdefault(str(reason), []).append(drop_sample({**row, "note": reason.note}))
    for reason, docs in samples.items():
        samples[reason] = sorted(docs, key=lambda d: sample_key(d["id"]))[: cfg.dropped_samples]
    name = Path(shard).name
    if kept:
        write_table(Path(out_dir) / "docs" / name, kept, CLEAN_SCHEMA)
    if dropped:
        write_table(Path(out_dir) / "dropped" / name, dropped, DROPPED_SCHEMA)
    return {
        "in": dict(per_source_in),
        "out": dict(per_source_out),
        "reasons": dict(reasons),
        "extractors": dict(extractors),
        "kinds_in": dict(kinds_in),
        "kinds_out": dict(kinds_out),
        "samples": samples,
    }
