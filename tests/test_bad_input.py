"""Bad input, interrupts and kills, as a user (or an attacker) meets them: every case ends in one
line naming the problem, a non-zero exit, nothing half-written in data/, a FAILED MLflow run where
one was started, and no process left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.config import parse_params
from pipeline.errors import LineageError
from pipeline.stage import main, run_stage
from stages import clean, crawl
from tests.conftest import ROOT, files_params, write_corpus
from tests.test_pretrain_stage import PRETRAIN
from tests.test_tokenizer import write_mix

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
ENV.pop("PREFECT_API_URL", None)


def stage(root: Path, name: str, timeout: int = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"stages.{name}", "--root", str(root)],
        cwd=ROOT, env=kw.pop("env", ENV), capture_output=True, text=True, timeout=timeout, **kw,
    )  # fmt: skip


def write_params(root: Path, data: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(data))


def assert_one_line_failure(run: subprocess.CompletedProcess, stage_name: str, *needles: str) -> str:
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode != 0
    assert "Traceback" not in run.stderr + run.stdout, run.stderr[-3000:]
    errors = [line for line in lines if line.startswith(f"error: {stage_name}:")]
    assert len(errors) == 1, run.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def assert_nothing_half_written(root: Path) -> None:
    leftovers = [p.name for p in (root / "data").glob(".*.tmp-*")]
    assert not leftovers, leftovers


def last_run_status(root: Path, stage_name: str) -> str:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    runs = mlflow.search_runs(
        experiment_names=["gpt-lineage"], filter_string=f"tags.stage = '{stage_name}'", output_format="list"
    )
    return max(runs, key=lambda r: r.info.start_time).info.status


@pytest.fixture(scope="module")
def crawled(tmp_path_factory) -> Path:
    """A project whose crawl stage has run (plain Python task runner: no Prefect server to wait for)."""
    root = tmp_path_factory.mktemp("bad")
    write_corpus(root)
    data = files_params(root)
    write_params(root, data)
    run_stage("crawl", crawl.body, root, parse_params(data))
    return root


def copy_project(src: Path, dest: Path) -> Path:
    """A copy of a project with its own tracking store (params name the store by absolute path)."""
    subprocess.run(["cp", "-r", f"{src}/.", str(dest)], check=True)
    data = yaml.safe_load((dest / "params.yaml").read_text())
    data["common"]["tracking_uri"] = f"sqlite:///{dest / 'mlflow.db'}"
    write_params(dest, data)
    return dest


# --------------------------------------------------------------------------------- damaged inputs
def _garble(path: Path) -> None:
    path.write_bytes(b"PAR1 this is not parquet at all" * 10)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", [_garble, _truncate], ids=["garbled", "truncated"])
def test_a_damaged_parquet_shard_is_one_line_naming_it(crawled, tmp_path, damage):
    root = copy_project(crawled, tmp_path)
    shard = sorted((root / "data" / "crawl" / "docs").glob("*.parquet"))[0]
    damage(shard)
    run = stage(root, "clean")
    assert_one_line_failure(run, "clean", shard.name, "dvc repro -f crawl")
    assert not (root / "data" / "clean").exists()
    assert_nothing_half_written(root)
    assert last_run_status(root, "clean") == "FAILED"


def test_an_unwritable_output_is_one_line_and_the_run_is_failed(crawled, tmp_path, monkeypatch, capsys):
    root = copy_project(crawled, tmp_path)
    real_rename = Path.rename

    def rename(self, target):  # root ignores permission bits, so refuse the final rename instead
        if Path(target).name == "clean":
            raise PermissionError(13, "Permission denied", str(target))
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    rc = main("clean", clean.body, ["--root", str(root)])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert err.count("error: clean:") == 1 and "PermissionError" in err and "data/clean" in err
    assert not (root / "data" / "clean").exists()
    assert_nothing_half_written(root)
    assert last_run_status(root, "clean") == "FAILED"


@pytest.mark.parametrize(
    "key, section, value",
    [
        ("mix.weights.web", ("mix", "weights", "web"), float("nan")),
        ("quality.alpha", ("quality", "alpha"), float("inf")),
        ("quality.C", ("quality", "C"), float("nan")),
        ("pretrain.lr", ("pretrain", "lr"), float("nan")),
        ("pretrain.grad_clip", ("pretrain", "grad_clip"), float("inf")),
        ("pretrain.temperature", ("pretrain", "temperature"), float("nan")),
        ("crawl.sources.web.timeout_s", ("crawl", "sources", "web", "timeout_s"), float("inf")),
        ("crawl.sources.web.backoff_s", ("crawl", "sources", "web", "backoff_s"), float("nan")),
    ],
)
def test_non_finite_params_are_refused_with_their_key(tmp_path, key, section, value):
    data = files_params(tmp_path)
    data["crawl"]["sources"]["web"] = {"kind": "http", "seeds": ["http://127.0.0.1:9/"]}
    node = data
    for part in section[:-1]:
        node = node.setdefault(part, {})
    node[section[-1]] = value
    with pytest.raises(LineageError, match=rf"{key}: Input should be a finite number"):
        parse_params(data, "params.yaml")


# ------------------------------------------------------------------------- one run at a time, leftovers
def test_a_second_run_of_a_running_stage_is_refused(crawled, tmp_path):
    import fcntl

    root = copy_project(crawled, tmp_path)
    with (root / "data" / ".clean.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running `clean` holds it
        run = stage(root, "clean")
    assert_one_line_failure(run, "clean", "another run of this stage is in progress")
    assert not (root / "data" / "clean").exists()


def test_stale_temp_folders_are_removed_by_the_next_stage_of_any_kind_and_mode_follows_umask(
    crawled, tmp_path
):
    root = copy_project(crawled, tmp_path)
    stale = root / "data" / ".dedup.tmp-abc123"
    (stale / "_signatures").mkdir(parents=True)
    status = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "status"], cwd=root, env=ENV, capture_output=True, text=True
    )
    assert "data/.dedup.tmp-abc123 was left by a killed run" in status.stdout
    old = os.umask(0o022)
    try:
        run = stage(root, "clean")
    finally:
        os.umask(old)
    assert run.returncode == 0, run.stderr[-2000:]
    assert not stale.exists() and "removed data/.dedup.tmp-abc123" in run.stderr
    assert (root / "data" / "clean").stat().st_mode & 0o777 == 0o755


# ------------------------------------------------------------------------------------- token data
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    from stages import tokenize

    root = tmp_path_factory.mktemp("tok")
    write_mix(root)
    pre = {**PRETRAIN, "max_steps": 20, "eval_interval": 10}
    data = files_params(root, {"tokenize": {"vocab_size": 300}, "pretrain": pre})
    write_params(root, data)
    run_stage("tokenize", tokenize.body, root, parse_params(data))
    run = stage(root, "pretrain")
    assert run.returncode == 0, run.stderr[-2000:]
    return root


def test_token_ids_outside_the_vocabulary_are_refused_even_with_a_finished_checkpoint(trained, tmp_path):
    root = copy_project(trained, tmp_path)
    assert list((root / "checkpoints" / "pretrain").glob("*/ckpt.pt"))  # a finished run to resume
    train_bin = root / "data" / "tokenize" / "train.bin"
    ids = np.fromfile(train_bin, dtype=np.uint16)
    ids[len(ids) // 2] = 4000
    ids.tofile(train_bin)
    run = stage(root, "pretrain")
    assert_one_line_failure(run, "pretrain", "train.bin", "token id 4000", "dvc repro -f tokenize")
    assert_nothing_half_written(root)


def test_a_corrupt_checkpoint_names_the_file_to_delete(trained, tmp_path):
    root = copy_project(trained, tmp_path)
    (ckpt,) = (root / "checkpoints" / "pretrain").glob("*/ckpt.pt")
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    run = stage(root, "pretrain")
    assert_one_line_failure(run, "pretrain", f"rm {ckpt}")
    assert last_run_status(root, "pretrain") == "FAILED"


def test_samples_survive_resuming_a_finished_run(trained, tmp_path):
    root = copy_project(trained, tmp_path)
    first = (root / "data" / "pretrain" / "samples.md").read_text()
    assert "## step 10" in first and "## step 20" in first
    run = stage(root, "pretrain")  # resumes the finished checkpoint: no new steps
    assert run.returncode == 0, run.stderr[-2000:]
    assert (root / "data" / "pretrain" / "samples.md").read_text() == first


def test_a_failed_stage_registers_no_model(tmp_path):
    import mlflow
    import torch

    data = files_params(tmp_path)
    params = parse_params(data)

    def body(ctx):
        ctx.tracker.log_model(torch.nn.Linear(2, 2), "should-not-exist")
        raise LineageError("something downstream of the model failed")

    with pytest.raises(LineageError):
        run_stage("pretrain", body, tmp_path, params)
    mlflow.set_tracking_uri(params.common.tracking_uri)
    assert mlflow.MlflowClient().search_registered_models() == []
    assert last_run_status(tmp_path, "pretrain") == "FAILED"


# ------------------------------------------------------------------------- interrupts and orphans
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _prefect_servers_under(pid: int) -> list[int]:
    """Prefect servers among the descendants of ``pid`` (found through /proc)."""
    parent: dict[int, int] = {}
    cmdline: dict[int, bytes] = {}
    for p in Path("/proc").glob("[0-9]*"):
        try:
            parent[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline[int(p.name)] = (p / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
    found = []
    for child, cmd in cmdline.items():
        if b"prefect\0server\0start" not in cmd:
            continue
        up = parent.get(child)
        while up and up != pid:
            up = parent.get(up)
        if up == pid:
            found.append(child)
    return found


def _wait_for(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return cond()


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (found through /proc), in whatever session it runs."""
    parent: dict[int, int] = {}
    for p in Path("/proc").glob("[0-9]*"):
        try:
            parent[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [], [pid]
    while frontier:
        up = frontier.pop()
        kids = [c for c, par in parent.items() if par == up]
        found += kids
        frontier += kids
    return found


@pytest.mark.slow
def test_ctrl_c_under_plain_dvc_repro_is_one_line_exit_130_and_leaves_no_process(trained, tmp_path):
    """SIGINT to the whole foreground process group, as a terminal's Ctrl-C sends it, while pretrain
    trains under `dvc repro` with a Prefect server of the stage's own. Behaviour, not speed: one error
    line from the stage, exit status 130, no process of the run left (the server included), nothing
    written. The waits below only keep a broken run from hanging the suite."""
    root = copy_project(trained, tmp_path)
    data = yaml.safe_load((root / "params.yaml").read_text())
    data["common"]["task_runner"] = "threads"
    data["pretrain"].update(max_steps=100_000, checkpoint_interval=10)
    write_params(root, data)
    for ckpt in (root / "checkpoints").glob("pretrain/*"):
        subprocess.run(["rm", "-r", str(ckpt)], check=True)
    subprocess.run(["rm", "-r", str(root / "data" / "pretrain")], check=True)
    (root / "dvc.yaml").write_text(
        yaml.safe_dump({"stages": {"pretrain": {"cmd": f"{sys.executable} -m stages.pretrain",
                                                "outs": ["data/pretrain/model"]}}})
    )  # fmt: skip
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "dvc"), "init", "--no-scm", "-q"], cwd=root, check=True, env=ENV)
    # DVC runs a stage's cmd under $SHELL, else /bin/sh. bash execs a lone command, so DVC reports the
    # stage's own exit status; dash stays as its parent and is killed by the same Ctrl-C (-2).
    env = {**ENV, "SHELL": "/bin/bash"}
    proc = subprocess.Popen(
        [str(bin_dir / "dvc"), "repro"], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    ckpts = root / "checkpoints" / "pretrain"
    assert _wait_for(lambda: _prefect_servers_under(proc.pid) and list(ckpts.glob("*/ckpt.pt")), 600)
    assert len(_prefect_servers_under(proc.pid)) == 1
    tree = _descendants(proc.pid)  # dvc's shell, the stage, its Prefect server and whatever they started
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=600)
    stage_errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert stage_errors == ["error: pretrain: interrupted; nothing was written"], err[-3000:]
    assert "exited with 130" in err and proc.returncode != 0
    assert "Traceback" not in out + err, err[-3000:]
    assert not (root / "data" / "pretrain").exists()
    assert_nothing_half_written(root)
    assert _wait_for(lambda: not [p for p in tree if _alive(p)], 300), [p for p in tree if _alive(p)]


