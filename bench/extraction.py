#!/usr/bin/env python
"""Extraction quality of the clean stage's extractor on real article pages, option by option.

Reads scrapinghub's article-extraction-benchmark layout (``html/<key>.html.gz`` and
``ground-truth.json`` mapping each key to ``{"url", "articleBody"}``) and scores, side by side in
one run, ``extract_text`` (trafilatura with the lxml fallback, exactly as clean calls it) under each
trafilatura focus (recall / balanced / precision) with and without tables, plus the lxml fallback
alone as a floor.

Scores: word precision, recall and F1 of the bag of lowercased ``\\w+`` tokens (with counts)
against the gold ``articleBody``, averaged over pages (an empty output scores 0), and, for
comparison with published figures for this benchmark, F1 on word 4-gram shingles. Results: a table
on stdout and bench/out/extraction.json. Not part of the tests: it needs the data folder.

    .venv/bin/python bench/extraction.py --data ../shared/data/article_extraction_benchmark
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import machine, table, write_result  # noqa: E402

WORD_RE = re.compile(r"\w+")


def tokens(text: str) -> list[str]:
    return WORD_RE.findall(text.lower())


def bag_prf(pred: list[str], gold: list[str], n: int = 1) -> tuple[float, float, float]:
    """Precision, recall, F1 of the multiset of word n-grams of ``pred`` against ``gold``."""
    p_bag = Counter(tuple(pred[i : i + n]) for i in range(len(pred) - n + 1))
    g_bag = Counter(tuple(gold[i : i + n]) for i in range(len(gold) - n + 1))
    n_pred, n_gold = sum(p_bag.values()), sum(g_bag.values())
    if not n_pred or not n_gold:
        return 0.0, 0.0, 0.0
    overlap = sum((p_bag & g_bag).values())
    p, r = overlap / n_pred, overlap / n_gold
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def load_pages(folder: Path, limit: int | None) -> list[tuple[str, str, str]]:
    """(key, html, gold article body) for every page that has a gold body."""
    truth_file, html_dir = folder / "ground-truth.json", folder / "html"
    if not truth_file.is_file() or not html_dir.is_dir():
        raise SystemExit(f"error: {folder}: expected ground-truth.json and html/*.html.gz (pass --data PATH)")
    gold = json.loads(truth_file.read_text())
    pages = []
    for path in sorted(html_dir.glob("*.html.gz")):
        key = path.name.removesuffix(".html.gz")
        if key in gold:
            html = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
            pages.append((key, html, gold[key]["articleBody"]))
    return pages[:limit] if limit else pages


def extractors() -> dict[str, Callable[[str], str]]:
    from pipeline.text.extract import FOCUS, extract_text, fallback_extract

    out: dict[str, Callable[[str], str]] = {}
    for focus in FOCUS:
        for tables in (True, False):
            name = f"extract_text focus={focus} tables={'on' if tables else 'off'}"
            out[name] = lambda h, f=focus, t=tables: extract_text(h, focus=f, include_tables=t)[0]
    out["fallback_extract alone"] = fallback_extract
    return out


def run(pages: list[tuple[str, str, str]]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, fn in extractors().items():
        word, shingle, empty, seconds = [], [], 0, 0.0
        for _key, html, gold in pages:
            t0 = time.perf_counter()
            text = fn(html) or ""
            seconds += time.perf_counter() - t0
            pred, ref = tokens(text), tokens(gold)
            empty += not pred
            word.append(bag_prf(pred, ref, 1))
            shingle.append(bag_prf(pred, ref, 4))
        results[name] = {
            "precision": statistics.fmean(s[0] for s in word),
            "recall": statistics.fmean(s[1] for s in word),
            "f1": statistics.fmean(s[2] for s in word),
            "shingle4_f1": statistics.fmean(s[2] for s in shingle),
            "empty_pages": empty,
            "seconds": round(seconds, 2),
        }
        print(f"[{name}: {seconds:.0f}s]", file=sys.stderr, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared" / "data" / "article_extraction_benchmark",
        help="benchmark folder: html/<key>.html.gz and ground-truth.json",
    )  # fmt: skip
    ap.add_argument("--max-pages", type=int, default=None, help="score only the first N pages")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "extraction.json")
    args = ap.parse_args(argv)
    pages = load_pages(args.data, args.max_pages)
    results = run(pages)
    rows = [
        [name, f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}", f"{r['shingle4_f1']:.4f}",
         r["empty_pages"], f"{r['seconds']:.1f}"]
        for name, r in results.items()
    ]  # fmt: skip
    print(f"{len(pages)} pages from {args.data}\n")
    print(table(["extractor", "word P", "word R", "word F1", "4-gram F1", "empty", "s"], rows))
    write_result(
        args.out, {"machine": machine(), "data": str(args.data), "pages": len(pages), "results": results}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
