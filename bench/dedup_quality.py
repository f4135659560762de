#!/usr/bin/env python
"""Near-duplicate precision and recall of the dedup stage's fuzzy step, on planted duplicates.

From a corpus (--data: .txt paragraphs, .jsonl ``text``, .parquet ``text``, or a folder of them;
default: the prose this Python installation ships, the embedded sources' text, so it runs offline)
the benchmark cuts distinct base documents of 10, 30, 100 and 1,000 words (no two bases of a
length share more than --max-base-jaccard of their words), then plants:

- a near-duplicate copy of each of --groups bases per length: 5-20% of its words inserted,
  deleted or substituted (words drawn from the corpus), and in two of three copies a boilerplate
  line (navigation, sharing, copyright) added to the copy or removed from the original;
- --negatives unrelated bases per length that carry the same few boilerplate lines.

Every configuration (feature kind x threshold; "default" is params.yaml's dedup section) runs the stage's own clustering
(``pipeline.text.minhash``) over all documents at once; a predicted pair is two documents in one
cluster. Per length bucket: recall = planted pairs found / planted pairs; precision = planted
pairs found / predicted pairs with a document in the bucket. Results: a table on stdout and
bench/out/dedup_quality.json.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import machine, table, write_result  # noqa: E402 - after the path set-up above

LENGTHS = (10, 30, 100, 1000)
WORD_RE = re.compile(r"\w+")
BOILERPLATE = [
    "Skip to main content",
    "Share this page on social media",
    "All rights reserved.",
    "Sign up for our weekly newsletter",
    "Previous article | Next article",
    "This site uses cookies. Accept",
    "Home > Docs > Reference",
    "Back to top",
    "Posted by admin in Uncategorized | Leave a comment",
    "Print this page",
    "Was this page helpful? Yes No",
    "Copyright the authors. Terms of use. Privacy policy.",
]
# DedupConfig overrides per row of the table (--configs picks from them). "min_jaccard" alone gets
# the bands x rows of lsh_bands(); "default" is DedupConfig() as it stands (params.yaml's dedup).
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "word5@0.7 14x8": {"features": "word", "ngram": 5, "min_jaccard": 0.7, "bands": 14, "rows": 8},
    "word5@0.5": {"features": "word", "ngram": 5, "min_jaccard": 0.5},
    "word3@0.5": {"features": "word", "ngram": 3, "min_jaccard": 0.5},
    "word2@0.5": {"features": "word", "ngram": 2, "min_jaccard": 0.5},
    "word2@0.45": {"features": "word", "ngram": 2, "min_jaccard": 0.45},
    "word2@0.4": {"features": "word", "ngram": 2, "min_jaccard": 0.4},
    "word2@0.35": {"features": "word", "ngram": 2, "min_jaccard": 0.35},
    "word3@0.35": {"features": "word", "ngram": 3, "min_jaccard": 0.35},
    "word3@0.3": {"features": "word", "ngram": 3, "min_jaccard": 0.3},
    "gpt3@0.7": {"features": "gpt3", "min_jaccard": 0.7},
    "gpt3@0.6": {"features": "gpt3", "min_jaccard": 0.6},
    "gpt3@0.55": {"features": "gpt3", "min_jaccard": 0.55},
    "gpt3@0.5": {"features": "gpt3", "min_jaccard": 0.5},
    "gpt3@0.6 10 hashes": {"features": "gpt3", "min_jaccard": 0.6, "num_perm": 10, "bands": 10, "rows": 1},
    "char5@0.6": {"features": "char", "char_ngram": 5, "min_jaccard": 0.6},
    "char5@0.55": {"features": "char", "char_ngram": 5, "min_jaccard": 0.55},
    "char5@0.5": {"features": "char", "char_ngram": 5, "min_jaccard": 0.5},
    "char4@0.5": {"features": "char", "char_ngram": 4, "min_jaccard": 0.5},
    "char6@0.5": {"features": "char", "char_ngram": 6, "min_jaccard": 0.5},
    "char6@0.45": {"features": "char", "char_ngram": 6, "min_jaccard": 0.45},
    "char7@0.45": {"features": "char", "char_ngram": 7, "min_jaccard": 0.45},
}


def lsh_bands(min_jaccard: float, num_perm: int) -> tuple[int, int]:
    """The most rows per band (fewest chance candidates) that still make a pair at ``min_jaccard``
    a candidate with probability >= 0.95: 1 - (1 - J^r)^b, b = num_perm // r."""
    for r in range(num_perm, 0, -1):
        b = num_perm // r
        if 1 - (1 - min_jaccard**r) ** b >= 0.95:
            return b, r
    return num_perm, 1


