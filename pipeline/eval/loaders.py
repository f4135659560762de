"""Real fine-tuning data sets through Hugging Face ``datasets``: a local folder (GLUE-style TSV or
JSONL, Story Cloze CSV, PIQA JSONL with its labels file) or, online, a Hub name.

GLUE's TSV files are read with quoting off (their sentences hold bare quote characters), CoLA's
without a header. A Hub name is ``owner/name`` or ``owner/name:config`` (e.g. ``nyu-mll/glue:sst2``);
``train``/``test`` then name splits. Field names of both the original files and the Hub copies
are accepted.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

from pipeline.errors import LineageError
from pipeline.eval.config import FinetuneTask
from pipeline.eval.task import Task, choice_prompt, verbalized

DEFAULT_FILES = {
    "sst2": ("train.tsv", "dev.tsv"), "cola": ("train.tsv", "dev.tsv"), "rte": ("train.tsv", "dev.tsv"),
    "mrpc": ("msr_paraphrase_train.txt", "msr_paraphrase_test.txt"), "stsb": ("train.tsv", "dev.tsv"),
    "story_cloze": ("train.csv", "test.csv"), "piqa": ("train.jsonl", "valid.jsonl"),
}  # fmt: skip
HUB_SPLITS = ("train", "validation")
COLA_COLUMNS = ["source", "label", "original_label", "sentence"]


def _field(row: dict[str, Any], names: tuple[str, ...], where: str) -> Any:
    for n in names:
        if n in row and row[n] is not None:
            return row[n]
    raise LineageError(f"{where}: no {names[0]!r} field (columns: {', '.join(map(str, row))})")


def _label_index(value: Any, names: list[str], where: str) -> int:
    """An integer label, or a label name, as an index into ``names``; anything else is refused."""
    if isinstance(value, str):
        v = value.strip()
        if v in names:
            return names.index(v)
        try:
            value = int(v)
        except ValueError:
            raise LineageError(f"{where}: label {value!r} is outside the label set {names}") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(names):
        raise LineageError(f"{where}: label {value!r} is outside the label set {names}")
    return value


def to_item(fmt: str, row: dict[str, Any], where: str) -> dict[str, Any]:
    """One row of a data set in ``fmt`` as a transform item (see pipeline.eval.transforms)."""
    if fmt in ("sst2", "cola"):
        labels = SPECS[fmt]["labels"]
        return {"text": str(_field(row, ("sentence", "text"), where)),
                "label": _label_index(_field(row, ("label",), where), labels, where)}  # fmt: skip
    if fmt == "rte":
        return {
            "premise": str(_field(row, ("sentence1", "premise"), where)),
            "hypothesis": str(_field(row, ("sentence2", "hypothesis"), where)),
            "label": _label_index(_field(row, ("label",), where), SPECS[fmt]["labels"], where),
        }
    if fmt == "mrpc":
        return {
            "a": str(_field(row, ("#1 String", "sentence1"), where)),
            "b": str(_field(row, ("#2 String", "sentence2"), where)),
            "label": _label_index(
                _field(row, ("Quality", "\ufeffQuality", "label"), where), SPECS[fmt]["labels"], where
            ),
        }
    if fmt == "stsb":
        raw = _field(row, ("score", "label"), where)
        try:
            score = float(raw)
        except (TypeError, ValueError):
            raise LineageError(f"{where}: similarity score {raw!r} is not a number") from None
        if not 0.0 <= score <= 5.0:
            raise LineageError(f"{where}: similarity score {score} is outside the label range 0..5")
        return {"a": str(_field(row, ("sentence1",), where)), "b": str(_field(row, ("sentence2",), where)),
                "label": score}  # fmt: skip
    if fmt == "story_cloze":
        story = " ".join(
            str(_field(row, (f"InputSentence{i}", f"input_sentence_{i}", f"sentence{i}"), where))
            for i in range(1, 5)
        )
        endings = [
            str(_field(row, (f"RandomFifthSentenceQuiz{i}", f"sentence_quiz{i}"), where)) for i in (1, 2)
        ]
        answer = _field(row, ("AnswerRightEnding", "answer_right_ending"), where)
        return {
            "context": story,
            "choices": endings,
            "label": _label_index(int(answer) - 1, ["1", "2"], where),
        }
    if fmt == "piqa":
        sols = [str(_field(row, (f"sol{i}",), where)) for i in (1, 2)]
        return {"context": f"Question: {_field(row, ('goal',), where)}\nAnswer:", "choices": sols,
                "label": _label_index(_field(row, ("label",), where), ["0", "1"], where)}  # fmt: skip
    raise ValueError(f"unknown format {fmt!r}")


SPECS: dict[str, dict[str, Any]] = {
    "sst2": {"form": "classify", "labels": ["negative", "positive"], "metrics": ("acc", "f1"),
             "prompt": verbalized("{text} very", ["negative", "positive"])},  # GPT-1 section 5
    "cola": {"form": "classify", "labels": ["unacceptable", "acceptable"], "metrics": ("mcc", "acc"),
             "prompt": verbalized("{text}\nIs this sentence good English? Answer:", ["no", "yes"])},
    "rte": {"form": "entail", "labels": ["entailment", "not_entailment"], "metrics": ("acc",),
            "prompt": verbalized("{premise}\nQuestion: {hypothesis} True or False? Answer:", ["True", "False"])},
    "mrpc": {"form": "similar", "labels": ["different", "paraphrase"], "metrics": ("acc", "f1"),
             "prompt": verbalized("{a}\n{b}\nQuestion: do both sentences mean the same? Answer:", ["no", "yes"])},
    "stsb": {"form": "similar", "labels": None, "regression": True, "metrics": ("pearson", "spearman"), "prompt": None},
    "story_cloze": {"form": "choice", "labels": None, "metrics": ("acc",), "prompt": choice_prompt},
    "piqa": {"form": "choice", "labels": None, "metrics": ("acc",), "prompt": choice_prompt},
}  # fmt: skip


def _read_local(fmt: str, path: Path) -> list[dict[str, Any]]:
    """Rows of one local file through ``datasets`` (TSV/CSV/JSONL by suffix)."""
    from datasets import load_dataset

    kwargs: dict[str, Any] = {}
    if path.suffix in (".tsv", ".txt"):
        builder = "csv"
        kwargs = {"sep": "\t", "quoting": csv.QUOTE_NONE, "keep_default_na": False, "encoding": "utf-8-sig"}
        if fmt == "cola":
            kwargs.update(header=None, names=COLA_COLUMNS)
    elif path.suffix == ".csv":
        builder, kwargs = "csv", {"keep_default_na": False}
    elif path.suffix in (".jsonl", ".json"):
        builder = "json"
    else:
        raise LineageError(f"{path}: unknown file type {path.suffix!r} (expected .tsv .txt .csv .jsonl)")
    from pipeline.progress import muted

    try:
        with muted("datasets"):  # its "Failed to load JSON" ERROR line: the error below says it once
            ds = load_dataset(builder, data_files={"data": str(path)}, split="data", **kwargs)
    except Exception as e:  # pandas/arrow parse errors
        raise LineageError(
            f"{path}: cannot read it as {fmt} ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
        ) from None
    rows = ds.to_list()
    labels_file = path.with_name(f"{path.stem}-labels.lst")
    if fmt == "piqa" and labels_file.is_file() and rows and "label" not in rows[0]:
        labels = labels_file.read_text().split()
        if len(labels) != len(rows):
            raise LineageError(f"{labels_file}: {len(labels)} labels for {len(rows)} items in {path.name}")
        rows = [{**r, "label": lab} for r, lab in zip(rows, labels, strict=True)]
    return rows


def _read_hub(name: str, split: str, offline: bool) -> list[dict[str, Any]]:
    if offline:
        raise LineageError(
            f"{name}: not a local path, and common.offline is true; give a local folder or set common.offline: false"
        )
    from datasets import load_dataset

    repo, _, config = name.partition(":")
    try:
        return load_dataset(repo, config or None, split=split).to_list()
    except Exception as e:
        raise LineageError(
            f"{name}: cannot load split {split!r} from the Hub ({str(e).splitlines()[0][:160]})"
        ) from None


def load_task(name: str, spec: FinetuneTask, root: Path, seed: int, offline: bool) -> Task:
    """A real data set as a Task; ``max_train``/``max_test`` keep a seeded sample."""
    fmt = spec.kind
    assert spec.path is not None
    base = Path(spec.path) if Path(spec.path).is_absolute() else root / spec.path
    sides = []
    for side, default, cap in (("train", 0, spec.max_train), ("test", 1, spec.max_test)):
        wanted = getattr(spec, side)
        if base.exists():
            path = base if base.is_file() else base / (wanted or DEFAULT_FILES[fmt][default])
            if base.is_file() and side == "test":
                raise LineageError(
                    f"finetune.tasks.{name}.path: {base} is a file; give the folder holding both sides"
                )
            if not path.is_file():
                raise LineageError(
                    f"finetune.tasks.{name}: {path} not found (set `{side}:` to its file name)"
                )
            rows, where = _read_local(fmt, path), str(path)
        else:
            rows, where = _read_hub(spec.path, wanted or HUB_SPLITS[default], offline), spec.path
        items = [to_item(fmt, r, f"{where}: row {i + 1}") for i, r in enumerate(rows)]
        if cap is not None and len(items) > cap:
            items = random.Random(f"{seed}/{name}/{side}").sample(items, cap)
        sides.append(items)
    s = SPECS[fmt]
    task = Task(name, s["form"], sides[0], sides[1], labels=s["labels"], regression=s.get("regression", False),
                metrics=s["metrics"], prompt=s["prompt"])  # fmt: skip
    task.validate(f"finetune.tasks.{name}")
    return task
