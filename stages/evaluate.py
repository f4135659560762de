"""evaluate: GPT-2/GPT-3 style zero/one/few-shot evaluation with lm-evaluation-harness.

Writes the task files (``tasks/<task>/{train,test}.jsonl``, the data of the YAML in
pipeline/eval/tasks/), the table task x k per model (``table.csv``, with stderr, chance and the
contamination count beside each task), k-shot curves (``plots/kshot.csv``, ``kshot.png``), the
zero-shot score at every kept pretraining checkpoint (``plots/checkpoints.csv``,
``checkpoints.png``; GPT-1 Figure 2 right), and validation perplexity / bits per byte per source.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pipeline.errors import LineageError
from pipeline.eval.config import EvaluateConfig
from pipeline.eval.scoring import read_task_dir, task_accuracy, validate_items
from pipeline.io import read_json, write_csv, write_json
from pipeline.stage import StageContext, main

HEADLINE = [
    "cloze/k*=models/pretrain/tasks/cloze/k*/acc", "next/k*=models/pretrain/tasks/next_passage/k*/acc",
    "synthetic/k*=models/pretrain/synthetic_mean/k*", "lm_bpb/*=models/pretrain/lm/*/bpb",
]  # fmt: skip


def write_jsonl(path: Path, items: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items))


def fits(kind: str, item: dict[str, Any], encode: Any, limit: int) -> bool:
    """Every continuation of the item has at most ``limit`` tokens (lm-eval refuses one longer than
    the model's context; the context itself is truncated from the left)."""
    if kind == "choice":
        return max(len(encode(" " + c)) for c in item["choices"]) <= limit
    return len(encode(item["completion"])) <= limit


def build_tasks(
    ctx: StageContext, cfg: EvaluateConfig, seed: int, docs: list[dict], encode: Any, block_size: int
) -> dict[str, dict[str, Any]]:
    """Write every task's JSONL under ctx.out/tasks/; ``{task: {kind, train, test, chance, dropped}}``.
    Items whose continuation takes more than 3/4 of the model's context are left out (and counted)."""
    from pipeline.eval.embedded import eval_items
    from pipeline.eval.synthetic import SCRAMBLE, SYNTHETIC, corpus_words, synthetic_items

    words = corpus_words(d["text"] for d in docs) if any(t in SCRAMBLE for t in cfg.tasks) else []
    tasks: dict[str, dict[str, Any]] = {}
    for t in cfg.tasks:
        if t in ("cloze", "next_passage"):
            n_words = cfg.cloze_words if t == "cloze" else cfg.passage_words
            train, test = eval_items(t, docs, seed, n_words, cfg.choices, cfg.items, cfg.train_items)
            kind = "choice" if t == "next_passage" else "greedy"
            chance = 1 / cfg.choices if kind == "choice" else 0.0
        elif t in SYNTHETIC:
            train, test = synthetic_items(t, cfg.train_items, cfg.items, seed, words)
            kind, chance = "greedy", 0.0
        else:
            raise LineageError(
                f"evaluate.tasks: unknown task {t!r}; expected cloze, next_passage or one of {SYNTHETIC}"
            )
        n_before = len(test)
        limit = block_size * 3 // 4
        train, test = ([it for it in side if fits(kind, it, encode, limit)] for side in (train, test))
        if n_before and not test:
            raise LineageError(
                f"evaluate.tasks.{t}: every item's answer is longer than {limit} tokens, 3/4 of the model's "
                "context; lower evaluate.passage_words"
            )
        for side, items in (("train", train), ("test", test)):
            validate_items(kind, items, f"evaluate.tasks.{t} ({side})")
            write_jsonl(ctx.out / "tasks" / t / f"{side}.jsonl", items)
        tasks[t] = {
            "kind": kind,
            "train": train,
            "test": test,
            "chance": chance,
            "dropped": n_before - len(test),
        }
    for e in cfg.external:
        path = Path(e) if Path(e).is_absolute() else ctx.root / e
        if path.is_dir():  # a folder in our schema: scored with our templates
            kind, train, test = read_task_dir(path)
            name = path.name
            write_jsonl(ctx.out / "tasks" / name / "train.jsonl", train)
            write_jsonl(ctx.out / "tasks" / name / "test.jsonl", test)
            tasks[name] = {"kind": kind, "train": train, "test": test,
                           "chance": 1 / len(test[0]["choices"]) if kind == "choice" else 0.0}  # fmt: skip
    return tasks


def lm_eval_specs(tasks: dict[str, dict[str, Any]], data_dir: Path) -> list[dict[str, Any]]:
    from pipeline.eval.harness import TASKS_DIR, task_config

    specs = []
    for name, t in tasks.items():
        if (TASKS_DIR / f"lineage_{name}.yaml").is_file():
            specs.append(task_config(name, data_dir))
        else:
            cfg = task_config("next_passage" if t["kind"] == "choice" else "cloze", data_dir)
            cfg["task"] = f"lineage_{name}"
            cfg["dataset_kwargs"] = {
                "data_files": {s: str(data_dir / name / f"{s}.jsonl") for s in ("train", "test")}
            }
            specs.append(cfg)
    return specs


def find_models(ctx: StageContext, cfg: EvaluateConfig) -> list[tuple[str, Any]]:
    """(name, loader) of each model in evaluate.models whose stage output exists."""
    from pipeline.model.export import load_model

    found: list[tuple[str, Any]] = []
    for entry in cfg.models:
        stage, _, which = entry.partition("/")
        base = ctx.root / "data" / stage
        if stage == "pretrain":
            found.append(("pretrain", lambda: load_model(ctx.input("pretrain", "model"))))
        elif stage == "finetune" and base.is_dir():
            folder = base / "model"
            names = [which] if which else sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
            for n in names:
                if not (folder / n / "config.json").is_file():
                    raise LineageError(f"evaluate.models: {entry}: no fine-tuned model {folder / n}")
                found.append((f"finetune/{n}", lambda d=folder / n: load_finetuned_trunk(d)))
        elif (base / "model" / "config.json").is_file():  # sft, ppo: a GPT in safetensors
            found.append((stage, lambda d=base / "model": load_model(d)))
    return found


def load_finetuned_trunk(directory: Path) -> Any:
    """The GPT inside a fine-tuned classifier (its head left out): what language modelling sees."""
    from pipeline.io import load_safetensors, read_json
    from pipeline.model.gpt import GPT, GPTConfig

    config = read_json(directory / "config.json", ("gpt",))
    gpt = GPT(GPTConfig.from_dict(config["gpt"]))
    tensors = {k.removeprefix("gpt."): v for k, v in load_safetensors(directory / "model.safetensors").items()
               if k.startswith("gpt.")}  # fmt: skip
    missing, unexpected = gpt.load_state_dict(tensors, strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise LineageError(f"{directory}: weights do not match their GPT config")
    return gpt


def body(ctx: StageContext) -> dict[str, Any]:

    from pipeline.eval import harness
    from pipeline.eval.contamination import dirty_counts
    from pipeline.eval.inputs import check_hf_tokenizer, check_vocab, read_docs, text_encoder
    from pipeline.eval.lm import kept_checkpoints, lm_metrics, load_kept, tokens_per_byte
    from pipeline.io import list_shards, read_rows
    from pipeline.model.export import to_hf
    from pipeline.progress import Progress
    from pipeline.tokenizer import eot_id, load_tokenizer, open_tokens, read_meta
    from pipeline.train.checkpoint import MANIFEST
    from pipeline.train.loop import autocast_dtype, device_for, dtype_name

    cfg, seed = ctx.params.evaluate, ctx.params.common.seed
    tok_dir = ctx.input("tokenize")
    tok_file = tok_dir / "tokenizer.json"
    tokenizer = load_tokenizer(tok_file)
    encode, eot = text_encoder(tokenizer), eot_id(tokenizer)
    meta = read_meta(tok_dir)
    device = device_for(cfg.device)
    docs = read_docs(ctx.input("mix", "val"))
    block_size = read_json(ctx.input("pretrain", "model") / "config.json", ("block_size",))["block_size"]
    tasks = build_tasks(ctx, cfg, seed, docs, encode, block_size)
    for name, t in tasks.items():
        need = max(cfg.num_fewshot) + 1
        if len(t["train"]) < need:
            raise LineageError(
                f"evaluate.num_fewshot: k={max(cfg.num_fewshot)} needs {need} items in the train split of task "
                f"{name}, which has {len(t['train'])} (lower k or raise evaluate.train_items)"
            )
    names = [e for e in cfg.external if not (ctx.root / e).is_dir() and not Path(e).is_dir()]
    tm = harness.task_manager(names)
    external = harness.check_external(tm, names)
    specs: list[Any] = lm_eval_specs(tasks, ctx.out / "tasks") + external

    # contamination: test items sharing an N-gram with the training split (GPT-3 App. C)
    train_texts = (r["text"] for s in list_shards(ctx.input("mix", "train")) for r in read_rows(s, ["text"]))
    dirty = dirty_counts(
        {
            n: [it["context"] + " " + str(it.get("completion", "")) for it in t["test"]]
            for n, t in tasks.items()
        },
        train_texts,
    )
    hf_tok = _hf_tokenizer(tok_file)
    val = open_tokens(tok_dir, "val")
    sources = list(meta["sources"])
    tpb = tokens_per_byte(meta)
    dtype = autocast_dtype(cfg.dtype, device)
    models = find_models(ctx, cfg)
    if not models:
        raise LineageError(f"evaluate.models: none of {cfg.models} exists; run `dvc repro pretrain` first")
    if any(name == "pretrain" for name, _ in models):
        check_hf_tokenizer(ctx.input("pretrain", "hf"), tok_file)
    curve_run = None  # the kept checkpoints pretrain listed, checked before any scoring
    if any(name == "pretrain" for name, _ in models) and cfg.curve_tasks:
        curve_run = kept_checkpoints(ctx.root, ctx.input("pretrain", MANIFEST))

    out: dict[str, Any] = {
        "models": {}, "contamination": dirty, "dropped_too_long": {n: t.get("dropped", 0) for n, t in tasks.items()},
    }  # fmt: skip
    rows: list[dict[str, Any]] = []
    passes = Progress(len(models) * len(cfg.num_fewshot), "evaluate: lm-eval passes (model x k)", "pass")
    for name, loader in models:
        model = loader().to(device)
        check_vocab(model.config.vocab_size, tokenizer, f"evaluate.models: {name}")
        res: dict[str, Any] = {
            "tasks": {},
            "lm": lm_metrics(model, val, sources, tpb, cfg.lm_windows, 16, dtype, device),
        }
        hf_dir = ctx.root / "data" / "pretrain" / "hf"
        hf_model = (
            str(hf_dir) if name == "pretrain" and (hf_dir / "config.json").is_file() else to_hf(model.cpu())
        )
        lm = harness.hf_lm(hf_model, hf_tok, cfg.batch_size, model.config.block_size, str(device))
        for k in cfg.num_fewshot:
            for task_name, r in harness.evaluate(lm, specs, k, seed, tm).items():
                short = task_name.removeprefix("lineage_")
                chance = tasks[short]["chance"] if short in tasks else None
                cell = {m: v for m, v in r.items()}
                cell["chance"] = chance
                res["tasks"].setdefault(short, {})[f"k{k}"] = cell
                for metric in ("acc", "acc_norm"):
                    if metric in r:
                        rows.append({
                            "model": name, "task": short, "k": k, "metric": metric, "value": round(r[metric], 4),
                            "stderr": round(r.get(f"{metric}_stderr", float("nan")), 4),
                            "chance": chance, "n": int(r["n"]), "contaminated": dirty.get(short),
                        })  # fmt: skip
            passes.update(model=name, k=k)
        synth = [
            t
            for t in res["tasks"]
            if t.startswith(("arithmetic_", "cycle_", "anagrams", "random_", "reversed_"))
        ]
        if synth:
            res["synthetic_mean"] = {
                f"k{k}": sum(res["tasks"][t][f"k{k}"]["acc"] for t in synth) / len(synth)
                for k in cfg.num_fewshot
            }
        out["models"][name] = res
        model.cpu()
    passes.close()

    # zero-shot across pretraining (our own scorer: in-process, no per-call harness setup)
    curve: list[dict[str, Any]] = []
    final = next((loader for n, loader in models if n == "pretrain"), None)
    if final is not None and curve_run is not None:
        final_model = final()
        pm = read_json(ctx.input("pretrain", "model") / "config.json")
        info, kept = curve_run
        final_step = int(info["final_step"])
        points = [(step, lambda p=p: load_kept(p, pm)) for step, p in kept]
        if all(s != final_step for s, _ in points):
            points.append((final_step, lambda: final_model))
        with Progress(len(points), "evaluate: zero-shot over checkpoints", "ckpt") as bar:
            for step, load in points:
                m = load().to(device)
                for t in cfg.curve_tasks:
                    if t not in tasks:
                        continue
                    acc = task_accuracy(m, encode, eot, tasks[t], cfg.batch_size, device)
                    curve.append({"step": step, "task": t, "acc": round(acc, 4)})
                    ctx.tracker.log_metrics({f"curve/{t}/acc": acc}, step=step)
                bar.update(step=step)
        out["checkpoints"] = {"points": len(points), "kept": len(kept)}

    table = sorted(rows, key=lambda r: (r["model"], r["task"], r["metric"], r["k"]))
    write_csv(ctx.out / "table.csv", table)
    kshot = [
        {"series": f"{r['model']}/{r['task']}", "k": r["k"], "acc": r["value"]}
        for r in table
        if r["metric"] == "acc"
    ]
    write_csv(ctx.out / "plots" / "kshot.csv", kshot)
    write_csv(ctx.out / "plots" / "checkpoints.csv", curve)
    write_json(ctx.out / "table.json", table)
    _figures(ctx, table, curve, cfg)
    out["perf"] = {"device": str(device), "dtype": dtype_name(dtype)}
    return out


def _hf_tokenizer(tok_file: Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    from pipeline.model.export import EOT

    tok = PreTrainedTokenizerFast(tokenizer_file=str(tok_file))
    tok.bos_token = tok.eos_token = EOT
    return tok


def _figures(
    ctx: StageContext, table: list[dict[str, Any]], curve: list[dict[str, Any]], cfg: EvaluateConfig
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    series: dict[str, list[tuple[int, float, float]]] = {}
    for r in table:
        if r["metric"] == "acc" and r["model"] == "pretrain":
            series.setdefault(r["task"], []).append((r["k"], r["value"], r["stderr"]))
    for task, pts in sorted(series.items()):
        pts.sort()
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", label=task,
                    capsize=2)  # fmt: skip
    ax.set_xlabel("k (demonstrations in the prompt)")
    ax.set_ylabel("accuracy")
    ax.set_title("pretrained model: k-shot accuracy (lm-evaluation-harness)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(ctx.out / "kshot.png", dpi=110)
    ctx.tracker.log_figure(fig, "kshot.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for t in sorted({c["task"] for c in curve}):
        pts = sorted((c["step"], c["acc"]) for c in curve if c["task"] == t)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=t)
    ax.set_xlabel("pretraining step")
    ax.set_ylabel("zero-shot accuracy")
    ax.set_title("zero-shot accuracy across pretraining")
    if curve:
        ax.legend()
    fig.tight_layout()
    fig.savefig(ctx.out / "checkpoints.png", dpi=110)
    ctx.tracker.log_figure(fig, "checkpoints.png")
    plt.close(fig)
    ctx.tracker.log_artifact(ctx.out / "table.csv")


if __name__ == "__main__":
    sys.exit(main("evaluate", body, headline=HEADLINE))
