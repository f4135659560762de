import random

import numpy as np
import pytest

from pipeline.config import QualityConfig
from pipeline.text.quality import (
    load_classifier,
    make_classifier,
    pareto_keep,
    save_classifier,
    train_classifier,
)
from tests.conftest import files_params, junk, prose

CFG = QualityConfig(positives=["ref"], negatives=["web"])


@pytest.mark.parametrize("score", [0.0, 0.25, 0.5, 0.75, 0.9, 1.0])
def test_pareto_keep_rate_matches_gpt3_formula(score: float):
    n = 200_000
    keep = pareto_keep(np.full(n, score), 9.0, np.random.default_rng(7))
    expected = (2 - score) ** -9
    se = np.sqrt(expected * (1 - expected) / n)
    assert abs(keep.mean() - expected) <= 4 * se + 1e-12


def test_pareto_rule_is_seeded():
    s = np.random.default_rng(0).random(1000)
    a = pareto_keep(s, 9.0, np.random.default_rng(3))
    b = pareto_keep(s, 9.0, np.random.default_rng(3))
    assert (a == b).all()


def test_features_are_the_gpt3_hashing_setup():
    vec = make_classifier(CFG, 0).steps[0][1]
    assert vec.n_features == 2**18 and vec.alternate_sign is False and vec.lowercase is True
    assert vec.build_analyzer()("Hello, World  foo-bar") == [
        "hello,",
        "world",
        "foo-bar",
    ]  # whitespace tokens


def test_classifier_separates_reference_from_web_on_held_out_folds(tmp_path):
    rng = random.Random(0)
    pos = [prose(rng, 150) for _ in range(60)]
    neg = [junk(rng, 150) for _ in range(60)]
    clf, metrics, labels, scores = train_classifier(pos, neg, CFG, seed=0)
    assert metrics["auc"] > 0.95 and metrics["precision"] > 0.9 and metrics["recall"] > 0.9
    assert len(scores) == 120 and set(labels) == {0, 1}
    assert scores[:60].mean() > scores[60:].mean()
    path = tmp_path / "classifier.skops"
    save_classifier(clf, path)
    again = load_classifier(path)
    texts = [prose(rng, 100), junk(rng, 100)]
    assert np.allclose(again.predict_proba(texts), clf.predict_proba(texts))


def test_on_the_embedded_web_prose_pages_score_above_api_pages():
    """The reference side of the distributions against a sample of the embedded web: project pages
    (READMEs of the other side) must read more like the reference than pydoc's API pages do."""
    from pipeline.config import CleanConfig, DistSplit, PydocSource, PythonDocsSource
    from pipeline.text.clean import clean_doc
    from pipeline.text.sources import EmbeddedWeb, read_python_docs_source
    from pipeline.text.web import extract_links

    split, clean_cfg = DistSplit(), CleanConfig()
    with EmbeddedWeb(PydocSource(kind="pydoc"), split) as web:
        home = web.get("/")[2].decode()
        api_paths = [
            u.removeprefix(web.url[:-1]) for u in extract_links(home, web.url) if u.endswith(".html")
        ]
        api_paths = [p for p in api_paths if not p.startswith("/projects/")][:10]
        pages = {p: "api" for p in api_paths} | {p.path: "prose" for p in web.projects[:10]}
        texts, kinds = [], []
        for path, kind in pages.items():
            doc, _ = clean_doc({"id": path, "source": "web", "role": "web", "url": path,
                                "text": web.get(path)[2].decode(), "content_type": "text/html"}, clean_cfg)  # fmt: skip
            if doc["words"] >= 30:
                texts.append(doc["text"])
                kinds.append(kind)
    refs = read_python_docs_source(
        "ref", PythonDocsSource(kind="python_docs", part="distributions", max_docs=40), split
    ) + read_python_docs_source("topics", PythonDocsSource(kind="python_docs", part="topics", max_docs=20))
    _, _, _, scores = train_classifier([d["text"] for d in refs], texts, CFG, seed=0)
    web_scores = scores[len(refs) :]
    kinds_arr = np.array(kinds)
    assert (kinds_arr == "api").sum() >= 6 and (kinds_arr == "prose").sum() >= 6
    prose, api = web_scores[kinds_arr == "prose"], web_scores[kinds_arr == "api"]
    assert prose.mean() > api.mean() + 0.2, (prose.mean(), api.mean())
    keep = lambda s, a: float(np.mean((2 - s) ** -a))  # noqa: E731 - P(keep) of the Pareto rule
    assert keep(prose, 9.0) > 2 * keep(api, 9.0)


