"""`lineage chat`: a multi-turn conversation in the chat template, driven through a pipe; the history
is kept and cropped to the context window, and replies stream token by token with the KV cache."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.cli import fit_context, stream_reply
from pipeline.feedback.chat import ChatTokens
from pipeline.model import GPT, GPTConfig
from pipeline.model.export import save_model
from pipeline.tokenizer import save_tokenizer
from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(vocab: int, block: int = 48) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(arch="gpt2", vocab_size=vocab, block_size=block, n_layer=2, n_head=2, n_embd=32))


def test_two_turns_through_a_pipe_keep_the_history(tmp_path: Path, tok) -> None:
    save_tokenizer(tok, tmp_path / "data" / "tokenize" / "tokenizer.json")
    save_model(tiny(tok.get_vocab_size()), tmp_path / "data" / "sft" / "model")
    run = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "chat", "--stage", "sft", "--temperature", "0", "--max-new-tokens",
         "6", "-v"],
        input="What is the sum of two and three?\nWhich module defines dumps?\n", cwd=tmp_path, capture_output=True,
        text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    replies = [line for line in run.stdout.splitlines() if line.startswith("assistant> ")]
    assert len(replies) == 2 and "Traceback" not in run.stderr
    turns = [line for line in run.stdout.splitlines() if line.startswith(("you> ", "assistant> "))]
    assert (
        turns[0] == "you> What is the sum of two and three?"
        and turns[2] == "you> Which module defines dumps?"
    )
    assert turns[1].startswith("assistant> ")  # a transcript: each answer follows its question
    sizes = [int(line.split()[2]) for line in run.stderr.splitlines() if line.startswith("lineage: context")]
    assert len(sizes) == 2 and sizes[1] > sizes[0] + 8  # the second prompt carries the first exchange


def test_a_stage_without_a_model_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    from pipeline.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["chat", "--stage", "ppo"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith("no model; run `dvc repro ppo` first")


def test_the_history_is_cropped_to_the_window_oldest_turns_first(tok) -> None:
    chat = ChatTokens(tok)
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"Which module defines dumps? {i}"}
             for i in range(7)]  # fmt: skip
    ids, dropped = fit_context(chat, turns, budget=1000)
    assert dropped == 0 and ids == chat.encode_prompt(turns)
    ids, dropped = fit_context(chat, turns, budget=40)
    assert len(ids) <= 40 and dropped > 0 and ids == chat.encode_prompt(turns[dropped:])
    assert len(chat.encode_prompt(turns[dropped - 1 :])) > 40  # as much history as fits, no less
    # a last turn longer than the window keeps its end, the assistant marker included
    ids, dropped = fit_context(chat, turns[:1] * 1 + [{"role": "user", "content": "dumps " * 60}], budget=20)
    assert len(ids) == 20 and ids[-1] == chat.role["assistant"] and dropped == 1


def test_streamed_tokens_are_the_greedy_generation(tok) -> None:
    chat = ChatTokens(tok)
    model = tiny(tok.get_vocab_size()).eval()
    ids = chat.encode_prompt([{"role": "user", "content": "What is the sum of two and three?"}])
    streamed = list(
        stream_reply(model, ids, 10, temperature=0.0, top_k=None, top_p=None, generator=None, stop=set())
    )
    whole = model.generate(torch.tensor([ids]), 10, temperature=0.0)[0, len(ids) :].tolist()
    assert streamed == whole
    # a stop id ends the reply before it is shown
    stopped = list(stream_reply(model, ids, 10, temperature=0.0, top_k=None, top_p=None, generator=None,
                                stop={whole[3]}))  # fmt: skip
    assert stopped == whole[: whole.index(whole[3])]


def test_lineage_checkpoints_names_the_shape_of_every_training_run(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """A pretrain run folder describes itself in run.json; the SFT, reward and PPO loops' checkpoints
    carry their model config, which `lineage checkpoints` reads instead of saying "shape unknown"."""
    import json

    from pipeline.cli import main
    from pipeline.train.checkpoint import save_checkpoint

    shape = {"arch": "gpt2", "vocab_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 32}
    save_checkpoint(tmp_path / "checkpoints" / "sft" / "k1" / "ckpt.pt",
                    {"model": {}, "model_config": {**shape, "steps": 540, "params": 1}})  # fmt: skip
    pre = tmp_path / "checkpoints" / "pretrain" / "k0"
    save_checkpoint(pre / "ckpt.pt", {"model": {}, "model_config": shape})
    (pre / "run.json").write_text(json.dumps({**shape, "max_steps": 600}))
    (pre / "tokenizer.json").write_text("{}")
    (tmp_path / "checkpoints" / "ppo" / "k2").mkdir(parents=True)
    (tmp_path / "checkpoints" / "ppo" / "k2" / "ckpt.pt").write_bytes(b"not a checkpoint")
    for key, seed in (("k3", 1337), ("k4", 2)):  # two PPO runs that differ in their seed only
        save_checkpoint(tmp_path / "checkpoints" / "ppo" / key / "ckpt.pt",
                        {"model": {}, "model_config": {**shape, "steps": 60}})  # fmt: skip
        (tmp_path / "checkpoints" / "ppo" / key / "params.json").write_text(
            json.dumps({"seed": seed, "kl_coef": 0.02, "steps": 60})
        )
    monkeypatch.chdir(tmp_path)
    assert main(["checkpoints"]) == 0
    out = capsys.readouterr().out.splitlines()
    header, rows = out[0], out[1:]
    assert header.split() == ["checkpoint", "modified", "model", "steps", "profile", "tokenizer", "differs"]
    col = header.index("model")
    assert all(line[col - 2 : col] == "  " for line in rows), "columns are aligned under the header"
    by_key = {line.split()[0].split("/")[2]: line for line in rows}
    assert "gpt2 2x2x32 v64" in by_key["k0"] and " 600 " in by_key["k0"] and "beside it" in by_key["k0"]
    assert "gpt2 2x2x32 v64" in by_key["k1"] and " 540 " in by_key["k1"]
    assert " ? " in by_key["k2"] and by_key["k2"].endswith(" -")
    assert by_key["k3"].endswith("seed=1337") and by_key["k4"].endswith("seed=2")  # what tells them apart
    assert "kl_coef" not in by_key["k3"]
