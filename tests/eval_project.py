"""A tiny project for the finetune and evaluate tests: a mix with a validation split of real
size for the task builders, a BPE tokenizer with GPT-1's special tokens, a 2-layer pretrained GPT."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pipeline.config import deep_merge, parse_params
from stages.mix import MIX_SCHEMA
from tests.conftest import files_params, prose

PRETRAIN = {
    "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 64, "batch_size": 8, "max_steps": 30, "warmup_steps": 5,
    "log_interval": 10, "eval_interval": 0, "eval_windows": 4, "checkpoint_interval": 10, "sample_tokens": 0,
    "peak_flops": 1e11, "keep_checkpoints_every": 10,
}  # fmt: skip
FINETUNE = {
    "passage_words": 16,
    "max_train": 60,
    "max_test": 60,
    "epochs": 1,
    "batch_size": 16,
    "lr": 1e-3,
    "checkpoint_interval": 0,
}
EVALUATE = {
    "num_fewshot": [0, 1], "items": 12, "train_items": 6, "cloze_words": 12, "passage_words": 6, "batch_size": 16, "lm_windows": 4,
    "tasks": ["cloze", "next_passage", "arithmetic_2da", "arithmetic_1dc", "reversed_words"],
}  # fmt: skip


def write_mix(root: Path, n_train: int = 40, n_val: int = 24, seed: int = 0) -> None:
    r = random.Random(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        rows = []
        for i in range(n):
            src = "ref" if i % 2 else "web"
            text = prose(r, r.randint(60, 140))
            if src == "web":
                text = text.replace("the ", "the best ")
            rows.append(
                {
                    "id": f"{split}{i:03d}",
                    "source": src,
                    "text": text,
                    "tokens": len(text.split()),
                    "epoch": 0,
                }
            )
        folder = root / "data" / "mix" / split
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=MIX_SCHEMA), folder / "part-00000.parquet")


def params(root: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    base = {"tokenize": {"vocab_size": 320}, "pretrain": PRETRAIN, "finetune": FINETUNE, "evaluate": EVALUATE}
    return files_params(root, deep_merge(base, extra or {}))


def make_project(root: Path) -> Path:
    """Mix, tokenize and pretrain run in ``root`` (about 10 s on one thread)."""
    from pipeline.stage import run_stage
    from stages import pretrain, tokenize

    write_mix(root)
    data = params(root)
    (root / "params.yaml").write_text(yaml.safe_dump(data))
    p = parse_params(data)
    run_stage("tokenize", tokenize.body, root, p)
    run_stage("pretrain", pretrain.body, root, p)
    return root
