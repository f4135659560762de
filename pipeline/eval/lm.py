"""Language modelling on the validation split: loss, perplexity and bits per byte per source,
computed exactly as pretraining's final evaluation (the same windows from
``pipeline.train.data.source_windows``, the same autocast, the same tokens-per-byte), so the
numbers of the evaluate stage and of the pretrain stage are one and the same measurement.

Also the zero-shot score across pretraining: the kept checkpoints (weights saved every
``pretrain.keep_checkpoints_every`` steps as ``checkpoints/pretrain/<run key>/step_XXXXXX.pt``).
"""

from __future__ import annotations

import contextlib
import math
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.errors import LineageError


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


STEP_RE = re.compile(r"^step_(\d+)\.pt$")


def kept_checkpoints(
    root: Path, model_config: dict[str, Any], run_key: str | None = None
) -> list[tuple[int, Path]]:
    """(step, path) of the kept pretraining checkpoints of the run that made the final model: the
    run named by ``run_key`` when pretrain records it, else the most recently written run folder
    whose checkpoints have the final model's config."""
    from pipeline.train.checkpoint import load_checkpoint

    base = root / "checkpoints" / "pretrain"
    if not base.is_dir():
        return []
    runs = (
        [base / run_key] if run_key else sorted(base.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    )
    for run in runs:
        found = sorted((int(m.group(1)), p) for p in run.glob("step_*.pt") if (m := STEP_RE.match(p.name)))
        if not found:
            continue
        state = load_checkpoint(found[-1][1])  # a damaged or pickled file: one line naming it
        if state.get("model_config") == model_config:
            return found
    return []


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
