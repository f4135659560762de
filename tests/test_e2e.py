"""The whole DAG under DVC, from a clean copy of the repository, on the tiny profile."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

STAGES = ["crawl", "clean", "quality", "dedup", "mix", "tokenize", "pretrain"]
BIN = Path(sys.executable).parent


def sh(args: list[str], cwd: Path, timeout: int = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PREFECT_API_URL", None)
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A fresh checkout: the files git knows (committed or not), in a new git repository."""
    dest = tmp_path_factory.mktemp("clone")
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    git = ["git", "-c", "user.email=ci@example.invalid", "-c", "user.name=ci"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "snapshot"]):
        subprocess.run(git + cmd, cwd=dest, check=True, capture_output=True)
    return dest


@pytest.mark.slow
def test_tiny_profile_runs_the_dag_then_reruns_only_what_changed(repo: Path):
    run = sh([str(BIN / "lineage"), "run", "--profile", "tiny"], repo)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for stage in STAGES:
        assert f"Running stage '{stage}'" in run.stdout
        metrics = json.loads((repo / "data" / stage / "metrics.json").read_text())
        assert metrics["perf"]["wall_s"] > 0
    assert "Traceback" not in run.stdout + run.stderr
    crawl = json.loads((repo / "data" / "crawl" / "metrics.json").read_text())
    assert 0 < crawl["sources"]["pydoc_web"]["fetched"] <= 40  # the profile's max_pages reached DVC's params

    again = sh(["dvc", "repro"], repo)
    assert again.returncode == 0 and "Running stage" not in again.stdout
    assert "Data and pipelines are up to date" in again.stdout

    exp = sh(["dvc", "exp", "run", "-S", "quality.alpha=3"], repo)
    assert exp.returncode == 0, exp.stdout[-3000:] + exp.stderr[-3000:]
    ran = [s for s in STAGES if f"Running stage '{s}'" in exp.stdout]
    assert ran == ["quality", "dedup", "mix", "tokenize", "pretrain"]  # crawl and clean are untouched

    shown = sh(["dvc", "metrics", "show", "--json"], repo)
    assert shown.returncode == 0
    values = json.dumps(json.loads(shown.stdout))
    for key in (
        "docs_out",
        "drops",
        "auc",
        "web_keep_rate",
        "duplicate_rate",
        "clusters",
        "epochs",
        "tokens_out",
    ):
        assert f'"{key}"' in values, key
