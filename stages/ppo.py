"""ppo: InstructGPT's reinforcement learning step (pipeline/train/ppo.py): the SFT policy trained with
PPO against the reward model, a per-token KL penalty to the frozen SFT model, the value model
initialised from the RM, and for PPO-ptx the pretraining LM loss mixed in (``ppo.ptx_coef``).

The simulated labeler is the gold judge no model trains on. Every ``eval_interval`` steps the policy
answers a validation subset of the eval split (sampled, temperature 1): its gold score, its RM score
and its KL to SFT trace the over-optimisation curve (Gao et al. 2022), and the weights with the best
gold score are kept, not the last ones. The rest of the eval split is the test set: labeler win rate
of PPO against SFT and of SFT against the few-shot pretrained model (from data/sft/eval.jsonl), each
with a bootstrap 95% interval, greedy and sampled; RM score, KL and exact match per family. The
alignment tax is the pretraining validation loss and bits per byte on a fixed subset of
data/tokenize/val.bin before (pretrained and SFT models) and after (the kept policy), and the
zero-shot accuracy of the same models on the evaluate stage's tasks (data/evaluate/tasks).

Writes ``model/`` (the kept policy: safetensors + config.json + chat.json), ``eval.jsonl``,
``samples.md`` and ``plots/``. Resumable from checkpoints/ppo/<run key>/.
"""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path
from typing import Any

from pipeline.errors import LineageError
from pipeline.stage import StageContext, main
from pipeline.train.checkpoint import record_run, run_key

HEADLINE = [
    "ppo_win_rate=eval/greedy/win_rate/ppo_vs_sft/value", "ppo_win_rate_sampled=eval/sampled/win_rate/ppo_vs_sft/value",
    "sft_vs_fewshot=eval/sft_vs_fewshot/value", "ppo_gold=eval/greedy/ppo/score", "ppo_sft_gold=eval/greedy/sft/score",
    "ppo_rm=eval/sampled/ppo/rm_score", "ppo_kl=eval/sampled/ppo/kl", "ppo_best_step=overoptimisation/best/step",
    "ppo_tax_loss=tax/delta_vs_sft/loss", "ppo_tax_bpb=tax/delta_vs_sft/bpb", "ppo_gen_share=perf/generate_share",
    "ppo_last_win_rate=eval/greedy/win_rate/last_vs_sft/value", "ppo_tax_zeroshot=tax/zeroshot/delta_vs_sft",
]  # fmt: skip
# settings that change neither the trained weights nor which ones are kept (val_prompts does: it picks them)
NOT_IN_RUN_KEY = {"eval_interval", "checkpoint_interval", "resume", "device", "test_prompts", "tax_windows"}


