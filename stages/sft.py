"""sft: InstructGPT's supervised fine-tuning of the pretrained model on the demonstrations of the SFT
split (loss on response tokens only), with dropout (``sft.dropout``, one rate for embeddings,
attention and residual branches), cosine lr and several epochs, in the
one supervised loop (pipeline/train/supervised.py).

The weights kept are those of the evaluation with the best validation loss (a held-out slice of the
SFT split). Each evaluation also answers held-out prompts greedily and logs the labeler's score and
the exact-match rate per family; at the end every prompt of the eval split is answered by the SFT
model and by the pretrained model prompted few-shot, the baseline, each with 95% intervals.
Writes ``model/`` (safetensors + config.json + chat.json), ``eval.jsonl`` (every answer and its
judgement), ``samples.md`` and ``plots/``. Resumable from checkpoints/sft/<run key>/.
"""

from __future__ import annotations

import json
import random
import sys
from typing import Any

from pipeline.errors import LineageError
from pipeline.stage import StageContext, launch
from pipeline.train.checkpoint import record_run, run_key

HEADLINE = [
    "sft_exact=eval/sft/exact/value", "sft_score=eval/sft/score", "fewshot_exact=eval/fewshot/exact/value",
    "fewshot_score=eval/fewshot/score", "sft_val_loss=val/best_loss", "sft_train_loss=train/loss",
    "sft_ended=eval/sft/ended", "sft_harmless=eval/sft/harmless", "sft_honest=eval/sft/honest",
]  # fmt: skip
NOT_IN_RUN_KEY = {"eval_interval", "checkpoint_interval", "resume", "device", "eval_prompts", "fewshot"}


