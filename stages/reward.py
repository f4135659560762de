"""reward: InstructGPT's reward model, trained on the labeler's rankings (never on its scores).

Initialised from the SFT model, its LM head replaced by a scalar head on the final token. Each
batch element is one prompt with all K of its responses: the loss averages
``-log sigmoid(r_better - r_worse)`` over the prompt's C(K, 2) ordered pairs (Ouyang et al. 2022,
eq. 1), in the one supervised loop. A held-out share of the prompts measures pairwise accuracy
and top-1-of-K agreement, against the (noisy) labeler that trained it and against the noise-free
gold ranking; beside them the ceiling (the gold ranking's own accuracy against the noisy labels) and
the accuracy on pairs of two responses sampled at the same temperature. Afterwards a bias shift makes the SFT demonstrations score 0 on average.

Writes ``model/`` (body + ``reward_head.safetensors`` + ``reward.json``, which records the
tokenizer: the model refuses to load with another) and ``plots/``. Resumable.
"""

from __future__ import annotations

import random
import sys
from typing import Any

from pipeline.errors import LineageError
from pipeline.stage import StageContext, launch
from pipeline.train.checkpoint import record_run, run_key
from pipeline.train.finite import check_value

HEADLINE = [
    "rm_val_acc=val/pair_acc", "rm_val_gold_acc=val/gold_pair_acc", "rm_val_top1=val/top1",
    "rm_val_gold_top1=val/gold_top1", "rm_train_acc=train/pair_acc", "rm_bias_shift=bias_shift",
    "rm_val_pairs=val/pairs", "rm_val_ceiling=val/ceiling_pair_acc",
]  # fmt: skip
NOT_IN_RUN_KEY = {"eval_interval", "checkpoint_interval", "resume", "device", "bias_samples"}