def body(ctx: StageContext) -> dict[str, Any]:
    import torch

    from pipeline.eval.inputs import check_vocab
    from pipeline.feedback.chat import ChatTokens
    from pipeline.feedback.data import read_jsonl, read_split, samples_md
    from pipeline.feedback.labeler import judge, summarize
    from pipeline.io import read_json, write_csv
    from pipeline.model.export import load_model, save_model
    from pipeline.model.reward import check_tokenizer, load_reward_model, tokenizer_sha256
    from pipeline.progress import Phases, Progress
    from pipeline.tokenizer import load_tokenizer, open_tokens, read_meta
    from pipeline.train.data import TrainBatches
    from pipeline.train.loop import device_for, dtype_name
    from pipeline.train.ppo import PPOTrainer, ValueModel, lm_loss_on, sample_and_score, spread_windows

    cfg, seed = ctx.params.ppo, ctx.params.common.seed
    run_seed = seed if cfg.seed is None else cfg.seed  # training randomness; evaluation stays on seed
    tok_dir = ctx.input("tokenize")
    tok_file = tok_dir / "tokenizer.json"
    sha = tokenizer_sha256(tok_file)
    chat = ChatTokens(load_tokenizer(tok_file), str(tok_file))
    sft_dir, rm_dir, pre_dir = (
        ctx.input("sft", "model"),
        ctx.input("reward", "model"),
        ctx.input("pretrain", "model"),
    )
    sft_sha = read_json(sft_dir / "chat.json", ("tokenizer_sha256",))["tokenizer_sha256"]
    rm_sha = read_json(rm_dir / "reward.json", ("tokenizer_sha256",))["tokenizer_sha256"]
    if sft_sha != rm_sha:
        raise LineageError(
            f"{rm_dir}: the reward model was built on another tokenizer than the policy {sft_dir} "
            f"(sha256 {str(rm_sha)[:12]} vs {str(sft_sha)[:12]}); rerun `dvc repro reward` so both share one"
        )
    check_tokenizer(sft_sha, sha, str(sft_dir))
    device = device_for(cfg.device)
    policy = load_model(sft_dir)
    check_vocab(policy.config.vocab_size, chat.tok, str(sft_dir))
    rm = load_reward_model(rm_dir, sha)
    if rm.config.vocab_size != policy.config.vocab_size or rm.config.block_size != policy.config.block_size:
        raise LineageError(
            f"{rm_dir}: the reward model's vocabulary or context differs from the policy's in {sft_dir}"
        )
    pretrained = load_model(pre_dir)
    block = policy.config.block_size

    inst = ctx.input("instructions")
    train_ex = read_split(inst, "ppo")
    if not train_ex:
        raise LineageError("data/instructions/ppo.jsonl: no prompts; raise instructions.sizes.ppo")
    held_out = read_split(inst, "eval")
    order = list(range(len(held_out)))
    random.Random(f"{seed}/ppo-val").shuffle(order)
    n_val = min(cfg.val_prompts, len(held_out) - 1)
    if n_val < 1:
        raise LineageError("data/instructions/eval.jsonl: needs at least 2 prompts (validation + test)")
    val_ex = [held_out[i] for i in sorted(order[:n_val])]
    test_ex = [
        held_out[i] for i in sorted(order[n_val:][: cfg.test_prompts])
    ]  # a random subset, every family
    prompts = [chat.encode_prompt(ex["messages"]) for ex in train_ex]
    val_prompts = [chat.encode_prompt(ex["messages"]) for ex in val_ex]
    test_prompts = [chat.encode_prompt(ex["messages"]) for ex in test_ex]

    meta = read_meta(tok_dir)
    ptx = None
    if cfg.ptx_coef > 0:
        batches = TrainBatches(open_tokens(tok_dir, "train"), block, cfg.ptx_batch_size, run_seed)
        ptx = lambda u: batches.get(u, 0)  # noqa: E731
    inputs = [sft_dir / "model.safetensors", rm_dir / "model.safetensors", rm_dir / "reward_head.safetensors",
              tok_file, inst / "ppo.jsonl", inst / "eval.jsonl"]  # fmt: skip
    key = run_key(ctx.params.ppo, ctx.params.common.seed, NOT_IN_RUN_KEY, inputs)
    ckpt_dir = ctx.root / "checkpoints" / "ppo" / key
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    record_run(ckpt_dir, ctx.params.ppo, ctx.params.common.seed, NOT_IN_RUN_KEY)

    def validate(tr: PPOTrainer) -> dict[str, float]:
        got = sample_and_score(tr.eval_model, tr.ref, tr.reward, val_prompts, cfg.max_new_tokens, chat.end,
                               temperature=1.0, seed=seed + 1)  # fmt: skip
        js = [judge(ex, chat.decode_response(ids)) for ex, ids in zip(val_ex, got["ids"], strict=True)]
        # valid/: the validation curve, apart from TRL's val/ (value-model and ratio statistics)
        return {"valid/gold_score": _mean([j.score for j in js]), "valid/exact": _mean([float(j.exact) for j in js]),
                "valid/rm_score": _mean(got["rm"]), "valid/kl": _mean(got["kl"]),
                "valid/end_rate": _mean([float(e) for e in got["ended"]]),
                "valid/length": _mean([float(len(i)) for i in got["ids"]])}  # fmt: skip

    bar = Progress(cfg.steps, f"ppo ({cfg.dtype})", "steps")

    def progress(step: int, m: dict[str, float]) -> None:
        bar.update(1, reward=m["objective/rlhf_reward"], kl=m["objective/kl"])

    log = (lambda m, step: ctx.tracker.log_metrics(m, step=step)) if ctx.tracker else None
    trainer = PPOTrainer(
        policy, ValueModel.from_reward_model(rm), rm, prompts, chat.end, cfg, seed=run_seed, device=device, ptx=ptx,
        checkpoint=ckpt_dir / "ckpt.pt", evaluate=validate, best_dir=ckpt_dir / "best", log=log, progress=progress,
    )  # fmt: skip
    if trainer.resumed_from > 0:
        bar.update(trainer.resumed_from)
    try:
        result = trainer.run()
    finally:
        bar.close()

    # the kept policy: the best validation gold score (the last weights only if never validated)
    best_dir = ckpt_dir / "best"
    final = (
        load_model(best_dir, device)
        if trainer.best["step"] >= 0 and best_dir.is_dir()
        else trainer.eval_model
    )
    final.eval()
    sft = trainer.ref
    # when the kept weights are the last ones, they are scored once and their figures serve both
    kept_is_last = final is trainer.eval_model or trainer.best["step"] == trainer.step

    # test prompts: PPO against SFT, greedy and sampled, with the same code path for both models; the
    # last weights too (greedy), to show what keeping the best-validation ones saved
    last_model = trainer.eval_model.eval()
    ev: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    tasks_dir = ctx.root / "data" / "evaluate" / "tasks"
    phases = Phases("ppo: final evaluation", 4 if tasks_dir.is_dir() else 3)
    for mode, temp in (("greedy", 0.0), ("sampled", 1.0)):
        phases.next(f"{mode} answers to {len(test_prompts)} test prompts")
        models = (("ppo", final), ("sft", sft)) + (
            (("last", last_model),) if mode == "greedy" and not kept_is_last else ()
        )
        runs = {
            name: sample_and_score(
                m,
                sft,
                trainer.reward,
                test_prompts,
                cfg.max_new_tokens,
                chat.end,
                temperature=temp,
                seed=seed + 2,
            )  # fmt: skip
            for name, m in models
        }
        if mode == "greedy" and kept_is_last:
            runs["last"] = runs["ppo"]
        texts = {n: [chat.decode_response(i) for i in r["ids"]] for n, r in runs.items()}
        judged = {n: [judge(ex, t) for ex, t in zip(test_ex, texts[n], strict=True)] for n in runs}
        block_ = {}
        for n, r in runs.items():
            block_[n] = {**summarize(test_ex, judged[n]), "rm_score": _mean(r["rm"]), "kl": _mean(r["kl"]),
                         "length": _mean([float(len(i)) for i in r["ids"]])}  # fmt: skip
        block_["win_rate"] = {"ppo_vs_sft": win_rate([j.score for j in judged["ppo"]], [j.score for j in judged["sft"]],
                                                     seed)}  # fmt: skip
        if "last" in judged:
            block_["win_rate"]["last_vs_sft"] = win_rate(
                [j.score for j in judged["last"]], [j.score for j in judged["sft"]], seed
            )
        block_["win_rate"]["families"] = {
            f: win_rate([j.score for ex, j in zip(test_ex, judged["ppo"], strict=True) if ex["family"] == f],
                        [j.score for ex, j in zip(test_ex, judged["sft"], strict=True) if ex["family"] == f], seed)["value"]
            for f in sorted({ex["family"] for ex in test_ex})
        }  # fmt: skip
        ev[mode] = block_
        if mode == "greedy":
            rows = [{"id": ex["id"], "family": ex["family"], "ppo": a, "sft": b, "ppo_score": ja.score,
                     "sft_score": jb.score, "ppo_rm": ra, "sft_rm": rb}
                    for ex, a, b, ja, jb, ra, rb in zip(test_ex, texts["ppo"], texts["sft"], judged["ppo"],
                                                        judged["sft"], runs["ppo"]["rm"], runs["sft"]["rm"],
                                                        strict=True)]  # fmt: skip
    # SFT against the few-shot pretrained model: the answers the sft stage wrote, on the same test prompts
    sft_rows = {r["id"]: r for r in read_jsonl(ctx.input("sft", "eval.jsonl"), ("id", "response", "fewshot"))}
    pairs = [(judge(ex, sft_rows[ex["id"]]["response"]).score, judge(ex, sft_rows[ex["id"]]["fewshot"]).score)
             for ex in test_ex if ex["id"] in sft_rows]  # fmt: skip
    ev["sft_vs_fewshot"] = win_rate([a for a, _ in pairs], [b for _, b in pairs], seed) if pairs else {}

    # alignment tax: pretraining validation loss and bits per byte, before and after
    phases.next("alignment tax: validation loss")
    val = open_tokens(tok_dir, "val")
    windows = spread_windows(val.tokens, block, cfg.tax_windows)
    srcs = list(meta.get("val_bytes_per_source", {}))
    n_bytes = sum(meta["val_bytes_per_source"][s] for s in srcs)
    tpb = (sum(meta["val_tokens_per_source"][s] + meta["val_docs_per_source"][s] for s in srcs) / n_bytes
           if n_bytes else float("nan"))  # fmt: skip
    tax: dict[str, Any] = {"windows": len(windows), "tokens": len(windows) * block}
    scored = (("pretrain", pretrained.to(device)), ("sft", sft), ("ppo", final)) + (
        () if kept_is_last else (("last", last_model),)
    )
    for name, m in scored:
        loss = lm_loss_on(m, windows)
        tax[name] = {"loss": loss, "bpb": loss / math.log(2) * tpb}
    if kept_is_last:
        tax["last"] = tax["ppo"]
    for base in ("sft", "pretrain"):
        tax[f"delta_vs_{base}"] = {k: tax["ppo"][k] - tax[base][k] for k in ("loss", "bpb")}
    tax["last_delta_vs_sft"] = {k: tax["last"][k] - tax["sft"][k] for k in ("loss", "bpb")}
    # the evaluate stage's tasks, zero-shot, before and after (InstructGPT's alignment tax on public
    # tasks), where that stage has written them
    if tasks_dir.is_dir():
        phases.next("alignment tax: zero-shot tasks")
        tax["zeroshot"] = zeroshot_tax(scored, tasks_dir, chat.tok, device, kept_is_last)
    phases.close()

    # the over-optimisation curve: gold and RM score against KL, at every validation
    evals = trainer.evals
    best = next((e for e in evals if e["step"] == trainer.best["step"]), evals[-1] if evals else {})
    last = evals[-1] if evals else {}

    def point(e: dict[str, float]) -> dict[str, float]:
        return {"step": e.get("step", -1), "gold": e.get("valid/gold_score", float("nan")),
                "rm": e.get("valid/rm_score", float("nan")), "kl": e.get("valid/kl", float("nan")),
                "exact": e.get("valid/exact", float("nan"))}  # fmt: skip

    save_model(final, ctx.out / "model")
    (ctx.out / "model" / "chat.json").write_text(
        json.dumps({"tokenizer_sha256": sha, "end_id": chat.end, "source": "ppo"}, indent=2) + "\n"
    )
    with (ctx.out / "eval.jsonl").open("w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    (ctx.out / "samples.md").write_text(samples_md(
        "PPO and SFT answers on held-out test prompts (greedy), with the labeler's scores", test_ex,
        [[f"ppo ({r['ppo_score']:.3f}): {r['ppo']!r}", f"sft ({r['sft_score']:.3f}): {r['sft']!r}"] for r in rows],
    ))  # fmt: skip
    hist = trainer.history
    write_csv(ctx.out / "plots" / "train.csv", [
        {"step": h["step"], "kl": round(h["objective/kl"], 5), "rlhf_reward": round(h["objective/rlhf_reward"], 5),
         "scores": round(h["objective/scores"], 5), "entropy": round(h["objective/entropy"], 5),
         "length": round(h["response/length"], 3), "end_rate": round(h["response/end_rate"], 4),
         "kl_coef": h["objective/kl_coef"], "clipfrac": round(h["policy/clipfrac_avg"], 5),
         "approxkl": round(h["policy/approxkl_avg"], 6), "ratio": round(h["val/ratio"], 6),
         "policy_loss": round(h["loss/policy_avg"], 6), "value_loss": round(h["loss/value_avg"], 6),
         "ptx_loss": round(h.get("loss/ptx_avg", float("nan")), 6)}
        for h in hist
    ])  # fmt: skip
    # in order of KL, the x axis of the over-optimisation plots (the step column keeps the time order)
    write_csv(ctx.out / "plots" / "val.csv", [
        {k: round(v, 5) if isinstance(v, float) else v for k, v in point(e).items()}
        for e in sorted(evals, key=lambda e: (e.get("valid/kl", 0.0), e["step"]))
    ])  # fmt: skip
    write_csv(ctx.out / "plots" / "families.csv", [
        {"family": f, "model": n, "exact": round(ev["greedy"][n]["families"][f]["exact"]["value"], 4),
         "score": round(ev["greedy"][n]["families"][f]["score"], 4)}
        for n in ("ppo", "sft") for f in ev["greedy"][n]["families"]
    ])  # fmt: skip
    if ctx.tracker is not None:
        ctx.tracker.log_metrics({"final/ppo/win_rate": ev["greedy"]["win_rate"]["ppo_vs_sft"]["value"],
                                 "final/ppo/score": ev["greedy"]["ppo"]["score"]})  # fmt: skip
        ctx.tracker.log_model(final, "gpt-lineage-ppo")
    steps = [h["perf/step_s"] for h in hist]
    gens = [h["perf/generate_s"] for h in hist]
    last_train = hist[-1] if hist else {}
    return {
        "variant": "ppo-ptx" if cfg.ptx_coef > 0 else "ppo",
        "model": {"params": final.num_params(), "block_size": block, "ptx_coef": cfg.ptx_coef, "kl_coef": cfg.kl_coef},
        "data": {"prompts": len(prompts), "val_prompts": len(val_ex), "test_prompts": len(test_ex),
                 "episodes": len(hist) * cfg.rollout_prompts},
        "train": {**_nest({k: v for k, v in last_train.items() if k != "step" and not k.startswith("perf/")}),
                  "steps": result["steps"]},
        "overoptimisation": {"sft": point(evals[0]) if evals else {}, "best": point(best), "last": point(last)},
        "eval": ev,
        "tax": tax,
        "perf": {"train_s": result["train_s"], "step_s": _mean(steps), "generate_s": _mean(gens),
                 "generate_share": sum(gens) / sum(steps) if steps else 0.0,
                 "resumed_from_step": trainer.resumed_from, "device": str(device),
                 "dtype": dtype_name(trainer.dtype), "threads": torch.get_num_threads()},
    }  # fmt: skip


