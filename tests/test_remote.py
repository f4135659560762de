"""The default DVC remote (.dvc/config): `lineage push` in one clone, `dvc pull` in a second clone
restores every stage's outputs, and `dvc repro` there reruns nothing. A two-stage project of cheap
stages stands in for the pipeline, with the repository's own .dvc/config."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.tracking import dvc_hash
from tests.conftest import ROOT

BIN = Path(sys.executable).parent

MAKE = (
    "import pathlib; d = pathlib.Path('data/make/dir'); d.mkdir(parents=True, exist_ok=True); "
    "(d / 'a.txt').write_text('alpha\\n' * 100); (d.parent / 'b.bin').write_bytes(bytes(range(256)) * 40)"
)
COUNT = (
    "import pathlib; n = len(pathlib.Path('data/make/dir/a.txt').read_text().split()); "
    "pathlib.Path('data/count').mkdir(parents=True, exist_ok=True); "
    "pathlib.Path('data/count/n.txt').write_text(str(n))"
)


def sh(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)


def git(repo: Path, *args: str) -> str:
    cmd = ["git", "-c", "user.email=ci@example.invalid", "-c", "user.name=ci", *args]
    return subprocess.run(cmd, cwd=repo, check=True, capture_output=True, text=True).stdout


def test_push_then_pull_in_a_second_clone_restores_outputs_and_reruns_nothing(tmp_path: Path):
    a = tmp_path / "a"
    a.mkdir()
    git(a, "init", "-q")
    assert sh(["dvc", "init", "-q"], a).returncode == 0
    shutil.copy(ROOT / ".dvc" / "config", a / ".dvc" / "config")  # the project's default remote
    (a / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "make": {"cmd": f'python -c "{MAKE}"', "outs": ["data/make"]},
        "count": {"cmd": f'python -c "{COUNT}"', "deps": ["data/make/dir"], "outs": ["data/count"]},
    }}))  # fmt: skip
    assert sh(["dvc", "repro", "-q"], a).returncode == 0
    git(a, "add", "-A")
    git(a, "commit", "-qm", "two stages")
    lock = yaml.safe_load((a / "dvc.lock").read_text())
    # the hash a model version is tagged with is DVC's own
    assert dvc_hash(a / "data" / "make") == lock["stages"]["make"]["outs"][0]["md5"]

    push = sh([sys.executable, "-m", "pipeline.cli", "push"], a)
    assert push.returncode == 0, push.stdout + push.stderr
    remote = tmp_path / "gpt-lineage-remote"  # ../../ of a clone's .dvc/: beside the clones
    assert remote.is_dir() and any(remote.rglob("*"))

    b = tmp_path / "b"
    git(tmp_path, "clone", "-q", str(a), str(b))
    assert not (b / "data" / "make").exists()  # git holds only data/.gitignore
    pull = sh(["dvc", "pull"], b)
    assert pull.returncode == 0, pull.stdout + pull.stderr
    for f in ("data/make/dir/a.txt", "data/make/b.bin", "data/count/n.txt"):
        assert (b / f).read_bytes() == (a / f).read_bytes(), f
    status = sh(["dvc", "status"], b)
    assert "Data and pipelines are up to date" in status.stdout, status.stdout + status.stderr
    repro = sh(["dvc", "repro"], b)
    assert repro.returncode == 0 and "Running stage" not in repro.stdout, repro.stdout
