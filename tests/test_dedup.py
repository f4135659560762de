import random

import numpy as np
import pytest

from pipeline.config import DedupConfig, QualityConfig
from pipeline.text.dedup import (
    decontaminate,
    doc_frequency,
    eval_ngram_set,
    exact_key,
    minhash_signatures,
    near_duplicate_clusters,
    shingles,
)
from pipeline.text.minhash import (
    char_shingles,
    feature_hashes,
    gpt3_buckets,
    signatures_from_hashes,
)

# word 5-grams at 0.7 (14 x 8 bands): the planted test below is about them, whatever the default
CFG = DedupConfig(features="word", ngram=5, bands=14, rows=8, min_jaccard=0.7)
KINDS = ["word", "gpt3", "char"]


def mutate(words: list[str], frac: float, rng: random.Random) -> list[str]:
    out = list(words)
    for i in rng.sample(range(len(out)), int(frac * len(out))):
        out[i] = f"x{rng.randrange(10**6)}"
    return out


def jaccard(a: str, b: str, n: int = 5) -> float:
    sa, sb = set(shingles(a, n)), set(shingles(b, n))
    return len(sa & sb) / len(sa | sb)


@pytest.mark.parametrize("minhash", ["numpy", "datasketch"])
def test_minhash_lsh_finds_planted_near_duplicates(minhash):
    cfg = CFG.model_copy(update={"minhash": minhash})
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(3000)]
    texts: list[str] = []
    pairs: list[tuple[int, int, float]] = []
    for k in range(300):
        base = [rng.choice(vocab) for _ in range(300)]
        frac = rng.uniform(0.0, 0.03) if k % 2 == 0 else rng.uniform(0.15, 0.6)
        a, b = " ".join(base), " ".join(mutate(base, frac, rng))
        texts += [a, b]
        pairs.append((len(texts) - 2, len(texts) - 1, jaccard(a, b)))
    sigs = minhash_signatures(texts, cfg)
    clusters = near_duplicate_clusters(sigs, list(range(len(texts))), cfg)
    cluster_of = {}
    for c_id, c in enumerate(clusters):
        for m in [c["kept"], *c["removed"]]:
            cluster_of[m] = c_id
    same = [(cluster_of.get(i, -1 - i) == cluster_of.get(j, -2 - j), jac) for i, j, jac in pairs]
    high = [hit for hit, jac in same if jac >= 0.8]
    low = [hit for hit, jac in same if jac <= 0.3]
    assert len(high) >= 100 and len(low) >= 100
    assert np.mean(high) >= 0.9, f"recall {np.mean(high):.3f} at Jaccard >= 0.8"
    assert np.mean(low) <= 0.01, f"false positives {np.mean(low):.3f} at Jaccard <= 0.3"
    # unrelated documents never end up together: every cluster is one planted pair
    assert all(len(c["removed"]) == 1 and c["removed"][0] - c["kept"] == 1 for c in clusters)
    for c in clusters:
        assert c["jaccard"][0] >= CFG.min_jaccard


def test_priority_decides_which_copy_survives():
    rng = random.Random(1)
    text = " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "eps"]) + str(i) for i in range(200))
    sigs = minhash_signatures([text, text + " tail", text], CFG)
    (cluster,) = near_duplicate_clusters(sigs, [2, 0, 1], CFG)
    assert cluster["kept"] == 1 and sorted(cluster["removed"]) == [0, 2]


def test_exact_key_ignores_case_punctuation_and_spacing():
    assert exact_key("Hello,  World!\n") == exact_key("hello world")
    assert exact_key("hello world") != exact_key("hello there world")


def filler(n: int, tag: str) -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def test_decontamination_cuts_match_plus_200_chars_each_side():
    cfg = DedupConfig()
    leak = "the quick brown fox jumps over the lazy dog near the old river bank today"  # 15 words
    eval_grams = eval_ngram_set([leak], 13)
    before, after = filler(150, "a"), filler(150, "b")
    text = f"{before} {leak} {after}"
    pieces, matches = decontaminate(text, eval_grams, set(), cfg)
    assert matches == 1 and len(pieces) == 2
    assert "fox" not in " ".join(pieces)
    start = text.index(leak)
    assert pieces[0] == text[: start - 200].strip()
    end = start + len(leak)
    assert pieces[1] == text[end + 200 :].strip()


