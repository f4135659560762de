#!/usr/bin/env python
"""Training tokens per second on CPU: our GPT (arch gpt2) against transformers' GPT2LMHeadModel.

One process, one machine, one shape, one stream of batches. Each contender runs the same training
step (forward with the loss, backward, clip the gradient norm to 1.0, AdamW step, zero the grads),
under bf16 autocast and in plain fp32:

  ours    pipeline.model.gpt.GPT(arch="gpt2") + GPT.configure_optimizer (decay on matrices only),
          the step Trainer.train_step runs
  hf      transformers.GPT2LMHeadModel with attn_implementation="sdpa", the same width, depth, heads,
          context and vocabulary, gelu_new, dropout 0, tied lm_head, started from OUR initial weights
          (through pipeline.model.export.to_hf), AdamW with the same groups and settings; the loss is
          HF's own (``labels=input_ids``, shifted inside the model) unless --hf-loss external

After a few warm-up steps each, the two alternate step by step (ours, hf, hf, ours, ours, hf, ...),
each step timed with time.perf_counter, so both see the same machine even when other processes come
and go. On CPU every op runs synchronously, so the forward / backward / clip / optimizer split of each
timed step is exact and comes for free. Reported: median and best tokens/s of each, and ours/HF as the
ratio of the medians, of the bests, and the median of the per-pair ratios (the one least disturbed
by other load). MFU = tokens/s x flops_per_token (GPT.flops_per_token of our model, the same shape
for both) / peak, where the peak is measure_peak_flops (a 1024^3 matmul) in the same dtype, sampled
every few step pairs; the best sample counts as the peak.

Batches are random token ids from a seeded generator (throughput does not depend on the ids); both
contenders see the same batches in the same order. Results: a table on stdout and
bench/out/train_throughput.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import write_result  # noqa: E402 - after the path set-up above
from pipeline.model.export import to_hf  # noqa: E402
from pipeline.model.gpt import GPT, GPTConfig  # noqa: E402
from pipeline.train.loop import measure_peak_flops  # noqa: E402

PHASES = ("forward", "backward", "clip", "optimizer")
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


# ------------------------------------------------------------------------------------------- helpers
def autocast(dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Trainer._autocast: nothing for fp32, torch.autocast otherwise."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=dtype)


def adamw_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """configure_optimizer's split for any model: decay on tensors with >= 2 dims, none on the rest."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


class Contender:
    """A model, its optimizer and a training step that records how long each phase took."""

    def __init__(
        self,
        name: str,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        grad_clip: float,
    ):
        self.name, self.model, self.optimizer, self.loss_fn = name, model, optimizer, loss_fn
        self.grad_clip = grad_clip
        self.params = [p for p in model.parameters() if p.requires_grad]

    def step(self, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype) -> dict[str, float]:
        c0, t0 = time.process_time(), time.perf_counter()
        with autocast(dtype):
            loss = self.loss_fn(x, y)
        t1 = time.perf_counter()
        loss.backward()
        loss.item()  # the Trainer reads the loss every step
        t2 = time.perf_counter()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        t3 = time.perf_counter()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        t4, c4 = time.perf_counter(), time.process_time()
        return {
            "forward": t1 - t0,
            "backward": t2 - t1,
            "clip": t3 - t2,
            "optimizer": t4 - t3,
            "total": t4 - t0,
            "cpu": c4 - c0,  # process CPU time, all threads (OpenMP spin-waits included)
        }


