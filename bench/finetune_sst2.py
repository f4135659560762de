"""GPT-1 fine-tuning on SST-2: from our pretrained default vs from random init, lambda 0 vs 0.5.

Trains on all of ../shared/data/glue/SST-2/train_10k.tsv (10,000 sentences) and scores on dev.tsv
(872 sentences) with the finetune recipe of params.yaml (lr, batch, warmup, weight decay, dropout),
one epoch at sequences of at most 64 tokens (SST-2's phrases are short; both keep the four runs to
minutes on 2 cores), the model in data/pretrain/model and the tokenizer in data/tokenize (run
`dvc repro pretrain` first; both are only read). Prints a 2x2 table (accuracy with its 95% interval,
wall time per run and in all) and writes bench/out/finetune_sst2.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, table, write_result  # noqa: E402

RUNS = [
    ("pretrained", None, 0.0),
    ("pretrained", None, 0.5),
    ("random_init", 0, 0.0),
    ("random_init", 0, 0.5),
]


def setup(args: argparse.Namespace) -> dict:
    """The recipe, the pretrained model and SST-2 encoded; raises LineageError on bad input."""
    from pipeline.config import load_params
    from pipeline.errors import LineageError
    from pipeline.eval.config import FinetuneTask
    from pipeline.eval.finetune import encode_items
    from pipeline.eval.inputs import check_vocab, text_encoder
    from pipeline.eval.loaders import load_task
    from pipeline.eval.transforms import Specials
    from pipeline.model.export import load_model
    from pipeline.tokenizer import load_tokenizer

    root = Path(args.root)
    params = load_params(root / "params.yaml")
    if args.epochs < 1 or args.max_len < 8 or args.jobs < 1:
        raise LineageError("--epochs and --jobs must be >= 1, --max-len >= 8")
    cfg = params.finetune.model_copy(
        update={"checkpoint_interval": 0, "eval_interval": 0, "epochs": args.epochs}
    )
    tokenizer = load_tokenizer(root / "data" / "tokenize" / "tokenizer.json")
    pretrained = load_model(root / "data" / "pretrain" / "model")
    check_vocab(pretrained.config.vocab_size, tokenizer, "data/pretrain/model")
    if not Path(args.data).is_dir():
        raise LineageError(f"{args.data}: SST-2 folder not found (give --data)")
    spec = FinetuneTask(kind="sst2", path=args.data, train="train_10k.tsv", test="dev.tsv",
                        max_train=args.max_train)  # fmt: skip
    task = load_task("sst2", spec, root, params.common.seed, True)
    sp, encode = Specials.of(tokenizer), text_encoder(tokenizer)
    max_len = min(args.max_len, pretrained.config.block_size)
    return {
        "cfg": cfg, "seed": params.common.seed, "pretrained": pretrained, "task": task, "max_len": max_len,
        "train_ex": encode_items(task.form, task.train, encode, sp, max_len),
        "test_ex": encode_items(task.form, task.test, encode, sp, max_len),
    }  # fmt: skip


def one_run(s: dict, init: str, layers: int | None, lam: float) -> dict:
    import torch

    from pipeline.eval.finetune import train_variant

    t0 = time.perf_counter()
    r = train_variant(s["pretrained"], layers, s["task"], s["train_ex"], s["test_ex"], s["cfg"], s["seed"],
                      torch.device("cpu"), lm_coef=lam)  # fmt: skip
    wall = time.perf_counter() - t0
    acc = r["metrics"]["acc"]
    print(f"  {init:12s} lambda={lam}: acc {acc['value']:.3f} [{acc['low']:.3f}, {acc['high']:.3f}] "
          f"in {wall:.0f}s", flush=True)  # fmt: skip
    return {"init": init, "lambda": lam, "acc": acc["value"], "low": acc["low"], "high": acc["high"],
            "chance": acc["chance"], "f1": r["metrics"]["f1"]["value"], "wall_s": round(wall, 1),
            "steps": r["train"]["steps"]}  # fmt: skip


def job(args: argparse.Namespace, run: tuple[str, int | None, float]) -> dict:
    """One of the four runs in a worker process (its own copy of the model and data)."""
    import torch

    torch.set_num_threads(max(1, args.threads // args.jobs))
    return one_run(setup(args), *run)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "glue" / "SST-2"))
    ap.add_argument("--root", default=str(ROOT), help="project root holding data/pretrain and data/tokenize")
    ap.add_argument("--max-train", type=int, default=None, help="use only this many training sentences")
    ap.add_argument(
        "--epochs", type=int, default=1, help="epochs (finetune.epochs is for the embedded tasks)"
    )
    ap.add_argument("--max-len", type=int, default=64, help="tokens per sequence, markers included")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--jobs", type=int, default=1, help="runs at once, in processes of threads/jobs threads each"
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "finetune_sst2.json"))
    args = ap.parse_args()

    import torch

    from pipeline.errors import LineageError

    torch.set_num_threads(args.threads)
    try:
        s = setup(args)
    except LineageError as e:
        print(f"error: finetune_sst2: {e}", file=sys.stderr)
        return 1
    cfg = s["cfg"]
    print(f"SST-2: {len(s['train_ex'])} train, {len(s['test_ex'])} dev; model {s['pretrained'].num_params():,} "
          f"params; lr {cfg.lr}, {cfg.epochs} epoch(s), batch {cfg.batch_size}, max length {s['max_len']}; "
          f"{args.jobs} job(s)")  # fmt: skip
    t_all = time.perf_counter()
    if args.jobs == 1:
        runs = [one_run(s, *run) for run in RUNS]
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(args.jobs, len(RUNS)), mp_context=mp.get_context("spawn")) as pool:
            runs = list(pool.map(job, [args] * len(RUNS), RUNS))
    total = round(time.perf_counter() - t_all, 1)
    print()
    print(table(
        ["init", "lambda", "dev acc", "95% interval", "F1", "wall s"],
        [[r["init"], r["lambda"], f"{r['acc']:.3f}", f"[{r['low']:.3f}, {r['high']:.3f}]", f"{r['f1']:.3f}",
          r["wall_s"]] for r in runs],
    ))  # fmt: skip
    print(
        f"majority-class chance: {runs[0]['chance']:.3f}; wall time of the four runs: {total} s "
        f"({args.jobs} job(s), {args.threads} threads in all)"
    )
    write_result(Path(args.out), {"machine": machine(), "train": len(s["train_ex"]), "dev": len(s["test_ex"]),
                                  "max_len": s["max_len"], "threads": args.threads, "jobs": args.jobs,
                                  "wall_s": total, "recipe": cfg.model_dump(mode="json"), "runs": runs})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