@pytest.mark.slow
def test_a_sigkilled_stage_takes_its_prefect_server_with_it(crawled, tmp_path):
    root = copy_project(crawled, tmp_path)
    data = yaml.safe_load((root / "params.yaml").read_text())
    data["common"]["task_runner"] = "threads"
    write_params(root, data)
    proc = subprocess.Popen(
        [sys.executable, "-m", "stages.clean", "--root", str(root)], cwd=ROOT, env=ENV,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert _wait_for(lambda: _prefect_servers_under(proc.pid), 120), "no Prefect server was started"
    (server_pid,) = _prefect_servers_under(proc.pid)
    proc.kill()
    proc.wait()
    assert _wait_for(lambda: not _alive(server_pid), 15), "the Prefect server outlived the killed stage"


@pytest.mark.slow
def test_sigterm_to_lineage_ui_stops_the_mlflow_server_and_its_workers(crawled, tmp_path):
    from pipeline.orchestration import free_port

    root = copy_project(crawled, tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "ui", "--port", str(port)], cwd=root, env=ENV,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def serving() -> list[int]:
        pids = []
        for p in Path("/proc").glob("[0-9]*"):
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if str(port).encode() in cmd and int(p.name) != proc.pid and _alive(int(p.name)):
                pids.append(int(p.name))
        return pids

    assert _wait_for(lambda: bool(serving()), 60), "the MLflow UI did not start"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert _wait_for(lambda: not serving(), 15), f"left serving: {serving()}"
