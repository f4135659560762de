"""The `py_env_docs` source: docstrings and bundled docs of installed distributions, read from a fake
site-packages (two distributions with METADATA and RECORD), with a copied docstring that dedup finds."""

from __future__ import annotations

import base64
import hashlib
import sys
from pathlib import Path

import pytest

from pipeline.config import DedupConfig, PyEnvDocsSource, load_params
from pipeline.text.dedup import exact_key, minhash_signatures, near_duplicate_clusters
from pipeline.text.sources import code_docstrings, env_manifest, read_py_env_docs_source

SHARED = (
    "Normalise a batch of hidden states so that every position has zero mean and unit variance "
    "across the feature axis, then scale and shift it with the learned weight and bias. The "
    "statistics are computed in float32 even when the activations are half precision, which keeps "
    "the result stable for long sequences and large models alike."
)
EDITED = SHARED.replace("hidden states", "encoder outputs").replace("large models", "big models")
OWN = (
    "Split a long document into passages of at most the given number of words, never cutting a "
    "sentence in half unless a single sentence is itself longer than the limit; the passages keep "
    "their order and together hold every word of the document exactly once, so nothing is lost."
)
README = "# alpha-pkg\n\n" + " ".join(["Alpha reads documents and writes passages for training."] * 6)


def _dist(site: Path, name: str, version: str, files: dict[str, str]) -> None:
    """An installed distribution as pip leaves it: package files plus .dist-info/METADATA and RECORD."""
    info = f"{name.replace('-', '_')}-{version}.dist-info"
    files = {**files, f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\n"}
    rows = []
    for rel, text in files.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        rows.append(f"{rel},sha256={digest},{len(text.encode())}")
    rows += [f"{info}/RECORD,,", f"../../bin/{name},sha256=x,10"]  # a script outside site-packages
    (site / info / "RECORD").write_text("\n".join(rows) + "\n")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    site = tmp_path / "site-packages"
    _dist(
        site,
        "alpha-pkg",
        "1.0",
        {
            "alpha_pkg/__init__.py": f'"""{OWN}"""\nraise RuntimeError("imported")\n',
            "alpha_pkg/norm.py": (
                "import os\n\n\nclass LayerNorm:\n"
                f'    """{SHARED}"""\n\n'
                "    def forward(self, x):\n"
                '        """Too short to keep."""\n'
                "        return x\n"
            ),
            "alpha_pkg/README.md": README,
            "alpha_pkg/LICENSE.md": "Permission is hereby granted " * 20,
            "alpha_pkg/words.txt": "alpha\nbeta\n" * 200,  # data, not a doc
        },
    )
    _dist(
        site,
        "Beta_Models",
        "2.0",
        {
            "beta_models/bert.py": (
                "if True:\n    class BertNorm:\n"
                f'        """{SHARED}"""\n\n'  # copied verbatim, as transformers' "Copied from"
                "        def __call__(self):\n"
                f'            """{EDITED}"""\n'  # copied with names changed
            ),
        },
    )
    return site


def test_source_reads_docstrings_and_bundled_docs_without_importing(site: Path):
    src = PyEnvDocsSource(kind="py_env_docs", min_chars=200)
    docs = read_py_env_docs_source("env_docs", src, path=[str(site)])
    urls = [d["url"] for d in docs]
    # distributions by name, files by path, docstrings in source order; keys name the definition
    assert urls == [
        "pyenv:alpha-pkg/alpha_pkg/README.md",
        "pyenv:alpha-pkg/alpha_pkg/__init__.py:1:alpha_pkg",
        "pyenv:alpha-pkg/alpha_pkg/norm.py:4:alpha_pkg.norm.LayerNorm",
        "pyenv:beta-models/beta_models/bert.py:2:beta_models.bert.BertNorm",
        "pyenv:beta-models/beta_models/bert.py:5:beta_models.bert.BertNorm.__call__",
    ]
    assert [d["text"] for d in docs][1:] == [OWN, SHARED, SHARED, EDITED]
    assert all(d["role"] == "reference" and d["source"] == "env_docs" for d in docs)
    assert len({d["id"] for d in docs}) == len(docs)
    assert "alpha_pkg" not in sys.modules  # read with ast: its RuntimeError never ran


def test_params_choose_distributions_and_cap_what_is_read(site: Path):
    def read(**kw):
        return [
            d["url"]
            for d in read_py_env_docs_source("e", PyEnvDocsSource(kind="py_env_docs", **kw), [str(site)])
        ]

    assert all(u.startswith("pyenv:beta-models/") for u in read(distributions=["beta-models"]))
    assert read(distributions=["BETA_models"]) == read(exclude=["alpha-pkg"])  # names as pip compares them
    assert len(read(max_per_distribution=1)) == 2  # one from each distribution
    assert len(read(max_docs=3)) == 3
    assert read(max_bytes=len(README) + len(OWN)) == read()[:2]
    assert not any(u.endswith("README.md") for u in read(bundled_docs=False))
    assert len(read(min_chars=10)) == 6  # the short docstring too


def test_dedup_finds_the_copied_docstrings(site: Path):
    docs = read_py_env_docs_source("env_docs", PyEnvDocsSource(kind="py_env_docs"), [str(site)])
    texts = [d["text"] for d in docs]
    keys = [exact_key(t) for t in texts]
    exact = [i for i, k in enumerate(keys) if keys.count(k) > 1]
    assert [docs[i]["url"].rsplit(":", 1)[1] for i in exact] == [
        "alpha_pkg.norm.LayerNorm",
        "beta_models.bert.BertNorm",
    ]
    cfg = DedupConfig(priority=[], min_jaccard=0.45)
    clusters = near_duplicate_clusters(minhash_signatures(texts, cfg), list(range(len(texts))), cfg)
    (cluster,) = clusters  # the verbatim copy and the edited copy with the original; nothing else
    assert sorted([cluster["kept"], *cluster["removed"]]) == [2, 3, 4]


def test_manifest_hash_follows_names_versions_and_file_lists(site: Path, tmp_path: Path):
    first = env_manifest([str(site)])
    assert first == env_manifest([str(site)]) and first["distributions"] == 2
    assert first["manifest_id"] == int(first["manifest"][:12], 16) < 2**53  # exact as a JSON number
    record = next(site.glob("Beta_Models-*.dist-info")) / "RECORD"
    record.write_text(record.read_text() + "beta_models/extra.py,,\n")
    assert env_manifest([str(site)])["manifest"] != first["manifest"]


def test_code_docstrings_survive_bad_code():
    assert list(code_docstrings(b"def broken(:\n", "m")) == []
    nested = b'try:\n    def f():\n        """doc of f"""\nexcept ImportError:\n    def g():\n        """doc of g"""\n'
    assert [q for _, q, _ in code_docstrings(nested, "m")] == ["m.f", "m.g"]


def test_default_params_cap_the_environment_source():
    src = load_params(Path(__file__).parents[1] / "params.yaml").crawl.sources["env_docs"]
    assert src.kind == "py_env_docs" and src.max_per_distribution  # the default run takes a slice
