"""GPT-2 124M training throughput on one GPU: bf16 autocast, torch.compile, local token data.

    python bench/gpu_gpt2_124m.py [--steps 100] [--batch 16] [--peak 989e12]

Trains the gpt2-124m shape (12 layers, 12 heads, 768 wide, context 1024, vocab 50304) for --steps
optimizer steps on random local tokens (throughput does not depend on the text) and prints
tokens/s and MFU against --peak (H100 SXM bf16 dense: 989 TFLOP/s). Needs a CUDA device.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import write_result  # noqa: E402 - after the path set-up above
from pipeline.model.gpt import GPT, GPTConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--peak", type=float, default=989e12)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_gpt2_124m: no CUDA device; this benchmark needs a GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    device = torch.device("cuda")
    cfg = GPTConfig(
        arch="gpt2", vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768, bias=True
    )
    model = GPT(cfg).to(device)
    opt = model.configure_optimizer(0.1, 6e-4, (0.9, 0.95))
    runner = model if args.no_compile else torch.compile(model)
    data = torch.randint(
        0, cfg.vocab_size, (args.steps + args.warmup, args.batch, cfg.block_size + 1), device=device
    )
    tokens_per_step = args.batch * cfg.block_size

    def step(i: int) -> float:
        x, y = data[i, :, :-1], data[i, :, 1:]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = runner(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    t0 = time.perf_counter()
    for i in range(args.warmup):
        step(i)
    torch.cuda.synchronize()
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        loss = step(i)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tps = tokens_per_step * args.steps / dt
    result = {
        "device": torch.cuda.get_device_name(),
        "params": model.num_params(),
        "flops_per_token": model.flops_per_token(),
        "tokens_per_s": tps,
        "mfu": tps * model.flops_per_token() / args.peak,
        "peak_flops": args.peak,
        "steps": args.steps,
        "batch": args.batch,
        "compile": not args.no_compile,
        "warmup_s": warm_s,
        "last_loss": loss,
    }
    for k, v in result.items():
        print(f"{k:>16}: {v:.4g}" if isinstance(v, float) else f"{k:>16}: {v}")
    write_result(ROOT / "bench" / "out" / "gpu_gpt2_124m.json", result)


if __name__ == "__main__":
    main()
