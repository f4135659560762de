"""dvc.yaml's code deps are each stage's computed import closure, so the cache never says "up to
date" after a change to a module that shapes a stage's outputs."""

from __future__ import annotations

from pathlib import Path

from pipeline import dag
from pipeline.cli import main
from tests.conftest import ROOT


def test_dvc_yaml_code_deps_are_the_import_closure():
    diff = dag.differences(ROOT)
    assert diff == {}, f"run `lineage dag --write`: {diff}"


def _tree(root: Path) -> None:
    files = {
        "stages/__init__.py": "",
        "stages/train.py": "import sys\n\ndef body():\n    from pipeline.model import net\n    return net\n",
        "pipeline/__init__.py": "",
        "pipeline/model/__init__.py": '"""doc"""\nfrom .net import Net\n',
        "pipeline/model/net.py": "from ..maths import dot\nfrom pipeline import progress\n",
        "pipeline/maths.py": "import numpy\n",
        "pipeline/progress.py": "from pipeline import bars\n",
        "pipeline/bars.py": "",
        "pipeline/unused.py": "",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "dvc.yaml").write_text(
        "stages:\n"
        "  train:\n"
        "    # trains the net\n"
        "    cmd: python -m stages.train\n"
        "    deps:\n"
        "      - stages/train.py\n"
        "      - pipeline/unused.py\n"
        "      - data/tokens.bin\n"
        "    outs:\n"
        "      - data/train\n"
    )


def test_closure_follows_lazy_and_relative_imports_and_skips_display_modules(tmp_path):
    _tree(tmp_path)
    got = dag.closure(tmp_path, "stages/train.py")
    # the lazy import inside body(), the package __init__ with code, a relative import two levels up;
    # not progress.py (cannot change outputs) nor bars.py, which only progress.py imports
    assert got == [
        "stages/train.py",
        "pipeline/maths.py",
        "pipeline/model/__init__.py",
        "pipeline/model/net.py",
    ]


def test_check_fails_on_drift_and_write_fixes_it_keeping_comments_and_data_deps(
    tmp_path, monkeypatch, capsys
):
    _tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["dag"]) == 1
    out = capsys.readouterr().out
    assert "train: missing pipeline/model/net.py" in out and "train: not imported pipeline/unused.py" in out
    assert main(["dag", "--write"]) == 0
    text = (tmp_path / "dvc.yaml").read_text()
    assert (
        "# trains the net" in text and "      - data/tokens.bin" in text and "pipeline/unused.py" not in text
    )
    assert main(["dag"]) == 0
    # a new import in the model reaches dvc.yaml only through the check
    (tmp_path / "pipeline/extra.py").write_text("")
    (tmp_path / "pipeline/model/net.py").write_text("from ..maths import dot\nfrom pipeline import extra\n")
    assert main(["dag"]) == 1
    assert "train: missing pipeline/extra.py" in capsys.readouterr().out
