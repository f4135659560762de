"""Our in-process log-likelihood scorer (used for the checkpoint curve and the zero-shot baseline)
against lm-evaluation-harness on the same tasks and the same model: accuracies must agree within
0.5 points.

Tasks: the held-out next-passage multiple choice (acc and acc_norm) and the cloze, plus two GPT-3
synthetic tasks, built exactly as the evaluate stage builds them (params.yaml's evaluate section)
from data/mix/val into a temporary folder. Model: data/pretrain/model (ours) and its export
data/pretrain/hf (lm-eval). Writes bench/out/lm_eval_parity.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, table, write_result  # noqa: E402

TASKS = ["next_passage", "cloze", "arithmetic_2da", "reversed_words"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT))
    ap.add_argument("--items", type=int, default=None, help="test items per task (default: evaluate.items)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "lm_eval_parity.json"))
    args = ap.parse_args()

    import numpy as np
    import torch

    from pipeline.config import load_params
    from pipeline.errors import LineageError
    from pipeline.eval import harness
    from pipeline.eval.embedded import eval_items
    from pipeline.eval.inputs import read_docs, text_encoder
    from pipeline.eval.scoring import score_choices, score_greedy
    from pipeline.eval.synthetic import corpus_words, synthetic_items
    from pipeline.model.export import EOT, load_model
    from pipeline.tokenizer import eot_id, load_tokenizer
    from stages.evaluate import fits

    torch.set_num_threads(2)
    root = Path(args.root)
    try:
        params = load_params(root / "params.yaml")
        cfg, seed = params.evaluate, params.common.seed
        n = args.items or cfg.items
        docs = read_docs(root / "data" / "mix" / "val")
        tokenizer = load_tokenizer(root / "data" / "tokenize" / "tokenizer.json")
        model = load_model(root / "data" / "pretrain" / "model").eval()
    except LineageError as e:
        print(f"error: lm_eval_parity: {e}", file=sys.stderr)
        return 1
    encode, eot = text_encoder(tokenizer), eot_id(tokenizer)
    words = corpus_words(d["text"] for d in docs)
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        tasks = {}
        for t in TASKS:
            if t in ("cloze", "next_passage"):
                n_words = cfg.cloze_words if t == "cloze" else cfg.passage_words
                train, test = eval_items(t, docs, seed, n_words, cfg.choices, n, cfg.train_items)
            else:
                train, test = synthetic_items(t, cfg.train_items, n, seed, words)
            kind, limit = ("choice" if t == "next_passage" else "greedy"), model.config.block_size * 3 // 4
            train, test = (
                [it for it in s if fits(kind, it, encode, limit)] for s in (train, test)
            )  # as evaluate
            for side, items in (("train", train), ("test", test)):
                (data / t).mkdir(exist_ok=True)
                (data / t / f"{side}.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
            tasks[t] = test
        t0 = time.perf_counter()
        from transformers import PreTrainedTokenizerFast

        hf_tok = PreTrainedTokenizerFast(tokenizer_file=str(root / "data" / "tokenize" / "tokenizer.json"))
        hf_tok.bos_token = hf_tok.eos_token = EOT
        lm = harness.hf_lm(
            str(root / "data" / "pretrain" / "hf"), hf_tok, cfg.batch_size, model.config.block_size
        )
        theirs = harness.evaluate(
            lm, [harness.task_config(t, data) for t in TASKS], 0, seed, harness.task_manager([])
        )
        t_lm_eval = time.perf_counter() - t0
        t0 = time.perf_counter()
        for t, test in tasks.items():
            if "choices" in test[0]:
                s = score_choices(model, encode, eot,
                                  [([(it["context"], " " + c) for c in it["choices"]], it["label"]) for it in test],
                                  cfg.batch_size)  # fmt: skip
                ours = {
                    "acc": float(np.mean(s["pred"] == s["gold"])),
                    "acc_norm": float(np.mean(s["pred_norm"] == s["gold"])),
                }
            else:
                ours = {"acc": float(score_greedy(model, encode, eot, test, cfg.batch_size).mean())}
            for metric, v in ours.items():
                lm_v = theirs[f"lineage_{t}"][metric]
                rows.append(
                    [
                        t,
                        metric,
                        len(test),
                        f"{100 * v:.2f}",
                        f"{100 * lm_v:.2f}",
                        f"{100 * abs(v - lm_v):.2f}",
                    ]
                )
                results[f"{t}/{metric}"] = {"ours": v, "lm_eval": lm_v, "n": len(test)}
        t_ours = time.perf_counter() - t0
    print(table(["task", "metric", "n", "ours %", "lm-eval %", "|diff| pts"], rows))
    worst = max(abs(r["ours"] - r["lm_eval"]) for r in results.values())
    print(
        f"\nlargest difference {100 * worst:.2f} points (limit 0.5); ours {t_ours:.1f}s, lm-eval {t_lm_eval:.1f}s"
    )
    write_result(Path(args.out), {"machine": machine(), "results": results, "max_diff": worst,
                                  "ours_s": t_ours, "lm_eval_s": t_lm_eval})  # fmt: skip
    return 0 if worst <= 0.005 else 1


if __name__ == "__main__":
    sys.exit(main())