def test_decontamination_drops_short_pieces_and_shredded_documents():
    cfg = DedupConfig()
    leak = "one two three four five six seven eight nine ten eleven twelve thirteen"
    grams = eval_ngram_set([leak], 13)
    short = f"{filler(20, 'a')} {leak} {filler(20, 'b')}"  # both sides < 200 chars once cut
    assert decontaminate(short, grams, set(), cfg) == ([], 1)
    shredded = f" {filler(150, 'z')} ".join([leak] * 12)  # 12 matches, ~300-char pieces left between them
    pieces, matches = decontaminate(shredded, grams, set(), cfg)
    assert matches == 12 and pieces is None  # 11 kept pieces > 10: the document is dropped
    clean = filler(100, "c")
    assert decontaminate(clean, grams, set(), cfg) == ([clean], 0)


def test_frequent_ngrams_are_ignored():
    leak = "one two three four five six seven eight nine ten eleven twelve thirteen"
    grams = eval_ngram_set([leak], 13)
    docs = [f"{filler(60, f'd{k}_')} {leak} {filler(60, 'e')}" for k in range(12)]
    df = doc_frequency(docs, grams, 13)
    frequent = {g for g, n in df.items() if n > DedupConfig().decontam_max_doc_freq}
    assert frequent == grams
    assert decontaminate(docs[0], grams, frequent, DedupConfig()) == ([docs[0]], 0)


# ------------------------------------------------------------------------ feature kinds and fast path
def zipf_corpus(rng: random.Random, n_docs: int, n_words: int) -> list[str]:
    """Unrelated documents over a Zipf-like vocabulary: common words shared, rare words not."""
    vocab = [f"v{i}" for i in range(20000)]
    weights = [1 / (i + 1) for i in range(len(vocab))]
    return [" ".join(rng.choices(vocab, weights, k=n_words)) for _ in range(n_docs)]


def edited(text: str, n_edits: int, rng: random.Random) -> str:
    words = text.split()
    for _ in range(n_edits):
        words[rng.randrange(len(words))] = f"new{rng.randrange(10**6)}"
    return " ".join(words)


@pytest.mark.parametrize("kind", KINDS)
def test_numpy_signatures_equal_datasketch_given_the_same_feature_hashes(kind):
    from datasketch import MinHash

    cfg = DedupConfig(features=kind)
    texts = [*zipf_corpus(random.Random(1), 30, 40), "", "one", "two words", "!!!", "a b c d e f"]
    values, offsets = feature_hashes(texts, cfg)
    assert len(offsets) == len(texts) + 1 and (np.diff(offsets) >= 1).all()  # every document has a feature
    ours = signatures_from_hashes(values, offsets, cfg.num_perm, seed=3)
    feats = [values[offsets[i] : offsets[i + 1]].tolist() for i in range(len(texts))]
    ref = MinHash.bulk(feats, num_perm=cfg.num_perm, seed=3, hashfunc=lambda v: v)
    assert np.array_equal(ours, np.stack([m.hashvalues for m in ref]))


def test_gpt3_numpy_path_is_bit_identical_to_datasketch():
    texts = [*zipf_corpus(random.Random(2), 40, 25), "", "Hello, World!"]
    fast = minhash_signatures(texts, DedupConfig(features="gpt3", minhash="numpy"))
    ref = minhash_signatures(texts, DedupConfig(features="gpt3", minhash="datasketch"))
    assert np.array_equal(fast, ref)


