"""InstructGPT's reward model: a GPT body whose LM head gives way to a scalar head on the final token.

Saved as the body (``model.safetensors`` + ``config.json``, :func:`pipeline.model.export.save_model`),
the head (``reward_head.safetensors``) and ``reward.json``: the sha256 of the tokenizer the rewards
were learned on and the bias shift applied after training. A reward model only means something on
token ids from that tokenizer, so loading it with another one is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from pipeline.errors import LineageError
from pipeline.model.gpt import GPT

HEAD = "reward_head.safetensors"
META = "reward.json"


class RewardModel(nn.Module):
    """r(x, y): the final hidden state of the last token of prompt + response, through one linear unit."""

    def __init__(self, gpt: GPT):
        super().__init__()
        self.gpt = gpt
        self.config = gpt.config
        self.head = nn.Linear(gpt.config.n_embd, 1)
        nn.init.normal_(self.head.weight, std=1.0 / (gpt.config.n_embd + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)

    def forward(self, idx: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Rewards (B,) of right-padded sequences ``idx`` (B, T) whose real lengths are ``lengths``."""
        h = self.gpt.hidden(idx)
        last = h[torch.arange(idx.size(0), device=idx.device), lengths - 1]
        return self.head(last.float()).squeeze(-1)

    configure_optimizer = GPT.configure_optimizer  # decay on matrices only, as in pretraining


def tokenizer_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_reward_model(model: RewardModel, directory: Path, tokenizer_sha: str, extra: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    from pipeline.model.export import save_model

    directory = Path(directory)
    save_model(model.gpt, directory)
    head = {k: v.detach().contiguous().cpu() for k, v in model.head.state_dict().items()}
    save_file(head, str(directory / (HEAD + ".tmp")))
    os.replace(directory / (HEAD + ".tmp"), directory / HEAD)
    meta = {"tokenizer_sha256": tokenizer_sha, "bias_shift": float(extra.get("bias_shift", 0.0)), **extra}
    (directory / META).write_text(json.dumps(meta, indent=2) + "\n")


def load_reward_model(
    directory: Path, tokenizer_sha: str, map_location: str | torch.device = "cpu"
) -> RewardModel:
    """The reward model in ``directory``; LineageError if it was built on another tokenizer."""
    from pipeline.io import load_safetensors, read_json, rerun_hint
    from pipeline.model.export import load_model

    directory = Path(directory)
    meta_path = directory / META
    if not meta_path.is_file() or not (directory / HEAD).is_file():
        raise LineageError(f"{directory}: not a reward model ({META} or {HEAD} missing)")
    meta = read_json(meta_path, ("tokenizer_sha256",))
    check_tokenizer(meta.get("tokenizer_sha256"), tokenizer_sha, str(directory))
    model = RewardModel(load_model(directory, map_location))
    try:
        model.head.load_state_dict(load_safetensors(directory / HEAD, str(map_location)))
    except RuntimeError as e:  # missing or misshapen tensors
        raise LineageError(
            f"{directory / HEAD}: damaged ({str(e).splitlines()[0][:120]}); {rerun_hint(directory / HEAD)}"
        ) from None
    return model


def check_tokenizer(recorded: str | None, current: str, what: str) -> None:
    if recorded != current:
        raise LineageError(
            f"{what}: built on another tokenizer (sha256 {str(recorded)[:12]}, this run's is {current[:12]}); "
            "rerun the stages after tokenize (`dvc repro`) so model and tokenizer match"
        )