def win_rate(a: list[float], b: list[float], seed: int, iters: int = 2000) -> dict[str, float]:
    """How often the labeler prefers ``a`` over ``b`` on the same prompt (a tie counts half), with a
    percentile bootstrap 95% interval over prompts."""
    import numpy as np

    if not a:
        return {"value": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    x, y = np.asarray(a), np.asarray(b)
    points = np.where(np.abs(x - y) < 1e-9, 0.5, (x > y).astype(float))
    idx = np.random.default_rng(seed).integers(0, len(points), (iters, len(points)))
    boot = points[idx].mean(1)
    return {"value": float(points.mean()), "low": float(np.quantile(boot, 0.025)),
            "high": float(np.quantile(boot, 0.975)), "wins": int((points == 1).sum()),
            "ties": int((points == 0.5).sum()), "losses": int((points == 0).sum()), "n": len(points)}  # fmt: skip


def zeroshot_tax(models: Any, tasks_dir: Path, tok: Any, device: Any, kept_is_last: bool) -> dict[str, Any]:
    """Zero-shot accuracy of each (name, model) on every task folder under ``tasks_dir`` (the
    evaluate stage's test items, scored by lm-eval's rules), their mean over tasks, and PPO - SFT."""
    from pipeline.eval.inputs import text_encoder
    from pipeline.eval.scoring import read_task_dir, task_accuracy
    from pipeline.tokenizer import eot_id

    encode, eot = text_encoder(tok), eot_id(tok)
    tasks = {}
    for d in sorted(p for p in tasks_dir.iterdir() if p.is_dir()):
        kind, _, test = read_task_dir(d)
        tasks[d.name] = {"kind": kind, "test": test}
    if not tasks:
        return {}
    acc = {name: {t: task_accuracy(m, encode, eot, task, 64, device) for t, task in tasks.items()}
           for name, m in models}  # fmt: skip
    if kept_is_last:
        acc["last"] = acc["ppo"]
    mean = {name: sum(a.values()) / len(a) for name, a in acc.items()}
    return {"items": {t: len(task["test"]) for t, task in tasks.items()},
            "tasks": {t: {name: acc[name][t] for name in acc} for t in tasks},
            "mean": mean, "delta_vs_sft": mean["ppo"] - mean["sft"],
            "last_delta_vs_sft": mean["last"] - mean["sft"]}  # fmt: skip


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _nest(flat: dict[str, float]) -> dict[str, Any]:
    """``{"objective/kl": 1}`` -> ``{"objective": {"kl": 1}}``."""
    out: dict[str, Any] = {}
    for k, v in flat.items():
        node = out
        *parents, leaf = k.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


if __name__ == "__main__":
    sys.exit(main("ppo", body, headline=HEADLINE))