def test_gpt3_features_are_the_quality_classifiers():
    """GPT-3 deduplicated "using the same features as were used for classification"."""
    from pipeline.text.quality import make_classifier

    texts = ["The cat sat on the mat.", "THE cat, the dog", "tabs\tand\nnew lines  here"]
    vec = make_classifier(QualityConfig(positives=["a"], negatives=["b"]), seed=0).steps[0][1]
    m = vec.transform(texts)
    values, offsets = gpt3_buckets(texts, DedupConfig().hash_features)
    for i in range(len(texts)):
        assert sorted(values[offsets[i] : offsets[i + 1]].tolist()) == sorted(m[i].indices.tolist())
    assert len(set(values[offsets[1] : offsets[2]].tolist())) == 3  # "the" (twice), "cat," and "dog"


@pytest.mark.parametrize("kind", ["word", "char"])
def test_numpy_feature_hashes_keep_each_pairs_jaccard(kind):
    cfg = DedupConfig(features=kind, ngram=3, char_ngram=4)
    rng = random.Random(3)
    base = zipf_corpus(rng, 10, 50)
    texts = [t for b in base for t in (b, edited(b, rng.randrange(1, 15), rng))]
    values, offsets = feature_hashes(texts, cfg)
    ref = [set(shingles(t, 3)) if kind == "word" else set(char_shingles(t, 4)) for t in texts]
    ours = [set(values[offsets[i] : offsets[i + 1]].tolist()) for i in range(len(texts))]
    for i in range(0, len(texts), 2):
        a, b = ref[i], ref[i + 1]
        x, y = ours[i], ours[i + 1]
        assert len(x) == len(a)  # no two shingles of a document share a hash
        assert abs(len(x & y) / len(x | y) - len(a & b) / len(a | b)) < 1e-9


@pytest.mark.parametrize("kind", ["word", "char"])
def test_numpy_and_datasketch_paths_agree_within_minhash_error(kind):
    cfg = DedupConfig(features=kind, ngram=3, bands=28, rows=4, min_jaccard=0.5)
    rng = random.Random(4)
    base = zipf_corpus(rng, 60, 60)
    # clear near-duplicates (1-2 edits) and clear non-duplicates (30 edits) of each base
    texts = [t for b in base for t in (b, edited(b, rng.choice([1, 2]), rng), edited(b, 30, rng))]
    fast = minhash_signatures(texts, cfg.model_copy(update={"minhash": "numpy"}), seed=5)
    ref = minhash_signatures(texts, cfg.model_copy(update={"minhash": "datasketch"}), seed=5)
    est_fast = [(fast[i] == fast[i + k]).mean() for i in range(0, len(texts), 3) for k in (1, 2)]
    est_ref = [(ref[i] == ref[i + k]).mean() for i in range(0, len(texts), 3) for k in (1, 2)]
    diff = np.abs(np.array(est_fast) - np.array(est_ref))
    # two independent estimates of one Jaccard: sd <= sqrt(2 * 0.25 / num_perm) = 0.067
    assert diff.max() < 5 * np.sqrt(0.5 / cfg.num_perm) and diff.mean() < 0.06
    order = list(range(len(texts)))
    members = [
        [(c["kept"], c["removed"]) for c in near_duplicate_clusters(s, order, cfg)] for s in (fast, ref)
    ]
    assert members[0] == members[1] == [(i, [i + 1]) for i in range(0, len(texts), 3)]


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        ("word", {"ngram": 2, "min_jaccard": 0.4}),
        ("gpt3", {"min_jaccard": 0.6}),
        ("char", {"min_jaccard": 0.5}),
    ],
)
def test_each_feature_kind_finds_a_planted_near_duplicate(kind, extra):
    rng = random.Random(6)
    texts = zipf_corpus(rng, 40, 40)
    copy = edited(texts[7], 2, rng).replace("v", "V")  # 2 words of 40 changed, and the case
    texts.insert(20, copy)
    cfg = DedupConfig(features=kind, bands=56, rows=2, **extra)
    clusters = near_duplicate_clusters(minhash_signatures(texts, cfg), list(range(len(texts))), cfg)
    assert [(c["kept"], c["removed"]) for c in clusters] == [(7, [20])]


