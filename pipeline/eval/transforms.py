"""GPT-1's task-specific input transforms (Radford et al. 2018, section 3.3 and Figure 1).

Every structured input becomes one or more token sequences that the pretrained model reads
unchanged, marked with the tokenizer's special tokens: a start token ``s`` (``<|start|>``), a
delimiter ``$`` (``<|delim|>``) and an extract token ``e`` (``<|extract|>``), whose final hidden
state the linear head reads.

* classification ``[s; text; e]``
* entailment ``[s; premise; $; hypothesis; e]``
* similarity: both orders ``[s; a; $; b; e]`` and ``[s; b; $; a; e]`` (their extract states are
  added before the head, since similarity has no natural order)
* multiple choice: ``[s; context; $; answer_k; e]`` for each answer k, each scored by the head to
  one number, softmax over the answers

Items are plain dicts: ``{"text"}``, ``{"premise", "hypothesis"}``, ``{"a", "b"}`` or
``{"context", "choices"}``, each with a ``label``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from pipeline.errors import LineageError

START, DELIM, EXTRACT = "<|start|>", "<|delim|>", "<|extract|>"
Form = Literal["classify", "entail", "similar", "choice"]
FIELDS: dict[str, tuple[str, ...]] = {
    "classify": ("text",),
    "entail": ("premise", "hypothesis"),
    "similar": ("a", "b"),
    "choice": ("context", "choices"),
}


@dataclass(frozen=True)
class Specials:
    start: int
    delim: int
    extract: int

    @classmethod
    def of(cls, tokenizer: Any) -> Specials:
        ids = [tokenizer.token_to_id(t) for t in (START, DELIM, EXTRACT)]
        missing = [t for t, i in zip((START, DELIM, EXTRACT), ids, strict=True) if i is None]
        if missing:
            raise LineageError(
                f"tokenizer: no {', '.join(missing)} token; GPT-1's transforms need them "
                "(tokenize.special_tokens must list them)"
            )
        return cls(*ids)


def fit(segments: list[list[int]], budget: int, keep_end: Sequence[bool]) -> list[list[int]]:
    """Shorten the longest segment one token at a time until all fit in ``budget`` tokens; a segment
    with ``keep_end`` loses its beginning (a context keeps the words next to what follows it)."""
    segs = [list(s) for s in segments]
    while sum(len(s) for s in segs) > budget:
        i = max(range(len(segs)), key=lambda j: len(segs[j]))
        if not segs[i]:
            break
        segs[i] = segs[i][1:] if keep_end[i] else segs[i][:-1]
    return segs


def sequences(form: Form, item: dict[str, Any], encode: Callable[[str], list[int]], sp: Specials,
              max_len: int) -> list[list[int]]:  # fmt: skip
    """The token sequences of one item (1 for classify/entail, 2 for similar, K for choice)."""
    s, d, e = sp.start, sp.delim, sp.extract
    if form == "classify":
        (text,) = fit([encode(item["text"])], max_len - 2, [False])
        return [[s, *text, e]]
    if form == "entail":
        p, h = fit([encode(item["premise"]), encode(item["hypothesis"])], max_len - 3, [True, False])
        return [[s, *p, d, *h, e]]
    if form == "similar":
        a, b = fit([encode(item["a"]), encode(item["b"])], max_len - 3, [False, False])
        return [[s, *a, d, *b, e], [s, *b, d, *a, e]]
    if form == "choice":
        ctx = encode(item["context"])
        out = []
        for choice in item["choices"]:
            c, ans = fit([ctx, encode(choice)], max_len - 3, [True, False])
            out.append([s, *c, d, *ans, e])
        return out
    raise ValueError(f"unknown form {form!r}")


def collate(
    examples: Sequence[tuple[list[list[int]], Any]], regression: bool = False
) -> dict[str, torch.Tensor]:
    """Pad ``(sequences, label)`` examples into a batch.

    ``tokens`` (B, S, T) right-padded with 0 (causal attention: padding after a sequence never
    changes the states before it), ``extract`` (B, S) the position of each extract token,
    ``targets`` (B, S, T) the next token at each position or -1 (for the LM loss), ``label`` (B,).
    """
    S = max(len(seqs) for seqs, _ in examples)
    if any(len(seqs) != S for seqs, _ in examples):
        raise ValueError("every example of a batch needs the same number of sequences")
    T = max(len(s) for seqs, _ in examples for s in seqs)
    B = len(examples)
    tokens = torch.zeros((B, S, T), dtype=torch.long)
    targets = torch.full((B, S, T), -1, dtype=torch.long)
    extract = torch.zeros((B, S), dtype=torch.long)
    for b, (seqs, _) in enumerate(examples):
        for j, seq in enumerate(seqs):
            t = torch.tensor(seq, dtype=torch.long)
            tokens[b, j, : len(seq)] = t
            targets[b, j, : len(seq) - 1] = t[1:]
            extract[b, j] = len(seq) - 1
    labels = [lab for _, lab in examples]
    label = torch.tensor(labels, dtype=torch.float32 if regression else torch.long)
    return {"tokens": tokens, "targets": targets, "extract": extract, "label": label}