def build(args: argparse.Namespace) -> tuple[GPT, dict[str, Contender], dict[str, Any]]:
    cfg = GPTConfig(
        arch="gpt2",
        vocab_size=args.vocab_size,
        block_size=args.block_size,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
        dropout=0.0,
        bias=True,
    )
    torch.manual_seed(args.seed)
    ours = GPT(cfg)
    ours_opt = ours.configure_optimizer(args.weight_decay, args.lr, tuple(args.betas))

    from transformers import GPT2Config, GPT2LMHeadModel

    hf_cfg = GPT2Config(
        vocab_size=args.vocab_size,
        n_positions=args.block_size,
        n_embd=args.n_embd,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_inner=4 * args.n_embd,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        use_cache=False,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=None,
    )
    hf = GPT2LMHeadModel._from_config(hf_cfg, attn_implementation="sdpa")
    # the same starting weights as ours (renamed / transposed by our exporter)
    missing, unexpected = hf.load_state_dict(to_hf(ours).state_dict(), strict=False)
    hf.tie_weights()
    if [k for k in missing if k != "lm_head.weight"] or unexpected:
        raise SystemExit(f"HF layout mismatch: missing {missing}, unexpected {unexpected}")

    # the same model? (fp32, eval, one batch)
    g = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randint(args.vocab_size, (2, args.block_size), generator=g)
    ours.eval()
    hf.eval()
    with torch.no_grad():
        diff = (ours(x)[0] - hf(input_ids=x).logits).abs().max().item()
    ours.train()
    hf.train()

    # AdamW as configure_optimizer builds it (on CPU: fused=False, the default for-each choice)
    fused = ours_opt.defaults.get("fused") or False
    hf_opt = torch.optim.AdamW(
        adamw_groups(hf, args.weight_decay), lr=args.lr, betas=tuple(args.betas), eps=1e-8, fused=fused
    )

    V = args.vocab_size
    if args.hf_loss == "labels":

        def hf_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return hf(input_ids=x, labels=x).loss  # HF shifts the labels itself (T - 1 targets)
    else:

        def hf_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            logits = hf(input_ids=x).logits
            return F.cross_entropy(logits.view(-1, V), y.reshape(-1), ignore_index=-1)

    contenders = {
        "ours": Contender("ours", ours, ours_opt, lambda x, y: ours(x, y)[1], args.grad_clip),
        "hf": Contender("hf", hf, hf_opt, hf_loss, args.grad_clip),
    }
    info = {
        "model_config": cfg.to_dict(),
        "params": ours.num_params(non_embedding=False),
        "params_non_embedding": ours.num_params(),
        "hf_params": sum(p.numel() for p in hf.parameters()),
        "flops_per_token": ours.flops_per_token(),
        "hf_attn_implementation": hf.config._attn_implementation,
        "hf_loss": args.hf_loss,
        "init_logits_max_abs_diff_fp32": diff,
        "adamw": {
            "lr": args.lr,
            "betas": list(args.betas),
            "eps": 1e-8,
            "weight_decay": args.weight_decay,
            "fused": bool(fused),
            "foreach": ours_opt.defaults.get("foreach"),
        },
    }
    return ours, contenders, info