# -------------------------------------------------------------------------------------------- corpus
def installed_corpus() -> list[str]:
    """The embedded offline sources' prose: the language reference topics, the standard library's
    docstrings, and installed distributions' READMEs and licences."""
    from pipeline.text.sources import python_distributions, python_docstrings, python_topics

    docs = [t for _, t in python_topics()]
    docs += [t for _, t in python_docstrings(60)]
    docs += [t for _, t in python_distributions(200)]
    return docs


def read_corpus(path: Path) -> list[str]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    docs: list[str] = []
    for f in files:
        if f.suffix == ".jsonl":
            docs += [json.loads(line).get("text", "") for line in f.open() if line.strip()]
        elif f.suffix == ".parquet":
            import pyarrow.parquet as pq

            docs += [t for t in pq.read_table(f, columns=["text"]).column("text").to_pylist() if t]
        elif f.suffix in (".txt", ".tokens", ".raw", "") and f.stat().st_size:
            docs += [p for p in re.split(r"\n\s*\n", f.read_text(errors="replace")) if p.strip()]
    return [d for d in docs if d and d.strip()]


def windows(docs: list[str], length: int, rng: random.Random) -> list[str]:
    """Non-overlapping windows of ``length`` whitespace words, at a random offset in each document."""
    out = []
    for d in docs:
        w = d.split()
        if len(w) < length:
            continue
        start = rng.randrange(len(w) % length + 1)
        out += [" ".join(w[i : i + length]) for i in range(start, len(w) - length + 1, length)]
    rng.shuffle(out)
    return out


def distinct(cands: list[str], need: int, max_jaccard: float) -> list[str]:
    """Up to ``need`` candidates, no two sharing more than ``max_jaccard`` of their word sets."""
    kept: list[set[str]] = []
    texts: list[str] = []
    postings: dict[str, list[int]] = defaultdict(list)
    for t in cands:
        ws = set(WORD_RE.findall(t.lower()))
        if not ws:
            continue
        shared = Counter(k for w in ws for k in postings[w])
        if any(n / len(ws | kept[k]) > max_jaccard for k, n in shared.items()):
            continue
        for w in ws:
            postings[w].append(len(kept))
        kept.append(ws)
        texts.append(t)
        if len(texts) >= need:
            break
    return texts


def edit(words: list[str], rate: float, vocab: list[str], rng: random.Random) -> list[str]:
    out = list(words)
    for _ in range(max(1, round(rate * len(words)))):
        op = rng.choice(("insert", "delete", "substitute"))
        if op == "insert" or not out:
            out.insert(rng.randrange(len(out) + 1), rng.choice(vocab))
        elif op == "delete" and len(out) > 1:
            del out[rng.randrange(len(out))]
        else:
            out[rng.randrange(len(out))] = rng.choice(vocab)
    return out


def with_boilerplate(text: str, line: str, rng: random.Random) -> str:
    return f"{line}\n{text}" if rng.random() < 0.5 else f"{text}\n{line}"


