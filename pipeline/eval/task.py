"""A fine-tuning task: items in one of GPT-1's four forms, its labels, its metrics, its zero-shot prompt.

The zero-shot prompt is GPT-1's section 5 "zero-shot behaviours" baseline and GPT-2's approach:
the task written as text, each option a continuation, the option of highest log-likelihood wins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import LineageError
from pipeline.eval.transforms import FIELDS, Form

# one option per label (or per choice): (context, continuation); and the gold index
Prompt = Callable[[dict[str, Any]], tuple[list[tuple[str, str]], int]]


@dataclass
class Task:
    name: str
    form: Form
    train: list[dict[str, Any]]
    test: list[dict[str, Any]]
    labels: list[str] | None = None  # class names; None for multiple choice and regression
    regression: bool = False  # STS-B: a score, Pearson/Spearman instead of accuracy
    metrics: tuple[str, ...] = ("acc",)  # acc f1 mcc pearson spearman
    prompt: Prompt | None = None  # zero-shot by likelihood; None = not applicable
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_out(self) -> int:
        """Outputs of the linear head: classes, 1 per choice, or 1 score."""
        if self.regression or self.form == "choice":
            return 1
        return len(self.labels or [])

    def validate(self, where: str) -> None:
        """Every item has its form's fields and a label in the label set; one line for the first that does not."""
        for side, items in (("train", self.train), ("test", self.test)):
            if not items:
                raise LineageError(f"{where}: the {side} side of task {self.name} has no items")
            for i, item in enumerate(items):
                for f in (*FIELDS[self.form], "label"):
                    if item.get(f) is None or (isinstance(item[f], str) and not item[f].strip()):
                        raise LineageError(f"{where}: {side} item {i} has no {f!r} field (task {self.name})")
                label = item["label"]
                if self.regression:
                    if not isinstance(label, int | float):
                        raise LineageError(f"{where}: {side} item {i}: label {label!r} is not a number")
                    continue
                n = len(item["choices"]) if self.form == "choice" else len(self.labels or [])
                if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < n:
                    names = f"0..{n - 1}" if self.form == "choice" else f"{self.labels}"
                    raise LineageError(
                        f"{where}: {side} item {i}: label {label!r} is outside the label set {names} (task {self.name})"
                    )


def choice_prompt(item: dict[str, Any]) -> tuple[list[tuple[str, str]], int]:
    """Multiple choice as language modelling: the context, then each answer after a space."""
    return [(item["context"], " " + c) for c in item["choices"]], int(item["label"])


def verbalized(template: str, words: list[str]) -> Prompt:
    """A classification prompt: ``template`` filled with the item's fields, then one word per label."""

    def prompt(item: dict[str, Any]) -> tuple[list[tuple[str, str]], int]:
        ctx = template.format(**item)
        return [(ctx, " " + w) for w in words], int(item["label"])

    return prompt
