"""bench/gpu_check.py --tiny: the GPU check's code paths (compiled bf16 pretraining of the three shapes,
SFT / reward / PPO on Dolly- and HH-format files) rehearsed at toy size on the CPU, so that the GPU
run does not meet its first bug on the GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_tiny_runs_every_part_and_writes_its_json(tmp_path: Path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--tiny", "--work", str(tmp_path / "work"), "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["tiny"] and r["compile_backend"] == "aot_eager"
    assert r["device"] and r["versions"]["torch"] == __import__("torch").__version__
    assert r["peak_flops"] > 0
    assert set(r["pretrain"]) == {"gpt1", "gpt2", "gpt3"}
    for arch, p in r["pretrain"].items():
        assert p["arch"] == arch and p["dtype"] == "torch.bfloat16"
        assert p["tokens_per_s"] > 0 and 0 < p["mfu"] < 1
        assert p["val_loss_after"] < p["val_loss_before"], arch
    assert r["pretrain"]["gpt2"]["train_loss_last"] < r["pretrain"]["gpt2"]["train_loss_first"]
    assert r["pretrain"]["gpt2"]["flash_ok"] and r["pretrain"]["gpt1"]["flash_ok"]
    assert (
        r["sft"]["records"] == 160
        and r["sft"]["train"] > 0
        and r["sft"]["val_loss_after"] < r["sft"]["val_loss_before"]
    )
    assert r["sft"]["kv_cache_agreement"] == 1.0  # float32 on the CPU: the cache changes nothing
    assert r["reward"]["train"] > 0 and 0 <= r["reward"]["val_pair_acc_after"] <= 1
    assert r["ppo"]["steps"] == 2 and 0 < r["ppo"]["generate_share"] < 1
    assert all(r["checks"].values()) and len(r["checks"]) == 14
    work = tmp_path / "work"
    for f in ("sft/model/model.safetensors", "sft/answers.jsonl", "reward/model/reward_head.safetensors",
              "ppo/best/model.safetensors", "checkpoints/ppo.pt", "checkpoints/gpt3.pt"):  # fmt: skip
        assert (work / f).is_file(), f
    answers = [json.loads(line) for line in (work / "sft" / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 4 and all(a["prompt"].startswith("What does ") for a in answers)
    assert "pretrain gpt3" in proc.stdout and "generation" in proc.stdout  # the table


def test_gpu_check_without_a_gpu_says_so_in_one_line(capsys: pytest.CaptureFixture[str]):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the full check would run")
    sys.path.insert(0, str(ROOT))
    from bench.gpu_check import main

    assert main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpu_check: ")
    assert err[0].endswith("run it on a GPU, or rehearse on the CPU with --tiny")
