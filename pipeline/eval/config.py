"""Params of the GPT-1 fine-tuning stage and the GPT-2/GPT-3 evaluation stage.

Defaults follow the papers where a figure carries over, scaled to the embedded CPU model where it
cannot (each such choice says why beside it).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from pipeline.section import NAME_RE, Section

EMBEDDED_TASKS = ("source", "similarity", "next_passage", "entailment")
DATASET_FORMATS = ("sst2", "cola", "rte", "mrpc", "stsb", "story_cloze", "piqa")
TaskKind = Literal["source", "similarity", "next_passage", "entailment", "sst2", "cola", "rte", "mrpc", "stsb",
                   "story_cloze", "piqa"]  # fmt: skip


class FinetuneTask(Section):
    """One fine-tuning task: an embedded one built from the mix's validation split, or a real data set.

    For a real data set ``path`` is a local folder or file (GLUE TSV/JSONL, Story Cloze CSV, PIQA
    JSONL), or a Hugging Face Hub name when ``common.offline`` is false; ``train``/``test`` name the
    files (or Hub splits) inside it.
    """

    kind: TaskKind
    path: str | None = None
    train: str | None = None  # file or split; None = the format's usual name
    test: str | None = None
    max_train: int | None = Field(None, ge=1)  # items kept (the first ones after a seeded shuffle)
    max_test: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _path(self) -> FinetuneTask:
        if self.kind in DATASET_FORMATS and not self.path:
            raise ValueError(f"a {self.kind} task needs `path` (a local folder/file or a Hub name)")
        if self.kind in EMBEDDED_TASKS and self.path:
            raise ValueError(f"the embedded {self.kind} task is built from data/mix/val; `path` is not used")
        return self


class FinetuneConfig(Section):
    """Radford et al. 2018, section 3.2 and 4.1 ("Fine-tuning details")."""

    tasks: dict[str, FinetuneTask] = Field(
        default_factory=lambda: {k: FinetuneTask(kind=k) for k in EMBEDDED_TASKS}, min_length=1
    )
    # embedded tasks: passages of `passage_words` words cut from the validation documents; documents
    # are split between the task's train and test side, so no test passage was ever trained on
    passage_words: int = Field(32, ge=4)
    test_fraction: float = Field(0.5, gt=0, lt=1)  # of the documents, per source
    max_train: int = Field(480, ge=10)  # embedded tasks: items per task on the train side
    max_test: int = Field(
        1200, ge=10
    )  # and on the test side (>= 400 keeps each 95% interval within +-5 points)
    choices: int = Field(4, ge=2)  # next_passage: the true continuation among this many
    # the recipe: GPT-1 used lr 6.25e-5, a quarter of its pretraining peak 2.5e-4; our pretraining
    # peak is 3e-3, so the same ratio gives 7.5e-4 (6.25e-5 barely moves a 1M-parameter model in 3 epochs)
    lr: float = Field(7.5e-4, gt=0)
    warmup_fraction: float = Field(0.002, ge=0, lt=1)  # linear warmup over 0.2% of steps, then linear decay
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=1)
    weight_decay: float = Field(0.01, ge=0)  # GPT-1: L2 0.01 on non-bias weights
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0)
    clf_dropout: float = Field(0.1, ge=0, lt=1)  # dropout on the extract-token state before the head
    lm_coef: float = Field(0.5, ge=0)  # lambda in L3 = L2 + lambda * L1; 0 = classifier loss only
    layers_transferred: int | None = Field(None, ge=0)  # first k blocks from pretraining; None = all
    max_len: int | None = Field(None, ge=8)  # tokens per input sequence; None = the model's block_size
    random_init: bool = True  # baseline: same architecture from random init, same recipe
    zero_shot: bool = True  # baseline: the pretrained LM, the task as a prompt scored by likelihood
    eval_interval: int = Field(0, ge=0)  # steps between test evaluations during training; 0 = at the end
    checkpoint_interval: int = Field(50, ge=0)
    resume: bool = True
    dtype: Literal["auto", "float32", "bfloat16"] | None = None  # None = common.dtype
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("tasks")
    @classmethod
    def _names(cls, v: dict[str, FinetuneTask]) -> dict[str, FinetuneTask]:
        import re

        bad = [k for k in v if not re.match(NAME_RE, k)]
        if bad:
            raise ValueError(f"task names must match {NAME_RE}: {bad}")
        return v


class EvaluateConfig(Section):
    """Radford et al. 2019 (zero-shot), Brown et al. 2020 (k-shot, synthetic tasks, contamination)."""

    models: list[str] = [
        "pretrain",
        "finetune/next_passage",
    ]  # stages whose models are scored, when they exist
    num_fewshot: list[int] = Field([0, 1, 4], min_length=1)
    tasks: list[str] = [
        "cloze", "next_passage",
        "arithmetic_2da", "arithmetic_2ds", "arithmetic_3da", "arithmetic_3ds", "arithmetic_4da",
        "arithmetic_4ds", "arithmetic_5da", "arithmetic_5ds", "arithmetic_2dm", "arithmetic_1dc",
        "cycle_letters", "anagrams1", "anagrams2", "random_insertion", "reversed_words",
    ]  # fmt: skip
    external: list[str] = []  # any lm-eval task name (needs its data reachable) or a task YAML path
    items: int = Field(100, ge=10)  # per generated task (test side); GPT-3 used 2,000
    train_items: int = Field(100, ge=4)  # per generated task: the pool k-shot demonstrations come from
    cloze_words: int = Field(40, ge=4)  # words of context before the held-out last word
    passage_words: int = Field(16, ge=4)  # next_passage: words of the context and of each choice
    choices: int = Field(4, ge=2)  # next_passage
    batch_size: int = Field(64, ge=1)
    curve_tasks: list[str] = ["next_passage", "cloze"]  # scored at every kept pretraining checkpoint
    lm_windows: int = Field(32, ge=1)  # validation windows per source for perplexity / bits per byte
    dtype: Literal["auto", "float32", "bfloat16"] | None = None  # None = common.dtype
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("num_fewshot")
    @classmethod
    def _k(cls, v: list[int]) -> list[int]:
        if any(k < 0 for k in v):
            raise ValueError("k must be >= 0")
        return sorted(set(v))

    @field_validator("models")
    @classmethod
    def _models(cls, v: list[str]) -> list[str]:
        known = {"pretrain", "finetune", "sft", "ppo"}
        bad = [m for m in v if m.split("/")[0] not in known]
        if bad:
            raise ValueError(
                f"unknown model(s) {bad}; expected stages among {sorted(known)} (finetune/<task> for one)"
            )
        bad = [m for m in v if "/" in m and (m.split("/")[0] != "finetune" or not re.match(NAME_RE, m[9:]))]
        if bad:
            raise ValueError(
                f"{bad[0]!r}: only finetune names one of its models (finetune/<task>); "
                f"{bad[0].split('/')[0]} has one model, named {bad[0].split('/')[0]!r}"
            )
        return v

    @field_validator("curve_tasks")
    @classmethod
    def _curve(cls, v: list[str], info: ValidationInfo) -> list[str]:
        """Set by hand, every curve task is one the stage builds (the default skips those it does not)."""
        from pathlib import Path

        tasks = info.data.get("tasks", [])
        folders = {Path(e).name for e in info.data.get("external", []) if not e.endswith((".yaml", ".yml"))}
        unknown = [t for t in v if t not in tasks and t not in folders]
        if unknown:
            raise ValueError(
                f"{unknown[0]!r} is not among evaluate.tasks (or an external task folder); the curve "
                f"scores tasks the stage builds: {', '.join(tasks) or 'none'}"
            )
        return v
