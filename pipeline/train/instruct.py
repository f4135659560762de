"""InstructGPT's objectives for the one supervised loop (:mod:`pipeline.train.supervised`), and
batched generation of responses.

* SFT: prompt + response + ``<|end|>`` sequences; the targets of the prompt are -1, so
  :func:`pipeline.train.supervised.lm_loss` learns the response (and when to stop) only.
* Reward: each batch element is one prompt with its K ranked responses; :func:`ranking_loss` is
  ``-1/P * sum log sigmoid(r_better - r_worse)`` over its P strictly ordered pairs (P = C(K, 2) when
  no two responses tie), averaged over prompts. Ouyang et al. (2022, section 3.5): putting all
  pairs of a prompt in one element instead of shuffling them as separate examples avoids
  overfitting and costs one forward pass per response instead of K - 1.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.errors import LineageError
from pipeline.feedback.chat import ChatTokens, split_end
from pipeline.feedback.config import TrainSection
from pipeline.model.gpt import GPT
from pipeline.train.supervised import SupervisedConfig


def supervised_config(cfg: TrainSection) -> SupervisedConfig:
    """The supervised loop's recipe from an sft or reward params section (cosine schedule)."""
    return SupervisedConfig(
        lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2), epochs=cfg.epochs,
        max_steps=cfg.max_steps, warmup_fraction=cfg.warmup_fraction, schedule="cosine",
        min_lr_ratio=cfg.min_lr_ratio, grad_clip=cfg.grad_clip, dtype=cfg.dtype, eval_interval=cfg.eval_interval,
        checkpoint_interval=cfg.checkpoint_interval, resume=cfg.resume,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- SFT
def encode_demonstrations(
    chat: ChatTokens, examples: Sequence[dict[str, Any]], block_size: int
) -> tuple[list[tuple[list[int], int]], int]:
    """(ids, response start) per example that fits ``block_size + 1`` tokens, and how many did not."""
    out, dropped = [], 0
    for ex in examples:
        ids, start = chat.encode_example(ex["messages"], ex["reference"])
        if len(ids) > block_size + 1:
            dropped += 1
            continue
        out.append((ids, start))
    return out, dropped


