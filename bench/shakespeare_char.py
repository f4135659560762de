#!/usr/bin/env python
"""nanoGPT's CPU quick start (shakespeare_char) with our tokenizer, model and Trainer.

nanoGPT's recipe (README, "I only have a macbook"): a character-level GPT on tinyshakespeare, the
first 90% of the text for training and the last 10% for validation, 4 layers, 4 heads, 128 wide,
context 64, batch 12, dropout 0, 2000 iterations, lr 1e-3 with 100 warmup steps and cosine decay to
1e-4 at step 2000, AdamW betas (0.9, 0.99), weight decay 0.1, gradient clipping at 1.0. nanoGPT
reports a validation loss of about 1.88 for it.

Here:
  tokenizer  pipeline.tokenizer.train_tokenizer, kind "char" (vocab_size 128, <|endoftext|>), trained
             on the training 90%; the model's vocabulary is the tokenizer's (65 characters + 2 specials)
  data       write_tokens / open_tokens in a temporary folder: one document for train, one for val
  training   pipeline.train.loop.Trainer (GPT arch gpt2, bias=False like nanoGPT unless --bias), bf16
             autocast unless --dtype float32; the schedule is lr_at over --iters steps
  losses     nanoGPT's estimate_loss: mean cross entropy (nats) over --eval-windows random windows of
             64 tokens from each split, plus the Trainer's own final evaluation (every consecutive
             window of the validation split)

Results: a table on stdout and bench/out/shakespeare_char.json. Missing data: a message, exit 0.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import write_result  # noqa: E402 - after the path set-up above
from pipeline.config import EOT, PretrainConfig, TokenizeConfig  # noqa: E402
from pipeline.model.gpt import GPT, GPTConfig  # noqa: E402
from pipeline.tokenizer import (  # noqa: E402
    UNK,
    decode,
    encode_documents,
    eot_id,
    open_tokens,
    token_dtype,
    train_tokenizer,
    write_tokens,
)
from pipeline.train.loop import Trainer, autocast_dtype, measure_peak_flops  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


@torch.no_grad()
def estimate_loss(
    model: GPT, tokens: Any, block_size: int, windows: int, batch: int, dtype: torch.dtype, seed: int
) -> float:
    """nanoGPT's estimate_loss: mean cross entropy over ``windows`` random windows of one split."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(tokens) - block_size - 1, (windows,), generator=g).tolist()
    data = torch.from_numpy(tokens[:].astype("int64"))
    model.eval()
    total, count = 0.0, 0
    for i in range(0, windows, batch):
        ix = starts[i : i + batch]
        x = torch.stack([data[s : s + block_size] for s in ix])
        y = torch.stack([data[s + 1 : s + 1 + block_size] for s in ix])
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            logits, _ = model(x)
        total += F.cross_entropy(
            logits.float().view(-1, logits.size(-1)), y.reshape(-1), reduction="sum"
        ).item()
        count += y.numel()
    model.train()
    return total / count


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="tinyshakespeare input.txt")
    ap.add_argument("--iters", type=int, default=2000, help="training steps (also the cosine length)")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=12)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--bias", action="store_true", help="biases in Linear/LayerNorm (nanoGPT: none)")
    ap.add_argument("--eval-windows", type=int, default=200, help="random windows per split at the end")
    ap.add_argument("--eval-interval", type=int, default=0, help="Trainer evaluation every N steps; 0: end")
    ap.add_argument("--log-interval", type=int, default=100)
    ap.add_argument("--sample-chars", type=int, default=300, help="characters to sample at the end; 0: none")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch.set_num_threads")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--out", type=Path, default=OUT / "shakespeare_char.json")
    args = ap.parse_args(argv)

    if not args.data.is_file():
        print(
            f"shakespeare_char: {args.data} not found; nothing to do. Put tinyshakespeare's input.txt there "
            "(https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt) "
            "or pass --data PATH."
        )
        return 0
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()

    # ---------------------------------------------------------------------------- tokenizer and data
    text = args.data.read_text(encoding="utf-8")
    n = len(text)
    train_text, val_text = text[: int(n * 0.9)], text[int(n * 0.9) :]
    tok_cfg = TokenizeConfig(kind="char", vocab_size=128, special_tokens=[EOT])
    tok = train_tokenizer([train_text], tok_cfg)
    vocab = tok.get_vocab_size()
    eot = eot_id(tok)
    unk = tok.token_to_id(UNK)
    [train_ids], [val_ids] = encode_documents(tok, [train_text]), encode_documents(tok, [val_text])
    with tempfile.TemporaryDirectory(prefix="shakespeare_char_") as tmp:
        tmp_path = Path(tmp)
        write_tokens(tmp_path, "train", [train_ids], [0], vocab, eot_id=eot)
        write_tokens(tmp_path, "val", [val_ids], [0], vocab, eot_id=eot)
        train = open_tokens(tmp_path, "train", token_dtype(vocab))
        val = open_tokens(tmp_path, "val", token_dtype(vocab))
        print(
            f"data: {args.data} ({n:,} chars); train {train.n_tokens:,} tokens, val {val.n_tokens:,} tokens "
            f"(each + 1 {EOT}); vocab {vocab} ({vocab - 2} chars + {EOT} + {UNK}); "
            f"{val_ids.count(unk)} val chars unknown"
        )

        # ------------------------------------------------------------------------------------ model
        model_cfg = GPTConfig(
            arch="gpt2",
            vocab_size=vocab,
            block_size=args.block_size,
            n_layer=args.n_layer,
            n_head=args.n_head,
            n_embd=args.n_embd,
            dropout=0.0,
            bias=args.bias,
        )
        cfg = PretrainConfig(
            arch="gpt2",
            n_layer=args.n_layer,
            n_head=args.n_head,
            n_embd=args.n_embd,
            block_size=args.block_size,
            dropout=0.0,
            bias=args.bias,
            batch_size=args.batch_size,
            grad_accum=1,
            max_steps=args.iters,
            lr=args.lr,
            min_lr=args.min_lr,
            warmup_steps=args.warmup,
            weight_decay=0.1,
            beta1=0.9,
            beta2=0.99,
            grad_clip=1.0,
            dtype=args.dtype,
            compile=False,
            device="cpu",
            log_interval=args.log_interval,
            eval_interval=args.eval_interval,
            eval_windows=1_000_000,  # the Trainer's evaluation covers the whole validation split
            checkpoint_interval=0,
            resume=False,
            export_hf=False,
        )
        device = torch.device("cpu")
        dtype = autocast_dtype(cfg.dtype, device)

        def log(metrics: dict[str, float], step: int) -> None:
            if "train/loss" in metrics:
                print(
                    f"  step {step:>5}  train loss {metrics['train/loss']:.4f}  lr {metrics['train/lr']:.2e}  "
                    f"{metrics['perf/tokens_per_s']:,.0f} tok/s  MFU {100 * metrics['perf/mfu']:.1f}%"
                )
            if "val/loss" in metrics:
                print(f"  step {step:>5}  val loss (whole split) {metrics['val/loss']:.4f}")

        trainer = Trainer(
            model_config=model_cfg,
            cfg=cfg,
            seed=args.seed,
            train=train,
            val=val,
            source_names=["shakespeare"],
            tokens_per_byte={"shakespeare": val.n_tokens / len(val_text.encode("utf-8"))},
            checkpoint=tmp_path / "ckpt.pt",
            log=log,
            device=device,
        )
        peak = measure_peak_flops(device, dtype)
        print(
            f"model: {trainer.model.num_params() / 1e6:.3f}M params, bias={args.bias}; Trainer, {args.dtype} "
            f"{'autocast' if dtype != torch.float32 else '(no autocast)'}, {torch.get_num_threads()} threads; "
            f"{args.iters} iters of {args.batch_size}x{args.block_size} tokens; "
            f"peak {peak / 1e9:.1f} GFLOP/s"
        )
        t0 = time.perf_counter()
        final = trainer.run(peak)
        run_s = time.perf_counter() - t0
        train_s = trainer.elapsed  # the loop only: before the final evaluation and checkpoint

        t_eval = time.perf_counter()
        ev = {
            split: estimate_loss(
                trainer.model,
                data.tokens,
                args.block_size,
                args.eval_windows,
                args.batch_size,
                dtype,
                args.seed + i,
            )
            for i, (split, data) in enumerate((("train", train), ("val", val)))
        }
        eval_s = time.perf_counter() - t_eval
        sample = ""
        if args.sample_chars:
            g = torch.Generator().manual_seed(args.seed)
            start = torch.tensor([[tok.token_to_id("\n")]])
            out = trainer.model.generate(start, args.sample_chars, temperature=0.8, top_k=200, generator=g)
            sample = decode(tok, out[0].tolist())

    tokens = trainer.tokens
    last_train = [h for h in trainer.history if "train/loss" in h][-1]
    result: dict[str, Any] = {
        "bench": "shakespeare_char",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "runner": "pipeline.train.loop.Trainer",
        "data": str(args.data),
        "split": "first 90% train / last 10% val (nanoGPT)",
        "vocab_size": vocab,
        "train_tokens": train.n_tokens,
        "val_tokens": val.n_tokens,
        "model_config": model_cfg.to_dict(),
        "params": trainer.model.num_params(),
        "pretrain_config": cfg.model_dump(mode="json"),
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "iters": trainer.step,
        "tokens": tokens,
        "train_s": train_s,
        "run_s_with_final_eval": run_s,
        "tokens_per_s": tokens / train_s,
        "ms_per_iter": 1e3 * train_s / max(trainer.step, 1),
        "peak_flops": peak,
        "mfu": tokens / train_s * trainer.model.flops_per_token() / peak,
        "estimate_loss_windows": args.eval_windows,
        "train_loss_estimate": ev["train"],
        "val_loss_estimate": ev["val"],
        "val_loss_whole_split": final.get("val/loss"),
        "val_bpb_whole_split": final.get("val/shakespeare/bpb"),
        "train_loss_last_log": last_train["train/loss"],
        "train_loss_last_log_window": args.log_interval,
        "estimate_s": eval_s,
        "nanogpt_reference_val_loss": 1.88,
        "history": trainer.history,
        "sample": sample,
        "wall_s": time.perf_counter() - t_all,
        "env": {"python": platform.python_version(), "torch": torch.__version__, "cores": os.cpu_count()},
    }

    print()
    rows = [
        ("runner", "our Trainer (pipeline/train/loop.py)"),
        ("dtype", f"{args.dtype}, {result['threads']} threads"),
        ("iterations", f"{trainer.step} x {args.batch_size} x {args.block_size} = {tokens:,} tokens"),
        (f"val loss ({args.eval_windows} random windows)", f"{ev['val']:.4f} nats  (nanoGPT: ~1.88)"),
        (f"train loss ({args.eval_windows} random windows)", f"{ev['train']:.4f} nats"),
        ("val loss (whole val split)", f"{final.get('val/loss', math.nan):.4f} nats"),
        (f"train loss (mean of last {args.log_interval} steps)", f"{last_train['train/loss']:.4f} nats"),
        ("training wall time", f"{train_s:.1f} s  ({result['ms_per_iter']:.1f} ms/iter)"),
        ("tokens/s", f"{result['tokens_per_s']:,.0f}  (MFU {100 * result['mfu']:.1f}% of {peak / 1e9:.1f} GFLOP/s)"),
        ("total wall time (with data, evals)", f"{result['wall_s']:.1f} s"),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if sample:
        print("\nsample (temperature 0.8, top_k 200):\n" + sample)
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