def body(ctx: StageContext) -> dict[str, Any]:
    import torch

    from pipeline.eval.inputs import check_vocab
    from pipeline.feedback.chat import ChatTokens
    from pipeline.feedback.data import read_split, samples_md
    from pipeline.feedback.labeler import judge, summarize
    from pipeline.io import write_csv
    from pipeline.model.export import load_model, save_model
    from pipeline.model.gpt import GPT, GPTConfig
    from pipeline.model.reward import tokenizer_sha256
    from pipeline.tokenizer import load_tokenizer
    from pipeline.train.instruct import (
        encode_demonstrations,
        generate,
        sft_batch,
        shuffled_batches,
        supervised_config,
    )  # fmt: skip
    from pipeline.train.loop import dtype_name, setup_distributed
    from pipeline.train.supervised import SupervisedTrainer, lm_loss

    cfg, seed = ctx.params.sft, ctx.params.common.seed
    tok_file = ctx.input("tokenize", "tokenizer.json")
    chat = ChatTokens(load_tokenizer(tok_file), str(tok_file))
    model_dir = ctx.input("pretrain", "model")
    pretrained = load_model(model_dir)
    check_vocab(pretrained.config.vocab_size, chat.tok, str(model_dir))
    inst = ctx.input("instructions")
    demos, held_out = read_split(inst, "sft"), read_split(inst, "eval")
    if not demos:
        raise LineageError("data/instructions/sft.jsonl: no demonstrations; raise instructions.sizes.sft")
    block = pretrained.config.block_size
    dist, device = setup_distributed(cfg.device)

    # a held-out slice of the SFT split for the validation loss (the eval split is for answers)
    order = list(range(len(demos)))
    random.Random(f"{seed}/sft-val").shuffle(order)
    n_val = max(1, round(cfg.val_fraction * len(demos))) if len(demos) > 1 else 0
    val_ex, train_ex = [demos[i] for i in order[:n_val]], [demos[i] for i in order[n_val:]] or [demos[0]]
    train_items, dropped = encode_demonstrations(chat, train_ex, block)
    val_items, _ = encode_demonstrations(chat, val_ex, block)
    if not train_items:
        raise LineageError(
            f"data/instructions/sft.jsonl: no demonstration fits the model's block_size {block}; "
            "raise pretrain.block_size or shorten the demonstrations"
        )
    val_batches = [
        sft_batch(val_items[k : k + cfg.batch_size]) for k in range(0, len(val_items), cfg.batch_size)
    ]
    probe = first_per_family(held_out, cfg.eval_prompts)

    model = GPT(GPTConfig.from_dict({**pretrained.config.to_dict(), "dropout": cfg.dropout}))
    model.load_state_dict(pretrained.state_dict())
    key = run_key(cfg, seed, NOT_IN_RUN_KEY, [model_dir / "model.safetensors", tok_file, inst / "sft.jsonl"])
    ckpt_dir = ctx.root / "checkpoints" / "sft" / key
    record_run(ckpt_dir, cfg, seed, NOT_IN_RUN_KEY)
    best_file = ckpt_dir / "best.json"
    best = json.loads(best_file.read_text()) if cfg.resume and best_file.is_file() else {"loss": float("inf")}

    def answer(m: GPT, examples: list[dict[str, Any]]) -> list[str]:
        prompts = [chat.encode_prompt(ex["messages"]) for ex in examples]
        outs = generate(m, prompts, cfg.max_new_tokens, eos=chat.end, seed=seed, device=device)
        return [chat.decode_response(o) for o in outs]

    def heldout_loss(m: torch.nn.Module, batches: list[dict[str, Any]] | None = None) -> float:
        """Mean loss per response token on ``batches`` (default: the held-out slice of the SFT split)."""
        total = n = 0.0
        for b in val_batches if batches is None else batches:
            b = {k: v.to(device) for k, v in b.items()}
            loss, _ = lm_loss(m, b)
            tokens = int((b["y"] != -1).sum())
            total, n = total + loss.item() * tokens, n + tokens
        return total / max(n, 1)

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        val_loss = heldout_loss(m)
        summary = summarize(probe, [judge(ex, r) for ex, r in zip(probe, answer(m, probe), strict=True)])
        out = {"val/loss": val_loss, "eval/score": summary["score"], "eval/exact": summary["exact"]["value"]}
        for f, s in summary["families"].items():
            out[f"eval/{f}/exact"] = s["exact"]["value"]
            out[f"eval/{f}/score"] = s["score"]
        if val_loss < best["loss"]:  # keep the weights of the best validation loss
            save_model(m, ckpt_dir / "best")
            best.update(loss=val_loss, step=trainer.step)
            best_file.write_text(json.dumps(best))
        return out

    log = (lambda m, step: ctx.tracker.log_metrics(m, step=step)) if ctx.tracker else None
    sup = supervised_config(cfg)
    batches = shuffled_batches(train_items, cfg.batch_size, seed, sft_batch)
    trainer = SupervisedTrainer(model, lm_loss, batches, sup, seed=seed, device=device, checkpoint=ckpt_dir / "ckpt.pt",
                                evaluate=evaluate, log=log, dist=dist, progress="sft")  # fmt: skip
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    # where SFT starts: the pretrained model's response loss on the held-out and the training demonstrations
    train_eval = [
        sft_batch(train_items[k : k + cfg.batch_size]) for k in range(0, len(train_items), cfg.batch_size)
    ]
    with torch.no_grad():
        start_loss = heldout_loss(pretrained.to(device).eval()) if val_batches else float("nan")
        train_start_loss = heldout_loss(pretrained, train_eval)
    result = trainer.run()
    if not dist.main:  # under torchrun, rank 0 alone evaluates and writes the outputs
        return {}

    best_weights = load_model(ckpt_dir / "best") if (ckpt_dir / "best").is_dir() else model
    final = GPT(pretrained.config).to(device).eval()  # the pretrained config: dropout as pretraining had it
    final.load_state_dict(best_weights.state_dict())
    with torch.no_grad():
        train_end_loss = heldout_loss(final, train_eval)
    answers = answer(final, held_out)
    judged = [judge(ex, r) for ex, r in zip(held_out, answers, strict=True)]
    sft_summary = summarize(held_out, judged)
    base_answers, shots_used = fewshot_answers(
        pretrained.to(device), chat, demos, held_out, cfg, seed, device
    )
    base_summary = summarize(held_out, [judge(ex, r) for ex, r in zip(held_out, base_answers, strict=True)])
    if ctx.tracker is not None:
        ctx.tracker.log_metrics({"final/sft/exact": sft_summary["exact"]["value"],
                                 "final/fewshot/exact": base_summary["exact"]["value"]})  # fmt: skip

    save_model(final, ctx.out / "model")
    (ctx.out / "model" / "chat.json").write_text(
        json.dumps({"tokenizer_sha256": tokenizer_sha256(tok_file), "end_id": chat.end}, indent=2) + "\n"
    )
    with (ctx.out / "eval.jsonl").open("w") as fh:
        for ex, r, j, b in zip(held_out, answers, judged, base_answers, strict=True):
            fh.write(json.dumps({"id": ex["id"], "family": ex["family"], "response": r, "fewshot": b,
                                 **{f"judge_{k}": v for k, v in j.to_dict().items()}}) + "\n")  # fmt: skip
    (ctx.out / "samples.md").write_text(samples_md(
        "SFT answers on held-out prompts (few-shot pretrained baseline beside them)", held_out,
        [[f"sft: {a!r}", f"few-shot pretrained: {b!r}"] for a, b in zip(answers, base_answers, strict=True)],
    ))  # fmt: skip
    hist = trainer.history
    write_csv(ctx.out / "plots" / "val.csv", [{"step": h["step"], "loss": h["val/loss"], "exact": h["eval/exact"],
                                              "score": h["eval/score"]} for h in hist if "val/loss" in h])  # fmt: skip
    write_csv(ctx.out / "plots" / "families.csv", [
        {"family": f, "model": name, "exact": round(s["families"][f]["exact"]["value"], 4),
         "low": round(s["families"][f]["exact"]["low"], 4), "high": round(s["families"][f]["exact"]["high"], 4)}
        for name, s in (("sft", sft_summary), ("fewshot", base_summary)) for f in s["families"]
    ])  # fmt: skip
    if ctx.tracker is not None:
        ctx.tracker.log_model(final, "gpt-lineage-sft")
    return {
        "model": {"params": final.num_params(), "dropout": cfg.dropout, "block_size": block},
        "data": {"train": len(train_items), "val": len(val_items), "dropped_long": dropped, "eval": len(held_out)},
        "train": {"loss": result.get("train/loss", float("nan")), "steps": result["steps"],
                  "examples": result["examples"], "epochs": cfg.epochs,
                  # the response loss on the training demonstrations (eval mode), pretrained and kept weights
                  "start_loss": train_start_loss, "end_loss": train_end_loss},
        "val": {"best_loss": best["loss"], "best_step": best.get("step", -1), "last_loss": result.get("val/loss"),
                "start_loss": start_loss},
        "eval": {"sft": sft_summary, "fewshot": {**base_summary, "shots": shots_used}},
        "perf": {"train_s": result["train_s"], "examples_per_s": result["examples_per_s"],
                 "resumed_from_step": trainer.resumed_from, "device": str(device), "world_size": dist.world_size,
                 "dtype": dtype_name(trainer.dtype)},
    }  # fmt: skip