def body(ctx: StageContext) -> dict[str, Any]:
    import torch

    from pipeline.eval.inputs import check_vocab
    from pipeline.feedback.chat import ChatTokens
    from pipeline.feedback.data import COMPARISON_FIELDS, read_jsonl, read_split
    from pipeline.io import read_json, write_csv
    from pipeline.model.export import load_model
    from pipeline.model.reward import RewardModel, check_tokenizer, save_reward_model, tokenizer_sha256
    from pipeline.progress import Phases
    from pipeline.tokenizer import load_tokenizer
    from pipeline.train.instruct import (
        ranked_group,
        ranking_metrics,
        response_ids,
        reward_batch,
        reward_loss,
        score_groups,
        shuffled_batches,
        supervised_config,
    )  # fmt: skip
    from pipeline.train.loop import dtype_name, setup_distributed
    from pipeline.train.supervised import SupervisedTrainer

    cfg, seed = ctx.params.reward, ctx.params.common.seed
    tok_file = ctx.input("tokenize", "tokenizer.json")
    sha = tokenizer_sha256(tok_file)
    chat = ChatTokens(load_tokenizer(tok_file), str(tok_file))
    sft_dir = ctx.input("sft", "model")
    check_tokenizer(
        read_json(sft_dir / "chat.json", ("tokenizer_sha256",))["tokenizer_sha256"], sha, str(sft_dir)
    )
    sft = load_model(sft_dir)
    check_vocab(sft.config.vocab_size, chat.tok, str(sft_dir))
    block = sft.config.block_size
    rows = read_jsonl(ctx.input("comparisons", "comparisons.jsonl"), COMPARISON_FIELDS)
    for i, r in enumerate(rows):
        if len(r["responses"]) < 2:
            raise LineageError(
                f"data/comparisons/comparisons.jsonl: record {i} has K={len(r['responses'])}; K >= 2"
            )
    dist, device = setup_distributed(cfg.device)

    # hold out whole prompts: every pair of a held-out prompt is unseen
    order = list(range(len(rows)))
    random.Random(f"{seed}/reward-val").shuffle(order)
    n_val = max(1, round(cfg.val_fraction * len(rows)))
    val_rows, train_rows = [rows[i] for i in order[:n_val]], [rows[i] for i in order[n_val:]]
    train_groups = [
        g for r in train_rows if (g := ranked_group(chat, r["messages"], r["responses"], r["ranks"], block))
    ]
    val_groups = [ranked_group(chat, r["messages"], r["responses"], r["ranks"], block) for r in val_rows]
    keep = [i for i, g in enumerate(val_groups) if g is not None]
    val_rows, val_groups = [val_rows[i] for i in keep], [val_groups[i] for i in keep]
    if not train_groups or not val_groups:
        raise LineageError(
            "data/comparisons/comparisons.jsonl: too few prompts whose responses are not all tied "
            f"({len(train_groups)} to train, {len(val_groups)} to validate); raise instructions.sizes.rm"
        )

    torch.manual_seed(seed)  # the head's initialisation: torch's own default seed differs per process
    model = RewardModel(sft)
    key = run_key(cfg, seed, NOT_IN_RUN_KEY,
                  [sft_dir / "model.safetensors", tok_file, ctx.input("comparisons", "comparisons.jsonl")])  # fmt: skip
    ckpt = ctx.root / "checkpoints" / "reward" / key / "ckpt.pt"
    record_run(ckpt.parent, cfg, seed, NOT_IN_RUN_KEY)

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        rewards = score_groups(m, val_groups, cfg.batch_size, device)
        got = ranking_metrics(rewards, [g["ranks"] for g in val_groups])
        return {"val/pair_acc": got["pair_acc"], "val/top1": got["top1"]}

    log = (lambda m, step: ctx.tracker.log_metrics(m, step=step)) if ctx.tracker else None
    sup = supervised_config(cfg)
    trainer = SupervisedTrainer(
        model, reward_loss, shuffled_batches(train_groups, cfg.batch_size, seed, reward_batch), sup, seed=seed,
        device=device, checkpoint=ckpt, evaluate=evaluate, log=log, dist=dist, progress="reward",
    )  # fmt: skip
    result = trainer.run()
    if not dist.main:  # under torchrun, rank 0 alone evaluates and writes the outputs
        return {}
    model.eval()

    # bias shift: the SFT demonstrations (prompt + reference answer) score 0 on average
    phases = Phases("reward: final evaluation", 3)
    phases.next("bias shift on the SFT demonstrations")
    demos = read_split(ctx.input("instructions"), "sft")[: cfg.bias_samples]
    demo_groups = [
        {"seqs": [response_ids(chat, d["messages"], d["reference"] + "<|end|>", block)]} for d in demos
    ]
    demo_rewards = [r[0] for r in score_groups(model, demo_groups, 4 * cfg.batch_size, device)]
    shift = sum(demo_rewards) / max(len(demo_rewards), 1)
    check_value(shift, "bias_shift (the mean reward of the SFT demonstrations)")
    with torch.no_grad():
        model.head.bias -= shift

    phases.next(f"rankings of {len(val_groups)} validation prompts")
    val_rewards = score_groups(model, val_groups, cfg.batch_size, device)
    noisy = ranking_metrics(val_rewards, [g["ranks"] for g in val_groups])
    gold_rows = [r for r in val_rows if "gold_ranks" in r]
    gold = ranking_metrics(
        [val_rewards[i] for i, r in enumerate(val_rows) if "gold_ranks" in r], [r["gold_ranks"] for r in gold_rows]
    ) if gold_rows else {}  # fmt: skip
    # the ceiling: the noise-free ranking itself, scored against the same noisy labels
    ceiling = ranking_metrics([[-k for k in r["gold_ranks"]] for r in gold_rows],
                              [r["ranks"] for r in gold_rows]) if gold_rows else {}  # fmt: skip
    # pairs of two responses sampled at the same temperature: no help from how a policy writes
    same_agree = same_pairs = 0.0
    for r, rw in zip(val_rows, val_rewards, strict=True):
        temps = r.get("temperatures") or [0.0] * len(rw)
        for t in set(temps):
            at = [i for i, ti in enumerate(temps) if ti == t]
            m = ranking_metrics([[rw[i] for i in at]], [[r["ranks"][i] for i in at]])
            same_agree, same_pairs = same_agree + m["pair_acc"] * m["pairs"], same_pairs + m["pairs"]
    phases.next(f"rankings of {min(512, len(train_groups))} training prompts")
    train_eval = ranking_metrics(score_groups(model, train_groups[:512], cfg.batch_size, device),
                                 [g["ranks"] for g in train_groups[:512]])  # fmt: skip
    phases.close()
    by_family: dict[str, list[float]] = {}
    for r, rw in zip(val_rows, val_rewards, strict=True):
        by_family.setdefault(r.get("family", "data"), []).append(
            ranking_metrics([rw], [r["ranks"]])["pair_acc"]
        )

    save_reward_model(model, ctx.out / "model", sha, {"bias_shift": shift, "source": "sft"})
    curves = [{"step": h["step"], "pair_acc": h["val/pair_acc"], "top1": h["val/top1"]}
              for h in trainer.history if "val/pair_acc" in h]  # fmt: skip
    write_csv(ctx.out / "plots" / "val.csv", curves)
    if ctx.tracker is not None:
        ctx.tracker.log_metrics({"final/val/pair_acc": noisy["pair_acc"], "final/val/top1": noisy["top1"]})
        ctx.tracker.log_model(model, "gpt-lineage-reward")
    return {
        "data": {"train_prompts": len(train_groups), "val_prompts": len(val_groups),
                 "tied_prompts_dropped": len(rows) - len(train_groups) - len(val_groups)},
        "train": {"loss": result.get("train/loss", float("nan")), "steps": result["steps"],
                  "pair_acc": train_eval["pair_acc"]},
        "val": {"pair_acc": noisy["pair_acc"], "top1": noisy["top1"], "pairs": noisy["pairs"],
                "gold_pair_acc": gold.get("pair_acc", float("nan")), "gold_top1": gold.get("top1", float("nan")),
                "ceiling_pair_acc": ceiling.get("pair_acc", float("nan")),
                "same_temperature_pair_acc": same_agree / same_pairs if same_pairs else float("nan"),
                "same_temperature_pairs": same_pairs,
                "families": {f: sum(v) / len(v) for f, v in sorted(by_family.items())}},
        "bias_shift": shift,
        # after the shift: SFT demonstrations average 0; the labeler's best and worst responses beside them
        "mean_reward": {
            "best": _mean([r[i] for r, g in zip(val_rewards, val_groups, strict=True)
                           for i, k in enumerate(g["ranks"]) if k == min(g["ranks"])]),
            "worst": _mean([r[i] for r, g in zip(val_rewards, val_groups, strict=True)
                            for i, k in enumerate(g["ranks"]) if k == max(g["ranks"])]),
            "demo_std": _std([d - shift for d in demo_rewards]),
        },
        "perf": {"train_s": result["train_s"], "resumed_from_step": trainer.resumed_from, "device": str(device),
                 "world_size": dist.world_size, "dtype": dtype_name(trainer.dtype)},
    }  # fmt: skip


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _std(xs: list[float]) -> float:
    m = _mean(xs)
    return (sum((x - m) ** 2 for x in xs) / len(xs)) ** 0.5 if xs else float("nan")


if __name__ == "__main__":
    sys.exit(launch("reward", body, HEADLINE))
