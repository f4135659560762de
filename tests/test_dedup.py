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
