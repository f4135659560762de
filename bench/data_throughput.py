#!/usr/bin/env python
"""Documents per second per core: our data stages' inner loops against the bare library calls.

Side by side, in one process (so docs/s = docs/s per core), on the corpus a pipeline run left in
data/crawl/docs and data/clean/docs (read only):

  clean    clean_doc over pydoc_web's HTML pages  vs  trafilatura.extract(...) on the same pages,
           plus where clean_doc's time goes (extraction, normalisation, filters, language id)
  quality  load_classifier + predict_proba per shard + Pareto rule (score_shard's path)
           vs  predict_proba over all texts with the same fitted pipeline
  minhash  minhash_signatures with dedup.minhash: numpy (vectorised)  vs  datasketch (MinHash.bulk,
           the reference), for each feature kind (gpt3, word, char), on short documents (30-word
           windows of the clean corpus) and on the clean documents; ratio = numpy / datasketch
  dedup    the whole dedup stage (stages.dedup.body: shards in, shards and clusters out) on ~54k
           real short documents (GLUE sentences, PIQA, tinyshakespeare speeches from --short-docs,
           read in place), candidate pairs from sorted bands (dedup.index: lsh) vs datasketch's
           MinHashLSH (datasketch), side by side; the kept documents must be the same
  extract  word-level precision / recall / F1 of three extractors against the gold article bodies
           of the article-extraction-benchmark (skipped when that folder is absent)

Each throughput figure is the best of --repeats runs (the contenders alternate run by run);
the median is in the JSON too. Results: a table on stdout and bench/out/data_throughput.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import machine, table, write_result  # noqa: E402 - after the path set-up above
from bench.extraction import bag_prf, tokens  # noqa: E402

WORDS_RE = re.compile(r"\w+")


class Missing(Exception):
    """Input data is missing: the message is one line telling the user what to run."""


# ------------------------------------------------------------------------------------------- helpers
def race(contenders: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Run every contender ``repeats`` times, alternating, and return each one's wall times."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def rate(n_docs: int, times: list[float]) -> dict[str, Any]:
    best, med = min(times), statistics.median(times)
    return {
        "docs": n_docs,
        "times_s": [round(t, 4) for t in times],
        "best_s": round(best, 4),
        "median_s": round(med, 4),
        "docs_per_s": n_docs / best if best else float("inf"),
        "docs_per_s_median": n_docs / med if med else float("inf"),
    }


def shards(stage_dir: Path, make_target: str) -> list[Path]:
    found = sorted((stage_dir / "docs").glob("*.parquet"))
    if not found:
        raise Missing(
            f"{stage_dir / 'docs'}: no parquet shards; run `dvc repro {make_target}` (or `make run`) first"
        )
    return found


def read(paths: list[Path], columns: list[str] | None = None) -> list[dict[str, Any]]:
    from pipeline.io import read_rows

    return [row for p in paths for row in read_rows(p, columns)]


# --------------------------------------------------------------------------------------------- clean
def bench_clean(params: Any, data: Path, repeats: int, max_docs: int | None) -> dict[str, Any]:
    import trafilatura

    from pipeline.text import filters
    from pipeline.text.clean import HTML_TYPES, clean_doc
    from pipeline.text.extract import extract_text, normalize_text

    docs = [
        d
        for d in read(shards(data / "crawl", "clean"))
        if d["source"] == "pydoc_web" and d["content_type"] in HTML_TYPES
    ]
    if not docs:
        raise Missing(
            f"{data / 'crawl' / 'docs'}: no pydoc_web HTML documents; run `dvc repro clean` (or `make run`) first"
        )
    docs = docs[:max_docs] if max_docs else docs
    cfg = params.clean
    n_bytes = sum(len(d["text"].encode("utf-8", "surrogatepass")) for d in docs)

    def ours() -> None:
        for d in docs:
            clean_doc(d, cfg)

    def bare() -> None:
        for d in docs:
            trafilatura.extract(
                d["text"], include_comments=False, include_tables=cfg.include_tables,
                favor_recall=cfg.focus == "recall", favor_precision=cfg.focus == "precision", deduplicate=False,
            )  # fmt: skip

    for d in docs[:20]:  # warm-up: imports, lazily built models (py3langid), trafilatura's caches
        clean_doc(d, cfg)
    times = race({"ours": ours, "bare": bare}, repeats)

    # one instrumented pass that follows clean_doc / drop_reason step by step
    steps = ["extraction", *(f"  of which {e}" for e in ("trafilatura", "fallback", "none")),
             "normalisation", "word count + record", "gopher filters", "language id"]  # fmt: skip
    parts = Counter[str](dict.fromkeys(steps, 0.0))
    reached = Counter[str](dict.fromkeys(steps, 0))
    extractors = Counter[str]()
    reasons = Counter[str]()
    mismatches = 0
    pc = time.perf_counter
    for d in docs:
        t0 = pc()
        text, extractor = extract_text(
            d["text"], use_trafilatura=cfg.extractor == "trafilatura", fallback=cfg.fallback
        )
        t1 = pc()
        text = normalize_text(text, cfg.normalization)
        t2 = pc()
        len(filters.WORD_RE.findall(text))  # clean_doc's `words` column
        t3 = pc()
        for step, dt in (("extraction", t1 - t0), (f"  of which {extractor}", t1 - t0),
                         ("normalisation", t2 - t1), ("word count + record", t3 - t2)):  # fmt: skip
            parts[step] += dt
            reached[step] += 1
        extractors[extractor] += 1
        reason: str | None
        if extractor == "none":
            reason = "extraction"
        elif not text.strip():
            reason = "empty"
        else:
            t4 = pc()
            words = filters.WORD_RE.findall(text)
            reason = filters.gopher_quality(text, words, cfg) or filters.gopher_repetition(text, words, cfg)
            t5 = pc()
            parts["gopher filters"] += t5 - t4
            reached["gopher filters"] += 1
            if reason is None:
                reason = filters.language_check(text, cfg)
                parts["language id"] += pc() - t5
                reached["language id"] += 1
        reasons[reason or "kept"] += 1
        # the steps above must make the decision clean_doc makes (checked outside the timings)
        if reason != ("extraction" if extractor == "none" else filters.drop_reason(text, cfg)):
            mismatches += 1
    instrumented = sum(v for k, v in parts.items() if not k.startswith(" "))
    result = {
        "docs": len(docs),
        "mean_html_kb": round(n_bytes / len(docs) / 1024, 1),
        "ours": rate(len(docs), times["ours"]),
        "bare": rate(len(docs), times["bare"]),
        "breakdown_s": {k: round(v, 4) for k, v in parts.items() if reached[k]},
        "breakdown_docs_reaching": {k: n for k, n in reached.items() if n},
        "breakdown_total_s": round(instrumented, 4),
        "extractors": dict(extractors),
        "outcomes": dict(reasons.most_common()),
        "breakdown_mismatches": mismatches,
    }
    result["ratio"] = result["bare"]["docs_per_s"] / result["ours"]["docs_per_s"]
    return result


# ------------------------------------------------------------------------------------------- quality
def bench_quality(params: Any, data: Path, repeats: int) -> dict[str, Any]:
    import numpy as np

    from pipeline.text.quality import load_classifier, pareto_keep, score_shard

    clf_path = data / "quality" / "classifier.skops"
    if not clf_path.is_file():
        raise Missing(f"{clf_path}: missing; run `dvc repro quality` (or `make run`) first")
    paths = shards(data / "clean", "clean")
    per_shard = [[r["text"] for r in read([p], ["text"])] for p in paths]
    texts = [t for s in per_shard for t in s]
    cfg, seed = params.quality, params.common.seed
    clf = load_classifier(clf_path)

    def ours() -> None:
        # score_shard's path: the classifier loaded per shard, one predict_proba per shard, Pareto rule
        for index, batch in enumerate(per_shard):
            scores = load_classifier(clf_path).predict_proba(batch)[:, 1]
            pareto_keep(scores, cfg.alpha, np.random.default_rng([seed, index]))

    def bare() -> None:
        clf.predict_proba(texts)

    def load() -> None:  # as score_shard calls it (the library may cache it per process)
        load_classifier(clf_path)

    def cold_load() -> None:  # what load_classifier does when nothing is cached
        import skops.io as sio

        sio.load(clf_path, trusted=sio.get_untrusted_types(file=clf_path))

    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:

        def stage_task() -> None:
            # score_shard itself: parquet read + the above + parquet write (to a temporary folder);
            # no held-out scores, so every document goes through the classifier
            for index, p in enumerate(paths):
                score_shard((index, str(p)), tmp, str(clf_path), {}, cfg.negatives, cfg, seed)

        ours()
        times = race(
            {"ours": ours, "bare": bare, "load": load, "cold load": cold_load, "score_shard": stage_task},
            repeats,
        )
    result = {
        "docs": len(texts),
        "shards": len(paths),
        "ours": rate(len(texts), times["ours"]),
        "bare": rate(len(texts), times["bare"]),
        "score_shard": rate(len(texts), times["score_shard"]),
        "load_classifier_s": round(min(times["load"]), 5),
        "cold_load_s": round(min(times["cold load"]), 5),
        "classifier_mb": round(clf_path.stat().st_size / 1e6, 2),
    }
    result["ratio"] = result["bare"]["docs_per_s"] / result["ours"]["docs_per_s"]
    return result


# ------------------------------------------------------------------------------------------- minhash
def bench_minhash(params: Any, data: Path, repeats: int) -> dict[str, Any]:
    """Both signature paths (``dedup.minhash``: numpy and datasketch) side by side, for each
    feature kind, on the clean corpus as it is and cut into short documents (30-word windows).
    docs/s is wall time; docs per CPU second is what one core does when others share the machine."""
    from pipeline.text.minhash import minhash_signatures

    texts = [r["text"] for r in read(shards(data / "clean", "clean"), ["text"])]
    short = [" ".join(w[i : i + 30]) for t in texts if (w := t.split()) for i in range(0, len(w), 30)]
    cfg, seed = params.dedup, params.common.seed
    result: dict[str, Any] = {"num_perm": cfg.num_perm, "default_features": cfg.features, "runs": []}
    for corpus, docs in (("short (30-word windows)", short), ("clean documents", texts)):
        for kind in ("gpt3", "word", "char"):
            paths = {
                m: cfg.model_copy(update={"features": kind, "minhash": m}) for m in ("numpy", "datasketch")
            }
            for c in paths.values():
                minhash_signatures(docs[:50], c, seed=seed)  # warm-up: imports, permutation tables
            wall: dict[str, list[float]] = {m: [] for m in paths}
            cpu: dict[str, list[float]] = {m: [] for m in paths}
            for _ in range(repeats):
                for m, c in paths.items():
                    t0, c0 = time.perf_counter(), time.process_time()
                    minhash_signatures(docs, c, seed=seed)
                    wall[m].append(time.perf_counter() - t0)
                    cpu[m].append(time.process_time() - c0)
            run: dict[str, Any] = {"corpus": corpus, "features": kind, "docs": len(docs),
                                   "mean_words": round(sum(len(d.split()) for d in docs) / len(docs), 1)}  # fmt: skip
            for m in paths:
                run[m] = {**rate(len(docs), wall[m]), "docs_per_cpu_s": len(docs) / min(cpu[m])}
            run["ratio"] = run["numpy"]["docs_per_s"] / run["datasketch"]["docs_per_s"]
            result["runs"].append(run)
    return result


def short_documents(folder: Path) -> list[str]:
    """Real short documents from the public data sets in ``folder`` (never copied into the project):
    GLUE sentences (SST-2, CoLA, STS-B and MRPC pairs, RTE), PIQA goals and solutions, and the
    speeches of tinyshakespeare. STS-B and MRPC pairs hold paraphrases: near-duplicates to find."""
    import csv

    texts: list[str] = []

    def tsv(path: Path, cols: list[int], header: bool = True) -> None:
        if not path.is_file():
            return
        with path.open(encoding="utf-8-sig") as fh:
            rows = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
            if header:
                next(rows, None)
            texts.extend(row[c] for row in rows for c in cols if c < len(row))

    tsv(folder / "glue" / "SST-2" / "train_10k.tsv", [0])
    tsv(folder / "glue" / "CoLA" / "train.tsv", [3], header=False)
    tsv(folder / "glue" / "STS-B" / "train.tsv", [7, 8])
    tsv(folder / "glue" / "MRPC" / "msr_paraphrase_train.txt", [3, 4])
    tsv(folder / "glue" / "RTE" / "train.tsv", [1, 2])
    piqa = folder / "piqa_valid" / "valid.jsonl"
    if piqa.is_file():
        for line in piqa.read_text().splitlines():
            r = json.loads(line)
            texts += [r["goal"], r["sol1"], r["sol2"]]
    shakespeare = folder / "tinyshakespeare" / "input.txt"
    if shakespeare.is_file():
        texts += [p.strip() for p in shakespeare.read_text().split("\n\n")]
    return [t for t in texts if t.strip()]


def bench_dedup_stage(params: Any, folder: Path, repeats: int, with_prefect: bool) -> dict[str, Any]:
    """The whole dedup stage (``stages.dedup.body``: read shards, signatures, exact keys, LSH,
    clusters, writing every shard) on real short documents, with the candidate pairs from sorted
    bands (``dedup.index: lsh``) against datasketch's MinHashLSH (``datasketch``, what the stage
    used before), side by side; with ``with_prefect`` also once each as a Prefect flow (tasks on
    the configured runner), where per-task bookkeeping shows."""
    import shutil

    from pipeline.io import write_table
    from pipeline.orchestration import Orchestrator
    from pipeline.stage import StageContext
    from pipeline.text.quality import SCORED_SCHEMA
    from stages.dedup import body

    texts = short_documents(folder)
    if not texts:
        raise Missing(f"{folder}: no GLUE/PIQA/tinyshakespeare files; pass --short-docs PATH")
    size = params.common.shard_size
    result: dict[str, Any] = {"docs": len(texts), "median_words": statistics.median(len(t.split()) for t in texts),
                              "shard_size": size, "runs": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = [{"id": f"d{k:06d}", "source": ("glue", "piqa", "plays")[k % 3], "role": "web", "url": "",
                 "text": t, "content_type": "text/plain", "page_kind": None, "extractor": None,
                 "words": len(t.split()), "score": 1.0} for k, t in enumerate(texts)]  # fmt: skip
        for k in range(0, len(rows), size):
            write_table(root / "data" / "quality" / "docs" / f"part-{k // size:05d}.parquet", rows[k : k + size],
                        SCORED_SCHEMA)  # fmt: skip
        variants = {i: params.model_copy(update={"dedup": params.dedup.model_copy(update={"index": i})})
                    for i in ("lsh", "datasketch")}  # fmt: skip

        def run(p: Any, prefect: bool) -> tuple[float, float, dict[str, Any]]:
            out = root / "data" / "dedup"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            orch = Orchestrator(p.common, use_prefect=prefect)
            ctx = StageContext("dedup", p, root, out, orch, None)
            t0, c0 = time.perf_counter(), time.process_time()
            m = orch.run("dedup", lambda: body(ctx))
            # as a flow: the body's time (a flow's start, and a temporary server's, are not the stage's)
            wall = orch.body_s if prefect else time.perf_counter() - t0
            return wall, time.process_time() - c0, m

        run(variants["lsh"], False)  # warm-up: imports
        for _ in range(repeats):
            for name, p in variants.items():
                wall, cpu, m = run(p, False)
                r = result["runs"].setdefault(name, {"wall_s": [], "cpu_s": [], "perf": []})
                r["wall_s"].append(round(wall, 3))
                r["cpu_s"].append(round(cpu, 3))
                r["perf"].append(m["perf"])
                r["kept"] = (m["docs_out"], m["exact_duplicates"], m["near_duplicates"])
        for r in result["runs"].values():
            r["docs_per_s"] = len(texts) / min(r["wall_s"])
            r["docs_per_cpu_s"] = len(texts) / min(r["cpu_s"])
        if with_prefect:
            for name, p in variants.items():
                p = p.model_copy(update={"common": p.common.model_copy(update={"task_runner": "threads"})})
                wall, cpu, m = run(p, True)
                result["runs"][name]["prefect"] = {"body_s": round(wall, 3), "perf": m["perf"],
                                                   "docs_per_s": len(texts) / wall}  # fmt: skip
    result["ratio"] = result["runs"]["lsh"]["docs_per_s"] / result["runs"]["datasketch"]["docs_per_s"]
    result["same_output"] = result["runs"]["lsh"]["kept"] == result["runs"]["datasketch"]["kept"]
    return result


# ---------------------------------------------------------------------------------- extraction quality
def prf(pred: str, gold: str) -> tuple[float, float, float]:
    """Bag-of-words precision, recall, F1 (with counts); an empty prediction scores 0/0/0."""
    return bag_prf(tokens(pred), tokens(gold))


def bench_extraction(folder: Path) -> dict[str, Any]:
    import trafilatura

    from pipeline.text.extract import extract_text, fallback_extract

    gold = json.loads((folder / "ground-truth.json").read_text())
    pages = sorted((folder / "html").glob("*.html.gz"))
    extractors: dict[str, Callable[[str], str]] = {
        "ours: extract_text (trafilatura + fallback)": lambda h: extract_text(h)[0],
        "bare: trafilatura.extract (defaults)": lambda h: trafilatura.extract(h) or "",
        "ours: fallback_extract alone": fallback_extract,
    }
    scores: dict[str, list[tuple[float, float, float]]] = {name: [] for name in extractors}
    empty: Counter[str] = Counter()
    seconds: Counter[str] = Counter()
    used = 0
    for page in pages:
        key = page.name.removesuffix(".html.gz")
        if key not in gold:
            continue
        used += 1
        html = gzip.decompress(page.read_bytes()).decode("utf-8", errors="replace")
        for name, fn in extractors.items():
            t0 = time.perf_counter()
            try:
                text = fn(html) or ""
            except Exception:  # a crashing extractor scores like an empty one
                text = ""
            seconds[name] += time.perf_counter() - t0
            if not WORDS_RE.search(text):
                empty[name] += 1
            scores[name].append(prf(text, gold[key]["articleBody"]))
    out: dict[str, Any] = {"pages": used, "extractors": {}}
    for name, s in scores.items():
        out["extractors"][name] = {
            "precision": statistics.fmean(x[0] for x in s),
            "recall": statistics.fmean(x[1] for x in s),
            "f1": statistics.fmean(x[2] for x in s),
            "empty_pages": empty[name],
            "seconds": round(seconds[name], 3),
        }
    return out


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=ROOT, help="project root holding data/ and params.yaml")
    ap.add_argument(
        "--repeats", type=int, default=3, help="runs per measurement; the best is reported (default 3)"
    )
    ap.add_argument(
        "--max-docs", type=int, default=None, help="clean: use only the first N HTML pages (default: all)"
    )
    ap.add_argument(
        "--extraction-bench", type=Path, default=ROOT.parent / "shared" / "data" / "article_extraction_benchmark",
        help="article-extraction-benchmark folder (html/*.html.gz + ground-truth.json)",
    )  # fmt: skip
    ap.add_argument(
        "--short-docs", type=Path, default=ROOT.parent / "shared" / "data",
        help="dedup: folder of the public data sets the short documents come from (GLUE, PIQA, tinyshakespeare)",
    )  # fmt: skip
    ap.add_argument(
        "--dedup-prefect", action="store_true", help="dedup: also run the stage as a Prefect flow"
    )
    ap.add_argument(
        "--skip", nargs="*", default=[], choices=["clean", "quality", "minhash", "dedup", "extract"]
    )
    ap.add_argument("--out", type=Path, default=OUT / "data_throughput.json")
    args = ap.parse_args(argv)
    # one process, one core: keep BLAS/OpenMP from spreading numpy/sklearn work over several threads
    # (numpy, sklearn and pyarrow are imported lazily, after this)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ.setdefault(var, "1")

    from pipeline.config import load_params
    from pipeline.errors import LineageError

    try:
        params = load_params(args.root / "params.yaml")
    except LineageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    data = args.root / "data"
    results: dict[str, Any] = {
        "machine": machine(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "repeats": args.repeats,
        "statistic": "best of repeats (median also recorded)",
    }
    t_start = time.perf_counter()
    try:
        # fail before any measurement when an input is missing
        if "clean" not in args.skip:
            shards(data / "crawl", "clean")
        if "quality" not in args.skip or "minhash" not in args.skip:
            shards(data / "clean", "clean")
        if "quality" not in args.skip and not (data / "quality" / "classifier.skops").is_file():
            raise Missing(
                f"{data / 'quality' / 'classifier.skops'}: missing; run `dvc repro quality` (or `make run`) first"
            )
        for part, fn in (
            ("clean", lambda: bench_clean(params, data, args.repeats, args.max_docs)),
            ("quality", lambda: bench_quality(params, data, args.repeats)),
            ("minhash", lambda: bench_minhash(params, data, args.repeats)),
            ("dedup", lambda: bench_dedup_stage(params, args.short_docs, args.repeats, args.dedup_prefect)),
        ):
            if part in args.skip:
                continue
            t0 = time.perf_counter()
            results[part] = fn()
            print(f"[{part}: {time.perf_counter() - t0:.0f}s]", file=sys.stderr, flush=True)
    except Missing as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if "extract" not in args.skip:
        folder = args.extraction_bench
        if (folder / "ground-truth.json").is_file() and (folder / "html").is_dir():
            t0 = time.perf_counter()
            results["extraction"] = bench_extraction(folder)
            results["extraction"]["folder"] = str(folder)
            print(f"[extract: {time.perf_counter() - t0:.0f}s]", file=sys.stderr, flush=True)
        else:
            print(
                f"note: {folder} not found; extraction quality skipped (pass --extraction-bench PATH)",
                file=sys.stderr,
            )
    results["total_s"] = round(time.perf_counter() - t_start, 1)
    results["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]

    print(report(results))
    write_result(args.out, results)
    return 0


def report(r: dict[str, Any]) -> str:
    out: list[str] = []
    rows = []
    if "clean" in r:
        c = r["clean"]
        rows.append(["clean: clean_doc", c["docs"], f"{c['ours']['docs_per_s']:.1f}", "", ""])
        rows.append(
            [
                "clean: bare trafilatura.extract",
                c["docs"],
                f"{c['bare']['docs_per_s']:.1f}",
                f"{c['ratio']:.2f}x",
                "<= 1.2x",
            ]
        )
    if "quality" in r:
        q = r["quality"]
        rows.append(
            [
                f"quality: load + predict per shard + Pareto ({q['shards']} shards)",
                q["docs"],
                f"{q['ours']['docs_per_s']:.0f}",
                "",
                "",
            ]
        )
        rows.append(
            [
                "quality: bare predict_proba (one call)",
                q["docs"],
                f"{q['bare']['docs_per_s']:.0f}",
                f"{q['ratio']:.2f}x",
                "",
            ]
        )
        ss = q["score_shard"]["docs_per_s"]
        rows.append(
            [
                "quality: score_shard (+ parquet read/write)",
                q["docs"],
                f"{ss:.0f}",
                f"{q['bare']['docs_per_s'] / ss:.2f}x",
                "",
            ]
        )
    if "minhash" in r:
        for run in r["minhash"]["runs"]:
            for m in ("numpy", "datasketch"):
                rows.append(
                    [
                        f"minhash {run['features']}: {m}, {run['corpus']} (num_perm {r['minhash']['num_perm']})",
                        run["docs"],
                        f"{run[m]['docs_per_s']:.0f} ({run[m]['docs_per_cpu_s']:.0f}/cpu-s)",
                        f"{run['ratio']:.1f}x numpy" if m == "datasketch" else "",
                        ">= 50k/core short" if m == "numpy" and run["corpus"].startswith("short") else "",
                    ]
                )
    if "dedup" in r:
        d = r["dedup"]
        for name in ("lsh", "datasketch"):
            run = d["runs"][name]
            rows.append(
                [
                    f"dedup stage, index: {name} ({d['docs']} short docs, median {d['median_words']} words)",
                    d["docs"],
                    f"{run['docs_per_s']:.0f} ({run['docs_per_cpu_s']:.0f}/cpu-s)",
                    f"{d['ratio']:.1f}x lsh" if name == "datasketch" else "",
                    ">= 10k/core end to end" if name == "lsh" else "",
                ]
            )
            if "prefect" in run:
                rows.append([f"  as a Prefect flow ({run['prefect']['perf']['tasks']} tasks)", d["docs"],
                             f"{run['prefect']['docs_per_s']:.0f}", "", ""])  # fmt: skip
    if rows:
        out.append(
            f"Throughput, one process = per core (best of {r['repeats']}; ratio = bare docs/s / ours docs/s; minhash: numpy docs/s / datasketch docs/s)"
        )
        out.append(table(["measurement", "docs", "docs/s", "ratio", "goal"], rows))
    if "clean" in r:
        c = r["clean"]
        total = c["breakdown_total_s"] or 1.0
        brows = []
        for k, v in c["breakdown_s"].items():
            docs = c["breakdown_docs_reaching"][k]
            brows.append([k, docs, f"{v:.2f}", f"{1000 * v / max(docs, 1):.1f}", f"{100 * v / total:.1f}%"])
        brows.append(
            [
                "total (instrumented pass)",
                c["docs"],
                f"{total:.2f}",
                f"{1000 * total / c['docs']:.1f}",
                "100%",
            ]
        )
        out.append("")
        out.append(
            f"Where clean_doc's time goes ({c['docs']} pydoc_web pages, mean {c['mean_html_kb']} KiB; one instrumented pass; "
            f"breakdown disagrees with clean_doc on {c['breakdown_mismatches']} docs)"
        )
        out.append(table(["step", "docs", "seconds", "ms/doc", "share"], brows))
        out.append(f"outcomes: {c['outcomes']}")
    if "quality" in r:
        q = r["quality"]
        out.append(
            f"quality: load_classifier as called per shard {1000 * q['load_classifier_s']:.2f} ms; "
            f"uncached skops load of the {q['classifier_mb']} MB file {1000 * q['cold_load_s']:.1f} ms"
        )
    if "extraction" in r:
        e = r["extraction"]
        erows = [
            [
                name,
                f"{v['precision']:.3f}",
                f"{v['recall']:.3f}",
                f"{v['f1']:.3f}",
                v["empty_pages"],
                f"{v['seconds']:.1f}",
            ]
            for name, v in e["extractors"].items()
        ]
        out.append("")
        out.append(
            f"Extraction quality: {e['pages']} pages of article-extraction-benchmark, bag-of-words (lowercased \\w+ "
            "with counts) vs gold articleBody; mean over pages, empty output = 0"
        )
        out.append(table(["extractor", "P", "R", "F1", "empty", "seconds"], erows))
    out.append(
        f"\ntotal {r['total_s']}s; 1-min load average {r['loadavg_start'][0]} at start, {r['loadavg_end'][0]} at end "
        f"({r['machine']['cpu_count']} CPUs; this benchmark itself keeps one busy)"
    )
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
