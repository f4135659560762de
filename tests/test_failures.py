"""Failures that must not cost or corrupt a result: diverged training stops with one line and leaves
nothing behind, a finished run rerun reports its own figures, damaged token files and remote copies
are refused, a full disk is one line with no temporary files left, killed MLflow runs are closed,
credentials never reach a log, and a lost Prefect server does not lose the stage's work."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pipeline.errors import LineageError
from pipeline.model import GPT, GPTConfig
from pipeline.train.supervised import SupervisedConfig, SupervisedTrainer, lm_loss

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 16


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(arch="gpt2", vocab_size=VOCAB, block_size=8, n_layer=1, n_head=2, n_embd=16))


def lm_batches(epoch: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(epoch)
    return [{"tokens": torch.randint(0, VOCAB, (4, 9), generator=g)} for _ in range(4)]


def supervised(tmp: Path, log=None, **over) -> SupervisedTrainer:
    cfg = SupervisedConfig(**{"lr": 1e-3, "epochs": 2, "log_interval": 1, "dtype": "float32", **over})
    return SupervisedTrainer(tiny_gpt(), lm_loss, lm_batches, cfg, checkpoint=tmp / "ckpt.pt", log=log)


# ------------------------------------------------------------------------------ diverged training
def _pretrain(tmp: Path) -> None:
    from tests.test_train import make_trainer

    make_trainer(tmp, lr=1e30, min_lr=1e29, max_steps=6, checkpoint_interval=2).run(peak_flops=1e11)


def _supervised(tmp: Path) -> None:
    logged: list[float] = []
    try:
        supervised(tmp, log=lambda m, step: logged.extend(m.values()), lr=1e30, checkpoint_interval=1).run()
    finally:  # what reached MLflow: never a NaN (stored as 0.0 by some stores)
        assert all(math.isfinite(v) for v in logged)


def _ppo(tmp: Path) -> None:
    from tests.test_ppo import cfg, trainer

    trainer(cfg(lr=1e30, value_lr=1e30, steps=4, checkpoint_interval=1), checkpoint=tmp / "ckpt.pt").run()


@pytest.mark.parametrize(
    "run", [_pretrain, _supervised, _ppo], ids=["pretrain", "sft-finetune-reward", "ppo"]
)
def test_a_diverged_run_stops_with_one_line_naming_the_step_and_saves_nothing_after_it(tmp_path, run):
    with pytest.raises(LineageError, match=r"(nan|inf|not finite).* step \d+: training diverged") as e:
        run(tmp_path)
    assert "\n" not in str(e.value)
    if (tmp_path / "ckpt.pt").exists():  # a checkpoint saved before the divergence holds finite weights
        state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
        assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_a_starting_model_with_nan_weights_is_refused_before_training(tmp_path):
    model = tiny_gpt()
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    cfg = SupervisedConfig(lr=1e-3, epochs=1, dtype="float32")
    with pytest.raises(LineageError, match="starting model is not finite"):
        SupervisedTrainer(model, lm_loss, lm_batches, cfg, checkpoint=tmp_path / "ckpt.pt")


def test_a_nan_reward_bias_shift_is_refused():
    from pipeline.train.finite import check_value

    with pytest.raises(LineageError, match="bias_shift.* is nan"):
        check_value(float("nan"), "bias_shift")


# ------------------------------------------------------------------- a finished run, rerun
def test_a_finished_supervised_run_resumed_at_its_end_reports_its_own_train_figures(tmp_path):
    first = supervised(tmp_path).run()
    again = supervised(tmp_path)
    assert again.step == again.total_steps  # resumed at the end: no step is taken
    second = again.run()
    assert math.isfinite(second["train/loss"])
    assert second["train/loss"] == first["train/loss"]
    assert second["train/lr"] == first["train/lr"]


# ----------------------------------------------------------------------------- damaged token files
@pytest.mark.parametrize(
    "split", ["train", "val"]
)  # ppo's ptx reads train.bin; evaluate and ppo read val.bin
def test_a_token_id_past_the_vocabulary_is_refused_when_the_file_is_opened(tmp_path, split):
    import json

    import numpy as np

    from pipeline.tokenizer import open_tokens, token_dtype, write_tokens

    write_tokens(tmp_path, split, [[5, 6, 7], [8, 9]], [0, 0], 500, eot_id=0)
    (tmp_path / "meta.json").write_text(json.dumps({"dtype": token_dtype(500).name, "vocab_size": 500}))
    assert open_tokens(tmp_path, split).tokens.tolist() == [5, 6, 7, 0, 8, 9, 0]
    ids = np.memmap(tmp_path / f"{split}.bin", dtype="<u2", mode="r+")
    ids[4] = 60000
    ids.flush()
    del ids
    with pytest.raises(LineageError, match=rf"{split}\.bin: token id 60000 is outside the vocabulary of 500"):
        open_tokens(tmp_path, split)


# ---------------------------------------------------------------------------------- a full disk
def _enospc(path: object) -> OSError:
    import errno
    import os

    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_leaves_no_temporary_file(
    tmp_path, monkeypatch, capsys
):
    import yaml

    from pipeline.stage import main
    from pipeline.train import checkpoint
    from tests.conftest import files_params

    def save(state, path):  # the disk fills halfway through the file
        Path(path).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise _enospc(path)

    monkeypatch.setattr(checkpoint.torch, "save", save)

    def body(ctx):
        (ctx.out / "model.bin").write_bytes(b"weights")
        checkpoint.save_checkpoint(ctx.root / "checkpoints" / "sft" / "run" / "ckpt.pt", {"model": {}})
        return {}

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(files_params(tmp_path)))
    rc = main("sft", body, ["--root", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and err.count("\n") == 1
    assert "error: sft: the disk is full writing " in err and ".ckpt.pt.tmp-" in err
    left = [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    assert left == [] and not (tmp_path / "data" / "sft").exists()


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError(
            "[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file"
            " data/0: file write failed"
        ),
        RuntimeError("database or disk is full"),  # SQLite under MLflow (sqlalchemy's OperationalError)
        Exception("I/O error: No space left on device (os error 28)"),  # safetensors
    ],
    ids=["torch-caused-by-enospc", "sqlite", "safetensors"],
)
def test_a_full_disk_met_by_any_writer_is_one_line(tmp_path, monkeypatch, capsys, exc):
    import yaml

    from pipeline.stage import main
    from tests.conftest import files_params

    def body(ctx):
        try:
            raise _enospc(ctx.out / "model.safetensors")
        except OSError as e:
            if "PytorchStreamWriter" in str(exc):
                raise exc from e
            raise exc from None

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(files_params(tmp_path)))
    rc = main("pretrain", body, ["--root", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and err.startswith("error: pretrain: the disk is full")


# --------------------------------------------------------------------------- credentials in URLs
SECRET_URL = "https://ann:s3cretpw@data.example.org/cc/seg.warc.gz?X-Amz-Signature=f00dfeed&part=2"
SECRET_SEED = "https://example.org/start?access_token=t0ken123&lang=en"
SECRETS = ("s3cretpw", "f00dfeed", "t0ken123", "hunter2")


def _secret_params(tmp: Path):
    from pipeline.config import parse_params
    from tests.conftest import files_params

    return parse_params(
        files_params(
            tmp,
            {
                "common": {"tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}"},
                "crawl": {
                    "sources": {
                        "cc": {"kind": "warc", "paths": [SECRET_URL]},
                        "site": {
                            "kind": "http",
                            "seeds": [SECRET_SEED, "ftp://bob:hunter2@files.example.org/x"],
                        },
                    }
                },
            },
        )
    )


def test_redaction_masks_passwords_and_secret_query_values_and_keeps_the_rest():
    from pipeline.redact import redact

    assert redact(SECRET_URL) == (
        "https://ann:***@data.example.org/cc/seg.warc.gz?X-Amz-Signature=***&part=2"
    )
    assert (
        redact(f"seeds: ['{SECRET_SEED}']") == "seeds: ['https://example.org/start?access_token=***&lang=en']"
    )
    assert redact("no url here: a=b?c") == "no url here: a=b?c"


def test_credentials_in_source_urls_reach_neither_mlflow_params_nor_prefect_parameters(tmp_path):
    import mlflow

    from pipeline.orchestration import flow_run_labels
    from pipeline.tracking import stage_run

    params = _secret_params(tmp_path)
    flow_params, _ = flow_run_labels("crawl", params)
    shown = repr(flow_params)
    assert "data.example.org/cc/seg.warc.gz" in shown and not any(s in shown for s in SECRETS)
    with stage_run("crawl", params, tmp_path) as tracker:
        run_id = tracker.run_id
    logged = repr(mlflow.MlflowClient().get_run(run_id).data.params)
    assert "access_token=***" in logged and not any(s in logged for s in SECRETS)


# ------------------------------------------------------------------------- runs killed with -9
KILLED_MID_STAGE = """
import os, sys
from pathlib import Path
from pipeline.config import parse_params
from pipeline.tracking import PARENT_ENV, stage_run, start_pipeline_run
from tests.conftest import files_params