def plant(docs: list[str], groups: int, negatives: int, max_jaccard: float, seed: int) -> dict[str, Any]:
    """Documents, their length bucket, and the planted (original, copy) pairs."""
    rng = random.Random(seed)
    vocab = [w for d in rng.sample(docs, min(len(docs), 2000)) for w in d.split()]
    shared = rng.sample(BOILERPLATE, 3)  # the lines the unrelated documents have in common
    texts: list[str] = []
    bucket: list[int] = []
    pairs: list[tuple[int, int]] = []
    counts: dict[int, dict[str, int]] = {}
    for length in LENGTHS:
        bases = distinct(windows(docs, length, rng), groups + negatives, max_jaccard)
        n_groups = min(groups, len(bases) // 2)
        for k, base in enumerate(bases):
            if k < n_groups:
                copy = " ".join(edit(base.split(), rng.uniform(0.05, 0.20), vocab, rng))
                change = rng.randrange(3)  # 0: none, 1: boilerplate added to the copy, 2: removed from it
                line = rng.choice(BOILERPLATE)
                if change == 1:
                    copy = with_boilerplate(copy, line, rng)
                elif change == 2:
                    base = with_boilerplate(base, line, rng)
                texts += [base, copy]
                bucket += [length, length]
                pairs.append((len(texts) - 2, len(texts) - 1))
            else:
                texts.append(with_boilerplate(base, rng.choice(shared), rng))
                bucket.append(length)
        counts[length] = {"groups": n_groups, "negatives": len(bases) - n_groups}
    return {"texts": texts, "bucket": bucket, "pairs": pairs, "counts": counts}


# ------------------------------------------------------------------------------------------- scoring
def score(clusters: list[dict[str, Any]], data: dict[str, Any]) -> dict[str, dict[str, float]]:
    bucket, truth = data["bucket"], set(data["pairs"])
    predicted: set[tuple[int, int]] = set()
    for c in clusters:
        members = sorted([c["kept"], *c["removed"]])
        predicted.update((a, b) for k, a in enumerate(members) for b in members[k + 1 :])
    out: dict[str, dict[str, float]] = {}
    for length in [*LENGTHS, None]:

        def inside(p: tuple[int, int], length: int | None = length) -> bool:
            return length is None or bucket[p[0]] == length or bucket[p[1]] == length

        true_b = [p for p in truth if inside(p)]
        pred_b = [p for p in predicted if inside(p)]
        tp = sum(1 for p in pred_b if p in truth)
        out[str(length or "all")] = {
            "precision": tp / len(pred_b) if pred_b else 1.0,
            "recall": tp / len(true_b) if true_b else 1.0,
            "predicted_pairs": len(pred_b),
            "planted_pairs": len(true_b),
        }
    return out


def run_config(name: str, spec: dict[str, Any], data: dict[str, Any], seed: int) -> dict[str, Any]:
    from pipeline.config import DedupConfig
    from pipeline.text.minhash import minhash_signatures, near_duplicate_clusters

    spec = dict(spec)
    if "min_jaccard" in spec and "bands" not in spec:
        spec["bands"], spec["rows"] = lsh_bands(
            spec["min_jaccard"], spec.get("num_perm", DedupConfig().num_perm)
        )
    cfg = DedupConfig(**spec)
    t0 = time.perf_counter()
    sigs = minhash_signatures(data["texts"], cfg, seed=seed)
    clusters = near_duplicate_clusters(sigs, list(range(len(sigs))), cfg, seed)
    used = {
        k: getattr(cfg, k)
        for k in ("features", "ngram", "char_ngram", "num_perm", "bands", "rows", "min_jaccard")
    }
    return {
        "config": name,
        **used,
        "seconds": round(time.perf_counter() - t0, 2),
        "scores": score(clusters, data),
    }


def report(results: list[dict[str, Any]], counts: dict[int, dict[str, int]]) -> str:
    head = ["config", *(f"{n}w P/R" for n in LENGTHS), "all P/R"]
    rows = []
    for r in results:
        s = r["scores"]
        rows.append([r["config"], *(f"{s[k]['precision']:.3f}/{s[k]['recall']:.3f}"
                                    for k in [*map(str, LENGTHS), "all"])])  # fmt: skip
    sizes = ", ".join(
        f"{n} words: {c['groups']} pairs + {c['negatives']} unrelated" for n, c in counts.items()
    )
    return f"planted: {sizes}\n" + table(head, rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data", type=Path, default=None, help="corpus file or folder (default: installed prose)"
    )
    ap.add_argument("--groups", type=int, default=150, help="planted pairs per length (default 150)")
    ap.add_argument("--negatives", type=int, default=150, help="unrelated documents per length (default 150)")
    ap.add_argument("--max-base-jaccard", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--out", type=Path, default=OUT / "dedup_quality.json")
    args = ap.parse_args(argv)
    if args.data is not None and not args.data.exists():
        print(f"error: --data {args.data}: not found", file=sys.stderr)
        return 1
    docs = read_corpus(args.data) if args.data else installed_corpus()
    if not docs:
        print(f"error: --data {args.data}: no text found", file=sys.stderr)
        return 1
    data = plant(docs, args.groups, args.negatives, args.max_base_jaccard, args.seed)
    results = [run_config(name, CONFIGS[name], data, args.seed + 1) for name in args.configs]
    print(report(results, data["counts"]))
    write_result(
        args.out,
        {"machine": machine(), "data": str(args.data or "installed prose"), "docs": len(data["texts"]),
         "counts": data["counts"], "results": results},
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