@pytest.mark.parametrize("processes", [False])
def test_distributed_index_gives_the_same_clusters_as_lsh(tmp_path, processes):
    from distributed import Client, LocalCluster

    from pipeline.text.minhash_dask import distributed_clusters

    rng = random.Random(7)
    base = zipf_corpus(rng, 80, 50)
    texts = [t for b in base for t in (b, edited(b, rng.randrange(1, 25), rng))]
    texts += [texts[0], edited(texts[0], 1, rng)]  # a cluster of four (one an exact copy, left out below)
    cfg = DedupConfig(features="char", bands=28, rows=4, min_jaccard=0.5)
    sigs = minhash_signatures(texts, cfg)
    order = [rng.random() for _ in texts]
    alive = np.ones(len(texts), bool)
    alive[len(base) * 2] = False
    paths, counts = [], []
    for k, s in enumerate(range(0, len(sigs), 45)):  # four shards of signatures
        np.save(tmp_path / f"{k}.npy", sigs[s : s + 45])
        paths.append(str(tmp_path / f"{k}.npy"))
        counts.append(len(sigs[s : s + 45]))
    survivors = np.flatnonzero(alive)
    expected = [
        {**c, "kept": int(survivors[c["kept"]]), "removed": [int(survivors[r]) for r in c["removed"]]}
        for c in near_duplicate_clusters(sigs[survivors], [order[i] for i in survivors], cfg)
    ]
    assert len(expected) >= 25 and any(len(c["removed"]) >= 2 for c in expected)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=processes, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        got = distributed_clusters(paths, counts, alive, order, cfg, client, partitions=3)
    assert got == expected


def test_dedup_stage_gives_the_same_clusters_with_the_distributed_index(tmp_path, monkeypatch):
    import contextlib

    import pyarrow.parquet as pq
    from distributed import Client, LocalCluster

    from pipeline.config import parse_params
    from pipeline.io import write_table
    from pipeline.stage import run_stage
    from pipeline.text.quality import SCORED_SCHEMA
    from stages import dedup as stage
    from tests.conftest import files_params

    rng = random.Random(8)
    base = zipf_corpus(rng, 60, 60)
    texts = [*base, *(edited(b, rng.randrange(1, 4), rng) for b in base[:20]), base[5]]  # 20 near, 1 exact
    rows = [
        {"id": f"d{k:03d}", "source": ("ref", "web")[k % 2], "role": "web", "url": f"u{k}", "text": t,
         "content_type": "text/plain", "page_kind": None, "extractor": None, "words": 60, "score": 1.0}
        for k, t in enumerate(texts)
    ]  # fmt: skip
    for k in range(0, len(rows), 30):  # three shards
        write_table(
            tmp_path / "data" / "quality" / "docs" / f"part-{k // 30:05d}.parquet",
            rows[k : k + 30],
            SCORED_SCHEMA,
        )

    @contextlib.contextmanager
    def in_process_cluster(common):
        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client

    monkeypatch.setattr(stage, "dask_client", in_process_cluster)
    found = {}
    for index in ("lsh", "distributed"):
        params = parse_params(files_params(tmp_path, {"dedup": {"index": index}}))
        m = run_stage("dedup", stage.body, tmp_path, params)
        assert (m["exact_duplicates"], m["near_duplicates"], m["docs_out"]) == (1, 20, 60), index
        found[index] = pq.read_table(tmp_path / "data" / "dedup" / "clusters.parquet").to_pylist()
    assert found["lsh"] == found["distributed"]


# ------------------------------------------------------------------------------- the stage's fast path
def test_band_candidates_are_the_pairs_datasketchs_minhashlsh_finds(monkeypatch):
    from pipeline.text import minhash

    rng = np.random.default_rng(0)
    sigs = rng.integers(0, 3, (400, 24), dtype=np.uint32)  # a small alphabet: many shared bands
    cfg = DedupConfig(num_perm=24, bands=8, rows=3)
    ref = minhash.datasketch_candidates(sigs, cfg)
    assert len(ref) > 1000
    assert np.array_equal(minhash.band_candidates(sigs, 8, 3), ref)
    monkeypatch.setattr(minhash, "_M64", np.uint64(0))  # every band's rows share one hash
    assert np.array_equal(minhash.band_candidates(sigs, 8, 3), ref)


