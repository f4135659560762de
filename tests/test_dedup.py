import random

import numpy as np

from pipeline.config import DedupConfig
from pipeline.text.dedup import (
    decontaminate,
    doc_frequency,
    eval_ngram_set,
    exact_key,
    minhash_signatures,
    near_duplicate_clusters,
    shingles,
)

CFG = DedupConfig()


def mutate(words: list[str], frac: float, rng: random.Random) -> list[str]:
    out = list(words)
    for i in rng.sample(range(len(out)), int(frac * len(out))):
        out[i] = f"x{rng.randrange(10**6)}"
    return out


def jaccard(a: str, b: str, n: int = 5) -> float:
    sa, sb = set(shingles(a, n)), set(shingles(b, n))
    return len(sa & sb) / len(sa | sb)


def test_minhash_lsh_finds_planted_near_duplicates():
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
    sigs = minhash_signatures(texts, CFG)
    clusters = near_duplicate_clusters(sigs, list(range(len(texts))), CFG)
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
