"""pretrain: a GPT (gpt1 / gpt2 / gpt3 architecture) trained on the tokenized mix.

Resumable: checkpoints live in checkpoints/pretrain/<run key>/ (outside the stage's output, which
DVC clears before a run), so `dvc repro` after a kill continues where it stopped. The kept ones
(``keep_checkpoints_every``) are listed with their hashes in data/pretrain/checkpoints.json, the only
place evaluate looks for them. With
`pretrain.nproc_per_node > 1` the stage relaunches itself under torchrun and trains with DDP.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch

from pipeline.config import PretrainConfig
from pipeline.errors import LineageError
from pipeline.io import write_csv
from pipeline.model.gpt import GPT, GPTConfig
from pipeline.stage import StageContext
from pipeline.stage import launch as stage_launch
from pipeline.train.checkpoint import run_key
from pipeline.train.loop import Trainer, dtype_name, measure_peak_flops, setup_distributed

# settings that do not change what is learned: a checkpoint made under other values still applies
NOT_IN_RUN_KEY = {
    "max_minutes", "resume", "log_interval", "eval_interval", "eval_windows", "checkpoint_interval", "device",
    "compile", "peak_flops", "sample_tokens", "sample_prompts", "temperature", "top_k", "top_p", "export_hf",
    "keep_checkpoints_every",
}  # fmt: skip

# the numbers `dvc exp show` compares (metrics/pretrain.json)
HEADLINE = [
    "val_loss=val/loss",
    "bpb/*=val/sources/*/bpb",
    "tokens_seen=train/tokens",
    "tok_per_s=perf/tokens_per_s",
    "mfu=perf/mfu",
]


def model_config(cfg: PretrainConfig, vocab_size: int) -> GPTConfig:
    return GPTConfig(
        arch=cfg.arch, vocab_size=vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
        n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias, window=cfg.window,
    )  # fmt: skip


def make_sampler(ctx: StageContext, tokenizer: Any, cfg: PretrainConfig, device: torch.device):
    eot = tokenizer.token_to_id("<|endoftext|>")

    def sample(model: GPT, step: int) -> str | None:
        if not cfg.sample_tokens:
            return None
        gen = torch.Generator(device=device).manual_seed(step)
        texts = []
        for prompt in cfg.sample_prompts:
            ids = tokenizer.encode(prompt).ids or [eot]
            out = model.generate(
                torch.tensor([ids], device=device), cfg.sample_tokens, temperature=cfg.temperature,
                top_k=cfg.top_k, top_p=cfg.top_p, generator=gen, eos_token=eot,
            )  # fmt: skip
            texts.append(tokenizer.decode(out[0].tolist()))
        block = f"## step {step}\n\n" + "\n\n---\n\n".join(texts) + "\n"
        if ctx.tracker is not None:
            ctx.tracker.log_text(block, f"samples/step_{step:06d}.txt")
        return block

    return sample


def body(ctx: StageContext) -> dict[str, Any]:
    from pipeline.tokenizer import load_tokenizer, open_tokens, read_meta

    cfg, seed = ctx.params.pretrain, ctx.params.common.seed
    tok_dir = ctx.input("tokenize")
    meta = read_meta(tok_dir)
    train = open_tokens(tok_dir, "train")
    val = open_tokens(tok_dir, "val") if (tok_dir / "val.bin").is_file() else None
    try:
        mcfg = model_config(cfg, meta["vocab_size"])
    except ValueError as e:
        raise LineageError(f"pretrain: {e}") from None
    sources = list(meta["sources"])
    # tokens per byte of each source's validation text; the evaluated stream includes each
    # document's end-of-text id, so those count as tokens too
    tpb = {
        s: (meta["val_tokens_per_source"][s] + meta["val_docs_per_source"][s])
        / meta["val_bytes_per_source"][s]
        for s in sources
        if meta.get("val_bytes_per_source", {}).get(s)
    }
    dist, device = setup_distributed(cfg.device)
    tokenizer = load_tokenizer(tok_dir / "tokenizer.json")
    size = str((tok_dir / "train.bin").stat().st_size)
    key = run_key(cfg, seed, NOT_IN_RUN_KEY, [tok_dir / "tokenizer.json", tok_dir / "meta.json", size])
    checkpoint = ctx.root / "checkpoints" / "pretrain" / key / "ckpt.pt"
    if dist.main:  # the run's tokenizer and shape travel with its checkpoints (`lineage checkpoints`)
        from pipeline.io import write_json

        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        (checkpoint.parent / "tokenizer.json").write_bytes((tok_dir / "tokenizer.json").read_bytes())
        write_json(checkpoint.parent / "run.json", {
            **mcfg.to_dict(), "max_steps": cfg.max_steps, "seed": seed,
            "profile": os.environ.get("LINEAGE_PROFILE") or os.environ.get("DVC_EXP_NAME") or "",
        })  # fmt: skip
    log = (lambda m, step: ctx.tracker.log_metrics(m, step=step)) if ctx.tracker else (lambda m, step: None)
    trainer = Trainer(
        mcfg, cfg, seed, train, val, sources, tpb, checkpoint, log=log,
        sample=make_sampler(ctx, tokenizer, cfg, device), dist=dist, device=device,
    )  # fmt: skip
    peak = cfg.peak_flops or measure_peak_flops(device, trainer.dtype)
    result = trainer.run(peak)
    if not dist.main:
        return result
    from pipeline.model.export import export_hf, save_model

    save_model(trainer.model, ctx.out / "model")
    (ctx.out / "hf").mkdir()  # a DVC output even when there is nothing to export
    if cfg.export_hf:
        try:
            export_hf(trainer.model, ctx.out / "hf", tok_dir / "tokenizer.json")
        except LineageError as e:  # e.g. gpt3 with biases has no exact GPT-Neo equivalent
            print(f"pretrain: Hugging Face export skipped: {e}", file=sys.stderr)
            (ctx.out / "hf" / "NOT_EXPORTED.txt").write_text(f"{e}\n")
    (ctx.out / "samples.md").write_text("\n".join(trainer.samples))
    # the kept checkpoints of this run, by hash: evaluate's curve reads these files and no others
    from pipeline.io import write_json
    from pipeline.train.checkpoint import MANIFEST, checkpoint_manifest

    write_json(ctx.out / MANIFEST, checkpoint_manifest(ctx.root, checkpoint.parent, trainer.step))
    train_rows = [
        {"step": h["step"], "loss": h["train/loss"], "lr": h["train/lr"]}
        for h in trainer.history
        if "train/loss" in h
    ]
    val_rows = [{"step": h["step"], "loss": h["val/loss"]} for h in trainer.history if "val/loss" in h]
    write_csv(ctx.out / "plots" / "train.csv", train_rows)
    write_csv(ctx.out / "plots" / "val.csv", val_rows)
    if ctx.tracker is not None:
        ctx.tracker.log_model(trainer.model, "gpt-lineage-pretrain", weights="model")
    return {
        "model": {
            "arch": cfg.arch,
            "params": trainer.model.num_params(),
            "flops_per_token": trainer.model.flops_per_token(),
        },
        "train": {
            "loss": result.get("train/loss", float("nan")),
            "steps": result["steps"],
            "tokens": result["tokens"],
        },
        "val": {
            "loss": result.get("val/loss", float("nan")),
            "sources": {
                s: {"loss": result[f"val/{s}/loss"], "bpb": result[f"val/{s}/bpb"]}
                for s in sources
                if f"val/{s}/loss" in result
            },
        },
        "perf": {
            "tokens_per_s": result.get("perf/tokens_per_s", 0.0),
            "mfu": result.get("perf/mfu", 0.0),
            "peak_flops": peak,
            "train_s": trainer.elapsed,
            "resumed_from_step": trainer.resumed_from,
            "device": str(device),
            "dtype": dtype_name(trainer.dtype),
            "world_size": dist.world_size,
        },
    }


def launch(argv: list[str] | None = None) -> int:
    return stage_launch("pretrain", body, HEADLINE, argv)


if __name__ == "__main__":
    sys.exit(launch())
