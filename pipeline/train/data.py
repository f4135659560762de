"""Batches from the flat token arrays the tokenize stage writes.

Training windows are drawn at random offsets (nanoGPT style) by a sampler with no state: the
micro-batch for (step, slot) comes from a generator seeded with (seed, step, slot). Resuming at a
step therefore continues the exact data stream, and a run on W processes with A accumulation
steps sees the same global batch as one process with W*A accumulation steps.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.errors import LineageError
from pipeline.tokenizer import TokenData


class TrainBatches:
    def __init__(self, split: TokenData, block_size: int, batch_size: int, seed: int):
        self.data = split.tokens
        if len(self.data) <= block_size + 1:
            raise LineageError(
                f"pretrain.block_size: {block_size} needs more than {block_size + 1} training tokens; "
                f"the training split has {len(self.data)}"
            )
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed

    def get(self, step: int, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The micro-batch for optimizer step ``step`` and micro-batch ``slot`` of its global batch."""
        g = torch.Generator().manual_seed(hash((self.seed, step, slot)) & 0x7FFF_FFFF_FFFF_FFFF)
        ix = torch.randint(len(self.data) - self.block_size - 1, (self.batch_size,), generator=g).tolist()
        chunk = np.stack([np.asarray(self.data[i : i + self.block_size + 1], dtype=np.int64) for i in ix])
        t = torch.from_numpy(chunk)
        return t[:, :-1], t[:, 1:]


def source_windows(split: TokenData, source: int, block_size: int, max_windows: int) -> torch.Tensor:
    """Consecutive non-overlapping windows (block_size + 1 tokens) over one source's documents."""
    docs = np.flatnonzero(split.sources == source)
    pieces = [np.asarray(split.tokens[split.offsets[d] : split.offsets[d + 1]], dtype=np.int64) for d in docs]
    if not pieces:
        return torch.zeros((0, block_size + 1), dtype=torch.long)
    stream = np.concatenate(pieces)
    n = min(max_windows, (len(stream) - 1) // block_size)
    if n == 0:  # shorter than one window: one padded window, targets past the end ignored (-1)
        pad = np.full(block_size + 1, -1, dtype=np.int64)
        pad[: len(stream)] = stream
        return torch.from_numpy(pad)[None]
    idx = np.arange(n)[:, None] * block_size + np.arange(block_size + 1)[None]
    return torch.from_numpy(stream[idx])
