"""The clean step over one shard: extract, normalise, filter; kept and dropped documents both written."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.config import CleanConfig
from pipeline.io import DOC_SCHEMA, read_rows, write_table
from pipeline.text.extract import extract_text, normalize_text
from pipeline.text.filters import WORD_RE, drop_reason

CLEAN_SCHEMA = pa.schema(
    [
        *DOC_SCHEMA,
        ("extractor", pa.string()),
        ("words", pa.int64()),
    ]
)
DROPPED_SCHEMA = CLEAN_SCHEMA.append(pa.field("reason", pa.string()))

HTML_TYPES = ("text/html", "application/xhtml+xml")


def clean_doc(doc: dict[str, Any], cfg: CleanConfig) -> tuple[dict[str, Any], str | None]:
    """The cleaned document and its drop reason (None = kept)."""
    raw = doc["text"] or ""
    if doc["content_type"] in HTML_TYPES:
        text, extractor = extract_text(
            raw, use_trafilatura=cfg.extractor == "trafilatura", fallback=cfg.fallback
        )
    else:
        text, extractor = raw, "plain"
    text = normalize_text(text, cfg.normalization)
    out = {
        "id": doc["id"], "source": doc["source"], "role": doc["role"], "url": doc["url"], "text": text,
        "content_type": doc["content_type"], "extractor": extractor, "words": len(WORD_RE.findall(text)),
    }  # fmt: skip
    reason = "extraction" if extractor == "none" else drop_reason(text, cfg)
    return out, reason


def clean_shard(shard: str, out_dir: str, cfg: CleanConfig) -> dict[str, Any]:
    kept, dropped = [], []
    reasons: Counter[str] = Counter()
    extractors: Counter[str] = Counter()
    per_source_in: Counter[str] = Counter()
    per_source_out: Counter[str] = Counter()
    for doc in read_rows(shard):
        cleaned, reason = clean_doc(doc, cfg)
        per_source_in[doc["source"]] += 1
        extractors[cleaned["extractor"]] += 1
        if reason is None:
            kept.append(cleaned)
            per_source_out[doc["source"]] += 1
        else:
            reasons[reason] += 1
            dropped.append({**cleaned, "reason": reason})
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
    }