def write_quality_shards(root, texts, per_shard, sources=("ref", "web")):
    from pipeline.io import write_table
    from pipeline.text.quality import SCORED_SCHEMA

    rows = [
        {"id": f"d{k:04d}", "source": sources[k % len(sources)], "role": "web", "url": f"u{k}", "text": t,
         "content_type": "text/plain", "page_kind": None, "extractor": None, "words": len(t.split()),
         "score": 1.0}
        for k, t in enumerate(texts)
    ]  # fmt: skip
    for k in range(0, len(rows), per_shard):
        write_table(
            root / "data" / "quality" / "docs" / f"part-{k // per_shard:05d}.parquet",
            rows[k : k + per_shard],
            SCORED_SCHEMA,
        )


def run_dedup(root, extra):
    """The dedup stage's body on ``root``'s quality shards, in plain Python (no tracking): its
    metrics, kept documents (by id) and clusters."""
    import shutil

    import pyarrow.parquet as pq

    from pipeline.config import parse_params
    from pipeline.orchestration import Orchestrator
    from pipeline.stage import StageContext
    from stages import dedup as stage
    from tests.conftest import files_params

    params = parse_params(files_params(root, extra))
    out = root / "data" / "dedup"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    m = stage.body(
        StageContext("dedup", params, root, out, Orchestrator(params.common, use_prefect=False), None)
    )
    docs = sorted(pq.read_table(out / "docs").to_pylist(), key=lambda r: r["id"])
    return m, docs, pq.read_table(out / "clusters.parquet").to_pylist()


def test_dedup_stage_keeps_the_same_documents_as_the_datasketch_index(tmp_path, monkeypatch):
    """Short documents (a few words, as titles and sentences), near and exact copies, across many
    shards and task batches: the sorted-bands index keeps exactly what MinHashLSH kept."""
    from stages import dedup as stage

    rng = random.Random(9)
    base = zipf_corpus(rng, 300, 12)
    texts = [*base, *(edited(b, 1, rng) for b in base[:80]), *base[100:110], "", "ok"]
    write_quality_shards(tmp_path, texts, 20)
    monkeypatch.setattr(stage, "TASK_DOCS", 60)  # three shards a task: several batches
    found = {}
    for index in ("lsh", "datasketch"):
        m, docs, clusters = run_dedup(tmp_path, {"dedup": {"index": index}})
        assert m["exact_duplicates"] >= 10 and m["near_duplicates"] >= 40, index
        assert m["perf"]["tasks"] == 2 * 7
        found[index] = (docs, clusters)
    assert found["lsh"] == found["datasketch"]
    assert len(found["lsh"][0]) == len(texts) - m["exact_duplicates"] - m["near_duplicates"]


# ------------------------------------------------------------------ decontamination against named tasks
PIQA_TEST = [
    {"goal": "How do you keep a cast iron pan from rusting after you wash it in the sink?",
     "sol1": "Dry it on a warm burner right away and wipe a thin film of cooking oil over the whole surface.",
     "sol2": "Leave it to soak in the sink overnight so the water can loosen all of the old seasoning."},
    {"goal": "To loosen a stuck jar lid,", "sol1": "run the lid under hot water for a minute.",
     "sol2": "put the jar in the freezer for an hour."},
]  # fmt: skip


def write_piqa(folder):
    """A PIQA folder as the data set ships it: train.jsonl, valid.jsonl and valid-labels.lst."""
    import json

    folder.mkdir(parents=True)
    lines = "".join(json.dumps(r) + "\n" for r in PIQA_TEST)
    (folder / "train.jsonl").write_text(lines)
    (folder / "train-labels.lst").write_text("0\n0\n")
    (folder / "valid.jsonl").write_text(lines)
    (folder / "valid-labels.lst").write_text("0\n0\n")


