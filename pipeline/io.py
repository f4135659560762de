"""Documents on disk: parquet shards with a stable schema, written atomically.

A stage writes everything into a temporary sibling of ``data/<stage>/`` and renames it into place
when it succeeds, so a killed stage leaves either the previous complete output or nothing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def stage_of(path: str | Path) -> str | None:
    """The stage that owns a path under data/<stage>/, to say which stage to rerun."""
    parts = Path(path).parts
    for i, part in enumerate(parts[:-1]):
        if part == "data":
            return parts[i + 1].lstrip(".").split(".tmp-")[0]
    return None


def rerun_hint(path: str | Path) -> str:
    stage = stage_of(path)
    return f"rerun `dvc repro -f {stage}` to rebuild it" if stage else "replace or remove it"


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces ``final`` only if the block succeeds.

    The folder gets the mode the umask gives (mkdtemp's 0700 would hide outputs from a group), and
    a failure at any point, the final rename included, removes it: nothing half-written is left.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        # the pid in the name tells a later run whether the folder's owner is still alive
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError as e:
        raise LineageError(f"{final.parent}: cannot create the output folder ({_os_reason(e)})") from None
    try:
        yield tmp
        old = final.parent / f".{final.name}.tmp-old-{os.getpid()}"
        if final.exists():
            final.rename(old)
        tmp.rename(final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if disk_full(e):
            raise  # the stage reports a full disk as such, wherever it was met
        if _is_input(e, final, tmp):  # an upstream file, not this stage's output
            raise LineageError(_input_failure(e)) from None
        raise LineageError(f"{final}: cannot write the stage's output ({_os_reason(e)})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _is_input(e: OSError, final: Path, tmp: Path) -> bool:
    """Whether ``e`` is about reading a file outside the output folder (a missing input)."""
    if not getattr(e, "filename", None) or getattr(e, "filename2", None):
        return False
    path = Path(e.filename).absolute()
    outputs = (final.absolute(), tmp.absolute())
    return isinstance(e, FileNotFoundError | IsADirectoryError | NotADirectoryError) and not any(
        path == o or path.is_relative_to(o) for o in outputs
    )


def _input_failure(e: OSError) -> str:
    stage = stage_of(e.filename)
    if isinstance(e, FileNotFoundError):
        return _missing(Path(e.filename))
    return f"{e.filename}: cannot read it ({_os_reason(e)}); " + (
        f"rerun `dvc repro -f {stage}`" if stage else "replace it"
    )


def _os_reason(e: OSError) -> str:
    where = f" on {e.filename}" if getattr(e, "filename", None) else ""
    return f"{type(e).__name__}: {e.strerror or e}{where}"


def stale_temp_dirs(data: Path) -> list[Path]:
    """Temporary output folders (``data/.<stage>.tmp-*``) left by killed runs."""
    return sorted(p for p in Path(data).glob(".*.tmp-*") if p.is_dir())


@contextlib.contextmanager
def stage_lock(data: Path, stage: str) -> Iterator[None]:
    """One run of a stage at a time: a second one is refused with one line, instead of deleting the
    first one's live temporary folder. The lock is a flock, so a killed run releases it."""
    import fcntl

    data = Path(data)
    try:
        data.mkdir(parents=True, exist_ok=True)
        fh = (data / f".{stage}.lock").open("a")
    except OSError as e:
        raise LineageError(f"{data}: cannot create the stage lock ({_os_reason(e)})") from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LineageError(
                f"{stage}: another run of this stage is in progress (lock {data / f'.{stage}.lock'}); "
                "wait for it to finish"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _owner_alive(tmp: Path) -> bool | None:
    """Whether the process that made a temporary folder still runs (None: the name holds no pid)."""
    m = re.match(r"^\.[^/]+?\.tmp-(?:old-)?(\d+)(?:-|$)", tmp.name)
    if not m:
        return None
    try:
        os.kill(int(m.group(1)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_dirs(data: Path) -> list[Path]:
    """Remove the temporary folders of killed runs: those whose owning process is gone (and, for a
    name without a pid, whose stage is not running right now)."""
    import fcntl

    removed = []
    for tmp in stale_temp_dirs(data):
        alive = _owner_alive(tmp)
        if alive:
            continue
        if alive is None:
            stage = tmp.name[1:].split(".tmp-")[0]
            try:
                with (Path(data) / f".{stage}.lock").open("a") as fh:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # that stage is not running
            except (BlockingIOError, OSError):
                continue
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    return removed


DISK_FULL = ("no space left on device", "database or disk is full", "disk quota exceeded")


def disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says the disk is full, whatever library
    wrapped it: an OSError with ENOSPC, SQLite's "database or disk is full", a Rust writer's text."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(mark in str(exc).lower() for mark in DISK_FULL):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def temp_file(path: Path) -> Iterator[Path]:
    """A temporary name beside ``path``, removed when the block fails (a full disk, a kill by
    Ctrl-C): the caller renames it onto ``path`` at the end of the block."""
    try:
        yield path
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise


def write_json(path: str | Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with temp_file(path.with_name(f".{path.name}.tmp")) as tmp:
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
    with temp_file(path.with_name(f".{path.name}.tmp")) as tmp:
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
    """(line number, object) for each non-blank line; a malformed line (bad JSON, not UTF-8, not an
    object) is one clear error naming ``file:line``."""
    path = Path(path)
    hint = f"; {rerun_hint(path)}" if stage_of(path) else ""
    with path.open("rb") as fh:
        for i, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise LineageError(f"{path}:{i}: not UTF-8 text (byte {e.start}){hint}") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise LineageError(f"{path}:{i}: not valid JSON: {e.msg}{hint}") from None
            if not isinstance(row, dict):
                raise LineageError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}{hint}")
            yield i, row


def _missing(path: Path) -> str:
    stage = stage_of(path)
    return f"{path}: missing; run `dvc repro {stage}` first" if stage else f"{path}: not found"


def read_json(path: str | Path, fields: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON object a stage wrote (``meta.json``, ``chat.json``, a config): missing, damaged, or
    without one of ``fields``, it is one line naming the file and the stage to rerun."""
    path = Path(path)
    if not path.is_file():
        raise LineageError(_missing(path))
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        reason = str(e).splitlines()[0][:120] if str(e) else ""
        raise LineageError(f"{path}: damaged ({type(e).__name__}: {reason}); {rerun_hint(path)}") from None
    if not isinstance(data, dict):
        raise LineageError(
            f"{path}: damaged (a JSON {type(data).__name__}, not an object); {rerun_hint(path)}"
        )
    lacking = [f for f in fields if f not in data]
    if lacking:
        raise LineageError(f"{path}: damaged (no {lacking[0]!r} entry); {rerun_hint(path)}")
    return data


def read_jsonl(path: str | Path, fields: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every object of a JSONL file a stage wrote; a missing file, a damaged line, or a row without
    one of ``fields`` is one line naming ``file:line`` and the stage to rerun."""
    path = Path(path)
    if not path.is_file():
        raise LineageError(_missing(path))
    rows = []
    for i, row in iter_jsonl(path):
        lacking = [f for f in fields if f not in row]
        if lacking:
            raise LineageError(f"{path}:{i}: damaged (no {lacking[0]!r} field); {rerun_hint(path)}")
        rows.append(row)
    return rows


def load_safetensors(path: str | Path, device: str = "cpu") -> dict[str, Any]:
    """The tensors of a safetensors file; missing or damaged is one line naming it and the stage."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise LineageError(_missing(path))
    try:
        return load_file(str(path), device=device)
    except Exception as e:  # safetensors raises its own error types for a damaged header or size
        reason = (str(e).splitlines() or [""])[0][:120]
        raise LineageError(f"{path}: corrupted ({type(e).__name__}: {reason}); {rerun_hint(path)}") from None


def list_shards(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise LineageError(f"{directory}: input folder missing (run the upstream stage first)")
    return sorted(directory.glob("*.parquet"))


def read_parquet(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """A parquet file as a table; a truncated or garbled file is one line naming it."""
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError, ValueError) as e:
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise LineageError(f"{path}: unreadable parquet ({reason}); {rerun_hint(path)}") from None


def read_rows(path: str | Path, columns: list[str] | None = None) -> list[dict[str, Any]]:
    return read_parquet(path, columns).to_pylist()


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB blocks (sha256 for checkpoint lists, md5 as DVC)."""
    import hashlib

    h = hashlib.new(algorithm)
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