root = Path(sys.argv[1])
params = parse_params(files_params(root))
os.environ[PARENT_ENV] = start_pipeline_run(params, root, "lineage run")
with stage_run("pretrain", params, root):
    print(os.environ[PARENT_ENV], flush=True)
    os.kill(os.getpid(), 9)
"""


@pytest.mark.slow
def test_runs_left_running_by_a_kill_9_are_marked_killed_when_the_next_stage_starts(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    import mlflow

    from pipeline.config import parse_params
    from pipeline.tracking import PARENT_ENV, stage_run
    from tests.conftest import files_params

    monkeypatch.delenv(PARENT_ENV, raising=False)
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_STAGE, str(tmp_path)], cwd=repo, env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    parent_id = killed.stdout.strip()
    params = parse_params(files_params(tmp_path))
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(params.common.experiment)
    before = client.search_runs([exp.experiment_id])
    assert {r.info.status for r in before} == {"RUNNING"} and len(before) == 2  # the parent and its stage

    with stage_run("finetune", params, tmp_path) as tracker:
        mine = tracker.run_id
        after = {r.info.run_id: r.info.status for r in client.search_runs([exp.experiment_id])}
    assert after.pop(mine) == "RUNNING"  # the live stage's own run is left alone
    assert parent_id in after and set(after.values()) == {"KILLED"}


# --------------------------------------------------------------------- a damaged DVC remote copy
def test_a_file_damaged_in_the_dvc_remote_is_refused_by_lineage_pull_and_named(tmp_path, monkeypatch, capsys):
    import hashlib
    import os
    import shutil
    import subprocess
    import sys

    from pipeline import cli

    repo, remote = tmp_path / "repo", tmp_path / "remote"
    (repo / "data" / "x").mkdir(parents=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def sh(*cmd: str) -> None:
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)

    sh("git", "init", "-q")
    sh("dvc", "init", "-q")
    shutil.copy(Path(__file__).resolve().parents[1] / ".dvc" / "config", repo / ".dvc" / "config")
    sh("dvc", "remote", "modify", "local", "url", str(remote))  # the project's remote, its options kept
    (repo / "data" / "x" / "a.txt").write_text("kept\n")
    (repo / "data" / "x" / "b.txt").write_text("the weights\n")
    sh("dvc", "add", "-q", "data/x")
    sh("dvc", "push", "-q")
    md5 = hashlib.md5(b"the weights\n").hexdigest()
    stored = remote / "files" / "md5" / md5[:2] / md5[2:]
    stored.chmod(0o644)
    stored.write_text("the weightz\n")  # bit rot in the remote
    shutil.rmtree(repo / "data" / "x")
    shutil.rmtree(repo / ".dvc" / "cache")

    monkeypatch.chdir(repo)
    rc = cli.main(["pull"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert "error: lineage: the remote's copy of data/x/b.txt is damaged" in err
    assert not (repo / "data" / "x" / "b.txt").exists()

    stored.write_text("the weights\n")  # repaired: the same command pulls it
    assert cli.main(["pull"]) == 0
    assert (repo / "data" / "x" / "b.txt").read_text() == "the weights\n"


# ------------------------------------------------------------------------ quiet logs under DVC
def test_lm_eval_builds_its_requests_without_a_progress_bar(capfd):
    import lm_eval.api.task

    from pipeline.eval import harness

    harness.quiet()
    for _ in lm_eval.api.task.tqdm(range(50), total=50):  # what lm-eval wraps each task's requests in
        pass
    assert capfd.readouterr().err == ""


def test_the_kernel_hubs_warnings_stay_out_of_a_stage_log(caplog):
    import logging

    from pipeline.progress import quiet_logs

    quiet_logs()
    logging.getLogger("kernels._internals.digest").warning("Cannot cache kernel digest verifications")
    assert not [r for r in caplog.records if r.name.startswith("kernels")]


def test_a_malformed_finetune_file_is_one_line_without_the_datasets_error_lines(tmp_path, capfd):
    from pipeline.eval.loaders import _read_local

    bad = tmp_path / "train.jsonl"
    bad.write_text('{"sentence": "fine", "label": 1}\n{"sentence": "broken\n')
    with pytest.raises(LineageError, match="train.jsonl: cannot read it as"):
        _read_local("sst2", bad)
    err = capfd.readouterr().err
    assert "ERROR" not in err and "Failed to load JSON" not in err


# --------------------------------------------------------------- the Prefect server goes mid-stage
SERVER_DIES_MID_STAGE = """
import json, os, signal, sys, time
from pathlib import Path
import yaml
from pipeline.orchestration import prefect_server
from pipeline.stage import main
from tests.conftest import files_params

