"""What finetune and evaluate both read: validation documents, a text encoder, models checked
against the tokenizer they will be fed with."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.errors import LineageError


def read_docs(directory: Path) -> list[dict[str, Any]]:
    """``id, source, text`` of every document in a folder of parquet shards (the mix's val/)."""
    from pipeline.io import list_shards, read_rows

    docs = [r for shard in list_shards(directory) for r in read_rows(shard, ["id", "source", "text"])]
    if not docs:
        raise LineageError(f"{directory}: no validation documents; raise mix.val_fraction")
    return docs


def text_encoder(tokenizer: Any) -> Callable[[str], list[int]]:
    """Ids of a text with special-token strings inside it encoded as plain text: a README that
    quotes ``<|extract|>`` must not carry GPT-1's marker (the transforms add the real ones)."""
    tokenizer.encode_special_tokens = True

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids

    return encode


def check_vocab(model_vocab: int, tokenizer: Any, where: str) -> None:
    n = tokenizer.get_vocab_size()
    if model_vocab != n:
        raise LineageError(
            f"{where}: the model was made for another tokenizer (vocab_size {model_vocab}, "
            f"data/tokenize/tokenizer.json has {n}); rerun the stage that made it"
        )


def check_hf_tokenizer(hf_dir: Path, tokenizer_file: Path) -> None:
    """An exported model's tokenizer must be the pipeline's tokenizer, token for token."""
    theirs = hf_dir / "tokenizer.json"
    if not theirs.is_file():
        raise LineageError(f"{hf_dir}: no tokenizer.json; rerun `dvc repro pretrain`")
    a = json.loads(theirs.read_text())["model"].get("vocab")
    b = json.loads(tokenizer_file.read_text())["model"].get("vocab")
    if a != b:
        raise LineageError(
            f"{hf_dir}: the model was made with another tokenizer than {tokenizer_file}; rerun the stage that made it"
        )