def first_per_family(examples: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    seen: dict[str, int] = {}
    out = []
    for ex in examples:
        if seen.get(ex["family"], 0) < n:
            seen[ex["family"]] = seen.get(ex["family"], 0) + 1
            out.append(ex)
    return out


def fewshot_answers(model, chat, demos, held_out, cfg, seed, device) -> tuple[list[str], float]:
    """The pretrained model's answers, prompted with up to ``cfg.fewshot`` solved examples of the same
    family from the SFT split (as many as fit the context), in plain text; an answer is the first
    line with text, and the newline after it counts as the end of the response."""
    from pipeline.feedback.chat import END
    from pipeline.feedback.suite import fewshot_prompt
    from pipeline.train.instruct import generate

    pool: dict[str, list[dict[str, Any]]] = {}
    for d in demos:
        pool.setdefault(d["family"], []).append(d)
    block = model.config.block_size - cfg.max_new_tokens
    prompts, used = [], 0
    for ex in held_out:
        shots = pool.get(ex["family"], [])[: cfg.fewshot]
        while True:
            ids = chat.text(fewshot_prompt(shots, ex))
            if len(ids) <= block or not shots:
                break
            shots = shots[:-1]
        used += len(shots)
        prompts.append(ids)
    outs = generate(model, prompts, cfg.max_new_tokens, eos=None, seed=seed, device=device)
    answers = []
    for o in outs:
        text = chat.tok.decode(o, skip_special_tokens=False)
        head, nl, _ = text.lstrip().partition("\n")  # the answer is the first line with text
        answers.append(head.strip() + (END if nl else ""))
    return answers, used / max(len(held_out), 1)


if __name__ == "__main__":
    sys.exit(launch("sft", body, HEADLINE))