root = Path(sys.argv[1])
params = files_params(root, {"common": {"task_runner": "threads"}})
(root / "params.yaml").write_text(yaml.safe_dump(params))
os.environ.pop("PREFECT_API_URL", None)

def body(ctx):
    first = ctx.orch.map(lambda x: x * x, [1, 2, 3])
    server = json.loads((root / ".prefect" / "server.json").read_text())
    os.killpg(server["pid"], signal.SIGKILL)  # `lineage ui` stopped, or `lineage run` killed
    time.sleep(0.5)
    second = ctx.orch.map(lambda x: x + 1, [1, 2, 3])
    (ctx.out / "model.bin").write_bytes(b"trained weights")
    return {"train": {"loss": 2.5}, "squares": sum(first), "plus_one": sum(second)}

with prefect_server(root) as url:  # the project's shared server, as `lineage ui` runs it
    assert url, "no Prefect server came up"
    sys.exit(main("pretrain", body, ["--root", str(root)], headline=["pretrain_loss=train/loss"]))
"""


@pytest.mark.slow
def test_losing_the_prefect_server_mid_stage_keeps_the_work_and_says_so_once(tmp_path):
    import json
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PYTHONPATH=str(repo), LINEAGE_PROGRESS="0")
    run = subprocess.run([sys.executable, "-c", SERVER_DIES_MID_STAGE, str(tmp_path)], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=400)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "Error logging to API" not in run.stderr
    said = [line for line in run.stderr.splitlines() if line.strip()]
    assert (
        len(said) == 1 and said[0].startswith("prefect: the server at ") and "goes on without it" in said[0]
    )
    assert (tmp_path / "data" / "pretrain" / "model.bin").read_bytes() == b"trained weights"
    metrics = json.loads((tmp_path / "data" / "pretrain" / "metrics.json").read_text())
    assert metrics["squares"] == 14 and metrics["plus_one"] == 9
    assert json.loads((tmp_path / "metrics" / "pretrain.json").read_text()) == {"pretrain_loss": 2.5}


def test_a_nan_figure_is_never_logged_to_mlflow_as_a_number():
    from pipeline.tracking import Tracker

    class Recorder:
        def __init__(self):
            self.logged: list[dict[str, float]] = []

        def log_metrics(self, metrics, step=None):
            self.logged.append(dict(metrics))

    rec = Recorder()
    tracker = Tracker(rec)
    tracker.log_metrics({"train/loss": float("nan"), "train/lr": 1e-3}, step=3)
    tracker.log_metrics({"val/gold_pair_acc": float("nan"), "bias_shift": float("inf"), "steps": 3})
    assert rec.logged == [{"train/lr": 1e-3}, {"steps": 3.0}]
