"""The supervised loop (SFT, reward model, fine-tuning) under torchrun: two ranks take the same steps
as one process that accumulates both ranks' micro-batches."""

import json

import pytest
import torch

from tests.conftest import two_ranks_and_one_process

SCRIPT = """
import json, sys
from pathlib import Path
import torch
from pipeline.model.gpt import GPT, GPTConfig
from pipeline.train.loop import setup_distributed
from pipeline.train.supervised import SupervisedConfig, SupervisedTrainer, lm_loss

dist, device = setup_distributed("cpu")
out, accum = Path(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
model = GPT(GPTConfig(arch="gpt2", vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0))
g = torch.Generator().manual_seed(1)
data = [{"tokens": torch.randint(0, 64, (3, 17), generator=g)} for _ in range(5)]  # 5: the last step is short

def batches(epoch):
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(epoch)).tolist()
    return [data[i] for i in order]

cfg = SupervisedConfig(lr=3e-3, epochs=2, grad_accum=accum, dtype="float32", warmup_steps=1, checkpoint_interval=1,
                       log_interval=1)
logged = []
t = SupervisedTrainer(model, lm_loss, batches, cfg, seed=0, device=device, checkpoint=out / "ckpt.pt",
                      log=lambda m, step: logged.append((step, m["train/loss"])), dist=dist)
result = t.run()
if dist.main:
    (out / "result.json").write_text(json.dumps({"steps": t.step, "examples": result["examples"],
                                                 "losses": logged}))
    torch.save(model.state_dict(), out / "weights.pt")
"""


@pytest.mark.slow
def test_two_ranks_take_the_steps_of_one_process_with_both_ranks_micro_batches(tmp_path):
    two_ranks_and_one_process(SCRIPT, tmp_path)
    a = json.loads((tmp_path / "ddp" / "result.json").read_text())
    b = json.loads((tmp_path / "one" / "result.json").read_text())
    # 5 micro-batches, 2 per step: 3 steps an epoch, the third with one micro-batch (rank 1 weighs 0)
    assert a["steps"] == b["steps"] == 6 and a["examples"] == b["examples"] == 30
    assert [s for s, _ in a["losses"]] == [s for s, _ in b["losses"]]
    for (_, la), (_, lb) in zip(a["losses"], b["losses"], strict=True):
        assert la == pytest.approx(lb, rel=1e-4)
    wa = torch.load(tmp_path / "ddp" / "weights.pt", weights_only=True)
    wb = torch.load(tmp_path / "one" / "weights.pt", weights_only=True)
    for k in wb:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k
    # rank 0 alone wrote the checkpoint, and it resumes as any other
    assert (tmp_path / "ddp" / "ckpt.pt").is_file()
    assert not list((tmp_path / "ddp").glob(".ckpt.pt.tmp-*"))
