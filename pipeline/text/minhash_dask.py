"""Fuzzy dedup past one process: LSH band keys shuffled and grouped on a Dask cluster.

The single-process path (:func:`pipeline.text.minhash.near_duplicate_clusters`) holds every band of
every document in one datasketch MinHashLSH. Here no process holds the index:

1. each shard's signatures (``.npy`` files on storage every worker reads, like the shards) become
   rows ``(bucket, doc)``, one per band, ``bucket`` a 64-bit hash of the band number and the band's
   values (a Dask dataframe partition per shard);
2. the rows are shuffled on ``bucket`` (Dask's shuffle), so each bucket lands whole in one
   partition, where its documents give the candidate pairs;
3. each partition verifies its pairs against the signatures (memory-mapped rows) and keeps those
   whose estimated Jaccard reaches ``min_jaccard``;
4. the verified edges (few: only near-duplicates) come back and union-find makes the clusters.

The candidates are the pairs that share a band, as with MinHashLSH, and the verification is the
same, so the clusters are the same (a 64-bit bucket collision could add a candidate, which must
still pass the verification).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from pipeline.config import CommonConfig, DedupConfig
from pipeline.text.minhash import band_params, clusters_from_edges, pairs_of_groups, verified_pairs

_M64 = np.uint64(0x9E3779B97F4A7C15)


def _mix(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def band_buckets(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(docs, bands) uint64: a hash of each band's number and values (datasketch's banding:
    band i is columns [i*rows, (i+1)*rows))."""
    out = np.empty((len(sigs), bands), np.uint64)
    with np.errstate(over="ignore"):
        for b in range(bands):
            h = np.full(len(sigs), _mix(np.uint64(b + 1)), np.uint64)
            for c in range(b * rows, (b + 1) * rows):
                h = _mix((h ^ sigs[:, c].astype(np.uint64)) * _M64)
            out[:, b] = h
    return out


class SignatureStore:
    """Rows of the per-shard signature files by global document number, memory-mapped."""

    def __init__(self, paths: Sequence[str], starts: Sequence[int]):
        self.paths, self.starts = list(paths), np.asarray(starts, np.int64)
        self._maps: dict[int, np.ndarray] = {}

    def _file(self, k: int) -> np.ndarray:
        if k not in self._maps:
            self._maps[k] = np.load(self.paths[k], mmap_mode="r")
        return self._maps[k]

    def rows(self, docs: np.ndarray) -> np.ndarray:
        docs = np.asarray(docs, np.int64)
        files = np.searchsorted(self.starts, docs, side="right") - 1
        out = None
        for k in np.unique(files):
            sel = files == k
            part = self._file(int(k))[docs[sel] - self.starts[k]]
            if out is None:
                out = np.empty((len(docs), part.shape[1]), part.dtype)
            out[sel] = part
        return out if out is not None else np.zeros((0, 0), np.uint32)

    def __getitem__(self, doc: int) -> np.ndarray:
        return self.rows(np.array([doc]))[0]


def _bucket_rows(path: str, start: int, alive: np.ndarray, bands: int, rows: int) -> Any:
    import pandas as pd

    sigs = np.load(path, mmap_mode="r")
    docs = np.flatnonzero(alive)
    keys = band_buckets(np.asarray(sigs[docs]), bands, rows)
    return pd.DataFrame({"bucket": keys.reshape(-1), "doc": np.repeat(docs + start, bands).astype(np.int64)})


def _verified_edges(part: Any, paths: list[str], starts: list[int], min_jaccard: float) -> Any:
    """Candidate pairs of each bucket in this partition, verified against the signatures."""
    import pandas as pd

    empty = pd.DataFrame({"i": np.zeros(0, np.int64), "j": np.zeros(0, np.int64)})
    if part.empty:
        return empty
    part = part.sort_values(["bucket", "doc"], kind="stable")
    buckets, docs = part["bucket"].to_numpy(), part["doc"].to_numpy()
    bounds = np.flatnonzero(np.diff(buckets)) + 1
    pairs = pairs_of_groups(g for g in np.split(docs, bounds) if len(g) > 1)
    edges = verified_pairs(SignatureStore(paths, starts), pairs, min_jaccard)
    if not edges:
        return empty
    arr = np.asarray(edges, np.int64)
    return pd.DataFrame({"i": arr[:, 0], "j": arr[:, 1]})


def distributed_clusters(
    paths: Sequence[str],
    counts: Sequence[int],
    alive: np.ndarray,
    order: Sequence[int],
    cfg: DedupConfig,
    client: Any,
    partitions: int | None = None,
) -> list[dict[str, Any]]:
    """Clusters of near-duplicates over the signature files ``paths`` (``counts[k]`` documents
    each, numbered globally in file order); ``alive[d]`` False leaves document d out (an exact
    duplicate already removed). ``order[d]`` ranks documents (lower survives). Runs on ``client``
    (a ``distributed.Client``); the same clusters as ``near_duplicate_clusters`` on the
    concatenated signatures of the alive documents, in global numbering."""
    import dask.dataframe as dd
    import pandas as pd

    bands, rows = band_params(cfg)
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    paths = [str(p) for p in paths]
    n = int(starts[-1])
    if n == 0:
        return []
    meta = pd.DataFrame({"bucket": np.zeros(0, np.uint64), "doc": np.zeros(0, np.int64)})
    keys = dd.from_map(
        _bucket_rows,
        paths,
        starts[:-1].tolist(),
        [alive[starts[k] : starts[k + 1]] for k in range(len(paths))],
        args=(bands, rows),
        meta=meta,
        enforce_metadata=False,
    )
    grouped = keys.shuffle(on="bucket", npartitions=partitions or len(paths))
    edges_meta = pd.DataFrame({"i": np.zeros(0, np.int64), "j": np.zeros(0, np.int64)})
    edges = grouped.map_partitions(
        _verified_edges, paths, starts[:-1].tolist(), cfg.min_jaccard, meta=edges_meta
    )
    found = client.compute(edges, sync=True).drop_duplicates()
    pairs = list(zip(found["i"].tolist(), found["j"].tolist(), strict=True))
    return clusters_from_edges(n, pairs, order, SignatureStore(paths, starts[:-1]))


@contextlib.contextmanager
def dask_client(common: CommonConfig) -> Iterator[Any]:
    """A client of the cluster at ``common.dask_address``, else of a local cluster of
    ``common.workers`` single-threaded worker processes that ends with the block."""
    import logging

    from distributed import Client, LocalCluster

    # P2P shuffles log their start and end as warnings
    logging.getLogger("distributed.shuffle._scheduler_plugin").setLevel(logging.ERROR)
    if common.dask_address:
        with Client(common.dask_address) as client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=common.workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client
