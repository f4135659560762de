"""Our own log-likelihood scorer: the rule lm-evaluation-harness applies, in-process over a GPT.

It exists for speed where lm-eval's per-run setup dominates (the zero-shot score at every kept
pretraining checkpoint, the zero-shot baseline of fine-tuning); bench/lm_eval_parity.py checks
that it gives lm-eval's accuracy on the same task and model. The rules copied from lm-eval's
documented behaviour:

* a pair (context, continuation): trailing spaces of the context move to the continuation; the
  continuation's tokens are those of ``encode(context + continuation)`` after ``encode(context)``;
  an empty context is replaced by the end-of-text token;
* the model reads ``(context + continuation)[-(block_size + 1):][:-1]`` (left truncation) and the
  score is the summed log-probability of the continuation's tokens; ``greedy`` says whether each
  of them is also the argmax;
* ``acc``: the option with the highest log-likelihood; ``acc_norm``: highest log-likelihood per
  character of the option (the choice text, without the space before it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import LineageError

# the fields of a task item in data/evaluate/tasks/<task>/{train,test}.jsonl, per kind
TASK_FIELDS = {"choice": ("context", "choices", "label"), "greedy": ("context", "completion")}


def encode_pair(encode: Callable[[str], list[int]], context: str, continuation: str,
                eot: int) -> tuple[list[int], list[int]]:  # fmt: skip
    if not context:
        return [eot], encode(continuation)
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole = encode(context + continuation)
    ctx = encode(context)
    return ctx, whole[len(ctx) :]


@torch.no_grad()
def loglikelihoods(model: Any, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int = 32,
                   device: torch.device | str = "cpu") -> list[tuple[float, bool]]:  # fmt: skip
    """(summed log-probability, greedy) of each continuation given its context, in input order."""
    block = model.config.block_size
    was = model.training
    model.eval()
    rows = []
    for ctx, cont in pairs:
        seq = (ctx + cont)[-(block + 1) :]
        inp = seq[:-1]
        n_cont = min(len(cont), len(inp))
        rows.append((inp, cont[-n_cont:] if n_cont else []))
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    out: list[tuple[float, bool]] = [(0.0, True)] * len(rows)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        T = max(len(rows[i][0]) for i in idx)
        x = torch.zeros((len(idx), T), dtype=torch.long)
        for b, i in enumerate(idx):
            x[b, : len(rows[i][0])] = torch.tensor(rows[i][0])
        logits, _ = model(x.to(device))
        logp = F.log_softmax(logits.float(), dim=-1).cpu()
        for b, i in enumerate(idx):
            inp, cont = rows[i]
            if not cont:
                out[i] = (0.0, True)
                continue
            pos = torch.arange(len(inp) - len(cont), len(inp))
            lp = logp[b, pos]
            target = torch.tensor(cont)
            out[i] = (float(lp.gather(1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all()))
    model.train(was)
    return out


def score_choices(model: Any, encode: Callable[[str], list[int]], eot: int,
                  items: Sequence[tuple[list[tuple[str, str]], int]], batch_size: int = 32,
                  device: torch.device | str = "cpu") -> dict[str, np.ndarray]:  # fmt: skip
    """Items as ``([(context, continuation) per option], gold)``: per item the predicted option
    under acc and acc_norm, the gold, and the log-likelihoods."""
    pairs, spans = [], []
    for options, _ in items:
        spans.append((len(pairs), len(options)))
        pairs.extend(encode_pair(encode, c, o, eot) for c, o in options)
    lls = loglikelihoods(model, pairs, batch_size, device)
    pred, pred_norm, gold = [], [], []
    for (options, g), (s, n) in zip(items, spans, strict=True):
        ll = np.array([lls[s + j][0] for j in range(n)])
        length = np.array([float(len(o.lstrip(" ")) or 1) for _, o in options])
        pred.append(int(np.argmax(ll)))
        pred_norm.append(int(np.argmax(ll / length)))
        gold.append(g)
    return {"pred": np.array(pred), "pred_norm": np.array(pred_norm), "gold": np.array(gold)}


def score_greedy(model: Any, encode: Callable[[str], list[int]], eot: int, items: Sequence[dict[str, str]],
                 batch_size: int = 32, device: torch.device | str = "cpu") -> np.ndarray:  # fmt: skip
    """lm-eval's ``acc`` of a loglikelihood task: 1 where greedy decoding reproduces the completion."""
    pairs = [encode_pair(encode, it["context"], it["completion"], eot) for it in items]
    return np.array([float(g) for _, g in loglikelihoods(model, pairs, batch_size, device)])


