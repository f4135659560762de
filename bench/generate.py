#!/usr/bin/env python
"""Generation tokens per second with and without the KV cache (GPT.generate, use_cache on / off).

The default model shape (gpt2, 4 layers x 4 heads x 128, vocabulary 4096, block 128), batch 16,
128 new tokens after prompts of 4..16 tokens, left-padded with an attention mask as the comparisons
stage does. Weights are a seeded random init: the time per token does not depend on what was
learned, and no eos token is set, so every row generates all 128 tokens.

Block 128 cannot hold a prompt plus 128 new tokens: past 128 positions the window slides and every
position shifts, so both paths re-encode the last 128 tokens for the remaining steps. That is the
row ``block 128``; the row ``block 256`` (same shape, a longer position table) fits everything and
shows the cache alone. The two paths alternate (cache, plain, plain, cache, ...) for --repeats
rounds, so both see the same machine; the best round of each counts, the JSON keeps every round.
Both paths are checked to produce the same greedy tokens. Results: a table on stdout and
bench/out/generate.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import machine, table, write_result  # noqa: E402 - after the path set-up above
from pipeline.model.gpt import GPT, GPTConfig  # noqa: E402


def prompts(batch: int, lo: int, hi: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi + 1, (batch,), generator=g).tolist()
    width = max(lengths)
    idx = torch.zeros(batch, width, dtype=torch.long)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for row, n in enumerate(lengths):
        idx[row, width - n :] = torch.randint(1, vocab, (n,), generator=g)
        mask[row, width - n :] = 1
    return idx, mask


def timed(
    model: GPT, idx: torch.Tensor, mask: torch.Tensor, new: int, use_cache: bool
) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    out = model.generate(idx, new, temperature=0, attention_mask=mask, use_cache=use_cache)
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--blocks", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "generate.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    idx, mask = prompts(args.batch, 4, 16, 4096, seed=0)
    load0 = os.getloadavg()[0]
    rows, results = [], []
    for block in args.blocks:
        torch.manual_seed(0)
        model = GPT(
            GPTConfig(arch="gpt2", vocab_size=4096, block_size=block, n_layer=4, n_head=4, n_embd=128)
        )
        model.eval()
        timed(model, idx, mask, 8, True)  # warm-up both paths
        timed(model, idx, mask, 8, False)
        runs: dict[str, list[float]] = {"cache": [], "plain": []}
        outs: dict[str, torch.Tensor] = {}
        for r in range(args.repeats):
            order = ["cache", "plain"] if r % 2 == 0 else ["plain", "cache"]
            for name in order:
                dt, outs[name] = timed(model, idx, mask, args.new_tokens, name == "cache")
                runs[name].append(dt)
        same = torch.equal(outs["cache"], outs["plain"])
        tokens = args.batch * args.new_tokens
        best = {k: tokens / min(v) for k, v in runs.items()}
        speedup = best["cache"] / best["plain"]
        longest = idx.size(1) + args.new_tokens
        rows.append(
            [f"block {block}", f"{best['plain']:.0f}", f"{best['cache']:.0f}", f"{speedup:.2f}x", same]
        )
        results.append(
            {
                "block_size": block,
                "prompt_width": idx.size(1),
                "slides_after_step": max(0, block - idx.size(1)) if longest > block else None,
                "tokens_per_s": best,
                "seconds": runs,
                "speedup": speedup,
                "same_tokens": same,
            }
        )
    load1 = os.getloadavg()[0]
    print(
        f"generate: gpt2 4x4x128, vocab 4096, batch {args.batch}, {args.new_tokens} new tokens, "
        f"prompts 4..16 tokens (left-padded), greedy, threads {torch.get_num_threads()}\n"
    )
    print(table(["model", "no cache tok/s", "KV cache tok/s", "speedup", "same tokens"], rows))
    print(f"\nload average (1 min): {load0:.2f} at start, {load1:.2f} at end")
    write_result(
        args.out,
        {
            "machine": machine(),
            "threads": torch.get_num_threads(),
            "batch": args.batch,
            "new_tokens": args.new_tokens,
            "load_avg": [load0, load1],
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
