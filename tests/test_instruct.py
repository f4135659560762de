"""SFT and reward-model objectives: the K-way ranking loss by hand, a reward model that learns a planted
preference, SFT's loss on response tokens only, the chat template, and reward models that refuse
another tokenizer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pipeline.config import TokenizeConfig
from pipeline.errors import LineageError
from pipeline.feedback.chat import END, ChatTokens, render
from pipeline.model import GPT, GPTConfig
from pipeline.model.reward import RewardModel, load_reward_model, save_reward_model, tokenizer_sha256
from pipeline.tokenizer import save_tokenizer, train_tokenizer
from pipeline.train.instruct import (
    encode_demonstrations,
    generate,
    ranked_group,
    ranking_loss,
    ranking_metrics,
    reward_batch,
    reward_loss,
    sft_batch,
    shuffled_batches,
)  # fmt: skip
from pipeline.train.supervised import SupervisedConfig, SupervisedTrainer, lm_loss

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    text = ["What is the sum of two and three? Five. Which module defines dumps? json."] * 20
    return train_tokenizer(text, TokenizeConfig(vocab_size=300, min_frequency=1))


def tiny(vocab: int, **kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(arch="gpt2", vocab_size=vocab, block_size=48, n_layer=2, n_head=2, n_embd=32)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg))


# --- the K-way ranking loss --------------------------------------------------------------------------
def test_k_way_loss_equals_the_hand_computed_value_for_k4() -> None:
    r = torch.tensor([1.0, 0.5, -0.2, 0.3])
    ranks = torch.tensor([0, 1, 3, 2])  # order: 0 > 1 > 3 > 2
    loss, _ = ranking_loss(r, torch.zeros(4, dtype=torch.long), ranks)

    def ls(d: float) -> float:  # log sigmoid
        return -math.log(1 + math.exp(-d))

    # the C(4,2) = 6 pairs (winner, loser), each weighted 1/6
    pairs = [(1.0, 0.5), (1.0, 0.3), (1.0, -0.2), (0.5, 0.3), (0.5, -0.2), (0.3, -0.2)]
    expected = -sum(ls(w - lo) for w, lo in pairs) / 6
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.4360, abs=1e-4)


def test_k_way_loss_is_a_mean_over_prompts_each_weighted_by_its_pairs() -> None:
    r = torch.tensor([1.0, 0.5, -0.2, 0.3, 2.0, 0.0])
    group = torch.tensor([0, 0, 0, 0, 1, 1])
    ranks = torch.tensor([0, 1, 3, 2, 1, 0])
    loss, _ = ranking_loss(r, group, ranks)
    first, _ = ranking_loss(r[:4], group[:4], ranks[:4])
    second = -torch.nn.functional.logsigmoid(torch.tensor(0.0 - 2.0))
    assert loss.item() == pytest.approx((first.item() + second.item()) / 2, abs=1e-6)
    # ties carry no pair
    tied, _ = ranking_loss(
        torch.tensor([1.0, 2.0, 0.0]), torch.zeros(3, dtype=torch.long), torch.tensor([0, 0, 1])
    )
    expected = -(math.log(1 / (1 + math.exp(-1.0))) + math.log(1 / (1 + math.exp(-2.0)))) / 2
    assert tied.item() == pytest.approx(expected, abs=1e-6)


def test_reward_model_learns_a_planted_preference() -> None:
    """Responses holding token 7 are ranked above those that do not; the RM must find it on held-out prompts."""
    g = torch.Generator().manual_seed(0)

    def group() -> dict:
        prompt = torch.randint(10, 60, (int(torch.randint(3, 8, (1,), generator=g)),), generator=g).tolist()
        seqs, ranks = [], []
        for k in range(4):
            resp = torch.randint(10, 60, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g).tolist()
            good = k % 2 == 0
            if good:
                resp.insert(int(torch.randint(0, len(resp), (1,), generator=g)), 7)
            seqs.append(prompt + resp)
            ranks.append(0 if good else 1)
        return {"seqs": seqs, "ranks": ranks}

    train, held_out = [group() for _ in range(160)], [group() for _ in range(40)]
    model = RewardModel(tiny(64))
    cfg = SupervisedConfig(lr=3e-3, epochs=3, weight_decay=0.0, schedule="cosine", warmup_fraction=0.05,
                           dtype="float32", betas=(0.9, 0.95))  # fmt: skip
    trainer = SupervisedTrainer(model, reward_loss, shuffled_batches(train, 8, 0, reward_batch), cfg)
    trainer.run()
    model.eval()
    with torch.no_grad():
        b = reward_batch(held_out)
        r = model(b["idx"], b["lengths"]).view(len(held_out), 4).tolist()
    got = ranking_metrics(r, [h["ranks"] for h in held_out])
    assert got["pair_acc"] >= 0.9, got


# --- SFT -----------------------------------------------------------------------------------------------
def test_sft_loss_ignores_prompt_tokens(tok) -> None:
    chat = ChatTokens(tok)
    ex = {
        "messages": [{"role": "user", "content": "What is the sum of two and three?"}],
        "reference": "Five.",
    }
    items, dropped = encode_demonstrations(chat, [ex, {**ex, "reference": "json."}], block_size=48)
    assert dropped == 0
    (ids, start) = items[0]
    batch = sft_batch(items)
    y = batch["y"][0]
    assert (y[: start - 1] == -1).all()  # nothing before the response is a target
    assert y[start - 1 : len(ids) - 1].tolist() == ids[start:]  # the response and its <|end|> are
    assert ids[-1] == chat.end and (batch["y"][1, len(items[1][0]) - 1 :] == -1).all()
    model = tiny(tok.get_vocab_size()).eval()
    loss, _ = lm_loss(model, batch)
    logits, _ = model(batch["x"])
    mask = batch["y"] != -1
    by_hand = torch.nn.functional.cross_entropy(logits[mask], batch["y"][mask])
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    # changing what the prompt's targets would be changes nothing: they are not targets
    other = sft_batch([(ids[: start - 1] + [5] + ids[start - 1 :][1:], start)])
    assert (other["y"][0] == batch["y"][0][: other["y"].size(1)]).all()


def test_demonstrations_longer_than_the_block_are_dropped(tok) -> None:
    chat = ChatTokens(tok)
    ex = {"messages": [{"role": "user", "content": "What is the sum " * 30}], "reference": "Five."}
    items, dropped = encode_demonstrations(chat, [ex], block_size=48)
    assert items == [] and dropped == 1


def test_chat_template_uses_the_role_tokens(tok) -> None:
    chat = ChatTokens(tok)
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U <|end|>"}]
    ids = chat.encode_prompt(msgs)
    assert ids[0] == chat.role["system"] and ids[-1] == chat.role["assistant"]
    assert ids.count(chat.end) == 2  # the <|end|> the user typed is text, not a turn end
    assert render(msgs) == "<|system|>S<|end|><|user|>U <|end|><|end|><|assistant|>"
    assert chat.decode_response([*chat.text("Five."), chat.end, *chat.text("junk")]) == "Five." + END
    from tokenizers import Tokenizer, models

    with pytest.raises(LineageError, match=r"has no <\|system\|> token"):
        ChatTokens(Tokenizer(models.BPE()), "tok.json")


def test_generate_helper_stops_at_end_and_keeps_prompt_order(tok) -> None:
    chat = ChatTokens(tok)
    model = tiny(tok.get_vocab_size()).eval()
    prompts = [
        chat.encode_prompt([{"role": "user", "content": t}]) for t in ("Five", "What is the sum of two")
    ]
    outs = generate(model, prompts, 6, eos=chat.end, temperature=0)
    for p, o in zip(prompts, outs, strict=True):
        alone = model.generate(torch.tensor([p]), 6, temperature=0, eos_token=chat.end)[0, len(p) :].tolist()
        if chat.end in alone:
            alone = alone[: alone.index(chat.end) + 1]
        assert o == alone


# --- reward models and tokenizers -----------------------------------------------------------------------
def test_a_reward_model_refuses_another_tokenizer(tmp_path: Path, tok) -> None:
    path = save_tokenizer(tok, tmp_path / "tok.json")
    model = RewardModel(tiny(tok.get_vocab_size()))
    save_reward_model(model, tmp_path / "rm", tokenizer_sha256(path), {"bias_shift": 0.5})
    loaded = load_reward_model(tmp_path / "rm", tokenizer_sha256(path))
    x, n = torch.tensor([[1, 2, 3, 4]]), torch.tensor([4])
    assert torch.allclose(loaded.eval()(x, n), model.eval()(x, n))
    other = train_tokenizer(["completely different text for another vocabulary"] * 5,
                            TokenizeConfig(vocab_size=280, min_frequency=1))  # fmt: skip
    other_path = save_tokenizer(other, tmp_path / "other.json")
    with pytest.raises(LineageError, match=r"rm: built on another tokenizer .*rerun") as e:
        load_reward_model(tmp_path / "rm", tokenizer_sha256(other_path))
    assert "\n" not in str(e.value)


def test_ranked_group_needs_two_responses(tok) -> None:
    chat = ChatTokens(tok)
    msgs = [{"role": "user", "content": "Q"}]
    with pytest.raises(LineageError, match="K >= 2"):
        ranked_group(chat, msgs, ["only<|end|>"], [0], 48)
    assert ranked_group(chat, msgs, ["a", "b"], [0, 0], 48) is None  # all tied: nothing to learn
    g = ranked_group(chat, msgs, ["a<|end|>", "b"], [0, 1], 48)
    assert g["seqs"][0][-1] == chat.end and g["seqs"][1][-1] != chat.end


# --- the four stages in a temporary project ----------------------------------------------------------------
def test_instruct_stages_run_in_order_and_refuse_another_tokenizer(tmp_path: Path) -> None:
    """instructions -> sft -> comparisons -> reward on a tiny random 'pretrained' model."""
    import json

    from pipeline.config import parse_params
    from pipeline.model.export import save_model
    from pipeline.stage import run_stage
    from stages import comparisons, instructions, reward, sft
    from tests.conftest import files_params

    text = [
        "What is 12 + 34? 46. Which module defines dumps? json. I don't know. I can't help with that."
    ] * 30
    save_tokenizer(train_tokenizer(text, TokenizeConfig(vocab_size=300, min_frequency=1)),
                   tmp_path / "data" / "tokenize" / "tokenizer.json")  # fmt: skip
    save_model(tiny(300, block_size=64), tmp_path / "data" / "pretrain" / "model")
    small = {"epochs": 1, "batch_size": 8, "checkpoint_interval": 0, "dtype": "float32"}
    params = parse_params(files_params(tmp_path, {
        "instructions": {"families": ["arithmetic", "unanswerable", "forbidden"], "max_modules": 5,
                         "sizes": {"sft": 24, "rm": 12, "ppo": 3, "eval": 9}},
        "sft": {**small, "eval_prompts": 1, "max_new_tokens": 4, "fewshot": 1},
        "comparisons": {"k_min": 4, "k_max": 5, "max_new_tokens": 4, "noise": 0.0, "temperatures": None},
        "reward": {**small, "val_fraction": 0.25, "bias_samples": 8},
    }))  # fmt: skip
    for stage in (instructions, sft, comparisons, reward):
        run_stage(stage.__name__.split(".")[-1], stage.body, tmp_path, params)
    data = tmp_path / "data"
    splits = {
        s: (data / "instructions" / f"{s}.jsonl").read_text().splitlines()
        for s in ("sft", "rm", "ppo", "eval")
    }
    assert [len(v) for v in splits.values()] == [24, 12, 3, 9]
    rows = [
        json.loads(line) for line in (data / "comparisons" / "comparisons.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 12 and all(4 <= len(r["responses"]) <= 5 for r in rows)
    assert all(r["ranks"] == r["gold_ranks"] for r in rows)  # noise 0: the labeler's own order
    assert all(r["temperatures"] == [1.0] * len(r["responses"]) for r in rows)  # no mix: all at temperature
    m = json.loads((data / "reward" / "metrics.json").read_text())
    assert (tmp_path / "metrics" / "reward.json").is_file()
    assert m["val"]["ceiling_pair_acc"] == 1.0  # noise 0: the labels are the labeler's own order
    # the bias shift is in the saved RM: the SFT demonstrations it was fitted on score 0 on average
    from pipeline.feedback.data import read_split
    from pipeline.tokenizer import load_tokenizer
    from pipeline.train.instruct import response_ids, score_groups

    tok_file = data / "tokenize" / "tokenizer.json"
    chat = ChatTokens(load_tokenizer(tok_file), str(tok_file))
    rm = load_reward_model(data / "reward" / "model", tokenizer_sha256(tok_file)).eval()
    demos = read_split(data / "instructions", "sft")[:8]  # reward.bias_samples
    groups = [{"seqs": [response_ids(chat, d["messages"], d["reference"] + "<|end|>", 64)]} for d in demos]
    scores = [g[0] for g in score_groups(rm, groups, 8, torch.device("cpu"))]
    assert abs(sum(scores) / len(scores)) < 1e-5 and abs(m["bias_shift"]) > 1e-3, (scores, m["bias_shift"])
    assert set(json.loads((data / "sft" / "metrics.json").read_text())["eval"]["sft"]["families"]) == {
        "arithmetic", "unanswerable", "forbidden"
    }  # fmt: skip
    # a tokenizer that is not the one SFT learned on: one clear line, nothing trained
    other = train_tokenizer(["another corpus entirely"] * 10, TokenizeConfig(vocab_size=300, min_frequency=1))
    save_tokenizer(other, data / "tokenize" / "tokenizer.json")
    with pytest.raises(LineageError, match=r"data/sft/model: built on another tokenizer"):
        run_stage("reward", reward.body, tmp_path, params)


def test_a_prompts_responses_take_the_temperatures_of_the_mix_in_turn() -> None:
    import random

    from stages.comparisons import temperatures

    ts = temperatures([0.7, 1.0, 1.3], [4, 9, 2, 3], random.Random(0))
    assert [len(t) for t in ts] == [4, 9, 2, 3]
    assert sorted(ts[1]) == [0.7] * 3 + [1.0] * 3 + [1.3] * 3  # as even as K allows
    assert all(len(set(t)) == min(len(t), 3) for t in ts)
    assert len({t[0] for t in temperatures([0.7, 1.0, 1.3], [4] * 30, random.Random(0))}) == 3  # random start


# --- the reward stage killed mid-training ------------------------------------------------------------------
def reward_project(root: Path, tok) -> None:
    """A project holding what the reward stage reads: tokenizer, an 'SFT' model, SFT demonstrations and
    ranked comparisons in which the answer "json." beats the others."""
    import json
    import random

    import yaml

    from pipeline.model.export import save_model
    from tests.conftest import files_params

    path = save_tokenizer(tok, root / "data" / "tokenize" / "tokenizer.json")
    chat = ChatTokens(tok)
    save_model(tiny(tok.get_vocab_size()), root / "data" / "sft" / "model")
    (root / "data" / "sft" / "model" / "chat.json").write_text(
        json.dumps({"tokenizer_sha256": tokenizer_sha256(path), "end_id": chat.end})
    )
    inst = root / "data" / "instructions"
    inst.mkdir(parents=True)
    q = [{"role": "user", "content": "Which module defines dumps?"}]
    (inst / "sft.jsonl").write_text(json.dumps({"messages": q, "reference": "json."}) + "\n")
    rng, words, rows = random.Random(0), ["five", "three", "module", "sum", "two"], []
    for i in range(48):
        responses = [" ".join(rng.choices(words, k=rng.randint(1, 3))) + END for _ in range(4)]
        responses[i % 4] = "json." + END
        ranks = [0 if r.startswith("json") else 1 for r in responses]
        rows.append({"id": f"p{i}", "family": "module_of", "messages": q, "responses": responses,
                     "ranks": ranks, "gold_ranks": ranks})  # fmt: skip
    (root / "data" / "comparisons").mkdir(parents=True)
    (root / "data" / "comparisons" / "comparisons.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows)
    )
    reward = {"max_steps": 120, "epochs": 10, "batch_size": 2, "lr": 1e-3, "checkpoint_interval": 10,
              "dtype": "float32", "device": "cpu", "val_fraction": 0.25, "bias_samples": 4}  # fmt: skip
    (root / "params.yaml").write_text(yaml.safe_dump(files_params(root, {"reward": reward})))


def test_reward_stage_killed_mid_training_resumes_to_the_uninterrupted_result(tmp_path: Path, tok) -> None:
    """SIGKILL after the first checkpoint; the rerun resumes and ends with the very weights and metrics
    of a run that was never interrupted (that one runs beside it)."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    from tests.conftest import ROOT

    for root in ("a", "b"):  # the same project twice, each with its own tracking store
        reward_project(tmp_path / root, tok)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def start(root: Path, **kw) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "stages.reward", "--root", str(root)], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw)  # fmt: skip

    uninterrupted, killed = start(tmp_path / "b"), start(tmp_path / "a")
    ckpts = tmp_path / "a" / "checkpoints" / "reward"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and killed.poll() is None and not list(ckpts.glob("*/ckpt.pt")):
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    (ckpt,) = ckpts.glob("*/ckpt.pt")
    killed_at = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < killed_at < 120 and not (tmp_path / "a" / "data" / "reward").exists()
    resumed = start(tmp_path / "a")
    for proc in (resumed, uninterrupted):
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-2000:]
    ma, mb = (json.loads((tmp_path / r / "data" / "reward" / "metrics.json").read_text()) for r in "ab")
    assert ma["perf"]["resumed_from_step"] >= killed_at and mb["perf"]["resumed_from_step"] == -1
    assert ma["train"]["steps"] == mb["train"]["steps"] == 120
    assert ma["val"] == mb["val"] and ma["bias_shift"] == mb["bias_shift"]
    assert mb["val"]["pair_acc"] > 0.8  # it learned the planted preference
    for name in ("model.safetensors", "reward_head.safetensors"):
        a, b = (load_file(str(tmp_path / r / "data" / "reward" / "model" / name)) for r in "ab")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_reward_stage_with_nproc_per_node_2_trains_under_torchrun(tmp_path: Path, tok) -> None:
    """`reward.nproc_per_node: 2` relaunches the stage under torchrun: two ranks share each step's
    batch (DDP), rank 0 writes the model and metrics, and the planted preference is learned."""
    import json
    import os
    import subprocess
    import sys

    import yaml

    from tests.conftest import ROOT

    reward_project(tmp_path, tok)
    data = yaml.safe_load((tmp_path / "params.yaml").read_text())
    data["reward"].update(nproc_per_node=2, batch_size=1, max_steps=60)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "stages.reward", "--root", str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    m = json.loads((tmp_path / "data" / "reward" / "metrics.json").read_text())
    assert m["perf"]["world_size"] == 2 and m["train"]["steps"] == 60
    assert m["val"]["pair_acc"] > 0.8
    assert (tmp_path / "data" / "reward" / "model" / "reward_head.safetensors").is_file()


def test_the_supervised_loop_shows_its_steps_on_the_terminal(monkeypatch, capsys) -> None:
    """SFT, the reward model and fine-tuning name their loop (``progress=``): with output that is not a
    terminal, a line per interval gives the steps done, the loss and the ETA, and one closes it."""
    from pipeline.train.supervised import SupervisedConfig, SupervisedTrainer, lm_loss

    monkeypatch.setenv("LINEAGE_PROGRESS", "lines")
    monkeypatch.setenv("LINEAGE_PROGRESS_INTERVAL", "0")
    g = torch.Generator().manual_seed(0)
    data = [{"tokens": torch.randint(0, 64, (2, 17), generator=g)} for _ in range(3)]
    cfg = SupervisedConfig(epochs=1, dtype="float32")
    SupervisedTrainer(tiny(64), lm_loss, lambda epoch: data, cfg, progress="sft").run()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("sft (float32): 1/3 steps (33%), loss ") and "ETA" in lines[0]
    assert lines[-1].startswith("sft (float32): 3/3 steps (100%), loss ") and " in 0m" in lines[-1]
    SupervisedTrainer(tiny(64), lm_loss, lambda epoch: data, cfg).run()  # no label, no lines
    assert capsys.readouterr().err == ""