def test_score_shard_counts_each_page_kind(tmp_path):
    from pipeline.io import write_table
    from pipeline.text.clean import CLEAN_SCHEMA
    from pipeline.text.quality import score_shard

    rng = random.Random(1)
    rows = [
        {"id": f"web/{i}", "source": "web", "role": "web", "url": f"u{i}", "text": text, "content_type": "text/html",
         "page_kind": kind, "extractor": "trafilatura", "words": 100}
        for i, (kind, text) in enumerate([("prose", prose(rng, 100)) for _ in range(6)] + [("api", junk(rng, 100)) for _ in range(4)])
    ] + [{"id": "ref/0", "source": "ref", "role": "reference", "url": "r", "text": prose(rng, 100),
          "content_type": "text/plain", "page_kind": None, "extractor": "plain", "words": 100}]  # fmt: skip
    shard = write_table(tmp_path / "in" / "part-00000.parquet", rows, CLEAN_SCHEMA)
    held_out = {r["id"]: (0.999 if r["page_kind"] != "api" else 0.001) for r in rows}
    out = score_shard((0, str(shard)), str(tmp_path / "out"), "unused", held_out, ["web"], CFG, seed=0)
    assert out["total"] == {"web": 10, "ref": 1, "web:prose": 6, "web:api": 4}
    assert out["kept"]["web:prose"] + out["kept"]["web:api"] == out["kept"]["web"]
    assert out["kept"]["web:api"] == 0 and out["kept"]["web:prose"] >= 3  # P(keep) 0.002 and 0.99 at alpha 9


def test_the_negatives_are_every_web_page_clean_kept_or_dropped(project, monkeypatch):
    """GPT-3's classifier learns reference text against unfiltered Common Crawl: the web pages that
    clean's heuristics dropped are negatives too; a dropped reference document is no positive."""
    import json

    from pipeline.config import parse_params
    from pipeline.io import list_shards, read_rows
    from pipeline.stage import run_stage
    from stages import clean, crawl, quality

    root, _ = project
    with (root / "corpus" / "web" / "pages.jsonl").open("a") as fh:
        for i in range(6):  # short pages: clean drops them (min_words)
            fh.write(json.dumps({"text": f"Buy now {i}. Cheap shoes for the river."}) + "\n")
    (root / "corpus" / "ref" / "short.txt").write_text("A reference note of five words.")
    params = parse_params(files_params(root))
    run_stage("crawl", crawl.body, root, params)
    run_stage("clean", clean.body, root, params)
    seen = {}
    train = quality.train_classifier

    def spy(pos, neg, *args, **kw):
        seen["pos"], seen["neg"] = list(pos), list(neg)
        return train(pos, neg, *args, **kw)

    monkeypatch.setattr(quality, "train_classifier", spy)
    run_stage("quality", quality.body, root, params)

    def texts(folder, source):
        return {r["text"] for p in list_shards(folder) for r in read_rows(p) if r["source"] == source}

    data = root / "data" / "clean"
    dropped_web = {t for t in texts(data / "dropped", "web") if t.strip()}
    assert any(t.startswith("Buy now") for t in dropped_web)
    assert sorted(seen["neg"]) == sorted(texts(data / "docs", "web") | dropped_web)
    assert sorted(seen["pos"]) == sorted(texts(data / "docs", "ref"))
    assert "A reference note of five words." in texts(data / "dropped", "ref")