def batches(args: argparse.Namespace, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(args.seed)
    out = []
    for _ in range(n):
        chunk = torch.randint(args.vocab_size, (args.batch_size, args.block_size + 1), generator=g)
        out.append((chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()))
    return out


def summarize(steps: list[dict[str, float]], tokens_per_step: int) -> dict[str, Any]:
    tps = [tokens_per_step / s["total"] for s in steps]
    return {
        "steps_timed": len(steps),
        "tokens_per_s_median": statistics.median(tps),
        "tokens_per_s_best": max(tps),
        "tokens_per_s_worst": min(tps),
        "ms_per_step_median": 1e3 * statistics.median(s["total"] for s in steps),
        "ms_per_step_best": 1e3 * min(s["total"] for s in steps),
        "phase_ms_median": {p: 1e3 * statistics.median(s[p] for s in steps) for p in PHASES},
        "phase_ms_best": {p: 1e3 * min(s[p] for s in steps) for p in PHASES},
        "cpu_s_per_step_median": statistics.median(s["cpu"] for s in steps),
        "step_s": [round(s["total"], 5) for s in steps],
    }


def profile(
    contenders: dict[str, Contender], data: list, dtype: torch.dtype, steps: int, rows: int
) -> dict[str, list[dict[str, Any]]]:
    """torch.profiler, one step at a time, the contenders alternating: the ops with the most self
    CPU time per step (summed over the profiled steps, then divided by their number)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    self_us: dict[str, dict[str, float]] = {name: {} for name in contenders}
    calls: dict[str, dict[str, int]] = {name: {} for name in contenders}
    for i in range(steps):
        for name, c in contenders.items():
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                c.step(*data[i % len(data)], dtype)
            for e in prof.key_averages():
                self_us[name][e.key] = self_us[name].get(e.key, 0.0) + e.self_cpu_time_total
                calls[name][e.key] = calls[name].get(e.key, 0) + e.count
    out = {}
    for name, ops in self_us.items():
        total = sum(ops.values()) or 1.0
        top = sorted(ops, key=ops.get, reverse=True)[:rows]
        out[name] = [
            {
                "op": op,
                "self_cpu_ms_per_step": ops[op] / 1e3 / steps,
                "share": ops[op] / total,
                "calls_per_step": calls[name][op] / steps,
            }
            for op in top
        ]
    return out


def measure(
    contenders: dict[str, Contender], data: list, dtype: torch.dtype, args: argparse.Namespace
) -> tuple[dict[str, list[dict[str, float]]], list[float], list[float]]:
    """Warm up, then time single steps alternately (ours, hf, hf, ours, ours, hf, ...: the order
    flips every pair) so both see the same machine; the peak is sampled every --peak-every pairs."""
    names = list(contenders)
    k = 0
    for _ in range(args.warmup):
        for name in names:
            contenders[name].step(*data[k % len(data)], dtype)
        k += 1
    steps: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    ratios: list[float] = []  # per pair: hf step time / our step time
    peaks = [measure_peak_flops(torch.device("cpu"), dtype)]
    for i in range(args.steps):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            steps[name].append(contenders[name].step(*data[k % len(data)], dtype))
        k += 1
        ratios.append(steps["hf"][-1]["total"] / steps["ours"][-1]["total"])
        if (i + 1) % args.peak_every == 0 or i + 1 == args.steps:
            peaks.append(measure_peak_flops(torch.device("cpu"), dtype))
    return steps, ratios, peaks


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dtypes", default="bfloat16,float32", help="comma separated: bfloat16, float32")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per model per dtype")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per model per dtype")
    ap.add_argument("--peak-every", type=int, default=5, help="sample the matmul peak every N step pairs")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch.set_num_threads")
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.95))
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--hf-loss", choices=["labels", "external"], default="labels",
                    help="labels: GPT2LMHeadModel(labels=input_ids), HF's own loss; external: "
                    "F.cross_entropy on its logits against our targets, exactly our loss")  # fmt: skip
    ap.add_argument("--profile", choices=["auto", "always", "never"], default="auto",
                    help="torch.profiler pass; auto = when ours misses the 1.2x goal in a dtype")  # fmt: skip
    ap.add_argument("--profile-steps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--out", type=Path, default=OUT / "train_throughput.json")
    args = ap.parse_args(argv)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for d in dtypes:
        if d not in DTYPES:
            ap.error(f"unknown dtype {d!r}; expected bfloat16 or float32")
    if args.steps < 1 or args.warmup < 0 or args.peak_every < 1:
        ap.error("--steps and --peak-every must be >= 1, --warmup >= 0")

    torch.set_num_threads(args.threads)
    load_start = loadavg()
    print(
        f"torch {torch.__version__}, torch.set_num_threads({args.threads}) -> {torch.get_num_threads()} "
        f"threads; cpu: {cpu_name()} ({os.cpu_count()} logical cores); load average {load_start}"
    )
    t_start = time.perf_counter()
    ours, contenders, info = build(args)
    import transformers

    tokens_per_step = args.batch_size * args.block_size
    data = batches(args, 8)
    print(
        f"shape: n_layer={args.n_layer} n_head={args.n_head} n_embd={args.n_embd} block_size={args.block_size} "
        f"vocab={args.vocab_size} batch={args.batch_size} ({tokens_per_step} tokens/step); "
        f"{info['params'] / 1e6:.2f}M params; {info['flops_per_token'] / 1e6:.1f} MFLOP/token"
    )
    print(
        f"HF: transformers {transformers.__version__} GPT2LMHeadModel, attn_implementation="
        f"{info['hf_attn_implementation']!r}, loss={args.hf_loss}; same init weights "
        f"(fp32 logits max |diff| {info['init_logits_max_abs_diff_fp32']:.2e})"
    )

    results: dict[str, Any] = {}
    for dname in dtypes:
        t0 = time.perf_counter()
        steps, ratios, peaks = measure(contenders, data, DTYPES[dname], args)
        peak = max(peaks)  # a peak: the best sample (the others lost time to whatever else ran)
        res = {name: summarize(v, tokens_per_step) for name, v in steps.items()}
        for v in res.values():
            v["mfu_median"] = v["tokens_per_s_median"] * info["flops_per_token"] / peak
            v["mfu_best"] = v["tokens_per_s_best"] * info["flops_per_token"] / peak
        results[dname] = {
            "peak_flops": peak,
            "peak_flops_samples": peaks,
            **res,
            "ratio_of_medians": res["ours"]["tokens_per_s_median"] / res["hf"]["tokens_per_s_median"],
            "ratio_of_bests": res["ours"]["tokens_per_s_best"] / res["hf"]["tokens_per_s_best"],
            "ratio_median_of_pairs": statistics.median(ratios),
            "pair_ratios": [round(r, 4) for r in ratios],
        }
        print(
            f"  {dname}: {args.steps} step pairs in {time.perf_counter() - t0:.0f} s; median tokens/s "
            f"ours {res['ours']['tokens_per_s_median']:,.0f}, hf {res['hf']['tokens_per_s_median']:,.0f}"
        )

    # where the time goes, by op, when ours is not clearly faster
    for dname in dtypes:
        ratio = results[dname]["ratio_of_medians"]
        if args.profile == "always" or (args.profile == "auto" and ratio < 1.2):
            print(f"  profiling {dname} ({args.profile_steps} steps each, alternating) ...")
            results[dname]["profile_top_ops"] = profile(
                contenders, data, DTYPES[dname], args.profile_steps, 12
            )

    wall = time.perf_counter() - t_start
    load_end = loadavg()
    # ------------------------------------------------------------------------------------ the table
    print()
    head = (
        f"{'dtype':<9} {'model':<30} {'tok/s med':>9} {'tok/s best':>10} {'ms/step':>8} "
        f"{'fwd':>5} {'bwd':>5} {'clip':>5} {'opt':>5} {'cpu s':>6} {'MFU med':>8} {'MFU best':>8}"
    )
    print(head)
    print("-" * len(head))
    labels = {"ours": "ours GPT(gpt2)", "hf": f"HF GPT2LMHeadModel ({info['hf_attn_implementation']})"}
    for dname in dtypes:
        r = results[dname]
        for name in contenders:
            s = r[name]
            ph = s["phase_ms_median"]
            print(
                f"{dname:<9} {labels[name]:<30} {s['tokens_per_s_median']:>9,.0f} {s['tokens_per_s_best']:>10,.0f} "
                f"{s['ms_per_step_median']:>8.0f} {ph['forward']:>5.0f} {ph['backward']:>5.0f} "
                f"{ph['clip']:>5.0f} {ph['optimizer']:>5.0f} {s['cpu_s_per_step_median']:>6.2f} "
                f"{100 * s['mfu_median']:>7.1f}% {100 * s['mfu_best']:>7.1f}%"
            )
        print(
            f"{'':<9} ours/HF: {r['ratio_of_medians']:.3f}x (medians), {r['ratio_median_of_pairs']:.3f}x "
            f"(median of {len(r['pair_ratios'])} paired steps), {r['ratio_of_bests']:.3f}x (bests); goal >= 1.2x"
        )
        print(
            f"{'':<9} peak {r['peak_flops'] / 1e9:.1f} GFLOP/s: measure_peak_flops({dname}), best of "
            f"{len(r['peak_flops_samples'])} samples ({min(r['peak_flops_samples']) / 1e9:.1f} lowest)"
        )
    print(
        "tok/s med/best: median/best over the timed steps (wall clock); ms/step, fwd/bwd/clip/opt: median ms "
        "(total and each phase); cpu s: median process CPU seconds per step (all threads); MFU = tok/s x "
        f"{info['flops_per_token'] / 1e6:.1f} MFLOP/token / peak. Load average {load_start} at start, "
        f"{load_end} at end."
    )
    for dname in dtypes:
        top = results[dname].get("profile_top_ops")
        if not top:
            continue
        print(f"\ntop ops by self CPU time, {dname} (ms per step, share of the profiled time):")
        for name, ops in top.items():
            print(f"  {labels[name]}")
            for op in ops[:8]:
                print(
                    f"    {op['op'][:60]:<60} {op['self_cpu_ms_per_step']:>8.1f} ms {100 * op['share']:>5.1f}%"
                )

    report = {
        "bench": "train_throughput",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "wall_s": wall,
        "env": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "cpu": cpu_name(),
            "logical_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "loadavg_start": load_start,
            "loadavg_end": load_end,
        },
        "args": {
            k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
        },  # fmt: skip
        "tokens_per_step": tokens_per_step,
        "data": "random token ids (seeded), the same batches for both",
        **info,
        "results": results,
    }
    write_result(args.out, report, f" ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
