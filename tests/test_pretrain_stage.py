"""The pretrain stage in a temporary project: outputs, tracking, kill and resume under `python -m`."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from pipeline.config import parse_params
from pipeline.model.export import load_model
from pipeline.stage import run_stage
from stages import tokenize
from tests.conftest import ROOT, files_params
from tests.test_tokenizer import write_mix

PRETRAIN = {
    "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32, "batch_size": 4, "max_steps": 40, "warmup_steps": 5,
    "log_interval": 5, "eval_interval": 20, "eval_windows": 4, "checkpoint_interval": 10, "sample_tokens": 8,
    "peak_flops": 1e11,
}  # fmt: skip


@pytest.fixture
def project(tmp_path):
    write_mix(tmp_path)
    data = files_params(tmp_path, {"tokenize": {"vocab_size": 300}, "pretrain": PRETRAIN})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    run_stage("tokenize", tokenize.body, tmp_path, parse_params(data))
    return tmp_path


def stage_cmd(root) -> list[str]:
    return [sys.executable, "-m", "stages.pretrain", "--root", str(root)]


def test_pretrain_writes_model_hf_export_plots_and_registers_the_model(project):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(stage_cmd(project), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    out = project / "data" / "pretrain"
    m = json.loads((out / "metrics.json").read_text())
    assert m["train"]["steps"] == 40 and m["perf"]["resumed_from_step"] == -1
    assert (
        m["val"]["loss"] > 0
        and m["val"]["sources"]["ref"]["bpb"] > 0
        and m["val"]["sources"]["web"]["bpb"] > 0
    )
    assert m["perf"]["mfu"] > 0 and m["perf"]["tokens_per_s"] > 0
    model = load_model(out / "model")
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    hf = AutoModelForCausalLM.from_pretrained(out / "hf").eval()
    x = torch.randint(0, 300, (1, 32))
    with torch.no_grad():
        assert torch.allclose(hf(x).logits, model.eval()(x)[0], atol=1e-4)
    assert PreTrainedTokenizerFast.from_pretrained(out / "hf")("hello")["input_ids"]
    assert (out / "plots" / "train.csv").read_text().startswith("step,loss,lr")
    assert "## step 20" in (out / "samples.md").read_text()
    lineage = [sys.executable, "-m", "pipeline.cli"]
    sample = subprocess.run([*lineage, "sample", "--prompt", "The river", "--tokens", "6"], cwd=project, env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert sample.returncode == 0, sample.stderr[-2000:]
    assert (
        sample.stdout.startswith("--- sample 0 ---\nThe river") and len(sample.stdout.split("\n", 1)[1]) > 9
    )
    (ckpt,) = (project / "checkpoints" / "pretrain").glob("*/ckpt.pt")
    from_ckpt = subprocess.run([*lineage, "sample", "--checkpoint", str(ckpt), "--tokens", "4"], cwd=project, env=env,
                               capture_output=True, text=True, timeout=120)  # fmt: skip
    assert from_ckpt.returncode == 0 and "--- sample 0 ---" in from_ckpt.stdout

    import mlflow

    params = parse_params(yaml.safe_load((project / "params.yaml").read_text()))
    mlflow.set_tracking_uri(params.common.tracking_uri)
    (run_,) = [r for r in mlflow.search_runs(experiment_names=["gpt-lineage"], output_format="list")
               if r.data.tags["stage"] == "pretrain"]  # fmt: skip
    assert "val/loss" in run_.data.metrics and "perf/mfu" in run_.data.metrics
    versions = mlflow.MlflowClient().search_model_versions("name='gpt-lineage-pretrain'")
    assert versions and versions[0].run_id == run_.info.run_id


def test_rerun_after_a_kill_resumes_from_the_checkpoint(project):
    data = yaml.safe_load((project / "params.yaml").read_text())
    data["pretrain"].update(max_steps=200, export_hf=False)
    (project / "params.yaml").write_text(yaml.safe_dump(data))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        stage_cmd(project), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpts = project / "checkpoints" / "pretrain"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(ckpts.glob("*/ckpt.pt")):
        time.sleep(0.2)
    assert list(ckpts.glob("*/ckpt.pt")), "no checkpoint was written"
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (project / "data" / "pretrain").exists()
    (ckpt,) = ckpts.glob("*/ckpt.pt")
    killed_at = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < killed_at < 200
    run = subprocess.run(stage_cmd(project), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    m = json.loads((project / "data" / "pretrain" / "metrics.json").read_text())
    assert m["perf"]["resumed_from_step"] >= killed_at and m["train"]["steps"] == 200


def test_nproc_per_node_relaunches_the_stage_under_torchrun(project):
    data = yaml.safe_load((project / "params.yaml").read_text())
    data["pretrain"].update(nproc_per_node=2, max_steps=10, export_hf=False)
    (project / "params.yaml").write_text(yaml.safe_dump(data))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(stage_cmd(project), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    m = json.loads((project / "data" / "pretrain" / "metrics.json").read_text())
    assert m["perf"]["world_size"] == 2
    assert m["train"]["tokens"] == 10 * 2 * PRETRAIN["batch_size"] * PRETRAIN["block_size"]