def test_dedup_decontaminates_against_the_test_sets_given_to_finetune_and_evaluate(tmp_path):
    import json

    write_piqa(tmp_path / "piqa")
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.tsv").write_text("sentence\tlabel\na fine film \t1\n")
    sst2_item = (
        "the film is a quiet , patient portrait of two brothers who never learned how to speak to each other "
    )
    (tmp_path / "sst2" / "dev.tsv").write_text(f"sentence\tlabel\n{sst2_item}\t1\nflat and dull \t0\n")
    (tmp_path / "story").mkdir()
    story = (
        "Question: what did the old lighthouse keeper find washed up on the rocks after the long winter storm"
    )
    for side in ("train", "test"):
        (tmp_path / "story" / f"{side}.jsonl").write_text(
            json.dumps({"context": story, "choices": ["a bottle", "a boat"], "label": 0}) + "\n"
        )
    rng = random.Random(10)
    leaked = {
        "piqa": PIQA_TEST[0]["goal"] + " " + PIQA_TEST[0]["sol1"],
        "sst2": sst2_item,
        "story": story,
    }
    texts = [
        f"{filler(80, f'a{k}_')} {leak} {filler(80, f'b{k}_')}" for k, leak in enumerate(leaked.values())
    ]
    texts += zipf_corpus(rng, 20, 60)
    write_quality_shards(tmp_path, texts, 10)
    extra = {
        "finetune": {"tasks": {"piqa": {"kind": "piqa", "path": "piqa"}, "sst2": {"kind": "sst2", "path": "sst2"},
                               "source": {"kind": "source"}}},
        "evaluate": {"external": ["story"]},
    }  # fmt: skip
    m, docs, _ = run_dedup(tmp_path, extra)
    d = m["decontamination"]
    assert set(d["sets"]) == {"finetune/piqa", "finetune/sst2", "evaluate/story"}
    assert d["docs_contaminated"] == 3 and d["matches_cut"] == 3
    assert d["sets"]["finetune/piqa"]["items"] == 2 and all(s["ngrams_cut"] > 0 for s in d["sets"].values())
    out = " ".join(r["text"] for r in docs)
    for leak in leaked.values():
        assert leak not in out
    assert m["docs_out"] == 20 + 6  # each leaking document is cut in two pieces of 200+ characters

    off = {**extra, "dedup": {"decontaminate_tasks": False}}
    m, _, _ = run_dedup(tmp_path, off)
    assert m["decontamination"]["docs_contaminated"] == 0 and m["docs_out"] == 23


def test_a_hub_task_is_reported_as_not_read(tmp_path):
    from pipeline.config import parse_params
    from pipeline.text.dedup import task_test_sets
    from tests.conftest import files_params

    extra = {"finetune": {"tasks": {"sst2": {"kind": "sst2", "path": "nyu-mll/glue:sst2"}}},
             "evaluate": {"external": ["hellaswag"]}}  # fmt: skip
    sets, skipped = task_test_sets(parse_params(files_params(tmp_path, extra)), tmp_path)
    assert sets == {} and len(skipped) == 2 and "finetune.tasks.sst2" in skipped[0]


def test_a_named_test_set_without_its_test_file_is_one_line_naming_the_task(tmp_path):
    from pipeline.config import parse_params
    from pipeline.errors import LineageError
    from pipeline.text.dedup import task_test_sets
    from tests.conftest import files_params

    (tmp_path / "rte").mkdir()
    (tmp_path / "rte" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n")
    extra = {"finetune": {"tasks": {"rte": {"kind": "rte", "path": "rte"}}}}
    with pytest.raises(LineageError, match=r"finetune.tasks.rte: .*dev.tsv not found"):
        task_test_sets(parse_params(files_params(tmp_path, extra)), tmp_path)
