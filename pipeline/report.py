"""The report card: one page that tells a pipeline run's whole story (after nanochat's report).

Every stage plugs in by a declaration in `REPORT`, keyed by stage: the rows it adds to the one table
(globs over the flattened keys of its data/<stage>/metrics.json) and the plots drawn from its CSVs
(under data/<stage>/). A stage adds figures by adding entries here, not code; a stage whose outputs
are missing shows as "not run", never as a number. `report_deps` lists the files the report reads, so
dvc.yaml's report stage depends on exactly those and reruns when any of them changes.

Plots are drawn with matplotlib (Agg), so the report renders offline; report.html inlines them.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import os
import platform
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.errors import LineageError
from pipeline.io import read_json, rerun_hint

NOT_RUN = "not run"
THIS_EXECUTION = "this execution"
SEEDS_DEP = "metrics/seeds"  # seed groups (`lineage seeds`): the report reads them too (a dep in dvc.yaml)


# ------------------------------------------------------------------------------------- declarations
@dataclass(frozen=True)
class Row:
    """One line of the table. ``keys`` are globs over the flattened metrics (``/`` between levels, a
    ``*`` matches one level); each ``*`` capture fills a ``{}`` of ``label``. With several keys the
    cell shows them side by side (``a / b / c``), e.g. a score beside its baselines."""

    label: str
    keys: tuple[str, ...]
    fmt: str = "g"  # g (4 significant digits), int, pct, s (seconds), bytes
    # pivot: the last ``*`` of the one key becomes the cell's columns (``k0 7.0% · k1 6.0%``), one
    # line per value of the others; lines whose every value is 0 collapse into one line naming them
    pivot: bool = False

    def __init__(self, label: str, *keys: str, fmt: str = "g", pivot: bool = False):
        object.__setattr__(self, "label", label)
        object.__setattr__(self, "keys", keys)
        object.__setattr__(self, "fmt", fmt)
        object.__setattr__(self, "pivot", pivot)


@dataclass(frozen=True)
class Plot:
    """A figure drawn from CSVs under data/<stage>/. ``kind`` names a function of `PLOTS`:

    - ``lines``: ``y`` against ``x``, one line per CSV (``labels``) and y column;
    - ``groups``: one line per value of the ``group`` column;
    - ``barh``: horizontal bars of the ``y`` columns per ``x`` (a category column);
    - ``roc``: ``fpr``/``tpr`` with the diagonal;
    - ``score_hist``: per-source score histograms with the Pareto keep curve of ``quality.alpha``.
    """

    name: str
    kind: str
    csvs: tuple[str, ...]
    x: str = "step"
    y: tuple[str, ...] = ("loss",)
    title: str = ""
    group: str = ""
    labels: tuple[str, ...] = ()
    ylabel: str = ""


@dataclass(frozen=True)
class StageReport:
    title: str
    rows: tuple[Row, ...] = ()
    plots: tuple[Plot, ...] = ()
    # a JSON under data/<stage>/ of dropped documents per rule ({rule: {documents, threshold,
    # samples: [{source, url, value, threshold, text}]}}), shown as one table of examples
    samples: str = ""


REPORT: dict[str, StageReport] = {
    "crawl": StageReport(
        "crawl: sources -> raw documents",
        (
            Row("pages fetched", "pages_fetched", fmt="int"),
            Row("documents out", "docs_out", fmt="int"),
            Row("bytes out", "bytes_out", fmt="bytes"),
            Row("documents from {}", "sources/*/docs", fmt="int"),
            Row("bytes from {}", "sources/*/bytes", fmt="bytes"),
            Row("embedded sources: installed distributions", "embedded/distributions", fmt="int"),
            Row("{}: {} pages", "sources/*/page_kinds/*", fmt="int"),
            Row("pages truncated at max_bytes", "pages_truncated", fmt="int"),
        ),
    ),
    "clean": StageReport(
        "clean: extraction, heuristics, language id",
        (
            Row("documents in / out", "docs_in", "docs_out", fmt="int"),
            Row("keep rate", "keep_rate", fmt="pct"),
            Row("{} in / out", "sources/*/in", "sources/*/out", fmt="int"),
            Row("dropped by {}", "drops/*", fmt="int"),
            Row("{} pages in / out", "page_kinds/*/in", "page_kinds/*/out", fmt="int"),
        ),
        samples="dropped_samples.json",
    ),
    "quality": StageReport(
        "quality: classifier and Pareto keep rule",
        (
            Row("classifier held-out AUC", "classifier/auc"),
            Row("classifier precision / recall", "classifier/precision", "classifier/recall"),
            Row("documents in / out", "docs_in", "docs_out", fmt="int"),
            Row("web keep rate", "web_keep_rate", fmt="pct"),
            Row("{} keep rate", "sources/*/keep_rate", fmt="pct"),
            Row("{} mean score", "sources/*/mean_score"),
            Row("web {} pages: in / kept", "page_kinds/*/docs", "page_kinds/*/kept", fmt="int"),
            Row("web {} pages: keep rate", "page_kinds/*/keep_rate", fmt="pct"),
        ),
        (
            Plot(
                "quality_scores.png",
                "score_hist",
                ("plots/score_hist.csv",),
                x="score",
                title="quality score per source, with the keep probability at alpha",
            ),
            Plot(
                "quality_roc.png",
                "roc",
                ("plots/roc.csv",),
                x="fpr",
                y=("tpr",),
                title="quality classifier ROC (held out)",
            ),
        ),  # fmt: skip
    ),
    "dedup": StageReport(
        "dedup: exact + MinHash LSH, decontamination",
        (
            Row("documents in / out", "docs_in", "docs_out", fmt="int"),
            Row("duplicate rate", "duplicate_rate", fmt="pct"),
            Row("exact / near duplicates", "exact_duplicates", "near_duplicates", fmt="int"),
            Row("clusters (cross-source)", "clusters", "cross_source_clusters", fmt="int"),
            Row("{} duplicates", "sources/*/duplicates", fmt="int"),
            Row("contaminated documents", "decontamination/docs_contaminated", fmt="int"),
        ),
    ),
    "mix": StageReport(
        "mix: weighted sampling per source",
        (
            Row("train tokens / documents", "train_tokens", "train_docs", fmt="int"),
            Row("validation tokens / documents", "val_tokens", "val_docs", fmt="int"),
            Row("{} share of tokens (weight)", "sources/*/share_out", "sources/*/weight", fmt="pct"),
            Row("{} epochs", "sources/*/epochs"),
            Row("sources skipped (empty)", "sources_skipped_empty", fmt="int"),
        ),
        (
            Plot(
                "mix_shares.png",
                "barh",
                ("plots/shares.csv",),
                x="source",
                y=("weight", "share_out"),
                title="token share per source: weight asked, share out",
            ),
        ),  # fmt: skip
    ),
    "tokenize": StageReport(
        "tokenize: byte-level BPE",
        (
            Row("vocabulary", "vocab_size", fmt="int"),
            Row("train / validation tokens", "train_tokens", "val_tokens", fmt="int"),
            Row("bytes per token", "bytes_per_token"),
            Row("{} bytes per token", "sources/*/bytes_per_token"),
        ),
    ),
    "pretrain": StageReport(
        "pretrain: GPT language model",
        (
            Row("model parameters", "model/params", fmt="int"),
            Row("steps / tokens seen", "train/steps", "train/tokens", fmt="int"),
            Row("train loss (last interval)", "train/loss"),
            Row("validation loss (nats/token)", "val/loss"),
            Row("{} bits per byte", "val/sources/*/bpb"),
            Row("tokens/s (mean)", "perf/tokens_per_s", fmt="int"),
            Row("MFU", "perf/mfu", fmt="pct"),
            Row("processes (world size)", "perf/world_size", fmt="int"),
        ),
        (
            Plot(
                "pretrain_loss.png",
                "lines",
                ("plots/train.csv", "plots/val.csv"),
                labels=("train", "val"),
                title="pretraining loss",
                ylabel="loss (nats/token)",
            ),
        ),  # fmt: skip
    ),
    "finetune": StageReport(
        "finetune (GPT-1): accuracy, pretrained / random init / zero-shot / chance",
        (
            Row(
                "{} accuracy",
                "tasks/*/pretrained/acc/value",
                "tasks/*/random_init/acc/value",
                "tasks/*/zero_shot/acc/value",
                "tasks/*/pretrained/acc/chance",
                fmt="pct",
            ),  # fmt: skip
            Row("tasks separated from the baselines", "separated_tasks", fmt="int"),
        ),
        (
            Plot("finetune_train.png", "groups", ("plots/train.csv",), group="run", title="fine-tuning loss"),
            Plot(
                "finetune_results.png",
                "barh",
                ("plots/results.csv",),
                x="run",
                y=("value",),
                title="fine-tuned accuracy by task and initialisation",
            ),
        ),  # fmt: skip
    ),
    "evaluate": StageReport(
        "evaluate (GPT-2/3): task x k accuracy",
        (
            Row("{} {} accuracy by k-shot", "models/*/tasks/*/*/acc", fmt="pct", pivot=True),
            Row("{} synthetic tasks mean by k-shot", "models/*/synthetic_mean/*", fmt="pct", pivot=True),
            Row("{} {} bits per byte", "models/*/lm/*/bpb"),
        ),
        (
            Plot(
                "evaluate_kshot.png",
                "facets",
                ("plots/kshot.csv",),
                x="k",
                y=("acc",),
                group="series",
                title="accuracy against the number of examples in the context, one panel per task",
                ylabel="accuracy",
            ),
            Plot(
                "evaluate_checkpoints.png",
                "groups",
                ("plots/checkpoints.csv",),
                y=("acc",),
                group="task",
                title="zero-shot accuracy across pretraining",
                ylabel="accuracy",
            ),
        ),  # fmt: skip
    ),
    "instructions": StageReport(
        "instructions (InstructGPT): prompts and demonstrations",
        (
            Row("{} prompts", "splits/*/prompts", fmt="int"),
            Row("task families / real comparisons", "families", "comparisons", fmt="int"),
        ),
    ),
    "comparisons": StageReport(
        "comparisons (InstructGPT): K samples per prompt, ranked",
        (
            Row("prompts / mean K", "prompts", "mean_k"),
            Row("sample labeler score / exact", "samples/score", "samples/exact"),
            Row("labeler agreement (noisy / gold)", "labeler/agreement", "labeler/gold_agreement", fmt="pct"),
        ),
    ),
    "sft": StageReport(
        "sft (InstructGPT): supervised fine-tuning",
        (
            Row(
                "exact match, SFT / few-shot base",
                "eval/sft/exact/value",
                "eval/fewshot/exact/value",
                fmt="pct",
            ),
            Row("labeler score, SFT / few-shot base", "eval/sft/score", "eval/fewshot/score"),
            Row("validation loss (best)", "val/best_loss"),
        ),
        (Plot("sft_val.png", "lines", ("plots/val.csv",), y=("loss",), title="SFT validation loss"),),
    ),
    "reward": StageReport(
        "reward (InstructGPT): reward model",
        (
            Row("pairwise accuracy, validation / train", "val/pair_acc", "train/pair_acc", fmt="pct"),
            Row("pairwise accuracy vs the gold labeler", "val/gold_pair_acc", fmt="pct"),
        ),
        (Plot("reward_val.png", "lines", ("plots/val.csv",), y=("pair_acc", "top1"), title="RM validation"),),
    ),
    "ppo": StageReport(
        "ppo (InstructGPT): PPO against the RM, the labeler as gold judge",
        (
            Row("PPO coefficients: KL beta / ptx gamma", "model/kl_coef", "model/ptx_coef"),
            Row(
                "last rollout: RLHF reward / RM score / KL to SFT",
                "train/objective/rlhf_reward",
                "train/objective/scores",
                "train/objective/kl",
            ),
            Row(
                "win rate vs SFT, greedy (95% CI)",
                "eval/greedy/win_rate/ppo_vs_sft/value",
                "eval/greedy/win_rate/ppo_vs_sft/low",
                "eval/greedy/win_rate/ppo_vs_sft/high",
                fmt="pct",
            ),
            Row(
                "win rate vs SFT, sampled (95% CI)",
                "eval/sampled/win_rate/ppo_vs_sft/value",
                "eval/sampled/win_rate/ppo_vs_sft/low",
                "eval/sampled/win_rate/ppo_vs_sft/high",
                fmt="pct",
            ),
            Row(
                "win rate SFT vs few-shot base (95% CI)",
                "eval/sft_vs_fewshot/value",
                "eval/sft_vs_fewshot/low",
                "eval/sft_vs_fewshot/high",
                fmt="pct",
            ),
            Row("labeler score, PPO / SFT (greedy)", "eval/greedy/ppo/score", "eval/greedy/sft/score"),
            Row("RM score / KL to SFT, PPO (sampled)", "eval/sampled/ppo/rm_score", "eval/sampled/ppo/kl"),
            Row(
                "{} exact match, PPO / SFT",
                "eval/greedy/ppo/families/*/exact/value",
                "eval/greedy/sft/families/*/exact/value",
                fmt="pct",
            ),
            Row(
                "gold score at best step / last step",
                "overoptimisation/best/gold",
                "overoptimisation/last/gold",
            ),
            Row(
                "best / last step (validation gold score)",
                "overoptimisation/best/step",
                "overoptimisation/last/step",
                fmt="int",
            ),
            Row(
                "win rate vs SFT of the last weights, greedy (95% CI)",
                "eval/greedy/win_rate/last_vs_sft/value",
                "eval/greedy/win_rate/last_vs_sft/low",
                "eval/greedy/win_rate/last_vs_sft/high",
                fmt="pct",
            ),
            Row(
                "alignment tax of the last weights: val loss / bits per byte", "tax/last/loss", "tax/last/bpb"
            ),
            Row(
                "alignment tax: val loss, pretrained / SFT / PPO",
                "tax/pretrain/loss",
                "tax/sft/loss",
                "tax/ppo/loss",
            ),
            Row(
                "alignment tax: bits per byte, pretrained / SFT / PPO",
                "tax/pretrain/bpb",
                "tax/sft/bpb",
                "tax/ppo/bpb",
            ),
            Row(
                "alignment tax: evaluate's tasks zero-shot, mean acc, pretrained / SFT / PPO",
                "tax/zeroshot/mean/pretrain",
                "tax/zeroshot/mean/sft",
                "tax/zeroshot/mean/ppo",
                fmt="pct",
            ),
            Row(
                "{} zero-shot acc, pretrained / SFT / PPO",
                "tax/zeroshot/tasks/*/pretrain",
                "tax/zeroshot/tasks/*/sft",
                "tax/zeroshot/tasks/*/ppo",
                fmt="pct",
            ),
            Row("share of step time generating", "perf/generate_share", fmt="pct"),
        ),
        (
            Plot(
                "ppo_gold_vs_kl.png",
                "lines",
                ("plots/val.csv",),
                x="kl",
                y=("gold",),
                title="over-optimisation: the labeler's (gold) score vs KL to SFT, validation prompts",
                ylabel="gold score (labeler)",
            ),
            Plot(
                "ppo_rm_vs_kl.png",
                "lines",
                ("plots/val.csv",),
                x="kl",
                y=("rm",),
                title="the reward model's (proxy) score vs KL to SFT, same samples",
                ylabel="RM score",
            ),
            Plot(
                "ppo_train.png",
                "lines",
                ("plots/train.csv",),
                y=("rlhf_reward", "scores", "kl"),
                title="PPO rollouts: RLHF reward, RM score, KL to SFT",
                ylabel="per episode",
            ),
        ),  # fmt: skip
    ),
}


@dataclass(frozen=True)
class Claim:
    """One line of the table the report opens with: what a paper showed, the figure this run
    measures for it, and the paper's own figure (at its scale). ``keys`` are globs over the stage's
    flattened metrics; a glob matching several keys shows their mean. Three keys read as a value
    with its 95% interval (value, low, high); two as "a / b"."""

    paper: str
    claim: str
    stage: str
    measure: str
    keys: tuple[str, ...]
    paper_figure: str
    fmt: str = "pct"


CLAIMS: tuple[Claim, ...] = (
    Claim("GPT-1", "generative pretraining before fine-tuning beats training from scratch", "finetune",
          "mean task accuracy, pretrained / random init",
          ("tasks/*/pretrained/acc/value", "tasks/*/random_init/acc/value"),
          "74.7 / 59.9 average score, with / without pretraining (Table 5)"),
    Claim("GPT-2", "a language model does tasks it was never trained on (zero-shot)", "evaluate",
          "cloze accuracy, 0-shot", ("models/pretrain/tasks/cloze/k0/acc",),
          "LAMBADA 63.2%, 1.5B parameters, zero-shot"),
    Claim("GPT-3", "examples in the context help: few-shot beats zero-shot", "evaluate",
          "synthetic tasks mean, 0-shot / largest k", ("models/pretrain/synthetic_mean/k0",
                                                       "models/pretrain/synthetic_mean/@max"),
          "LAMBADA 76.2% zero-shot / 86.4% few-shot, 175B"),
    Claim("InstructGPT", "a reward model learns the labelers' preferences", "reward",
          "pairwise accuracy on held-out prompts", ("val/pair_acc",),
          "labelers agree with each other on 72.6% of pairs"),
    Claim("InstructGPT", "fine-tuning on demonstrations beats prompting the base model", "ppo",
          "win rate, SFT vs few-shot base (95% CI)",
          ("eval/sft_vs_fewshot/value", "eval/sft_vs_fewshot/low", "eval/sft_vs_fewshot/high"),
          "71 ± 4%: InstructGPT 175B vs few-shot GPT-3 175B"),
    Claim("InstructGPT", "PPO against the reward model improves on its SFT start", "ppo",
          "win rate, PPO vs SFT, greedy (95% CI)",
          ("eval/greedy/win_rate/ppo_vs_sft/value", "eval/greedy/win_rate/ppo_vs_sft/low",
           "eval/greedy/win_rate/ppo_vs_sft/high"),
          "PPO preferred to SFT at every model size (Fig. 1)"),
    Claim("InstructGPT", "RLHF pays an alignment tax on the pretraining distribution", "ppo",
          "validation bits per byte, PPO minus SFT", ("tax/delta_vs_sft/bpb",),
          "regressions on public NLP tasks, reduced by mixing in pretraining (PPO-ptx)", fmt="g"),
)  # fmt: skip


def _claim_value(pattern: str, flat: dict[str, float]) -> float | None:
    """The mean of the keys ``pattern`` matches; ``@max`` stands for the largest ``k<n>`` present."""
    if "@max" in pattern:
        rx = _glob(pattern.replace("@max", "k*"))
        ks = [int(m.group(1)) for key in flat if (m := rx.match(key)) and m.group(1).isdigit()]
        if not ks:
            return None
        pattern = pattern.replace("@max", f"k{max(ks)}")
    rx = _glob(pattern)
    values = [v for k, v in flat.items() if rx.match(k)]
    return sum(values) / len(values) if values else None


def claim_rows(claims: Sequence[Claim], flats: dict[str, dict[str, float]]) -> list[tuple[str, ...]]:
    """(paper, claim, this run's measure, this run's figure, the paper's figure) per claim."""
    rows = []
    for c in claims:
        flat = flats.get(c.stage)
        if flat is None:
            cell = f"{c.stage}: {NOT_RUN}"
        else:
            values = [_claim_value(k, flat) for k in c.keys]
            shown = [fmt(v, c.fmt) for v in values]
            cell = f"{shown[0]} ({shown[1]} to {shown[2]})" if len(shown) == 3 else " / ".join(shown)
        rows.append((c.paper, c.claim, c.measure, cell, c.paper_figure))
    return rows


CLAIMS_HEADER = ("paper", "claim", "measured here", "this run", "the paper (its scale)")


def report_deps(stages: Sequence[str]) -> list[str]:
    """The files the report reads for ``stages`` (those of the pipeline): what dvc.yaml's report
    stage must depend on."""
    deps = []
    for stage in stages:
        deps.append(f"data/{stage}/metrics.json")  # every stage's timings, figures or not
        spec = REPORT.get(stage)
        if spec is not None:
            deps += [f"data/{stage}/{c}" for p in spec.plots for c in p.csvs]
            deps += [f"data/{stage}/{spec.samples}"] if spec.samples else []
    return list(dict.fromkeys(deps))


# --------------------------------------------------------------------------------------------- table
def flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}/"))
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile("^" + "([^/]*)".join(re.escape(p) for p in pattern.split("*")) + "$")


