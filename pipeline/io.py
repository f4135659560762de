"""Documents on disk: parquet shards with a stable schema, written atomically.

A stage writes everything into a temporary sibling of ``data/<stage>/`` and renames it into place
when it succeeds, so a killed stage leaves either the previous complete output or nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import LineageError

# The columns every document table carries; stages add their own after these.
DOC_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("role", pa.string()),
        ("url", pa.string()),
        ("text", pa.string()),
        ("content_type", pa.string()),
    ]
)


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces ``final`` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.tmp-*"):  # left by a killed earlier run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.parent / f".{final.name}.tmp-old-{os.getpid()}"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def write_json(path: str | Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")
    tmp.replace(path)


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Plot data for `dvc plots` (one header row, then the rows)."""
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["empty"])
        w.writeheader()
        w.writerows(rows)


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_table(
    path: str | Path, rows: list[dict[str, Any]] | pa.Table, schema: pa.Schema | None = None
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=schema)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)
    return path


def write_shards(
    directory: str | Path,
    rows: Iterable[dict[str, Any]],
    shard_size: int,
    prefix: str = "part",
    schema: pa.Schema | None = None,
) -> list[Path]:
    """Write rows as ``prefix-00000.parquet``, ``prefix-00001.parquet``... of ``shard_size`` rows."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= shard_size:
            paths.append(write_table(directory / f"{prefix}-{len(paths):05d}.parquet", batch, schema))
            batch = []
    if batch:
        paths.append(write_table(directory / f"{prefix}-{len(paths):05d}.parquet", batch, schema))
    return paths


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a malformed line is one clear error."""
    with Path(path).open() as fh:
        for i, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as e:
                raise LineageError(f"{path}:{i}: not valid JSON: {e.msg}") from None


def list_shards(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise LineageError(f"{directory}: input folder missing (run the upstream stage first)")
    return sorted(directory.glob("*.parquet"))


def read_rows(path: str | Path, columns: list[str] | None = None) -> list[dict[str, Any]]:
    return pq.read_table(path, columns=columns).to_pylist()