def task_accuracy(model: Any, encode: Callable[[str], list[int]], eot: int, task: dict[str, Any],
                  batch_size: int = 32, device: torch.device | str = "cpu") -> float:  # fmt: skip
    """Zero-shot ``acc`` of ``task`` ({kind, test}) by the rules above: the likeliest choice, or the
    completion reproduced greedily."""
    if task["kind"] == "choice":
        items = [([(it["context"], " " + c) for c in it["choices"]], it["label"]) for it in task["test"]]
        s = score_choices(model, encode, eot, items, batch_size, device)
        return float((s["pred"] == s["gold"]).mean())
    return float(score_greedy(model, encode, eot, task["test"], batch_size, device).mean())


def read_task_dir(directory: Path) -> tuple[str, list[dict], list[dict]]:
    """A folder holding train.jsonl and test.jsonl in our schema; its kind and items, validated."""
    from pipeline.io import iter_jsonl

    sides = []
    for side in ("train", "test"):
        path = directory / f"{side}.jsonl"
        if not path.is_file():
            raise LineageError(f"{path}: missing (a task folder holds train.jsonl and test.jsonl)")
        sides.append([row for _, row in iter_jsonl(path)])
        if not sides[-1]:
            raise LineageError(f"{path}: no items{_hint(path)}")
    kind = "choice" if "choices" in sides[1][0] else "greedy"
    for side, items in zip(("train", "test"), sides, strict=True):
        validate_items(kind, items, directory / f"{side}.jsonl")
    return kind, sides[0], sides[1]


def _hint(path: Path | str) -> str:
    from pipeline.io import rerun_hint, stage_of

    return f"; {rerun_hint(path)}" if isinstance(path, Path) and stage_of(path) else ""


def validate_items(kind: str, items: list[dict[str, Any]], where: Path | str) -> None:
    """Every item has its kind's fields with the right types: text context (and completion), two or
    more text choices and a label among them; one line naming ``where`` and the line otherwise."""
    if not items:
        raise LineageError(f"{where}: no items{_hint(where)}")
    for i, it in enumerate(items, start=1):
        for f in TASK_FIELDS[kind]:
            if f not in it or it[f] is None:
                raise LineageError(
                    f"{where}: line {i} has no {f!r} field (a {kind} task needs "
                    f"{', '.join(TASK_FIELDS[kind])}){_hint(where)}"
                )
        for f in ("context", "completion"):
            if f in TASK_FIELDS[kind] and not isinstance(it[f], str):
                raise LineageError(f"{where}: line {i}: {f} must be a string{_hint(where)}")
        if kind == "choice":
            choices = it["choices"]
            if (
                not isinstance(choices, list)
                or len(choices) < 2
                or not all(isinstance(c, str) for c in choices)
            ):
                raise LineageError(
                    f"{where}: line {i}: choices must be a list of two or more strings, got "
                    f"{type(choices).__name__}{_hint(where)}"
                )
            lab, n = it["label"], len(choices)
            if isinstance(lab, bool) or not isinstance(lab, int) or not 0 <= lab < n:
                raise LineageError(f"{where}: line {i}: label {lab!r} is outside the label set 0..{n - 1}")