def fmt(value: float | None, how: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if how == "int":
        return f"{value:,.0f}"
    if how == "pct":
        return f"{100 * value:.1f}%"
    if how == "s":
        return f"{value:.1f}s"
    if how == "bytes":
        for unit in ("B", "kB", "MB", "GB", "TB"):
            if abs(value) < 1000 or unit == "TB":
                return f"{value:.3g} {unit}"
            value /= 1000
    return f"{value:.4g}"


def pivot_rows(row: Row, flat: dict[str, float]) -> list[tuple[str, str]]:
    """A glob row turned on its side: the last ``*`` of its key as columns of one cell, one line
    per value of the other ``*``; the lines that are 0 everywhere become one line that names them."""
    rx = _glob(row.keys[0])
    lines: dict[tuple[str, ...], dict[str, float]] = {}
    for key, value in flat.items():
        m = rx.match(key)
        if m:
            *rest, col = m.groups()
            lines.setdefault(tuple(rest), {})[col] = value
    out: list[tuple[str, str]] = []
    zeros: dict[str, list[str]] = {}
    for caps, cells in lines.items():
        if len(caps) > 1 and all(v == 0 for v in cells.values()):
            zeros.setdefault(caps[0], []).append(" ".join(caps[1:]))
            continue
        label = row.label.format(*caps) if caps else row.label
        out.append((label, " · ".join(f"{c} {fmt(v, row.fmt)}" for c, v in cells.items())))
    for first, names in zeros.items():
        out.append((f"{first}: {fmt(0.0, row.fmt)} at every k", ", ".join(names)))
    return out


def table_rows(spec: StageReport, flat: dict[str, float]) -> list[tuple[str, str]]:
    """(label, cell) for each row of ``spec`` that the metrics fill; a glob row gives one line per
    match, in the metrics' order."""
    out: list[tuple[str, str]] = []
    for row in spec.rows:
        if row.pivot:
            out += pivot_rows(row, flat)
            continue
        first = _glob(row.keys[0])
        for key in flat:
            m = first.match(key)
            if not m:
                continue
            caps = m.groups()
            values = []
            for pattern in row.keys:
                k = pattern
                for c in caps:
                    k = k.replace("*", c, 1)
                values.append(fmt(flat.get(k), row.fmt))
            label = row.label.format(*caps) if caps else row.label
            out.append((label, " / ".join(values)))
    return out


# -------------------------------------------------------------------------------------------- header
def _run(cmd: list[str], cwd: Path) -> str:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def hardware() -> dict[str, str]:
    from pipeline.train.loop import cpu_bf16_native

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem = f"{kb / 1024**2:.1f} GiB"
    except (OSError, IndexError, ValueError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = _run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"], Path.cwd())
    return {
        "CPU": cpu,
        "cores": f"{cores} usable of {os.cpu_count()}",
        "memory": mem,
        "GPU": "; ".join(gpu.splitlines()) or "none",
        "CPU bf16": "native" if cpu_bf16_native() else "emulated (float32 is faster)",
        "OS": f"{platform.system()} {platform.release()}",
    }


def compute_dtypes(root: Path, stages: Sequence[str]) -> str:
    """The dtype each torch stage resolved (``perf.dtype`` of its metrics), e.g. ``float32`` or
    ``bfloat16 (ppo: float32)`` when stages differ."""
    got: dict[str, str] = {}
    for stage in stages:
        path = root / "data" / stage / "metrics.json"
        try:
            dtype = json.loads(path.read_text()).get("perf", {}).get("dtype") if path.is_file() else None
        except (OSError, ValueError, AttributeError):
            dtype = None
        if isinstance(dtype, str):
            got[stage] = dtype
    if not got:
        return ""
    common = max(set(got.values()), key=list(got.values()).count)
    others = ", ".join(f"{s}: {d}" for s, d in got.items() if d != common)
    return f"{common} ({others})" if others else common


def software() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in (
        "torch",
        "transformers",
        "tokenizers",
        "dvc",
        "prefect",
        "mlflow",
        "lm_eval",
        "scikit-learn",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


# ------------------------------------------------------------------------------------------- plots
def read_csv(path: Path) -> list[dict[str, Any]]:
    def num(v: str) -> Any:
        try:
            return float(v)
        except ValueError:
            return v

    try:
        with path.open(newline="", encoding="utf-8") as fh:
            return [{k: num(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    except (UnicodeDecodeError, csv.Error, TypeError) as e:  # TypeError: a row longer than the header
        raise LineageError(f"{path}: damaged ({type(e).__name__}); {rerun_hint(path)}") from None


def _axes(plot: Plot) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.set_title(plot.title, fontsize=10)
    ax.grid(alpha=0.3)
    return fig, ax


def plot_lines(plot: Plot, tables: list[list[dict[str, Any]]], ctx: dict[str, Any]) -> Any:
    fig, ax = _axes(plot)
    for i, rows in enumerate(tables):
        name = plot.labels[i] if i < len(plot.labels) else ""
        for y in plot.y:
            pts = [(r[plot.x], r[y]) for r in rows if isinstance(r.get(y), float)]
            if pts:
                label = " ".join(filter(None, [name, y if len(plot.y) > 1 else ""])) or y
                ax.plot(*zip(*pts, strict=True), marker="." if len(pts) < 30 else None, label=label)
    ax.set_xlabel(plot.x)
    ax.set_ylabel(plot.ylabel or ", ".join(plot.y))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_groups(plot: Plot, tables: list[list[dict[str, Any]]], ctx: dict[str, Any]) -> Any:
    fig, ax = _axes(plot)
    rows = tables[0]
    groups = list(dict.fromkeys(str(r[plot.group]) for r in rows))
    for g in groups[:20]:
        pts = sorted((r[plot.x], r[plot.y[0]]) for r in rows if str(r[plot.group]) == g)
        ax.plot(*zip(*pts, strict=True), marker="o" if len(pts) < 30 else None, label=g)
    ax.set_xlabel(plot.x)
    ax.set_ylabel(plot.ylabel or plot.y[0])
    ax.legend(fontsize=7, ncol=2 if len(groups) > 6 else 1)
    fig.tight_layout()
    return fig


def plot_facets(plot: Plot, tables: list[list[dict[str, Any]]], ctx: dict[str, Any]) -> Any:
    """Small multiples: the ``group`` column reads ``series/panel`` (e.g. ``model/task``); one panel
    per task, one line per model, a shared y axis and one legend, instead of a legend of every
    model x task pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = tables[0]
    split = [str(r[plot.group]).split("/", 1) for r in rows]
    panels = list(dict.fromkeys(p[-1] for p in split))[:24]
    lines = list(dict.fromkeys(p[0] for p in split if len(p) > 1)) or [""]
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.0 * nrows + 0.6), sharex=True, sharey=True,
                             squeeze=False)  # fmt: skip
    for ax, panel in zip(axes.flat, panels, strict=False):
        for line in lines:
            name = f"{line}/{panel}" if line else panel
            pts = sorted((r[plot.x], r[plot.y[0]]) for r in rows if str(r[plot.group]) == name)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=line or panel)
        ax.set_title(panel, fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel(plot.x, fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel(plot.ylabel or plot.y[0], fontsize=8)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if len(lines) > 1:
        fig.legend(handles, labels, loc="upper right", fontsize=8, ncol=len(lines))
    fig.suptitle(plot.title, fontsize=10, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    return fig


def plot_barh(plot: Plot, tables: list[list[dict[str, Any]]], ctx: dict[str, Any]) -> Any:
    import numpy as np

    fig, ax = _axes(plot)
    rows = tables[0][:40]
    cats = [str(r[plot.x]) for r in rows]
    h = 0.8 / len(plot.y)
    for j, y in enumerate(plot.y):
        ax.barh(np.arange(len(cats)) + j * h, [float(r[y]) for r in rows], height=h, label=y)
    ax.set_yticks(np.arange(len(cats)) + h * (len(plot.y) - 1) / 2, cats, fontsize=8)
    ax.invert_yaxis()
    if len(plot.y) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_roc(plot: Plot, tables: list[list[dict[str, Any]]], ctx: dict[str, Any]) -> Any:
    fig, ax = _axes(plot)
    rows = tables[0]
    auc = ctx.get("metrics", {}).get("classifier/auc")
    ax.plot([r["fpr"] for r in rows], [r["tpr"] for r in rows], label=f"AUC {auc:.3f}" if auc else "ROC")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8, label="chance")
    ax.set_xlabel("false positive rate (web kept as reference)")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_score_hist(plot: Plot, tables: list[list[dict[str, Any]]], ctx: dict[str, Any]) -> Any:
    import numpy as np

    from pipeline.text.quality import keep_probability

    fig, ax = _axes(plot)
    rows = tables[0]
    xs = np.array([r[plot.x] for r in rows])
    width = float(xs[1] - xs[0]) if len(xs) > 1 else 1.0
    negatives = set(ctx.get("params", {}).get("quality", {}).get("negatives", []))
    columns = [k for k in rows[0] if k not in (plot.x, "keep_probability")] if rows else []
    split = {c.split(":")[0] for c in columns if ":" in c}  # "source:kind" columns replace the source's
    for src in [c for c in columns if c not in split]:
        counts = np.array([r[src] for r in rows], dtype=float)
        if counts.sum() == 0:
            continue
        kind = "web" if src.split(":")[0] in negatives else "ref"
        ax.step(xs, counts / counts.sum() / width, where="mid", label=f"{src} ({kind})")
    ax.set_xlabel("quality score P(reference | text)")
    ax.set_ylabel("density")
    alpha = ctx.get("params", {}).get("quality", {}).get("alpha")
    if alpha:
        twin = ax.twinx()
        s = np.linspace(0, 1, 201)
        if rows and "keep_probability" in rows[0]:  # the curve at the alpha the stage ran with
            s, p = xs, np.array([r["keep_probability"] for r in rows])
            # P = (2 - s)^-alpha, from a rounded P: 3 significant digits (9, not 8.99965)
            alpha = float(f"{-np.log(p[0]) / np.log(2.0 - s[0]):.3g}")
        else:
            p = keep_probability(s, alpha)
        twin.plot(s, p, "k--", lw=1.2, label=f"P(keep | score), alpha={alpha:g}")
        twin.set_ylim(0, 1.02)
        twin.set_ylabel("keep probability")
        twin.legend(fontsize=8, loc="upper center")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


PLOTS: dict[str, Callable[[Plot, list[list[dict[str, Any]]], dict[str, Any]], Any]] = {
    "lines": plot_lines,
    "groups": plot_groups,
    "facets": plot_facets,
    "barh": plot_barh,
    "roc": plot_roc,
    "score_hist": plot_score_hist,
}


# ------------------------------------------------------------------------------------------- report
@dataclass
class Report:
    header: dict[str, dict[str, str]] = field(default_factory=dict)
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    timings: list[tuple[str, str, str, str]] = field(default_factory=list)  # stage, wall, overhead, from
    sections: list[tuple[str, str, list[tuple[str, str]]]] = field(default_factory=list)  # stage, title, rows
    figures: list[tuple[str, str]] = field(default_factory=list)  # (png name, title)
    notes: list[str] = field(default_factory=list)
    claims: list[tuple[str, ...]] = field(default_factory=list)  # see claim_rows
    # examples of dropped documents: stage, rule, documents dropped, value (threshold), where from, text start
    dropped: list[tuple[str, str, str, str, str, str]] = field(default_factory=list)


def build(
    root: Path,
    out: Path,
    stages: Sequence[str],
    params: dict[str, Any],
    info: dict[str, str],
    changed: dict[str, tuple[Any, Any]],
    origins: dict[str, str] | None = None,
) -> Report:
    """Gather every stage's figures and draw its plots into ``out``; returns what the page shows.
    ``stages`` are the pipeline's stages in order; ``info`` the run's identity (commit, experiment);
    ``origins`` says per stage which execution made its outputs (``THIS_EXECUTION`` or an earlier
    one): the total wall time counts this execution's stages only."""
    import matplotlib.pyplot as plt

    rep = Report(changed=changed)
    rep.header["run"] = info
    rep.header["hardware"] = hardware()
    rep.header["software"] = software()
    total_wall = total_overhead = 0.0
    order = list(stages) + [s for s in REPORT if s not in stages]
    flats: dict[str, dict[str, float]] = {}
    for stage in order:
        spec = REPORT.get(stage)
        path = root / "data" / stage / "metrics.json"
        if not path.is_file():
            in_pipeline = "" if stage in stages else " (not in dvc.yaml yet)"
            rep.timings.append((stage, NOT_RUN + in_pipeline, "", ""))
            if spec is not None:
                rep.sections.append((stage, spec.title, [("", NOT_RUN + in_pipeline)]))
            continue
        flat = flats[stage] = flatten(read_json(path))
        wall, overhead = flat.get("perf/wall_s"), flat.get("perf/flow_overhead_s")
        origin = (origins or {}).get(stage, THIS_EXECUTION if origins is None else "unknown")
        if origin == THIS_EXECUTION:
            total_wall += wall or 0.0
            total_overhead += overhead or 0.0
        rep.timings.append((stage, fmt(wall, "s"), fmt(overhead, "s"), origin))
        if spec is None:
            continue
        rep.sections.append((stage, spec.title, table_rows(spec, flat) or [("", "no figures")]))
        for plot in spec.plots:
            files = [root / "data" / stage / c for c in plot.csvs]
            present = [f for f in files if f.is_file()]
            if not present:
                continue
            tables = [read_csv(f) for f in present]
            if not any(tables):
                continue
            if plot.kind in ("lines", "groups") and max(len(t) for t in tables) < 2:
                rep.notes.append(f"{stage}: {plot.title}: one point only, shown in the table instead")
                continue
            try:
                fig = PLOTS[plot.kind](plot, tables, {"params": params, "metrics": flat})
            except (KeyError, ValueError, TypeError, IndexError) as e:
                rep.notes.append(f"{stage}: plot {plot.name} skipped ({type(e).__name__}: {e})")
                continue
            (out / "plots").mkdir(parents=True, exist_ok=True)
            fig.savefig(out / "plots" / plot.name, dpi=110)
            plt.close(fig)
            rep.figures.append((plot.name, f"{stage}: {plot.title}"))
        if spec.samples and (root / "data" / stage / spec.samples).is_file():
            rep.dropped += dropped_rows(stage, read_json(root / "data" / stage / spec.samples))
    reused = sum(1 for t in rep.timings if t[3] and t[3] != THIS_EXECUTION)
    rep.timings.append((
        "total", fmt(total_wall, "s"), fmt(total_overhead, "s"),
        f"this execution ({reused} stages' outputs come from earlier ones)" if reused else THIS_EXECUTION,
    ))  # fmt: skip
    rep.claims = claim_rows(CLAIMS, flats)
    _seed_section(rep, root, params)
    dtypes = compute_dtypes(root, order)
    if dtypes:
        rep.header["run"] = {**rep.header["run"], "compute dtype": dtypes}
    return rep


def _seed_section(rep: Report, root: Path, params: dict[str, Any]) -> None:
    """The spread over seeds (mean ± 95% interval) when a seed group of these params exists."""
    from pipeline.errors import LineageError
    from pipeline.stats import group_for, report_rows

    try:
        group = group_for(root, params)
    except LineageError as e:
        rep.notes.append(f"seed groups: {e}")
        return
    if group is not None:
        title = f"seeds: group {group['group']}, mean ± 95% interval over {len(group['members'])} runs"
        rep.sections.append(("seeds", title, report_rows(group)))


def dropped_rows(stage: str, samples: dict[str, Any], per_rule: int = 2) -> list[tuple[str, ...]]:
    """Up to ``per_rule`` examples of each rule's drops: what the rule measured against its threshold,
    where the document came from, and how its text starts."""
    rows = []
    for rule, entry in samples.items():
        for s in entry.get("samples", [])[:per_rule]:
            text = " ".join(str(s.get("text") or "").split())
            rows.append((
                stage, rule, fmt(entry.get("documents"), "int"),
                f"{fmt(s.get('value'), 'g')} ({fmt(s.get('threshold'), 'g')})",
                str(s.get("url") or s.get("id") or ""), text[:160] + ("..." if len(text) > 160 else ""),
            ))  # fmt: skip
    return rows


DROPPED_HEADER = ("stage", "rule", "dropped", "value (threshold)", "document", "text")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    esc = [[str(c).replace("|", "\\|") for c in r] for r in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in esc])


def _changed_rows(changed: dict[str, tuple[Any, Any]]) -> list[list[str]]:
    return [[k, json.dumps(a), json.dumps(b)] for k, (a, b) in changed.items()]


def to_markdown(rep: Report) -> str:
    parts = [f"# gpt-lineage report card\n\n_generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')}_\n"]
    if rep.claims:
        parts.append("## the papers' claims, at this run's scale\n\n" + _md_table(CLAIMS_HEADER, rep.claims))
    parts.append("## details")
    for title, kv in rep.header.items():
        parts.append(f"## {title}\n\n" + _md_table(["", ""], [[k, v] for k, v in kv.items()]))
    parts.append(
        "## changed params (vs the last commit)\n\n"
        + (_md_table(["param", "at HEAD", "this run"], _changed_rows(rep.changed)) if rep.changed else "none")
    )
    parts.append(
        "## wall time per stage\n\n"
        + _md_table(["stage", "wall", "orchestration overhead", "made by"], rep.timings)
    )
    rows = [[stage, label, value] for stage, _, lines in rep.sections for label, value in lines]
    parts.append("## the run in one table\n\n" + _md_table(["stage", "metric", "value"], rows))
    if rep.figures:
        parts.append("## plots\n\n" + "\n\n".join(f"### {t}\n\n![{n}](plots/{n})" for n, t in rep.figures))
    if rep.dropped:
        parts.append("## dropped documents, examples per rule\n\n" + _md_table(DROPPED_HEADER, rep.dropped))
    if rep.notes:
        parts.append("## notes\n\n" + "\n".join(f"- {n}" for n in rep.notes))
    return "\n\n".join(parts) + "\n"


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1060px;margin:2em auto;
padding:0 1em;color:#1d232a}
h1{font-size:1.6em;margin-bottom:.1em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0;font-size:13px} td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top} th{background:#f4f6f8} td.v{font-variant-numeric:tabular-nums}
tr.stage td{background:#eef3f8;font-weight:600} .muted{color:#777} .grid{display:grid;
grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:12px} figure{margin:0} img{max-width:100%}
figcaption{font-size:12px;color:#555} .cols{display:grid;grid-template-columns:repeat(3,1fr);gap:16px}
table.claims td:nth-child(4){font-weight:600;white-space:nowrap}
"""


def _html_kv(kv: dict[str, str]) -> str:
    return (
        "<table>"
        + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in kv.items())
        + "</table>"
    )


def to_html(rep: Report, out: Path) -> str:
    """One self-contained page: styles inline, every plot a base64 data URI, no network."""
    e = html.escape
    cols = "".join(f"<div><h2>{e(t)}</h2>{_html_kv(kv)}</div>" for t, kv in rep.header.items())
    changed = (
        "<table><tr><th>param</th><th>at HEAD</th><th>this run</th></tr>"
        + "".join(
            f"<tr><td>{e(k)}</td><td>{e(a)}</td><td>{e(b)}</td></tr>"
            for k, a, b in _changed_rows(rep.changed)
        )
        + "</table>"
        if rep.changed
        else "<p class=muted>none: the params of the last commit</p>"
    )
    timings = (
        "<table><tr><th>stage</th><th>wall</th><th>orchestration overhead</th><th>made by</th></tr>"
        + "".join(
            f"<tr><td>{e(s)}</td><td class=v>{e(w)}</td><td class=v>{e(o)}</td><td>{e(x)}</td></tr>"
            for s, w, o, x in rep.timings
        )
        + "</table>"
    )
    claims = (
        "<h2>the papers' claims, at this run's scale</h2><table class=claims><tr>"
        + "".join(f"<th>{e(h)}</th>" for h in CLAIMS_HEADER)
        + "</tr>"
        + "".join(
            "<tr>"
            + "".join(f"<td{' class=v' if i == 3 else ''}>{e(c)}</td>" for i, c in enumerate(row))
            + "</tr>"
            for row in rep.claims
        )
        + "</table>"
        if rep.claims
        else ""
    )
    body = []
    for stage, title, lines in rep.sections:
        body.append(f"<tr class=stage><td colspan=2>{e(title)}</td></tr>")
        for label, value in lines:
            cls = " class=muted" if value.startswith(NOT_RUN) else ""
            body.append(f"<tr{cls}><td>{e(label or stage)}</td><td class=v>{e(value)}</td></tr>")
    figures = []
    for name, title in rep.figures:
        data = base64.b64encode((out / "plots" / name).read_bytes()).decode()
        figures.append(
            f"<figure><img alt='{e(name)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{e(title)}</figcaption></figure>"
        )
    notes = "".join(f"<li>{e(n)}</li>" for n in rep.notes)
    dropped = (
        "<h2>dropped documents, examples per rule</h2><table><tr>"
        + "".join(f"<th>{e(h)}</th>" for h in DROPPED_HEADER)
        + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rep.dropped)
        + "</table>"
        if rep.dropped
        else ""
    )
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>gpt-lineage report</title>"
        f"<style>{CSS}</style></head><body><h1>gpt-lineage report card</h1>"
        f"<p class=muted>generated {e(time.strftime('%Y-%m-%d %H:%M:%S %Z'))}</p>{claims}"
        f"<h2>details</h2><div class=cols>{cols}</div><h2>changed params (vs the last commit)</h2>{changed}"
        f"<h2>wall time per stage</h2>{timings}<h2>the run in one table</h2>"
        f"<table><tr><th>metric</th><th>value</th></tr>{''.join(body)}</table>"
        f"<h2>plots</h2><div class=grid>{''.join(figures)}</div>{dropped}"
        + (f"<h2>notes</h2><ul>{notes}</ul>" if notes else "")
        + "</body></html>\n"
    )
