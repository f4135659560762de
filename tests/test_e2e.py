"""The whole DAG under DVC, from a fresh copy of the repository, on the tiny profile: the README's
path (profile experiment, apply, rerun nothing), models that learned (held-out figures against
their baselines), exact dependencies (a forced stage on unchanged
data leaves everything after it up to date) and experiments that leave the workspace clean."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.tokenizer import open_tokens
from tests.conftest import ROOT

BIN = Path(sys.executable).parent
STAGES = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])


def sh(args: list[str], cwd: Path, timeout: int = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "120"}
    env.pop("PREFECT_API_URL", None)
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def git(repo: Path, *args: str) -> str:
    cmd = ["git", "-c", "user.email=ci@example.invalid", "-c", "user.name=ci", *args]
    return subprocess.run(cmd, cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A fresh checkout: the files git knows (committed or not), in a new git repository, with no
    dvc.lock and no metrics yet, as before a user's first run."""
    dest = tmp_path_factory.mktemp("clone")
    files = git(ROOT, "ls-files", "--cached", "--others", "--exclude-standard").split("\n")
    for f in filter(None, files):
        if (
            (ROOT / f).is_file()
            and f != "dvc.lock"
            and not (f.startswith("metrics/") and f.endswith(".json"))
        ):
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "snapshot")
    return dest


def downstream(stage: str) -> list[str]:
    """``stage`` and every stage that reads, directly or not, one of its outputs, in DAG order."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    owner = {}
    for name, st in spec.items():
        for out in st.get("outs", []):
            owner[str(next(iter(out)) if isinstance(out, dict) else out)] = name
    hit = {stage}
    for name in STAGES:  # dvc.yaml lists stages in an order where inputs come first
        deps = spec[name].get("deps", [])
        if any(owner.get(str(d)) in hit for d in deps):
            hit.add(name)
    return [s for s in STAGES if s in hit]


def ran(out: str) -> list[str]:
    return [s for s in STAGES if f"Running stage '{s}'" in out]


@pytest.mark.slow
def test_tiny_profile_then_exact_reruns_and_a_clean_workspace(repo: Path):
    # 1. the profile runs as a DVC experiment and the workspace is restored after it
    params_before = (repo / "params.yaml").read_text()
    run = sh([str(BIN / "lineage"), "run", "--profile", "tiny", "--name", "tiny"], repo, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert ran(run.stdout) == STAGES
    assert "Traceback" not in run.stdout + run.stderr
    assert "dvc exp apply" in run.stdout
    assert (repo / "params.yaml").read_text() == params_before
    assert git(repo, "status", "--porcelain") == ""

    # 2. applying it brings the results back: nothing to rerun, every stage's metrics present
    assert sh(["dvc", "exp", "apply", "tiny"], repo).returncode == 0
    again = sh(["dvc", "repro"], repo)
    assert again.returncode == 0 and ran(again.stdout) == [], again.stdout[-2000:]
    for stage in STAGES:
        detailed = json.loads((repo / "data" / stage / "metrics.json").read_text())
        assert detailed["perf"]["wall_s"] > 0
        headline = json.loads((repo / "metrics" / f"{stage}.json").read_text())
        assert 1 <= len(headline) <= 15, (stage, headline)
    crawl = json.loads((repo / "data" / "crawl" / "metrics.json").read_text())
    assert 0 < crawl["sources"]["pydoc_web"]["fetched"] <= 40  # the profile's max_pages reached DVC
    # the models learned, even at this size: pretraining beats the unigram model of its training
    # tokens on held-out text, the RM ranks held-out pairs better than chance, SFT lowers the
    # response loss of its demonstrations from where the pretrained model started
    metrics = {
        s: json.loads((repo / "data" / s / "metrics.json").read_text()) for s in ("pretrain", "reward", "sft")
    }
    counts = np.bincount(np.asarray(open_tokens(repo / "data" / "tokenize", "train").tokens, dtype=np.int64))
    p = counts[counts > 0] / counts.sum()
    unigram = float(-(p * np.log(p)).sum())
    assert metrics["pretrain"]["val"]["loss"] < unigram, (metrics["pretrain"]["val"]["loss"], unigram)
    assert metrics["reward"]["val"]["pair_acc"] > 0.5, metrics["reward"]["val"]
    sft = metrics["sft"]["train"]
    assert sft["end_loss"] < sft["start_loss"], sft
    print(
        f"e2e tiny: pretrain val loss {metrics['pretrain']['val']['loss']:.3f} < unigram {unigram:.3f}; "
        f"RM pair acc {metrics['reward']['val']['pair_acc']:.3f} over {metrics['reward']['val']['pairs']} pairs; "
        f"SFT response loss {sft['start_loss']:.3f} -> {sft['end_loss']:.3f} (held-out "
        f"{metrics['sft']['val']['start_loss']:.3f} -> {metrics['sft']['val']['best_loss']:.3f})"
    )
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "tiny results")

    # 3. a forced rerun on unchanged data changes nothing downstream: deps are exact outputs, and
    # the outputs are deterministic (timings live in metrics files nothing depends on)
    forced = sh(["dvc", "repro", "-f", "-s", "dedup"], repo)
    assert forced.returncode == 0, forced.stdout[-2000:] + forced.stderr[-2000:]
    assert ran(forced.stdout) == ["dedup"]
    status = sh(["dvc", "status"], repo)
    stale = [line[:-1] for line in status.stdout.splitlines() if line and not line[0].isspace()]
    # only the report is stale: it shows the stages' wall times, which a forced rerun changes
    assert set(stale) <= {"report"}, status.stdout

    # 4. a param change reruns what depends on it (GPT-1's λ ablation: finetune and the report),
    # and the comparison fits a terminal
    exp = sh(["dvc", "exp", "run", "-S", "finetune.lm_coef=0"], repo, timeout=600)
    assert exp.returncode == 0, exp.stdout[-3000:] + exp.stderr[-3000:]
    # evaluate scores the fine-tuned models, so it reruns; ppo reads only evaluate's task files, which
    # the change leaves byte for byte as they were, so DVC keeps ppo
    assert ran(exp.stdout) == [s for s in downstream("finetune") if s != "ppo"]
    diff = sh(["dvc", "metrics", "diff"], repo)
    assert diff.returncode == 0 and "metrics/finetune.json" in diff.stdout, diff.stdout + diff.stderr
    assert max(map(len, diff.stdout.splitlines())) <= 120
    table = sh([str(BIN / "lineage"), "exp"], repo)
    assert table.returncode == 0 and "finetune.lm_coef" in table.stdout, table.stdout + table.stderr
    assert max(map(len, table.stdout.splitlines())) <= 120

    # 5. back to the last commit
    restore = sh([str(BIN / "lineage"), "restore"], repo)
    assert restore.returncode == 0, restore.stdout + restore.stderr
    assert git(repo, "status", "--porcelain") == ""
    assert "Data and pipelines are up to date" in sh(["dvc", "status"], repo).stdout
