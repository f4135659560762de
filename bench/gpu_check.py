"""One check of the GPU path, end to end, through the library's own code (pipeline/model, pipeline/train,
pipeline/feedback): what a first hour on a GPU box should prove before any long run.

    python bench/gpu_check.py            # one H100/H200: sized for about 5 minutes
    python bench/gpu_check.py --tiny     # the same code paths at toy size on the CPU (the test suite's)

Everything it reads it writes itself, offline, under --work (default bench/out/gpu_check/):

1. *Corpus and tokens*: this Python's standard-library docstrings (real English prose about code),
   a byte-level BPE tokenizer trained on them (`pipeline.tokenizer`), flat token files.
2. *Pretraining* (`pipeline.train.loop.Trainer`, the pretrain stage's loop) of the GPT-2 124M shape of
   `profiles/gpt2-124m.yaml` for a few hundred steps with bf16 autocast, SDPA attention and
   `torch.compile`: tokens/s and MFU against the device's dense bf16 peak (by device name; measured
   when the name is unknown), the training and validation loss before and after. One forward and
   backward pass runs with SDPA restricted to the flash kernel, which fails unless the dense
   attention really runs on flash attention. Then the gpt1 shape (post-norm, context 512) and the
   gpt3 shape (alternating dense and banded layers, context 2048, window 256), briefly.
3. *InstructGPT at 124M* from the pretrained weights, with the sft / reward / ppo sections of the
   profile and short runs: Dolly-format demonstrations (a JSONL file, the layout of
   databricks-dolly-15k) and HH-RLHF chosen/rejected transcripts (a folder with
   ``harmless-base/train.jsonl.gz``, Anthropic/hh-rlhf's layout, opened as a local data set) go
   through the instructions stage's loaders; SFT (`SupervisedTrainer` + `lm_loss` on response
   tokens), the reward model (`reward_loss`, all pairs of a prompt in one element), then PPO
   (`PPOTrainer`: rollouts with the KV cache, KL to SFT, value model from the RM). Greedy answers
   with and without the KV cache must agree; each stage writes its model and the script reads it back.

Prints one table and writes bench/out/gpu_check.json (device, versions, every figure, each check).
Exits 1 when a check fails. ``--tiny`` compiles with the ``aot_eager`` backend (TorchDynamo's graph
capture and AOTAutograd's backward graph, no kernel generation) so that it fits in seconds on a CPU;
``--compile-backend inductor`` rehearses kernel generation too (minutes on a CPU).
"""

from __future__ import annotations

import os

# nothing outside the machine is reached: every input is written here (a GPU box may have no network)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import argparse  # noqa: E402
import contextlib
import copy
import functools
import gzip
import json
import platform
import random
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402 - after the path set-up above
import yaml  # noqa: E402

from bench.common import machine, table, write_result  # noqa: E402

# dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, per GPU
PEAK_BF16 = [
    ("H200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("GH200", 989e12),
    ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10G", 70e12), ("RTX 4090", 165e12),
]  # fmt: skip


def peak_flops(device: torch.device, dtype: torch.dtype, given: float | None) -> tuple[float, str]:
    """The bf16 peak of this device: given, from the table by name, or measured (a matmul loop)."""
    from pipeline.train.loop import measure_peak_flops

    if given:
        return given, "--peak"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in PEAK_BF16:
            if key.lower() in name.lower():
                return value, f"data sheet ({key})"
    return measure_peak_flops(device, dtype), "measured matmul peak"


def versions() -> dict[str, str]:
    import datasets
    import tokenizers
    import transformers

    out = {"torch": torch.__version__, "cuda": str(torch.version.cuda), "python": platform.python_version(),
           "transformers": transformers.__version__, "datasets": datasets.__version__,
           "tokenizers": tokenizers.__version__}  # fmt: skip
    if torch.cuda.is_available():
        out["cudnn"] = str(torch.backends.cudnn.version())
    return out


# --------------------------------------------------------------------------------------------- sizes
def sizes(tiny: bool) -> dict[str, Any]:
    """What the full check and its CPU rehearsal run: the profile's shapes, or toy ones."""
    if tiny:
        shape = {"n_layer": 2, "n_head": 2, "n_embd": 64}
        return {
            "docs": 500, "tokenizer_vocab": 600, "model_vocab": 640, "pretrain_steps": 40, "brief_steps": 8,
            "log_interval": 10, "gpt2": {**shape, "block_size": 64, "batch_size": 8, "lr": 3e-3},
            "gpt1": {**shape, "block_size": 32, "batch_size": 8, "lr": 3e-3},
            "gpt3": {**shape, "block_size": 96, "window": 16, "batch_size": 4, "lr": 3e-3},
            "demos": 160, "answer_chars": 40, "sft_steps": 8, "sft_batch": 8, "reward_steps": 6, "reward_batch": 4,
            "ppo": {"steps": 2, "rollout_prompts": 8, "minibatch_size": 4, "ppo_epochs": 1, "max_new_tokens": 8},
            "answers": 4, "max_new_tokens": 8,
        }  # fmt: skip
    return {
        "docs": None, "tokenizer_vocab": 8192, "model_vocab": None, "pretrain_steps": 300, "brief_steps": 60,
        "log_interval": 25, "gpt2": {"batch_size": 32},
        "gpt1": {"arch": "gpt1", "block_size": 512, "batch_size": 32},
        "gpt3": {"arch": "gpt3", "block_size": 2048, "window": 256, "batch_size": 8},
        "demos": 2000, "answer_chars": 200, "sft_steps": 40, "sft_batch": 32, "reward_steps": 30, "reward_batch": 16,
        "ppo": {"steps": 4, "rollout_prompts": 64, "minibatch_size": 16, "ppo_epochs": 2, "max_new_tokens": 64},
        "answers": 16, "max_new_tokens": 48,
    }  # fmt: skip


# ------------------------------------------------------------------------------------- corpus, tokens
def corpus(max_docs: int | None) -> list[tuple[str, str]]:
    """(qualified name, docstring) of the standard library, in a fixed order."""
    from pipeline.text.sources import python_docstrings

    out = []
    for key, doc in python_docstrings(80):
        out.append((key, doc))
        if max_docs and len(out) >= max_docs:
            break
    return out


def make_tokens(docs: list[tuple[str, str]], vocab: int, work: Path) -> dict[str, Any]:
    from pipeline.config import TokenizeConfig
    from pipeline.tokenizer import (
        encode_documents,
        eot_id,
        open_tokens,
        save_tokenizer,
        token_dtype,
        train_tokenizer,
        write_tokens,
    )  # fmt: skip

    texts = [d for _, d in docs]
    tok = train_tokenizer(texts, TokenizeConfig(vocab_size=vocab, max_train_bytes=None))
    save_tokenizer(tok, work / "tokenizer.json")
    n_val = max(2, len(texts) // 50)
    splits = {"val": texts[:n_val], "train": texts[n_val:]}
    out: dict[str, Any] = {"tok": tok}
    for split, part in splits.items():
        ids = encode_documents(tok, part)
        write_tokens(work / "tokens", split, ids, [0] * len(ids), tok.get_vocab_size(), eot_id=eot_id(tok))
        out[split] = open_tokens(work / "tokens", split, dtype=token_dtype(tok.get_vocab_size()))
        out[f"{split}_bytes"] = sum(len(t.encode()) for t in part)
    out["tokens_per_byte"] = out["val"].n_tokens / out["val_bytes"]
    return out


# ---------------------------------------------------------------------------------------- pretrain
def flash_check(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
    """One forward and backward pass with SDPA limited to the flash kernel (raises when it cannot run)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from pipeline.train.loop import autocast

    x = torch.randint(0, model.config.vocab_size, (2, model.config.block_size), device=device)
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), autocast(device, dtype):
            _, loss = model(x, x)
        loss.backward()
        return True, "flash"
    except RuntimeError as e:
        return False, str(e).strip().splitlines()[0][:120]
    finally:
        model.zero_grad(set_to_none=True)


def pretrain(name: str, over: dict[str, Any], steps: int, data: dict[str, Any], s: dict[str, Any],
             profile: dict[str, Any], device: torch.device, peak: float, work: Path) -> tuple[Any, dict]:  # fmt: skip
    """``steps`` optimizer steps of the pretrain loop on the profile's settings with ``over`` applied."""
    from pipeline.config import PretrainConfig
    from pipeline.model.gpt import GPTConfig
    from pipeline.train.loop import Trainer

    base = {k: v for k, v in profile["pretrain"].items() if k not in ("nproc_per_node", "peak_flops")}
    cfg = PretrainConfig(**{
        **base, "grad_accum": 1, "max_steps": steps, "warmup_steps": max(1, steps // 10),
        "log_interval": min(s["log_interval"], steps), "eval_interval": 0, "eval_windows": 16,
        "checkpoint_interval": 0, "resume": False, "device": device.type, "compile": True, **over,
    })  # fmt: skip
    vocab = s["model_vocab"] or profile["tokenize"]["vocab_size"]
    mcfg = GPTConfig(arch=cfg.arch, vocab_size=vocab, block_size=cfg.block_size, n_layer=cfg.n_layer,
                     n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias, window=cfg.window)  # fmt: skip
    trainer = Trainer(mcfg, cfg, 1337, data["train"], data["val"], ["docs"], {"docs": data["tokens_per_byte"]},
                      work / "checkpoints" / f"{name}.pt", device=device)  # fmt: skip
    out: dict[str, Any] = {"arch": cfg.arch, "params": trainer.model.num_params(), "block_size": cfg.block_size,
                           "batch_size": cfg.batch_size, "steps": steps, "dtype": str(trainer.dtype)}  # fmt: skip
    if cfg.arch != "gpt3":  # banded layers take a mask, which the flash kernel does not
        out["flash_ok"], out["flash_note"] = flash_check(trainer.model, device, trainer.dtype)
    out["val_loss_before"] = trainer.evaluate()["val/loss"]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    result = trainer.run(peak)
    out["wall_s"] = time.perf_counter() - t0
    logged = [h for h in trainer.history if "perf/tokens_per_s" in h]
    steady = logged[1:] or logged  # the first interval holds torch.compile's work
    tps = statistics.median(h["perf/tokens_per_s"] for h in steady)
    out.update({
        "tokens_per_s": tps, "mfu": tps * trainer.model.flops_per_token() / peak,
        "tokens_per_s_whole_run": result["perf/tokens_per_s"], "first_interval_s": _first_interval_s(trainer, logged),
        "train_loss_first": logged[0]["train/loss"], "train_loss_last": logged[-1]["train/loss"],
        "val_loss_after": result.get("val/loss", float("nan")), "val_bpb_after": result.get("val/docs/bpb"),
        "flops_per_token": trainer.model.flops_per_token(),
    })  # fmt: skip
    if device.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    # validation loss below the initial one, and the training loss lower in the last log interval
    # than in the first (a brief run logs once: then the validation loss alone)
    out["loss_falls"] = out["val_loss_after"] < out["val_loss_before"] and (
        len(logged) < 2 or out["train_loss_last"] < out["train_loss_first"]
    )
    out["checkpoint_written"] = (work / "checkpoints" / f"{name}.pt").is_file()
    return trainer, out


def _first_interval_s(trainer: Any, logged: list[dict]) -> float:
    """Seconds of the first log interval (compilation and warm-up), from its throughput."""
    if not logged:
        return 0.0
    tokens = logged[0]["step"] * trainer.cfg.batch_size * trainer.model_config.block_size
    return tokens / logged[0]["perf/tokens_per_s"]


# ------------------------------------------------------------------------------- real-format files
def first_sentence(doc: str, limit: int) -> str:
    text = " ".join(doc.split())
    cut = text.find(". ")
    text = text if cut < 0 else text[: cut + 1]
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0]


def write_feedback_files(docs: list[tuple[str, str]], n: int, limit: int, work: Path) -> dict[str, Path]:
    """Dolly-format demonstrations (JSONL) and HH-RLHF chosen/rejected transcripts (jsonl.gz in a
    ``harmless-base/`` folder, as the Hub repository has them), about what stdlib names do."""
    rng = random.Random(0)
    pairs = [(k, first_sentence(d, limit)) for k, d in docs if first_sentence(d, limit)]
    rng.shuffle(pairs)
    pairs = pairs[: 2 * n]
    demos, comps = pairs[:n], pairs[n:]
    dolly = work / "feedback" / "databricks-dolly-15k.jsonl"
    dolly.parent.mkdir(parents=True, exist_ok=True)
    with dolly.open("w") as fh:
        for key, answer in demos:
            row = {
                "instruction": f"What does {key} do?",
                "context": "",
                "response": answer,
                "category": "open_qa",
            }
            fh.write(json.dumps(row) + "\n")
    hh = work / "feedback" / "hh-rlhf"
    (hh / "harmless-base").mkdir(parents=True, exist_ok=True)
    with gzip.open(hh / "harmless-base" / "train.jsonl.gz", "wt") as fh:
        for i, (key, answer) in enumerate(comps):
            other = comps[(i + 1) % len(comps)][1] if i % 2 else "I don't know."
            ask = f"\n\nHuman: What does {key} do?\n\nAssistant: "
            fh.write(json.dumps({"chosen": ask + answer, "rejected": ask + other}) + "\n")
    return {"dolly": dolly, "hh": hh}


# -------------------------------------------------------------------------------------- InstructGPT
def kv_cache_agreement(
    model: Any, prompts: list[list[int]], new: int, end: int, device: torch.device
) -> float:
    """Share of greedy tokens that agree with and without the KV cache (float32, one batch)."""
    from pipeline.train.instruct import left_pad

    idx, mask = left_pad(prompts, model.config.block_size - new)
    idx, mask = idx.to(device), mask.to(device)
    was, tf32 = model.training, torch.backends.cuda.matmul.allow_tf32
    model.eval()
    torch.backends.cuda.matmul.allow_tf32 = False  # full float32: a near tie must not flip by rounding
    try:
        a = model.generate(idx, new, temperature=0, eos_token=end, attention_mask=mask, use_cache=True)
        b = model.generate(idx, new, temperature=0, eos_token=end, attention_mask=mask, use_cache=False)
    finally:
        model.train(was)
        torch.backends.cuda.matmul.allow_tf32 = tf32
    width = min(a.size(1), b.size(1))
    return (a[:, :width] == b[:, :width]).float().mean().item()


def sft(pre_dir: Path, files: dict[str, Path], chat: Any, s: dict, profile: dict, device: torch.device,
        work: Path) -> tuple[Any, list[dict], dict]:  # fmt: skip
    from pipeline.feedback.config import DemonstrationSource, SftConfig
    from pipeline.feedback.data import demonstrations, read_records
    from pipeline.model.export import load_model, save_model
    from pipeline.model.gpt import GPT, GPTConfig
    from pipeline.train.instruct import (
        encode_demonstrations,
        generate,
        sft_batch,
        shuffled_batches,
        supervised_config,
    )
    from pipeline.train.supervised import SupervisedTrainer, lm_loss

    src = DemonstrationSource(path=str(files["dolly"]), layout="dolly")
    records, origin = read_records(src, ROOT, "instructions.demonstrations")
    demos = demonstrations(records, src.layout, origin)
    cfg = SftConfig(**{**profile["sft"], "max_steps": s["sft_steps"], "batch_size": s["sft_batch"],
                       "checkpoint_interval": 0, "resume": False, "device": device.type})  # fmt: skip
    pretrained = load_model(pre_dir)
    n_val = max(2, len(demos) // 10)
    train_items, dropped = encode_demonstrations(chat, demos[n_val:], pretrained.config.block_size)
    val_items, _ = encode_demonstrations(chat, demos[:n_val], pretrained.config.block_size)
    model = GPT(GPTConfig.from_dict({**pretrained.config.to_dict(), "dropout": cfg.dropout}))
    model.load_state_dict(pretrained.state_dict())

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        total = n = 0.0
        for k in range(0, len(val_items), cfg.batch_size):
            b = {key: v.to(device) for key, v in sft_batch(val_items[k : k + cfg.batch_size]).items()}
            loss, _ = lm_loss(m, b)
            tokens = int((b["y"] != -1).sum())
            total, n = total + loss.item() * tokens, n + tokens
        return {"val/loss": total / max(n, 1)}

    trainer = SupervisedTrainer(model, lm_loss, shuffled_batches(train_items, cfg.batch_size, 0, sft_batch),
                                supervised_config(cfg), device=device, checkpoint=work / "checkpoints" / "sft.pt",
                                evaluate=evaluate)  # fmt: skip
    before = trainer.run_eval()["val/loss"]
    result = trainer.run()
    out_dir = work / "sft" / "model"
    final = GPT(pretrained.config).to(device).eval()
    final.load_state_dict(model.state_dict())
    save_model(final, out_dir)
    prompts = [chat.encode_prompt(d["messages"]) for d in demos[: s["answers"]]]
    t0 = time.perf_counter()
    answers = generate(final, prompts, s["max_new_tokens"], eos=chat.end, device=device)
    gen_s = time.perf_counter() - t0
    with (work / "sft" / "answers.jsonl").open("w") as fh:
        for d, a in zip(demos, answers, strict=False):
            fh.write(
                json.dumps({"prompt": d["messages"][-1]["content"], "answer": chat.decode_response(a)}) + "\n"
            )
    reloaded = load_model(out_dir, device)
    probe = torch.tensor([prompts[0]], device=device)
    with torch.no_grad():
        same = torch.allclose(reloaded(probe)[0].float(), final(probe)[0].float(), atol=1e-4)
    agree = kv_cache_agreement(final, prompts, s["max_new_tokens"], chat.end, device)
    return final, demos, {
        "records": len(records), "train": len(train_items), "val": len(val_items), "dropped_long": dropped,
        "steps": result["steps"], "examples_per_s": result["examples_per_s"], "train_s": result["train_s"],
        "val_loss_before": before, "val_loss_after": result["val/loss"], "loss_falls": result["val/loss"] < before,
        "answers": len(answers), "generate_s": gen_s, "kv_cache_agreement": agree,
        "outputs_ok": (out_dir / "model.safetensors").is_file() and same and (work / "sft" / "answers.jsonl").is_file(),
    }  # fmt: skip


def reward(sft_model: Any, files: dict[str, Path], chat: Any, s: dict, profile: dict, device: torch.device,
           work: Path) -> tuple[Any, dict]:  # fmt: skip
    from pipeline.feedback.config import ComparisonSource, RewardConfig
    from pipeline.feedback.data import comparisons, read_records
    from pipeline.model.reward import RewardModel, load_reward_model, save_reward_model, tokenizer_sha256
    from pipeline.train.instruct import (
        ranked_group,
        ranking_metrics,
        reward_batch,
        reward_loss,
        score_groups,
        shuffled_batches,
        supervised_config,
    )  # fmt: skip
    from pipeline.train.supervised import SupervisedTrainer

    # the HH folder as a user keeps a download of Anthropic/hh-rlhf: opened as a local data set
    src = ComparisonSource(dataset=str(files["hh"]), layout="chosen_rejected")
    records, origin = read_records(src, ROOT, "instructions.comparisons")
    rows = comparisons(records, src.layout, origin)
    block = sft_model.config.block_size
    groups = [g for r in rows if (g := ranked_group(chat, r["messages"], r["responses"], r["ranks"], block))]
    n_val = max(2, len(groups) // 5)
    val_groups, train_groups = groups[:n_val], groups[n_val:]
    cfg = RewardConfig(**{**profile["reward"], "max_steps": s["reward_steps"], "batch_size": s["reward_batch"],
                          "checkpoint_interval": 0, "resume": False, "device": device.type})  # fmt: skip
    torch.manual_seed(0)
    model = RewardModel(copy.deepcopy(sft_model).train())

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        got = ranking_metrics(
            score_groups(m, val_groups, cfg.batch_size, device), [g["ranks"] for g in val_groups]
        )
        return {"val/pair_acc": got["pair_acc"]}

    trainer = SupervisedTrainer(model, reward_loss, shuffled_batches(train_groups, cfg.batch_size, 0, reward_batch),
                                supervised_config(cfg), device=device, checkpoint=work / "checkpoints" / "reward.pt",
                                evaluate=evaluate)  # fmt: skip
    before = trainer.run_eval()["val/pair_acc"]
    result = trainer.run()
    model.eval()
    sha = tokenizer_sha256(work / "tokenizer.json")
    save_reward_model(model, work / "reward" / "model", sha, {"bias_shift": 0.0})
    back = load_reward_model(work / "reward" / "model", sha, device)
    r1 = score_groups(model, val_groups[:4], 4, device)
    r2 = score_groups(back, val_groups[:4], 4, device)
    same = all(abs(a - b) < 1e-3 for x, y in zip(r1, r2, strict=True) for a, b in zip(x, y, strict=True))
    return model, {
        "records": len(records), "train": len(train_groups), "val": len(val_groups), "steps": result["steps"],
        "examples_per_s": result["examples_per_s"], "train_s": result["train_s"],
        "train_loss_last": result["train/loss"], "val_pair_acc_before": before, "val_pair_acc_after": result["val/pair_acc"],
        "outputs_ok": same,
    }  # fmt: skip


def ppo(sft_model: Any, rm: Any, demos: list[dict], chat: Any, s: dict, profile: dict, device: torch.device,
        work: Path) -> dict:  # fmt: skip
    from pipeline.feedback.config import PpoConfig
    from pipeline.model.export import load_model
    from pipeline.train.ppo import PPOTrainer, ValueModel, sample_and_score

    prompts = [chat.encode_prompt(d["messages"]) for d in demos]
    val_prompts, train_prompts = prompts[: s["answers"]], prompts[s["answers"] :]
    cfg = PpoConfig(**{**profile["ppo"], **s["ppo"], "eval_interval": 0, "checkpoint_interval": 0, "resume": False,
                       "ptx_coef": 0.0, "device": device.type})  # fmt: skip

    def evaluate(t: PPOTrainer) -> dict[str, float]:
        got = sample_and_score(t.eval_model, t.ref, t.reward, val_prompts, cfg.max_new_tokens, chat.end,
                               temperature=0.0, seed=0)  # fmt: skip
        return {"val/rm_score": sum(got["rm"]) / len(got["rm"]), "val/kl": sum(got["kl"]) / len(got["kl"])}

    trainer = PPOTrainer(
        copy.deepcopy(sft_model), ValueModel.from_reward_model(rm), rm, train_prompts, chat.end, cfg, seed=0,
        device=device, checkpoint=work / "checkpoints" / "ppo.pt", evaluate=evaluate, select="val/rm_score",
        best_dir=work / "ppo" / "best",
    )  # fmt: skip
    result = trainer.run()
    hist = trainer.history
    step_s = sum(h["perf/step_s"] for h in hist)
    gen_s = sum(h["perf/generate_s"] for h in hist)
    best_ok = (work / "ppo" / "best" / "model.safetensors").is_file() and load_model(
        work / "ppo" / "best"
    ) is not None
    return {
        "steps": result["steps"], "train_s": result["train_s"], "step_s_mean": step_s / len(hist),
        "episodes_per_s": cfg.rollout_prompts * len(hist) / step_s, "generate_share": gen_s / step_s,
        "response_length": statistics.mean(h["response/length"] for h in hist),
        "kl_last": hist[-1]["objective/kl"], "rm_score_last": hist[-1]["objective/rm_score"],
        "val_rm_score": [e["val/rm_score"] for e in trainer.evals], "dtype": cfg.dtype,
        "finite": all(v == v for h in hist for v in h.values()),
        "outputs_ok": best_ok and (work / "checkpoints" / "ppo.pt").is_file(),
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="toy sizes on the CPU: the rehearsal the tests run")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "gpu_check", help="scratch folder")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "gpu_check.json")
    ap.add_argument("--steps", type=int, help="pretraining steps of the GPT-2 shape (default 300; tiny 40)")
    ap.add_argument("--peak", type=float, help="bf16 peak FLOP/s per device (default: by device name)")
    ap.add_argument("--compile-backend", help="torch.compile backend (default inductor; tiny aot_eager)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["gpt1", "gpt3", "instruct"])
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    s = sizes(args.tiny)
    if args.steps:
        s["pretrain_steps"] = args.steps
    device = torch.device("cpu") if args.tiny else torch.device("cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        why = (
            f"torch {torch.__version__} is a CPU build; install torch's CUDA wheel"
            if torch.version.cuda is None and torch.version.hip is None
            else "no CUDA device"
        )
        print(f"gpu_check: {why}; run it on a GPU, or rehearse on the CPU with --tiny", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    backend = args.compile_backend or ("aot_eager" if args.tiny else "inductor")
    if backend != "inductor":  # the loop calls torch.compile(model): give it this backend
        torch.compile = functools.partial(torch.compile, backend=backend)
    import datasets

    datasets.disable_progress_bars()
    profile = yaml.safe_load((ROOT / "profiles" / "gpt2-124m.yaml").read_text())
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    torch.manual_seed(0)

    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "tiny": args.tiny, "compile_backend": backend, "versions": versions(), "machine": machine(),
    }  # fmt: skip
    peak, peak_source = peak_flops(device, torch.bfloat16, args.peak)
    report.update(peak_flops=peak, peak_source=peak_source)
    t0 = time.perf_counter()
    docs = corpus(s["docs"])
    data = make_tokens(docs, s["tokenizer_vocab"], work)
    report["data"] = {"docs": len(docs), "train_tokens": data["train"].n_tokens, "val_tokens": data["val"].n_tokens,
                      "tokenizer_vocab": data["tok"].get_vocab_size(), "prepare_s": time.perf_counter() - t0}  # fmt: skip

    pre: dict[str, Any] = {}
    trainer, pre["gpt2"] = pretrain(
        "gpt2", s["gpt2"], s["pretrain_steps"], data, s, profile, device, peak, work
    )
    from pipeline.model.export import save_model

    save_model(trainer.model, work / "pretrain" / "model")
    gpt2_model = trainer.model
    del trainer
    for arch in ("gpt1", "gpt3"):
        if arch not in args.skip:
            over = {"arch": arch, **s[arch]}
            t, pre[arch] = pretrain(arch, over, s["brief_steps"], data, s, profile, device, peak, work)
            del t
    report["pretrain"] = pre
    if device.type == "cuda":
        torch.cuda.empty_cache()

    if "instruct" not in args.skip:
        from pipeline.feedback.chat import ChatTokens

        del gpt2_model
        chat = ChatTokens(data["tok"], str(work / "tokenizer.json"))
        files = write_feedback_files(docs, s["demos"], s["answer_chars"], work)
        sft_model, demos, report["sft"] = sft(
            work / "pretrain" / "model", files, chat, s, profile, device, work
        )
        rm, report["reward"] = reward(sft_model, files, chat, s, profile, device, work)
        report["ppo"] = ppo(sft_model, rm, demos, chat, s, profile, device, work)
    report["wall_s"] = time.perf_counter() - t_start
    report["checks"] = checks(report)
    print_table(report)
    write_result(args.out, report)
    failed = [k for k, ok in report["checks"].items() if not ok]
    if failed:
        print(f"gpu_check: FAILED {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def checks(r: dict[str, Any]) -> dict[str, bool]:
    out = {}
    for arch, p in r["pretrain"].items():
        out[f"pretrain/{arch}/loss_falls"] = bool(p["loss_falls"])
        out[f"pretrain/{arch}/checkpoint"] = bool(p["checkpoint_written"])
        if "flash_ok" in p:
            out[f"pretrain/{arch}/flash_attention"] = bool(p["flash_ok"])
    if "sft" in r:
        out["sft/loss_falls"] = bool(r["sft"]["loss_falls"])
        out["sft/kv_cache_agrees"] = r["sft"]["kv_cache_agreement"] >= 0.9
        out["sft/outputs"] = bool(r["sft"]["outputs_ok"])
        out["reward/outputs"] = bool(r["reward"]["outputs_ok"])
        out["ppo/finite"] = bool(r["ppo"]["finite"])
        out["ppo/outputs"] = bool(r["ppo"]["outputs_ok"])
    return out


def _f(x: Any, spec: str = ".3g") -> str:
    return "" if x is None else format(x, spec)


def print_table(r: dict[str, Any]) -> None:
    print(f"\ngpu_check on {r['device']} (torch {r['versions']['torch']}, compile backend {r['compile_backend']}; "
          f"peak {r['peak_flops'] / 1e12:.3g} TFLOP/s bf16, {r['peak_source']})\n")  # fmt: skip
    rows = []
    for arch, p in r["pretrain"].items():
        rows.append([f"pretrain {arch} ({p['params'] / 1e6:.3g}M, T={p['block_size']})", p["steps"],
                     f"{p['tokens_per_s']:,.0f} tok/s", f"{100 * p['mfu']:.1f}%",
                     f"val {p['val_loss_before']:.2f} -> {p['val_loss_after']:.2f}", f"{p['wall_s']:.0f}",
                     p.get("flash_note", "banded: masked SDPA")])  # fmt: skip
    if "sft" in r:
        q = r["sft"]
        rows.append(["sft (Dolly JSONL)", q["steps"], f"{q['examples_per_s']:,.1f} ex/s", "",
                     f"val {q['val_loss_before']:.2f} -> {q['val_loss_after']:.2f}", f"{q['train_s']:.0f}",
                     f"KV cache agrees {100 * q['kv_cache_agreement']:.0f}%"])  # fmt: skip
        q = r["reward"]
        rows.append(["reward (HH folder)", q["steps"], f"{q['examples_per_s']:,.1f} prompts/s", "",
                     f"pair acc {q['val_pair_acc_before']:.2f} -> {q['val_pair_acc_after']:.2f}", f"{q['train_s']:.0f}",
                     f"{q['train']} train / {q['val']} val"])  # fmt: skip
        q = r["ppo"]
        rows.append(["ppo", q["steps"], f"{q['episodes_per_s']:,.1f} episodes/s", "",
                     f"KL {q['kl_last']:.3f}, RM {q['rm_score_last']:.2f}", f"{q['train_s']:.0f}",
                     f"generation {100 * q['generate_share']:.0f}% of a step"])  # fmt: skip
    print(table(["part", "steps", "throughput", "MFU", "loss / quality", "s", "note"], rows))
    failed = [k for k, ok in r["checks"].items() if not ok]
    print(f"\nchecks: {len(r['checks']) - len(failed)}/{len(r['checks'])} passed"
          + (f"; FAILED: {', '.join(failed)}" if failed else "") + f"; {r['wall_s']:.0f} s in all")  # fmt: skip


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
