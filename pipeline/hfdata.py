"""Open a data set the way a user has it: a Hugging Face Hub name, or a local copy of one.

A user who downloaded FineWeb-edu, HH-RLHF or Dolly once runs offline from the local copy, in any
of the forms ``datasets`` and the Hub produce:

* a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (read with
  ``load_from_disk``; ``load_dataset`` refuses these folders);
* a folder of data files (parquet, JSONL, CSV, arrow, txt), such as a Hub repository fetched with
  ``huggingface-cli download --repo-type dataset``: ``load_dataset(folder, config)``, which also
  reads the configs a dataset card declares;
* one data file (``.parquet``, ``.jsonl``, ``.json``, ``.jsonl.gz``, ``.csv``, ``.arrow``, ``.txt``).

A relative path is looked up under the project root first; only a name that is no local path goes to
the Hub (which fails fast when ``common.offline`` sets ``HF_HUB_OFFLINE``). Every failure is one
:class:`LineageError` line naming the params key.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.errors import LineageError

BUILDERS = {
    ".parquet": "parquet", ".jsonl": "json", ".json": "json", ".jsonl.gz": "json", ".json.gz": "json",
    ".csv": "csv", ".arrow": "arrow", ".txt": "text",
}  # fmt: skip


def local_path(name_or_path: str, root: Path | None) -> Path | None:
    """The local file or folder ``name_or_path`` names (absolute, or relative to ``root``), else None."""
    p = Path(name_or_path).expanduser()
    for cand in (p,) if p.is_absolute() or root is None else (Path(root) / p, p):
        if cand.exists():
            return cand
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:160]}" if text else type(e).__name__


def _builder(path: Path) -> str | None:
    name = path.name.lower()
    return next((b for suffix, b in BUILDERS.items() if name.endswith(suffix)), None)


def open_dataset(
    name_or_path: str, *, key: str, config: str | None = None, split: str = "train", streaming: bool = False,
    data_files: list[str] | None = None, root: Path | None = None,
) -> Iterable[dict[str, Any]]:  # fmt: skip
    """The rows of one split of ``name_or_path`` (a ``datasets.Dataset``, or an ``IterableDataset`` when
    ``streaming`` and the source is no saved folder). ``key`` is the params key errors name."""
    import datasets

    local = local_path(name_or_path, root)
    if local is None and (Path(name_or_path).is_absolute() or name_or_path.startswith((".", "~"))):
        raise LineageError(f"{key}: {name_or_path} not found")
    try:
        if local is not None and local.is_dir() and _saved_to_disk(local):
            return _from_disk(local, split, key)
        if local is not None and local.is_file():
            builder = _builder(local)
            if builder is None:
                raise LineageError(
                    f"{key}: {local.name}: unknown file type (expected {' '.join(sorted(set(BUILDERS)))})"
                )
            return datasets.load_dataset(
                builder, data_files={split: str(local)}, split=split, streaming=streaming
            )
        target = str(local) if local is not None else name_or_path
        return datasets.load_dataset(target, config, split=split, streaming=streaming, data_files=data_files)
    except LineageError:
        raise
    except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError...)
        where = "the local copy" if local is not None else "the Hub"
        hint = "; offline runs need a local copy (or common.offline: false)" if local is None else ""
        raise LineageError(
            f"{key}: cannot load {name_or_path!r} split {split!r} from {where} ({_first_line(e)}){hint}"
        ) from None


def _saved_to_disk(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def _from_disk(folder: Path, split: str, key: str) -> Any:
    import datasets

    ds = datasets.load_from_disk(str(folder))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise LineageError(f"{key}: {folder} has no split {split!r} (it has {', '.join(sorted(ds))})")
        return ds[split]
    return ds  # one saved split: it is the split asked for
