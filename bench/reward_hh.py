#!/usr/bin/env python
"""A reward model on real human preferences: Anthropic HH-RLHF (harmless-base, test file).

Reads ../shared/data/hh_rlhf_harmless_test/harmless-base-test.jsonl.gz at run time (2,312
chosen/rejected pairs; never copied into the project), parses each pair with the pipeline's
chosen/rejected loader, and encodes it in the chat template with the pipeline's tokenizer
(data/tokenize/tokenizer.json). Conversations longer than the model's context keep their last
``block_size`` tokens, so the final assistant turn, where chosen and rejected differ, is always seen.

The pairs are split by conversation prompt: ``--train-fraction`` to train, the rest to test. Two
reward models are trained with the reward stage's objective and loop (pipeline/train/instruct.py,
pipeline/train/supervised.py), one started from data/pretrain/model and one from data/sft/model,
same recipe and data order. Beside them: chance (0.5) and "the shorter response is chosen" (harmless
refusals tend to be short), so an accuracy above chance can be told from a length heuristic.
Published small reward models on HH reach about 0.6-0.7. Results: a table and bench/out/reward_hh.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import machine, table, write_result  # noqa: E402 - after the path set-up above
from pipeline.eval.metrics import wilson  # noqa: E402
from pipeline.feedback.chat import ChatTokens  # noqa: E402
from pipeline.feedback.data import comparisons  # noqa: E402
from pipeline.model.export import load_model  # noqa: E402
from pipeline.model.reward import RewardModel  # noqa: E402
from pipeline.tokenizer import load_tokenizer  # noqa: E402
from pipeline.train.instruct import (  # noqa: E402
    ranked_group,
    ranking_metrics,
    reward_batch,
    reward_loss,
    score_groups,
    shuffled_batches,
)  # fmt: skip
from pipeline.train.supervised import SupervisedConfig, SupervisedTrainer  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "hh_rlhf_harmless_test" / "harmless-base-test.jsonl.gz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--root", type=Path, default=ROOT, help="project root holding data/ (default: this repo)")
    ap.add_argument("--train-fraction", type=float, default=0.65)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch", type=int, default=16, help="pairs per batch")
    ap.add_argument("--max-pairs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "reward_hh.json")
    args = ap.parse_args()
    if not args.data.is_file():
        sys.exit(f"error: {args.data}: not found (the HH-RLHF harmless-base test file)")
    tok_file = args.root / "data" / "tokenize" / "tokenizer.json"
    models = {
        "pretrain": args.root / "data" / "pretrain" / "model",
        "sft": args.root / "data" / "sft" / "model",
    }
    for path in [tok_file, *models.values()]:
        if not path.exists():
            sys.exit(f"error: {path}: missing; run `dvc repro sft` (or `make run`) first")
    with gzip.open(args.data, "rt", encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    if args.max_pairs:
        records = records[: args.max_pairs]
    # a few HH pairs have an empty final turn; they cannot be ranked
    rows = [c for rec in records for c in _parse(rec)]
    chat = ChatTokens(load_tokenizer(tok_file), str(tok_file))
    prompts = sorted({r["group"] for r in rows})
    random.Random(args.seed).shuffle(prompts)
    train_prompts = set(prompts[: round(args.train_fraction * len(prompts))])
    train = [r for r in rows if r["group"] in train_prompts]
    test = [r for r in rows if r["group"] not in train_prompts]
    shorter = sum(len(r["responses"][0]) < len(r["responses"][1]) for r in test) / len(test)

    load0 = os.getloadavg()[0]
    results, table_rows = {}, []
    for name, path in models.items():
        gpt = load_model(path)
        block = gpt.config.block_size
        groups = {
            split: [ranked_group(chat, r["messages"], r["responses"], r["ranks"], block) for r in part]
            for split, part in (("train", train), ("test", test))
        }
        torch.manual_seed(args.seed)
        model = RewardModel(gpt)
        cfg = SupervisedConfig(lr=args.lr, epochs=args.epochs, weight_decay=0.01, betas=(0.9, 0.95),
                               schedule="cosine", warmup_fraction=0.03, min_lr_ratio=0.1)  # fmt: skip
        trainer = SupervisedTrainer(model, reward_loss, shuffled_batches(groups["train"], args.batch, args.seed,
                                                                         reward_batch), cfg, seed=args.seed)  # fmt: skip
        t0 = time.perf_counter()
        trainer.run()
        model.eval()
        got = ranking_metrics(score_groups(model, groups["test"], 64, torch.device("cpu")),
                              [g["ranks"] for g in groups["test"]])  # fmt: skip
        train_acc = ranking_metrics(score_groups(model, groups["train"][:500], 64, torch.device("cpu")),
                                    [g["ranks"] for g in groups["train"][:500]])["pair_acc"]  # fmt: skip
        lo, hi = wilson(got["pair_acc"] * len(test), len(test))
        results[name] = {"test_acc": got["pair_acc"], "low": lo, "high": hi, "train_acc": train_acc,
                         "seconds": time.perf_counter() - t0, "steps": trainer.step}  # fmt: skip
        table_rows.append(
            [f"RM from {name}", f"{got['pair_acc']:.3f}", f"[{lo:.3f}, {hi:.3f}]", f"{train_acc:.3f}"]
        )
    table_rows.append(["shorter response wins", f"{shorter:.3f}", "", ""])
    table_rows.append(["chance", "0.500", "", ""])
    load1 = os.getloadavg()[0]
    print(f"HH-RLHF harmless-base test: {len(train)} pairs to train, {len(test)} to test "
          f"(split by prompt), {args.epochs} epochs\n")  # fmt: skip
    print(table(["model", "test acc", "95% interval", "train acc"], table_rows))
    print(f"\nload average (1 min): {load0:.2f} at start, {load1:.2f} at end")
    write_result(args.out, {
        "machine": machine(), "data": str(args.data), "train_pairs": len(train), "test_pairs": len(test),
        "epochs": args.epochs, "lr": args.lr, "results": results, "shorter_wins": shorter, "chance": 0.5,
        "load_avg": [load0, load1],
    })  # fmt: skip


def _parse(rec: dict) -> list[dict]:
    from pipeline.errors import LineageError

    try:
        return comparisons([rec], "chosen_rejected", "hh")
    except LineageError:
        return []


if __name__ == "__main__":
    main()
