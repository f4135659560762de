"""Real data sets from a local copy: a folder saved with ``datasets`` (save_to_disk), a folder of parquet or
JSONL files, one file, as well as a Hub name; for the crawl's ``hf`` sources and the InstructGPT loaders."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import HfSource
from pipeline.errors import LineageError
from pipeline.feedback.config import ComparisonSource, DemonstrationSource
from pipeline.feedback.data import comparisons, demonstrations, read_records
from pipeline.hfdata import open_dataset
from pipeline.text.sources import read_hf_source

datasets = pytest.importorskip("datasets")

HH = [
    {
        "chosen": f"\n\nHuman: What is {i} plus {i}?\n\nAssistant: {2 * i}.",
        "rejected": f"\n\nHuman: What is {i} plus {i}?\n\nAssistant: I will not say.",
    }
    for i in range(6)
]
DOLLY = [
    {"instruction": f"Name the number after {i}.", "context": "", "response": str(i + 1), "category": "qa"}
    for i in range(5)
]
WEB = {
    "text": [f"web page number {i} about data" for i in range(7)],
    "url": [f"https://e.x/{i}" for i in range(7)],
}


def _save_forms(tmp_path: Path, rows: dict[str, list]) -> dict[str, Path]:
    """The same rows as every local form a user may hold."""
    ds = datasets.Dataset.from_dict(rows)
    forms = {
        "saved_dataset": tmp_path / "saved_dataset",
        "saved_dict": tmp_path / "saved_dict",
        "parquet_dir": tmp_path / "parquet_dir",
        "jsonl_dir": tmp_path / "jsonl_dir",
        "parquet_file": tmp_path / "one.parquet",
        "jsonl_file": tmp_path / "one.jsonl",
    }
    ds.save_to_disk(str(forms["saved_dataset"]))
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(forms["saved_dict"]))
    forms["parquet_dir"].mkdir()
    ds.to_parquet(str(forms["parquet_dir"] / "train-00000-of-00001.parquet"))
    forms["jsonl_dir"].mkdir()
    ds.to_json(str(forms["jsonl_dir"] / "train.jsonl"))
    ds.to_parquet(str(forms["parquet_file"]))
    ds.to_json(str(forms["jsonl_file"]))
    return forms


def _columns(rows: list[dict]) -> dict[str, list]:
    return {k: [r[k] for r in rows] for k in rows[0]}


@pytest.mark.parametrize(
    "form", ["saved_dataset", "saved_dict", "parquet_dir", "jsonl_dir", "parquet_file", "jsonl_file"]
)
def test_hf_source_reads_every_local_form(tmp_path: Path, form: str):
    path = _save_forms(tmp_path, WEB)[form]
    for dataset in (str(path), path.name):  # absolute, and relative to the project root
        src = HfSource(kind="hf", dataset=dataset, streaming=True, max_docs=5)
        docs = read_hf_source("fineweb", src, tmp_path)
        assert [d["text"] for d in docs] == WEB["text"][:5]
        assert [d["url"] for d in docs] == WEB["url"][:5]
        assert {d["source"] for d in docs} == {"fineweb"}


@pytest.mark.parametrize("form", ["saved_dataset", "saved_dict", "parquet_dir", "jsonl_file"])
def test_instruction_loaders_read_local_hh_and_dolly(tmp_path: Path, form: str):
    hh = _save_forms(tmp_path / "hh", _columns(HH))[form]
    dolly = _save_forms(tmp_path / "dolly", _columns(DOLLY))[form]
    # `dataset:` takes a local copy (relative to the root) as it takes a Hub name; `path:` a folder too
    for src in (ComparisonSource(dataset=str(hh.relative_to(tmp_path))), ComparisonSource(path=str(hh))):
        records, origin = read_records(src, tmp_path, "instructions.comparisons")
        cmp = comparisons(records, src.layout, origin)
        assert len(cmp) == 6
        assert cmp[2]["messages"] == [{"role": "user", "content": "What is 2 plus 2?"}]
        assert cmp[2]["responses"] == ["4.", "I will not say."] and cmp[2]["ranks"] == [0, 1]
    src = DemonstrationSource(dataset=str(dolly.relative_to(tmp_path)), max_records=3)
    records, origin = read_records(src, tmp_path, "instructions.demonstrations")
    demos = demonstrations(records, "auto", origin)
    assert [d["reference"] for d in demos] == ["1", "2", "3"]
    assert demos[0]["messages"] == [{"role": "user", "content": "Name the number after 0."}]


def test_saved_dataset_dict_split_and_bad_inputs_are_one_line(tmp_path: Path):
    forms = _save_forms(tmp_path, WEB)
    test = open_dataset("saved_dict", key="k.dataset", split="test", root=tmp_path)
    assert [r["text"] for r in test] == WEB["text"][:1]
    with pytest.raises(
        LineageError, match=r"^k\.dataset: .*saved_dict has no split 'validation' \(it has test, train\)$"
    ):
        open_dataset(str(forms["saved_dict"]), key="k.dataset", split="validation")
    with pytest.raises(LineageError, match=r"^k\.dataset: \./nowhere not found$"):
        open_dataset("./nowhere", key="k.dataset", root=tmp_path)
    (tmp_path / "notes.docx").write_bytes(b"x")
    with pytest.raises(LineageError, match=r"^k\.dataset: notes\.docx: unknown file type"):
        open_dataset("notes.docx", key="k.dataset", root=tmp_path)
    with pytest.raises(
        LineageError, match=r"instructions\.demonstrations\.dataset: cannot load 'no-such/set-xyz'"
    ):
        read_records(DemonstrationSource(dataset="no-such/set-xyz"), tmp_path, "instructions.demonstrations")
