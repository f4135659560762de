"""Training checkpoints: everything needed to continue exactly where a killed run stopped.

Saved with torch.save and read back with ``weights_only=True``: only tensors and plain Python
values, nothing unpickled. Written to a temporary file and renamed, so a kill mid-save leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import LineageError


def run_key(section: Any, seed: int, exclude: Iterable[str], inputs: Iterable[Path | str]) -> str:
    """Names a training run's checkpoint folder: a hash of the params ``section`` (a pydantic model)
    less the settings in ``exclude`` that do not change what is learned, the seed, and its inputs
    (a file's bytes, or a string). Same key, same run: a killed run resumes, a changed one starts over."""
    skip = set(exclude)
    settings = {k: v for k, v in section.model_dump(mode="json").items() if k not in skip}
    h = hashlib.sha256(json.dumps({"cfg": settings, "seed": seed}, sort_keys=True).encode())
    for item in inputs:
        h.update(item.read_bytes() if isinstance(item, Path) else item.encode())
    return h.hexdigest()[:16]


def record_run(folder: Path, section: Any, seed: int, exclude: Iterable[str]) -> None:
    """params.json beside a run's checkpoints: the settings its `run_key` hashes, with a section's
    own ``seed`` left at None shown as the seed it falls back to, so `lineage checkpoints` can say
    which params tell two runs of a stage apart."""
    skip = set(exclude)
    settings = {k: v for k, v in section.model_dump(mode="json").items() if k not in skip}
    if settings.get("seed", 0) is None or "seed" not in settings:
        settings["seed"] = seed
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".params.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, folder / "params.json")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    from pipeline.io import temp_file

    with temp_file(path.with_name(f".{path.name}.tmp-{os.getpid()}")) as tmp:
        torch.save(state, tmp)
        os.replace(tmp, path)


def load_checkpoint(path: Path, model_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a checkpoint; with ``model_config``, refuse one made for another model."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise LineageError(f"{path}: checkpoint not found") from None
    except Exception as e:  # truncated zip, bad pickle opcodes, foreign files
        raise LineageError(
            f"{path}: corrupted or not a checkpoint ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}); "
            f"delete it to start this run over: rm {path}"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise LineageError(
            f"{path}: not a gpt-lineage checkpoint (no model/model_config entries); "
            f"delete it to start this run over: rm {path}"
        )
    if model_config is not None and state["model_config"] != model_config:
        theirs, ours = state["model_config"], model_config
        diff = [k for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
        k = diff[0]
        raise LineageError(
            f"{path}: checkpoint is for another model ({k}={theirs.get(k)!r}, this run has {k}={ours.get(k)!r})"
        )
    return state


STEP_RE = re.compile(r"^step_(\d+)\.pt$")
# data/pretrain/checkpoints.json: the kept checkpoints of the run that made the model
MANIFEST = "checkpoints.json"


def file_sha256(path: Path) -> str:
    from pipeline.io import file_digest

    return file_digest(path, "sha256")


def checkpoint_manifest(root: Path, run_dir: Path, final_step: int) -> dict[str, Any]:
    """What pretrain records of its run: the run key, the final step and every kept checkpoint
    (``step_XXXXXX.pt`` up to the final step) with its path relative to ``root`` and its sha256,
    so evaluate scores exactly these files or refuses."""
    found = sorted((int(m.group(1)), p) for p in run_dir.glob("step_*.pt") if (m := STEP_RE.match(p.name)))
    return {
        "run_key": run_dir.name,
        "final_step": final_step,
        "checkpoints": [
            {"step": step, "path": p.relative_to(root).as_posix(), "sha256": file_sha256(p)}
            for step, p in found
            if step <= final_step
        ],
    }
