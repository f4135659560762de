"""MinHash signatures and LSH candidates for fuzzy deduplication.

Three kinds of features (``dedup.features``), each a *set* per document:

- ``word``: word n-grams (``dedup.ngram`` words, ``\\w+`` tokens, lowercased);
- ``gpt3``: what GPT-3 deduplicated with (Brown et al. 2020, App. A: Spark's MinHashLSH "using the
  same features as were used for classification"): whitespace tokens, lowercased, through a hashing
  vectorizer of ``dedup.hash_features`` buckets, as the quality classifier sees them;
- ``char``: character n-grams (``dedup.char_ngram``) of the text with case, punctuation and
  spacing normalised away; robust to small edits in short texts.

Two implementations of the signatures (``dedup.minhash``), both datasketch's ``affine32`` scheme
(``h -> a*fmix32(h) + b mod 2**32``, the same ``a, b`` for a given seed):

- ``datasketch``: the reference; ``MinHash.bulk`` over each feature's bytes (SHA-1 hashed);
- ``numpy``: features hashed once, vectorised over a whole batch, then the permutations and the
  minimum over documents of similar length at a time. For ``gpt3`` the buckets' SHA-1 hashes come
  from a table, so the signatures are identical to datasketch's. For ``word`` and ``char``, word
  hashes are combined into n-gram hashes and character codes rolled into n-gram hashes instead of
  SHA-1 per shingle: the same estimator with other hash functions, so Jaccard estimates agree
  within MinHash error (fed the same feature hashes, the two give identical signatures; tested).

Banding follows datasketch's MinHashLSH: band ``i`` is the slice ``[i*rows, (i+1)*rows)``; the
candidates are found by sorting each band's rows (``dedup.index: lsh``) or with MinHashLSH itself
(``datasketch``, the reference): the same pairs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from pipeline.config import DedupConfig

TOKEN_RE = re.compile(r"\w+")
GPT3_TOKEN_PATTERN = r"(?u)\S+"  # Spark's Tokenizer / the quality classifier: whitespace tokens
SCHEME = "affine32"
MAX_HASH = np.uint32(0xFFFFFFFF)
_M64 = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the polynomial n-gram hash
_EMPTY = np.uint64(0x2545F4914F6CDD1D)  # the one feature of a document with no tokens
# Documents are tokenised in one pass, joined by a sentinel token that no lowercased text holds.
_SEP = "Z"


# --------------------------------------------------------------------------------------- features
def words(text: str) -> list[str]:
    return TOKEN_RE.findall(text.lower())


def normalized(text: str) -> str:
    """Lowercase ``\\w+`` tokens joined by one space: what character shingles are cut from."""
    return " ".join(TOKEN_RE.findall(text.lower()))


def shingles(text: str, n: int) -> list[bytes]:
    """Word n-grams as bytes; a document of n words or fewer is one shingle."""
    w = words(text)
    if len(w) <= n:
        return [" ".join(w).encode("utf-8", "surrogatepass")]
    return list({" ".join(w[i : i + n]).encode("utf-8", "surrogatepass") for i in range(len(w) - n + 1)})


def char_shingles(text: str, n: int) -> list[bytes]:
    """Character n-grams of the normalised text; a shorter text is one shingle."""
    s = normalized(text)
    if len(s) <= n:
        return [s.encode("utf-8", "surrogatepass")]
    return list({s[i : i + n].encode("utf-8", "surrogatepass") for i in range(len(s) - n + 1)})


@lru_cache(maxsize=8)
def _vectorizer(n_features: int) -> Any:
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(
        n_features=n_features, lowercase=True, token_pattern=GPT3_TOKEN_PATTERN,
        alternate_sign=False, norm=None, binary=True, dtype=np.float32,
    )  # fmt: skip


def gpt3_buckets(texts: Sequence[str], n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashing-vectorizer bucket indices of each document's whitespace tokens: (values, offsets)."""
    if not texts:
        return np.zeros(0, np.uint32), np.zeros(1, np.int64)
    m = _vectorizer(n_features).transform(texts)
    return m.indices.astype(np.uint32), m.indptr.astype(np.int64)


