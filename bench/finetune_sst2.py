"""GPT-1 fine-tuning on SST-2: from our pretrained default vs from random init, lambda 0 vs 0.5.

Trains on ../shared/data/glue/SST-2/train_10k.tsv and scores on dev.tsv (872 sentences) with the
finetune recipe of params.yaml (lr, epochs, batch, warmup, dropout), the model in
data/pretrain/model and the tokenizer in data/tokenize (run `dvc repro pretrain` first). Prints
a 2x2 table (accuracy with its 95% interval, wall time) and writes bench/out/finetune_sst2.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, table, write_result  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "glue" / "SST-2"))
    ap.add_argument("--root", default=str(ROOT), help="project root holding data/pretrain and data/tokenize")
    ap.add_argument("--max-train", type=int, default=None, help="use only this many training sentences")
    ap.add_argument("--epochs", type=int, default=None, help="override finetune.epochs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "finetune_sst2.json"))
    args = ap.parse_args()

    import torch

    from pipeline.config import load_params
    from pipeline.errors import LineageError
    from pipeline.eval.config import FinetuneTask
    from pipeline.eval.finetune import encode_items, train_variant
    from pipeline.eval.inputs import check_vocab, text_encoder
    from pipeline.eval.loaders import load_task
    from pipeline.eval.transforms import Specials
    from pipeline.model.export import load_model
    from pipeline.tokenizer import load_tokenizer

    torch.set_num_threads(args.threads)
    root = Path(args.root)
    try:
        params = load_params(root / "params.yaml")
        cfg = params.finetune.model_copy(update={"checkpoint_interval": 0, "eval_interval": 0,
                                                 **({"epochs": args.epochs} if args.epochs else {})})  # fmt: skip
        tokenizer = load_tokenizer(root / "data" / "tokenize" / "tokenizer.json")
        pretrained = load_model(root / "data" / "pretrain" / "model")
        check_vocab(pretrained.config.vocab_size, tokenizer, "data/pretrain/model")
        if not Path(args.data).is_dir():
            raise LineageError(f"{args.data}: SST-2 folder not found (give --data)")
        spec = FinetuneTask(kind="sst2", path=args.data, train="train_10k.tsv", test="dev.tsv",
                            max_train=args.max_train)  # fmt: skip
        task = load_task("sst2", spec, root, params.common.seed, True)
    except LineageError as e:
        print(f"error: finetune_sst2: {e}", file=sys.stderr)
        return 1
    sp, encode = Specials.of(tokenizer), text_encoder(tokenizer)
    max_len = pretrained.config.block_size
    train_ex = encode_items(task.form, task.train, encode, sp, max_len)
    test_ex = encode_items(task.form, task.test, encode, sp, max_len)
    print(f"SST-2: {len(train_ex)} train, {len(test_ex)} dev; model {pretrained.num_params():,} params; "
          f"lr {cfg.lr}, {cfg.epochs} epochs, batch {cfg.batch_size}")  # fmt: skip
    runs = []
    for init, layers in (("pretrained", None), ("random_init", 0)):
        for lam in (0.0, 0.5):
            t0 = time.perf_counter()
            r = train_variant(pretrained, layers, task, train_ex, test_ex, cfg, params.common.seed,
                              torch.device("cpu"), lm_coef=lam)  # fmt: skip
            wall = time.perf_counter() - t0
            acc = r["metrics"]["acc"]
            runs.append({"init": init, "lambda": lam, "acc": acc["value"], "low": acc["low"], "high": acc["high"],
                         "chance": acc["chance"], "f1": r["metrics"]["f1"]["value"], "wall_s": round(wall, 1),
                         "steps": r["train"]["steps"]})  # fmt: skip
            print(f"  {init:12s} lambda={lam}: acc {acc['value']:.3f} [{acc['low']:.3f}, {acc['high']:.3f}] "
                  f"in {wall:.0f}s", flush=True)  # fmt: skip
    print()
    print(table(
        ["init", "lambda", "dev acc", "95% interval", "F1", "wall s"],
        [[r["init"], r["lambda"], f"{r['acc']:.3f}", f"[{r['low']:.3f}, {r['high']:.3f}]", f"{r['f1']:.3f}",
          r["wall_s"]] for r in runs],
    ))  # fmt: skip
    print(f"majority-class chance: {runs[0]['chance']:.3f}")
    write_result(Path(args.out), {"machine": machine(), "train": len(train_ex), "dev": len(test_ex),
                                  "recipe": cfg.model_dump(mode="json"), "runs": runs})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
