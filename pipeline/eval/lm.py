"""Language modelling on the validation split: loss, perplexity and bits per byte per source,
computed exactly as pretraining's final evaluation (the same windows from
``pipeline.train.data.source_windows``, the same autocast, the same tokens-per-byte), so the
numbers of the evaluate stage and of the pretrain stage are one and the same measurement.

Also the zero-shot score across pretraining: the kept checkpoints (weights saved every
``pretrain.keep_checkpoints_every`` steps as ``checkpoints/pretrain/<run key>/step_XXXXXX.pt``),
listed with their hashes by pretrain in ``data/pretrain/checkpoints.json``.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.errors import LineageError
from pipeline.train.checkpoint import file_sha256


def tokens_per_byte(meta: dict[str, Any]) -> dict[str, float]:
    """Per source: validation tokens (each document's end-of-text id included) per utf-8 byte."""
    out = {}
    for s in meta["sources"]:
        nbytes = meta.get("val_bytes_per_source", {}).get(s)
        if nbytes:
            out[s] = (meta["val_tokens_per_source"][s] + meta["val_docs_per_source"][s]) / nbytes
    return out


@torch.no_grad()
def lm_metrics(model: Any, val: Any, sources: list[str], tpb: dict[str, float], windows: int, batch_size: int,
               dtype: torch.dtype, device: torch.device) -> dict[str, dict[str, float]]:  # fmt: skip
    """``{source: {loss, ppl, bpb, tokens}}`` and ``all`` over every source's windows."""
    from pipeline.train.data import source_windows

    was = model.training
    model.eval()
    cast = contextlib.nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)
    out: dict[str, dict[str, float]] = {}
    total_loss = total_tok = 0.0
    for i, name in enumerate(sources):
        w = source_windows(val, i, model.config.block_size, windows)
        if not len(w):
            continue
        loss_sum = n_tok = 0.0
        for chunk in w.split(batch_size):
            chunk = chunk.to(device)
            x, y = chunk[:, :-1].clamp(min=0), chunk[:, 1:]
            with cast:
                logits, _ = model(x)
            loss_sum += F.cross_entropy(
                logits.float().view(-1, logits.size(-1)), y.reshape(-1), ignore_index=-1, reduction="sum"
            ).item()
            n_tok += (y != -1).sum().item()
        loss = loss_sum / max(n_tok, 1)
        out[name] = {"loss": loss, "ppl": math.exp(loss), "bpb": loss / math.log(2) * tpb.get(name, float("nan")),
                     "tokens": n_tok}  # fmt: skip
        total_loss += loss_sum
        total_tok += n_tok
    if total_tok:
        loss = total_loss / total_tok
        out["all"] = {"loss": loss, "ppl": math.exp(loss), "tokens": total_tok}
    model.train(was)
    return out


def kept_checkpoints(root: Path, manifest_path: Path) -> tuple[dict[str, Any], list[tuple[int, Path]]]:
    """(manifest, [(step, path)]) of the kept pretraining checkpoints named in pretrain's manifest,
    each checked against its recorded hash: a missing or changed file is one error naming the run."""
    try:
        info = json.loads(manifest_path.read_text())
        key, entries = str(info["run_key"]), list(info["checkpoints"])
        int(info["final_step"])
    except FileNotFoundError:
        raise LineageError(f"{manifest_path}: not found; run `dvc repro pretrain` to write it") from None
    except (ValueError, KeyError, TypeError) as e:
        raise LineageError(f"{manifest_path}: not a checkpoint list ({type(e).__name__}: {e})") from None
    out = []
    for e in entries:
        path = root / e["path"]
        redo = (
            f"retrain run {key} (rm -r checkpoints/pretrain/{key}; dvc repro --force pretrain) "
            "or set evaluate.curve_tasks: [] to skip the curve"
        )
        if not path.is_file():
            raise LineageError(f"{e['path']}: kept checkpoint of pretrain run {key} is missing; {redo}")
        if file_sha256(path) != e["sha256"]:
            raise LineageError(
                f"{e['path']}: kept checkpoint of pretrain run {key} changed since pretrain listed it; {redo}"
            )
        out.append((int(e["step"]), path))
    return info, out


def load_kept(path: Path, model_config: dict[str, Any]) -> Any:
    from pipeline.model.gpt import GPT, GPTConfig
    from pipeline.train.checkpoint import load_checkpoint

    state = load_checkpoint(path, model_config)
    model = GPT(GPTConfig.from_dict(state["model_config"]))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise LineageError(f"{path}: weights do not fit the model ({str(e).splitlines()[0][:120]})") from None
    return model