@lru_cache(maxsize=4)
def _bucket_hashes(n_features: int) -> np.ndarray:
    """SHA-1 hash (datasketch's sha1_hash32) of every bucket's feature bytes, and of the empty
    feature at index ``n_features``: with it the numpy path hashes gpt3 features exactly as the
    datasketch path does."""
    out = np.empty(n_features + 1, np.uint32)
    for i in range(n_features):
        out[i] = int.from_bytes(hashlib.sha1(b"%d" % i).digest()[:4], "little")
    out[n_features] = int.from_bytes(hashlib.sha1(b"").digest()[:4], "little")
    return out


def feature_bytes(texts: Sequence[str], cfg: DedupConfig) -> list[list[bytes]]:
    """Each document's features as bytes, for datasketch (the reference path)."""
    if cfg.features == "word":
        return [shingles(t, cfg.ngram) for t in texts]
    if cfg.features == "char":
        return [char_shingles(t, cfg.char_ngram) for t in texts]
    values, offsets = gpt3_buckets(texts, cfg.hash_features)
    out = []
    for i in range(len(texts)):
        doc = values[offsets[i] : offsets[i + 1]]
        out.append([b"%d" % v for v in doc.tolist()] or [b""])
    return out


class _WordHashes(dict):
    """word -> odd 64-bit BLAKE2b hash, computed on first sight; 0 is the document sentinel's."""

    def __missing__(self, w: str) -> int:
        if len(self) > 1 << 21:  # a bounded cache: start over rather than grow without end
            self.clear()
            self[_SEP] = 0
        h = int.from_bytes(
            hashlib.blake2b(w.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little"
        )
        self[w] = h | 1
        return h | 1


_WORD_HASHES = _WordHashes({_SEP: 0})


def _ngram_hashes(
    units: np.ndarray, starts: np.ndarray, lengths: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Polynomial hashes of every window of ``n`` consecutive units inside each document, document
    d being ``units[starts[d] : starts[d] + lengths[d]]`` (ascending starts; what lies between
    documents is never inside a window). A document of fewer than ``n`` units (but at least one)
    is one window of all its units; one of none gets the empty feature. Returns 32-bit hashes
    (the 64-bit hash folded; the signatures mix them further) and per-document offsets."""
    n_docs = len(lengths)
    per_doc = np.maximum(lengths - n + 1, 0)
    with np.errstate(over="ignore"):
        h = np.zeros(max(len(units) - n + 1, 0), np.uint64)
        for k in range(n):
            h *= _M64
            h += units[k : k + len(h)]
        # windows that start and end inside one document: +1 at its first window, -1 past its last
        full = np.flatnonzero(per_doc > 0)
        mark = np.zeros(len(h) + 1, np.int32)
        np.add.at(mark, starts[full], 1)
        np.add.at(mark, starts[full] + per_doc[full], -1)
        values = h[np.cumsum(mark[:-1]) > 0]
        short = np.flatnonzero(lengths < n)
        if short.size:  # whole-document windows, and the empty feature
            extra = np.empty(short.size, np.uint64)
            for j, d in enumerate(short):
                acc = np.uint64(0) if lengths[d] else _EMPTY
                for u in units[starts[d] : starts[d] + lengths[d]]:
                    acc = acc * _M64 + u
                extra[j] = acc
            # each short document's one window goes where its windows would be
            before = np.concatenate([[0], np.cumsum(per_doc)])[short]
            values = np.insert(values, before, extra)
            per_doc[short] = 1
        values = (values ^ (values >> np.uint64(32))).astype(np.uint32)
    offsets = np.zeros(n_docs + 1, np.int64)
    np.cumsum(per_doc, out=offsets[1:])
    return values, offsets


def _batched_words(texts: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """All documents' lowercase ``\\w+`` tokens in one list (one regex pass), sentinels between
    documents, and each document's start and length in it."""
    flat = TOKEN_RE.findall(f" {_SEP} ".join([t.lower() for t in texts]))
    lens = np.fromiter(map(len, flat), np.int64, len(flat))
    seps = np.array([i for i in np.flatnonzero(lens == 1).tolist() if flat[i] == _SEP], np.int64)
    starts = np.concatenate([[0], seps + 1])
    ends = np.concatenate([seps, [len(flat)]])
    return flat, starts, ends - starts


def feature_hashes(texts: Sequence[str], cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """Every document's features as 32-bit hashes, vectorised over the batch: (values, offsets);
    document i's features are ``values[offsets[i]:offsets[i+1]]`` (repeats allowed: MinHash is a
    set function)."""
    if not texts:
        return np.zeros(0, np.uint32), np.zeros(1, np.int64)
    if cfg.features == "gpt3":
        values, offsets = gpt3_buckets(texts, cfg.hash_features)
        lengths = np.diff(offsets)
        if (lengths == 0).any():  # a document with no token: the one empty feature, as datasketch's b""
            empty = np.flatnonzero(lengths == 0)
            values = np.insert(values, offsets[empty], np.uint32(cfg.hash_features))
            offsets = np.zeros(len(texts) + 1, np.int64)
            np.cumsum(np.maximum(lengths, 1), out=offsets[1:])
        return _bucket_hashes(cfg.hash_features)[values], offsets
    flat, starts, lengths = _batched_words(texts)
    if cfg.features == "word":
        units = np.fromiter(map(_WORD_HASHES.__getitem__, flat), np.uint64, len(flat))
        return _ngram_hashes(units, starts, lengths, cfg.ngram)
    # char: the normalised texts (tokens joined by one space) in one stream, sentinels between them
    stream = " ".join(flat)
    units = np.frombuffer(stream.encode("utf-32-le", "surrogatepass"), np.uint32)
    # each token's start and length in the stream, and a zero-length token at the end
    word_len = np.append(np.fromiter(map(len, flat), np.int64, len(flat)), 0)
    word_pos = np.zeros(len(flat) + 1, np.int64)
    np.cumsum(word_len[:-1] + 1, out=word_pos[1:])
    word_pos[-1] = len(stream)
    # a document spans its first token's start to its last token's end; an empty one starts where
    # its sentinel is (or at the end), keeping the starts ascending
    c_start = word_pos[starts]
    last = np.maximum(starts + lengths - 1, 0)
    c_len = np.where(lengths > 0, word_pos[last] + word_len[last] - c_start, 0)
    return _ngram_hashes(units.astype(np.uint64), c_start, c_len, cfg.char_ngram)


# ------------------------------------------------------------------------------------- signatures
@lru_cache(maxsize=16)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters (a odd, b) for ``seed``, drawn as it draws them
    (the signatures are tested bit-identical to datasketch's), without importing it."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def signatures_from_hashes(
    values: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int, block: int = 4096
) -> np.ndarray:
    """(docs, num_perm) uint32 MinHash signatures of 32-bit feature hashes, as datasketch's affine32
    computes them. Documents go through in order of feature count, a block of similar lengths at
    a time, each padded to the block's longest by repeating its first feature (the minimum does
    not change), so one (perm, doc, feature) product and a minimum over its last, contiguous axis
    serve the whole block."""
    a, b = permutations(num_perm, seed)
    a3, b3 = a[:, None, None], b[:, None, None]
    n = len(offsets) - 1
    sig = np.full((n, num_perm), MAX_HASH, np.uint32)
    if n == 0:
        return sig
    with np.errstate(over="ignore"):
        hv = _fmix32(values.astype(np.uint32, copy=False))
        counts = np.diff(offsets)
        order = np.argsort(counts, kind="stable")
        sorted_counts = counts[order]
        i = 0
        while i < n:
            c_lo = int(sorted_counts[i])
            if c_lo > block:  # one long document: its features a block at a time
                d = order[i]
                for s in range(int(offsets[d]), int(offsets[d + 1]), block):
                    part = hv[s : min(s + block, int(offsets[d + 1]))]
                    phv = a[:, None] * part[None, :]
                    phv += b[:, None]
                    np.minimum(sig[d], phv.min(axis=1), out=sig[d])
                i += 1
                continue
            j = min(n, i + max(1, block // max(c_lo, 1)))
            c_hi = int(sorted_counts[j - 1])
            if c_hi * (j - i) > 2 * block:
                j = i + max(1, 2 * block // max(c_hi, 1))
                c_hi = int(sorted_counts[j - 1])
            docs = order[i:j]
            i = j
            if c_hi == 0:
                continue
            col = np.arange(c_hi)
            idx = offsets[docs][:, None] + np.minimum(col[None, :], np.maximum(counts[docs], 1)[:, None] - 1)
            phv = a3 * hv[idx][None, :, :]  # (perm, doc, feature)
            phv += b3
            sig[docs] = phv.min(axis=2).T
    return sig


def minhash_signatures(texts: Iterable[str], cfg: DedupConfig, seed: int = 1) -> np.ndarray:
    """(docs, num_perm) uint32 MinHash signatures of ``texts`` with the implementation in
    ``cfg.minhash``."""
    texts = list(texts)
    if cfg.minhash == "numpy":
        values, offsets = feature_hashes(texts, cfg)
        return signatures_from_hashes(values, offsets, cfg.num_perm, seed)
    from datasketch import MinHash

    hashes = MinHash.bulk(feature_bytes(texts, cfg), num_perm=cfg.num_perm, seed=seed, scheme=SCHEME)
    if not hashes:
        return np.zeros((0, cfg.num_perm), dtype=np.uint32)
    return np.stack([h.hashvalues for h in hashes]).astype(np.uint32)


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


# -------------------------------------------------------------------------------------------- LSH
def band_params(cfg: DedupConfig) -> tuple[int, int]:
    """(bands, rows): the configured ones, else datasketch's optimum for ``cfg.threshold``."""
    if cfg.bands is not None and cfg.rows is not None:
        return cfg.bands, cfg.rows
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
    return lsh.b, lsh.r


def pairs_of_groups(groups: Iterable[Sequence[int]], pairs: np.ndarray | None = None) -> np.ndarray:
    """(m, 2) int64 array of every pair (i < j) inside each group, and of ``pairs`` (groups of
    two already as an (k, 2) array), each pair once."""
    two: list[Sequence[int]] = []
    parts = [] if pairs is None else [np.asarray(pairs, np.int64).reshape(-1, 2)]
    for g in groups:
        if len(g) == 2:
            two.append(g)
        elif len(g) > 2:
            g = np.asarray(g, np.int64)
            i, j = np.triu_indices(len(g), 1)
            parts.append(np.stack([g[i], g[j]], axis=1))
    if two:
        parts.append(np.asarray(two, np.int64).reshape(-1, 2))
    if not parts:
        return np.zeros((0, 2), np.int64)
    pairs = np.sort(np.concatenate(parts), axis=1)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    if not len(pairs):
        return pairs
    width = np.int64(pairs[:, 1].max() + 1)
    keys = np.unique(pairs[:, 0] * width + pairs[:, 1])  # sorted, each pair once
    return np.stack([keys // width, keys % width], axis=1)


def lsh_candidates(sigs: np.ndarray, cfg: DedupConfig, seed: int = 1) -> np.ndarray:
    """Pairs (i < j) that share at least one LSH band, as an (m, 2) array: with ``dedup.index:
    datasketch`` from datasketch's MinHashLSH (the reference), else from :func:`band_candidates`
    (the same pairs, tested)."""
    if cfg.index == "datasketch":
        return datasketch_candidates(sigs, cfg, seed)
    return band_candidates(sigs, *band_params(cfg))


def band_candidates(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """Pairs (i < j) whose signatures agree on every value of at least one band (band ``b`` being
    columns ``[b*rows, (b+1)*rows)``, as MinHashLSH bands them), without a Python loop over
    documents or buckets. Each band's rows are sorted lexicographically, so a bucket is exactly a
    run of equal rows (no hash, no collision); the pairs inside every run of every band are then
    drawn all at once: step ``d`` pairs each member with the one ``d`` places after it in its run.
    (Rows are sorted by a 64-bit hash of their values, checked equal value by value; only a band
    where two different rows share a hash, which is rare, is sorted by the values themselves.)"""
    sigs = np.asarray(sigs, np.uint32)
    n = len(sigs)
    members, run_pos, run_len = [], [], []
    for b in range(bands):
        band = sigs[:, b * rows : (b + 1) * rows]
        with np.errstate(over="ignore"):
            key = np.full(n, np.uint64(b + 1), np.uint64)
            for c in range(rows):
                key = (key ^ band[:, c]) * _M64
                key ^= key >> np.uint64(29)
        order = np.argsort(key, kind="stable")
        ranked = band[order]
        same = (ranked[1:] == ranked[:-1]).all(axis=1)  # same[k]: sorted row k+1 equals row k
        if (key[order[1:]] == key[order[:-1]])[~same].any():  # a hash shared by different rows
            order = np.lexsort(band.T[::-1])
            ranked = band[order]
            same = (ranked[1:] == ranked[:-1]).all(axis=1)
        if not same.any():
            continue
        starts = np.flatnonzero(np.concatenate([[True], ~same]))
        sizes = np.diff(np.append(starts, n))
        multi = sizes > 1
        starts, sizes = starts[multi], sizes[multi]
        # every member of a run of two or more: its document, place in the run and the run's length
        size_of = np.repeat(sizes, sizes)
        first = np.repeat(starts, sizes)
        pos = np.arange(len(size_of)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        members.append(order[first + pos])
        run_pos.append(pos)
        run_len.append(size_of)
    if not members:
        return np.zeros((0, 2), np.int64)
    docs = np.concatenate(members).astype(np.int64)
    pos, size = np.concatenate(run_pos), np.concatenate(run_len)
    parts = []
    for d in range(1, int(size.max())):
        at = np.flatnonzero(pos + d < size)
        parts.append(np.stack([docs[at], docs[at + d]], axis=1))
    return pairs_of_groups((), np.concatenate(parts))


def datasketch_candidates(sigs: np.ndarray, cfg: DedupConfig, seed: int = 1) -> np.ndarray:
    """The pairs of :func:`band_candidates`, found with datasketch's MinHashLSH: every document is
    inserted, then each band's buckets of two or more documents give the pairs (what querying
    every document would return, without the queries)."""
    from datasketch import LeanMinHash, MinHashLSH

    lsh = MinHashLSH(num_perm=cfg.num_perm, params=band_params(cfg))
    with lsh.insertion_session() as session:
        for i, s in enumerate(sigs):
            session.insert(i, LeanMinHash(seed=seed, hashvalues=s, scheme=SCHEME), check_duplication=False)
    groups = (
        table.get(key)
        for table, counts in zip(lsh.hashtables, lsh.get_counts(), strict=True)
        for key, count in counts.items()
        if count > 1
    )
    return pairs_of_groups(list(g) for g in groups)


def verified_pairs(sigs: Any, pairs: np.ndarray, min_jaccard: float) -> list[tuple[int, int]]:
    """The candidate pairs whose estimated Jaccard reaches ``min_jaccard`` (vectorised; ``sigs``
    is an array or anything with ``rows(indices)``)."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    rows = sigs.rows if hasattr(sigs, "rows") else sigs.__getitem__
    keep = np.zeros(len(pairs), bool)
    for s in range(0, len(pairs), 65536):
        part = pairs[s : s + 65536]
        keep[s : s + len(part)] = (rows(part[:, 0]) == rows(part[:, 1])).mean(axis=1) >= min_jaccard
    return list(zip(*pairs[keep].T.tolist(), strict=True)) if keep.any() else []


class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def clusters_from_edges(
    n: int, edges: Iterable[tuple[int, int]], order: Sequence[int], sigs: np.ndarray | None = None
) -> list[dict[str, Any]]:
    """Connected components (union-find) of ``edges`` over n documents, of two or more members.
    ``order[i]`` ranks document i (lower survives). Each cluster: kept index, removed indices and,
    given ``sigs``, each removed document's estimated Jaccard with the kept one."""
    edges = list(edges)
    uf = UnionFind(n)
    for i, j in edges:
        uf.union(i, j)
    groups: dict[int, list[int]] = {}
    for x in sorted({x for e in edges for x in e}):
        groups.setdefault(uf.find(x), []).append(x)
    clusters = []
    for members in sorted(groups.values(), key=min):
        members = sorted(members, key=lambda i: order[i])
        kept, removed = members[0], members[1:]
        jac = [estimated_jaccard(sigs[kept], sigs[r]) for r in removed] if sigs is not None else []
        clusters.append({"kept": kept, "removed": removed, "jaccard": jac})
    return clusters


def near_duplicate_clusters(
    sigs: np.ndarray, order: Sequence[int], cfg: DedupConfig, seed: int = 1
) -> list[dict[str, Any]]:
    """Clusters of near-duplicates among ``sigs`` in this process (:func:`lsh_candidates`):
    candidate pairs verified by estimated Jaccard >= ``cfg.min_jaccard``, then connected."""
    edges = verified_pairs(sigs, lsh_candidates(sigs, cfg, seed), cfg.min_jaccard)
    return clusters_from_edges(len(sigs), edges, order, sigs)
