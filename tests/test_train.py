"""The pretraining loop: exact resume, bf16 vs fp32, DDP equivalence, bad input."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import PretrainConfig
from pipeline.errors import LineageError
from pipeline.model.gpt import GPTConfig
from pipeline.tokenizer import TokenData
from pipeline.train.checkpoint import load_checkpoint, save_checkpoint
from pipeline.train.data import TrainBatches
from pipeline.train.loop import Trainer, lr_at
from tests.conftest import two_ranks_and_one_process

VOCAB = 64


def token_split(n_docs: int = 40, seed: int = 0) -> TokenData:
    """Documents of a small 'language': counting patterns with noise, so there is something to learn."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        start, step = rng.integers(1, 20), rng.integers(1, 4)
        n = rng.integers(40, 120)
        docs.append(((start + step * np.arange(n)) % (VOCAB - 1) + 1).astype(np.uint16))
        docs[-1] = np.append(docs[-1], 0)  # end of text
    offsets = np.cumsum([0] + [len(d) for d in docs])
    return TokenData(
        np.concatenate(docs), offsets, (np.arange(n_docs) % 2).astype(np.int16), np.dtype(np.uint16)
    )


def make_trainer(tmp: Path, arch: str = "gpt2", **over) -> Trainer:
    cfg = PretrainConfig(**{
        "arch": arch, "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "batch_size": 4, "max_steps": 30,
        "warmup_steps": 5, "lr": 3e-3, "min_lr": 3e-4, "log_interval": 1, "eval_interval": 0, "checkpoint_interval": 0,
        "eval_windows": 4, "dtype": "float32", "dropout": 0.1, **over,
    })  # fmt: skip
    mcfg = GPTConfig(arch=arch, vocab_size=VOCAB, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=cfg.dropout,
                     window=cfg.window)  # fmt: skip
    return Trainer(mcfg, cfg, 1337, token_split(), token_split(10, seed=1), ["a", "b"], {"a": 0.25, "b": 0.25},
                   tmp / "ckpt.pt")  # fmt: skip


def losses(t: Trainer) -> dict[int, float]:
    return {h["step"]: h["train/loss"] for h in t.history if "train/loss" in h}


def test_loss_falls_and_validation_reports_bits_per_byte(tmp_path):
    t = make_trainer(tmp_path, max_steps=60)
    out = t.run(peak_flops=1e11)
    curve = losses(t)
    assert curve[60] < 0.75 * curve[1]
    assert out["val/loss"] < np.log(VOCAB)
    assert out["val/a/bpb"] == pytest.approx(out["val/a/loss"] / np.log(2) * 0.25)
    assert out["perf/mfu"] > 0 and out["perf/tokens_per_s"] > 0


def test_resume_after_a_kill_continues_the_same_run(tmp_path):
    full = make_trainer(tmp_path / "full")
    full.run(peak_flops=1e11)

    class Killed(Exception):
        pass

    part = make_trainer(tmp_path / "part", checkpoint_interval=10)
    original = part.train_step

    def dying_step():
        if part.step == 13:  # dies between checkpoints: steps 11-13 are lost and redone
            raise Killed
        return original()

    part.train_step = dying_step
    with pytest.raises(Killed):
        part.run(peak_flops=1e11)
    resumed = make_trainer(tmp_path / "part", checkpoint_interval=10)
    assert resumed.resumed_from == 10
    resumed.run(peak_flops=1e11)
    a, b = losses(full), losses(resumed)
    for step in range(11, 31):
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-7), step


def test_bf16_autocast_tracks_fp32(tmp_path):
    fp32 = make_trainer(tmp_path / "a", dtype="float32", dropout=0.0, max_steps=40)
    bf16 = make_trainer(tmp_path / "b", dtype="bfloat16", dropout=0.0, max_steps=40)
    fp32.run(peak_flops=1e11)
    bf16.run(peak_flops=1e11)
    a, b = losses(fp32), losses(bf16)
    assert bf16.dtype == torch.bfloat16
    for step in (1, 20, 40):
        assert abs(a[step] - b[step]) <= 0.05 * a[step] + 0.02, (step, a[step], b[step])


def test_schedule_warms_up_then_decays():
    cfg = PretrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55) and lr_at(110, cfg) == pytest.approx(0.1)


def test_block_size_longer_than_the_data_is_one_clear_error():
    with pytest.raises(
        LineageError, match=r"pretrain\.block_size: 4096 needs more than 4097 training tokens"
    ):
        TrainBatches(token_split(5), 4096, 4, 0)


def test_checkpoint_from_another_arch_or_corrupted(tmp_path):
    t = make_trainer(tmp_path, max_steps=2)
    t.run(peak_flops=1e11)
    state = load_checkpoint(tmp_path / "ckpt.pt")
    other = GPTConfig(
        arch="gpt1", vocab_size=VOCAB, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.1
    )
    with pytest.raises(
        LineageError, match=r"checkpoint is for another model \(arch='gpt2', this run has arch='gpt1'\)"
    ):
        load_checkpoint(tmp_path / "ckpt.pt", other.to_dict())
    raw = (tmp_path / "ckpt.pt").read_bytes()
    (tmp_path / "bad.pt").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(LineageError, match=r"bad\.pt: corrupted or not a checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
    save_checkpoint(tmp_path / "foreign.pt", {"weights": torch.zeros(2)})
    with pytest.raises(LineageError, match="not a gpt-lineage checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    assert state["step"] == 2


DDP_SCRIPT = """
import json, sys
from pathlib import Path
from pipeline.train.loop import setup_distributed
from tests.test_train import make_trainer, losses
dist, device = setup_distributed("cpu")
accum = int(sys.argv[2])
t = make_trainer(Path(sys.argv[1]), dropout=0.0, max_steps=8, grad_accum=accum)
t.dist, t.device = dist, device
from torch.nn.parallel import DistributedDataParallel
if dist.world_size > 1:
    t.runner = DistributedDataParallel(t.model)
t.run(peak_flops=1e11)
if dist.main:
    Path(sys.argv[1], "losses.json").write_text(json.dumps(losses(t)))
"""


def test_two_process_torchrun_matches_one_process_with_the_same_global_batch(tmp_path):
    two_ranks_and_one_process(DDP_SCRIPT, tmp_path)
    a = json.loads((tmp_path / "ddp" / "losses.json").read_text())
    b = json.loads((tmp_path / "one" / "losses.json").read_text())
    assert a.keys() == b.keys() and len(a) == 8
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-4), k