def sft_batch(items: Sequence[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
    """Right-padded inputs and targets; a target is -1 on the prompt and on the padding."""
    width = max(len(ids) for ids, _ in items) - 1
    x = torch.zeros(len(items), width, dtype=torch.long)
    y = torch.full((len(items), width), -1, dtype=torch.long)
    for row, (ids, start) in enumerate(items):
        t = torch.tensor(ids)
        n = len(ids) - 1
        x[row, :n] = t[:-1]
        y[row, start - 1 : n] = t[start:]  # position start-1 predicts the first response token
    return {"x": x, "y": y}


def shuffled_batches(
    items: Sequence[Any], batch_size: int, seed: int, collate: Callable[[Sequence[Any]], Any]
) -> Callable[[int], list[Any]]:
    """batches(epoch): the items shuffled by (seed, epoch) and collated; the same epoch gives the same
    batches, which is what makes resuming exact."""

    def batches(epoch: int) -> list[Any]:
        order = list(range(len(items)))
        random.Random(f"{seed}/{epoch}").shuffle(order)
        return [
            collate([items[i] for i in order[k : k + batch_size]]) for k in range(0, len(order), batch_size)
        ]

    return batches


# ------------------------------------------------------------------------------------------- reward
def response_ids(chat: ChatTokens, messages: list[dict], response: str, block_size: int) -> list[int]:
    """Prompt + response (+ ``<|end|>`` when the response closed with it), its last ``block_size``
    tokens: the final token must stay, the reward is read there."""
    content, ended = split_end(response)
    ids = [*chat.encode_prompt(messages), *chat.text(content)] + ([chat.end] if ended else [])
    return ids[-block_size:]


def ranked_group(chat: ChatTokens, messages: list[dict], responses: Sequence[str], ranks: Sequence[int],
                 block_size: int) -> dict[str, Any] | None:  # fmt: skip
    """One prompt with its K responses as token sequences, or None when every response ties."""
    if len(responses) < 2:
        raise LineageError(f"a comparison needs K >= 2 responses, got {len(responses)}")
    if len(set(ranks)) < 2:
        return None
    return {"seqs": [response_ids(chat, messages, r, block_size) for r in responses], "ranks": list(ranks)}


def reward_batch(groups: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    seqs = [s for g in groups for s in g["seqs"]]
    width = max(len(s) for s in seqs)
    idx = torch.zeros(len(seqs), width, dtype=torch.long)
    for row, s in enumerate(seqs):
        idx[row, : len(s)] = torch.tensor(s)
    return {
        "idx": idx,
        "lengths": torch.tensor([len(s) for s in seqs]),
        "group": torch.tensor([i for i, g in enumerate(groups) for _ in g["seqs"]]),
        "ranks": torch.tensor([r for g in groups for r in g.get("ranks", [0] * len(g["seqs"]))]),
    }


def ranking_loss(
    rewards: torch.Tensor, group: torch.Tensor, ranks: torch.Tensor
) -> tuple[torch.Tensor, dict]:
    """Mean over prompts of ``-1/P_g * sum_{i better than j} log sigmoid(r_i - r_j)``."""
    same = group[:, None] == group[None, :]
    better = same & (ranks[:, None] < ranks[None, :])  # better[i, j]: i ranked above j
    pairs = better.sum(dim=1).new_zeros(int(group.max()) + 1).index_add_(0, group, better.sum(dim=1))
    weight = better.float() / pairs[group].clamp(min=1).float()[:, None]
    diff = rewards[:, None] - rewards[None, :]
    n_groups = int((pairs > 0).sum())
    loss = -(F.logsigmoid(diff) * weight).sum() / max(n_groups, 1)
    acc = ((diff > 0) & better).sum().float() / better.sum().clamp(min=1)
    return loss, {"pair_acc": acc.item()}


def reward_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss_fn of the supervised loop for the reward model."""
    rewards = model(batch["idx"], batch["lengths"])
    return ranking_loss(rewards.float(), batch["group"], batch["ranks"])


@torch.no_grad()
def score_groups(model: torch.nn.Module, groups: Sequence[dict[str, Any]], batch_size: int,
                 device: torch.device) -> list[list[float]]:  # fmt: skip
    """The reward of every response of every group."""
    out: list[list[float]] = []
    for k in range(0, len(groups), batch_size):
        chunk = groups[k : k + batch_size]
        batch = reward_batch(chunk)
        r = model(batch["idx"].to(device), batch["lengths"].to(device)).float().cpu().tolist()
        for g in chunk:
            out.append(r[: len(g["seqs"])])
            r = r[len(g["seqs"]) :]
    return out


def ranking_metrics(rewards: Sequence[Sequence[float]], ranks: Sequence[Sequence[int]]) -> dict[str, float]:
    """Pairwise accuracy over strictly ordered pairs, and how often the top reward is a top-ranked response."""
    agree = pairs = top1 = 0
    for r, k in zip(rewards, ranks, strict=True):
        for i in range(len(r)):
            for j in range(len(r)):
                if k[i] < k[j]:
                    pairs += 1
                    agree += r[i] > r[j]
        top1 += k[max(range(len(r)), key=lambda i: r[i])] == min(k)
    return {"pair_acc": agree / max(pairs, 1), "top1": top1 / max(len(rewards), 1), "pairs": float(pairs)}


# --------------------------------------------------------------------------------------- generation
def left_pad(prompts: Sequence[Sequence[int]], keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts (their last ``keep`` tokens) left-padded into one (B, P) batch, with its mask."""
    rows = [list(p)[-keep:] for p in prompts]
    width = max(len(r) for r in rows)
    idx = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for j, r in enumerate(rows):
        idx[j, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[j, width - len(r) :] = 1
    return idx, mask


@torch.no_grad()
def generate(
    model: GPT, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, eos: int | None, temperature: float = 0.0,
    top_k: int | None = None, top_p: float | None = None, batch_size: int = 64, seed: int = 0,
    device: torch.device | None = None,
) -> list[list[int]]:  # fmt: skip
    """The new tokens for each prompt (up to and including ``eos``), batched by similar length with left
    padding and the KV cache. A prompt longer than ``block_size - max_new_tokens`` keeps its last tokens."""
    device = device or next(model.parameters()).device
    block = model.config.block_size
    keep = max(1, block - max_new_tokens)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    gen = torch.Generator(device=device).manual_seed(seed)
    out: list[list[int]] = [[] for _ in prompts]
    was = model.training
    model.eval()
    for k in range(0, len(order), batch_size):
        idx, mask = left_pad([prompts[i] for i in order[k : k + batch_size]], keep)
        width = idx.size(1)
        new = min(max_new_tokens, block - width)
        res = model.generate(
            idx.to(device), new, temperature=temperature, top_k=top_k, top_p=top_p, generator=gen,
            eos_token=eos, attention_mask=mask.to(device),
        )[:, width:].tolist()  # fmt: skip
        for j, i in enumerate(order[k : k + batch_size]):
            ids = res[j]
            if eos is not None and eos in ids:
                ids = ids[: ids.index(eos) + 1]
            out[i] = ids
    model.train(was)
    return out
