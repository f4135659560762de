"""PPO (InstructGPT's RL step) on tiny models built here: a planted rule reward goes up while the KL
stays bounded, the KL estimate is exactly 0 for the SFT policy itself, PPO-ptx's term moves the
gradient only when its coefficient is on, the value model is the RM at the start, advantages are
whitened, a killed run resumes to the state of an uninterrupted one, and bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.config import parse_params
from pipeline.feedback.config import PpoConfig
from pipeline.model import GPT, GPTConfig
from pipeline.model.reward import RewardModel
from pipeline.train.ppo import (
    Episodes,
    PPOTrainer,
    ValueModel,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    masked_mean,
    policy_objective,
    reward_scores,
    token_values,
)  # fmt: skip
from tests.conftest import files_params

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, END, TARGET = 12, 0, 7
PROMPTS = [[1, 2, 3], [4, 5], [6, 2, 8, 9], [3, 3], [10, 1], [2, 11, 4]]


def tiny(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(arch="gpt2", vocab_size=VOCAB, block_size=16, n_layer=1, n_head=2, n_embd=16)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg))


def rule_score(_: torch.nn.Module, ep: Episodes) -> torch.Tensor:
    """The planted reward: the share of response tokens that are TARGET."""
    resp = ep.idx[:, ep.prompt_width :]
    return ((resp == TARGET) & ep.actions.bool()).sum(1).float() / ep.lengths.clamp(min=1)


def cfg(**kw) -> PpoConfig:
    base = dict(steps=3, rollout_prompts=12, minibatch_size=6, ppo_epochs=2, max_new_tokens=5, lr=3e-3,
                value_lr=3e-3, eval_interval=0, checkpoint_interval=0, missing_end_penalty=0.0)  # fmt: skip
    return PpoConfig(**{**base, **kw})


def trainer(c: PpoConfig, seed: int = 0, **kw) -> PPOTrainer:
    policy = tiny(seed)
    rm = RewardModel(tiny(seed + 1))
    return PPOTrainer(policy, ValueModel.from_reward_model(rm), rm, PROMPTS, END, c, seed=seed,
                      score_fn=kw.pop("score_fn", rule_score), **kw)  # fmt: skip


def test_ppo_raises_a_rule_reward_while_the_kl_stays_bounded() -> None:
    beta = 0.1
    tr = trainer(cfg(steps=15, kl_coef=beta))
    tr.run()
    scores = [h["objective/scores"] for h in tr.history]
    first, last = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
    assert last > first + 0.2, scores
    # the policy moved away from SFT, but within the KL of the best regularised policy, whose
    # KL(pi* || pi_ref) = E[r] / beta - log Z is at most (max r - min r) / beta = 1 / beta
    kls = [h["objective/kl"] for h in tr.history]
    assert kls[-1] > 0 and max(kls) < 1 / beta, kls
    # the frozen reference did not move
    fresh = tiny(0)
    assert all(
        torch.equal(a, b)
        for a, b in zip(tr.ref.state_dict().values(), fresh.state_dict().values(), strict=True)
    )


def test_the_kl_estimate_is_zero_when_the_policy_is_the_reference() -> None:
    tr = trainer(cfg(kl_coef=0.1))
    ep, s, _ = tr.rollout()
    assert torch.equal(s["logp"], s["ref_logp"])
    a = tr.advantages(ep, s)
    assert float(a["kl"].abs().sum()) == 0.0
    first = tr.iteration()  # the rollout of step 0 comes from the untouched policy
    assert first["objective/kl"] == 0.0 and first["objective/non_score_reward"] == 0.0
    assert tr.iteration()["objective/kl"] != 0.0  # after an update it is not


def _policy_grads(c: PpoConfig, ptx) -> list[torch.Tensor]:
    tr = trainer(c)
    ep, s, _ = tr.rollout()
    a = tr.advantages(ep, s)
    mb = {"episodes": ep, "logp": s["logp"], "advantages": a["advantages"]}
    tr.policy.zero_grad()
    loss, _ = policy_objective(tr.policy, mb, c, ptx)
    loss.backward()
    return [p.grad.clone() for p in tr.policy.parameters()]


def test_the_ptx_term_changes_the_gradient_and_a_zero_coefficient_removes_it() -> None:
    g = torch.Generator().manual_seed(0)
    window = torch.randint(1, VOCAB, (4, 17), generator=g)
    ptx = (window[:, :-1], window[:, 1:])
    plain = _policy_grads(cfg(ptx_coef=0.0), None)
    zero = _policy_grads(cfg(ptx_coef=0.0), ptx)
    mixed = _policy_grads(cfg(ptx_coef=1.0), ptx)
    assert all(torch.equal(a, b) for a, b in zip(plain, zero, strict=True))
    assert any(not torch.allclose(a, b) for a, b in zip(plain, mixed, strict=True))
    # and it is the LM gradient, scaled by the coefficient
    double = _policy_grads(cfg(ptx_coef=2.0), ptx)
    for p, m, d in zip(plain, mixed, double, strict=True):
        assert torch.allclose(d - p, 2 * (m - p), atol=1e-6)


def test_the_value_model_starts_from_the_reward_models_weights() -> None:
    rm = RewardModel(tiny(3))
    torch.nn.init.normal_(rm.head.bias)
    value = ValueModel.from_reward_model(rm)
    ours, theirs = value.state_dict(), rm.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # read at the last token, V is the RM's score; and it is a copy, not the same tensors
    ep = Episodes(torch.tensor([[0, 1, 2, 3, 4]]), torch.tensor([[0, 1, 1, 1, 1]]), torch.tensor([[1, 1]]),
                  torch.tensor([False]), 3)  # fmt: skip
    with torch.no_grad():
        v = value(ep.idx, ep.mask)[0]
        assert v[-1].item() == pytest.approx(reward_scores(rm, ep).item(), abs=1e-5)
        assert v[-1].item() == pytest.approx(
            rm(torch.tensor([[1, 2, 3, 4]]), torch.tensor([4])).item(), abs=1e-5
        )
        # PPO reads V before each response token: the RM's score of the prefix so far
        assert token_values(value, ep)[0].tolist() == pytest.approx(v[2:4].tolist())
    value.head.bias.data += 1
    assert not torch.equal(value.head.bias, rm.head.bias)


def test_advantages_are_whitened_and_gae_is_the_reward_to_go_with_lambda_one() -> None:
    tr = trainer(cfg())
    ep, s, _ = tr.rollout()
    a = tr.advantages(ep, s)
    m = ep.actions.float()
    assert masked_mean(a["advantages"], m).item() == pytest.approx(0.0, abs=1e-5)
    assert masked_mean(a["advantages"] ** 2, m).item() == pytest.approx(1.0, abs=1e-3)
    assert float((a["advantages"] * (1 - m)).abs().sum()) == 0.0  # nothing after a response's end
    rewards = torch.tensor([[0.0, 1.0, 2.0, 0.0]])
    actions = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv, ret = gae(rewards, torch.zeros(1, 4), actions, gamma=1.0, lam=1.0)
    assert adv.tolist() == [[3.0, 3.0, 2.0, 0.0]] and ret.tolist() == adv.tolist()


def _gae_reference(rewards, values, lengths, gamma, lam):
    """GAE as the paper writes it, one episode at a time: delta_t = r_t + gamma V(s_t+1) - V(s_t), with
    V = 0 after the last token, and A_t = delta_t + gamma lambda A_t+1."""
    adv = [[0.0] * len(r) for r in rewards]
    for b, n in enumerate(lengths):
        running = 0.0
        for t in reversed(range(n)):
            next_v = values[b][t + 1] if t + 1 < n else 0.0
            delta = rewards[b][t] + gamma * next_v - values[b][t]
            running = delta + gamma * lam * running
            adv[b][t] = running
    return adv


def test_gae_matches_a_reference_loop_with_values_lambda_095_and_ragged_lengths() -> None:
    g = torch.Generator().manual_seed(0)
    lengths = [5, 2, 0, 4, 1]
    rewards, values = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)  # padding holds junk too
    actions = (torch.arange(6)[None, :] < torch.tensor(lengths)[:, None]).float()
    for gamma in (1.0, 0.9):
        adv, ret = gae(rewards, values, actions, gamma=gamma, lam=0.95)
        want = torch.tensor(_gae_reference(rewards.tolist(), values.tolist(), lengths, gamma, 0.95))
        assert torch.allclose(adv, want, atol=1e-5)
        assert torch.allclose(
            ret, (want + values) * actions, atol=1e-5
        )  # returns = A + V on real tokens only


def test_the_clipped_policy_loss_has_no_gradient_where_the_ratio_is_clipped() -> None:
    # tokens: ratio 1.5 with A > 0 (clipped), 0.5 with A < 0 (clipped), 0.5 with A > 0 and 1.5 with
    # A < 0 (the pessimistic side: not clipped), 1.1 with A > 0 (inside the range), and a padding token
    ratio = torch.tensor([[1.5, 0.5, 0.5, 1.5, 1.1, 3.0]])
    adv = torch.tensor([[1.0, -1.0, 2.0, -2.0, 1.0, 5.0]])
    actions = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 0.0]])
    old = torch.zeros(1, 6)
    logp = ratio.log().requires_grad_()
    loss, stats = clipped_policy_loss(logp, old, adv, actions, clip=0.2)
    loss.backward()
    # d/dlogp of -A * ratio / n = -A * ratio / n where not clipped, 0 where clipped or padding
    want = torch.tensor([[0.0, 0.0, -2.0 * 0.5, 2.0 * 1.5, -1.0 * 1.1, 0.0]]) / 5
    assert torch.allclose(logp.grad, want, atol=1e-6)
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 1.0 + 3.0 - 1.1) / 5, abs=1e-6)
    assert stats["clipfrac"] == pytest.approx(2 / 5)


def test_the_clipped_value_loss_has_no_gradient_where_the_clipped_error_is_larger() -> None:
    old = torch.zeros(1, 4)
    v = torch.tensor([[1.0, 1.0, 0.1, 9.0]], requires_grad=True)
    returns = torch.tensor([[2.0, -1.0, 1.0, 0.0]])
    actions = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, stats = clipped_value_loss(v, old, returns, actions, clip=0.2)
    loss.backward()
    # token 0: moved past the clip toward the return, the clipped error (0.2 - 2)^2 is larger: no gradient;
    # token 1: moved past the clip away from it, the unclipped error counts; token 2: inside the range
    assert torch.allclose(v.grad, torch.tensor([[0.0, (1.0 + 1.0) / 3, (0.1 - 1.0) / 3, 0.0]]), atol=1e-6)
    assert loss.item() == pytest.approx(0.5 * ((0.2 - 2) ** 2 + 2.0**2 + 0.9**2) / 3, abs=1e-6)
    assert stats["value_clipfrac"] == pytest.approx(1 / 3)


def test_a_killed_run_resumes_to_the_state_of_an_uninterrupted_one(tmp_path: Path) -> None:
    c = cfg(steps=4, checkpoint_interval=1, ema=0.9)
    whole = trainer(c, checkpoint=tmp_path / "a" / "ckpt.pt")
    whole.run()

    class Killed(Exception):
        pass

    def kill_at_3(_m, step):
        if step == 3:
            raise Killed  # after the checkpoint of step 2, before that of step 3

    first = trainer(c, checkpoint=tmp_path / "b" / "ckpt.pt", log=kill_at_3)
    with pytest.raises(Killed):
        first.run()
    torch.manual_seed(12345)  # the resumed process starts from another global RNG state
    again = trainer(c, checkpoint=tmp_path / "b" / "ckpt.pt")
    assert again.resumed_from == 2
    again.run()
    for a, b in ((whole.policy, again.policy), (whole.value, again.value), (whole.ema, again.ema)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    strip = [{k: v for k, v in h.items() if not k.startswith("perf/")} for h in whole.history]
    assert strip == [{k: v for k, v in h.items() if not k.startswith("perf/")} for h in again.history]
    assert whole.kl_ctl.value == again.kl_ctl.value


def test_the_adaptive_controller_raises_beta_when_the_kl_overshoots() -> None:
    tr = trainer(cfg(steps=4, kl_coef=0.05, kl_target=0.01, kl_horizon=100))
    tr.run()
    betas = [h["objective/kl_coef"] for h in tr.history]
    assert betas[0] == 0.05 and betas[-1] > betas[1]  # step 0 has KL 0: beta falls once, then rises


# --- bad input, one line each ----------------------------------------------------------------------
def test_a_negative_kl_coefficient_is_a_params_error_naming_the_key(tmp_path: Path, capsys) -> None:
    import yaml

    from stages import ppo

    p = files_params(tmp_path, {"ppo": {"kl_coef": -0.1}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    assert ppo.main("ppo", ppo.body, ["--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ppo.kl_coef" in err and "greater than or equal to 0" in err
    with pytest.raises(Exception, match="ppo.kl_coef"):
        parse_params(p)


def test_a_policy_and_a_reward_model_from_different_tokenizers_are_one_line(tmp_path: Path) -> None:
    from pipeline.config import TokenizeConfig
    from pipeline.errors import LineageError
    from pipeline.model.export import save_model
    from pipeline.model.reward import save_reward_model, tokenizer_sha256
    from pipeline.stage import StageContext
    from pipeline.tokenizer import save_tokenizer, train_tokenizer
    from stages import ppo

    data = tmp_path / "data"
    tok = train_tokenizer(
        ["What is 12 + 34? 46. I don't know."] * 20, TokenizeConfig(vocab_size=300, min_frequency=1)
    )
    save_tokenizer(tok, data / "tokenize" / "tokenizer.json")
    sha = tokenizer_sha256(data / "tokenize" / "tokenizer.json")
    model = tiny(0, vocab_size=300, block_size=32)
    for stage in ("pretrain", "sft"):
        save_model(model, data / stage / "model")
    (data / "sft" / "model" / "chat.json").write_text(json.dumps({"tokenizer_sha256": sha}))
    save_reward_model(
        RewardModel(tiny(1, vocab_size=300, block_size=32)), data / "reward" / "model", "f" * 64, {}
    )
    ctx = StageContext("ppo", parse_params(files_params(tmp_path)), tmp_path, tmp_path / "out", None, None)
    with pytest.raises(LineageError) as e:
        ppo.body(ctx)
    msg = str(e.value)  # the stage prints it as `error: ppo: <msg>`, one line
    assert "\n" not in msg and "data/reward/model" in msg and "another tokenizer than the policy" in msg
    assert "dvc repro reward" in msg


# --- the stage in a temporary project ---------------------------------------------------------------
def _project(root: Path) -> dict:
    """data/ as the upstream stages leave it, with tiny models: tokenizer and token files, a
    'pretrained' = 'SFT' model, an RM on the same tokenizer, PPO and eval prompts, SFT's answers."""
    import random

    from pipeline.config import TokenizeConfig
    from pipeline.model.export import save_model
    from pipeline.model.reward import save_reward_model, tokenizer_sha256
    from pipeline.tokenizer import save_tokenizer, train_tokenizer, write_tokens

    data = root / "data"
    text = ["What is 12 + 34? 46. What is 3 + 4? 7. I don't know. The sum of numbers."] * 30
    tok = train_tokenizer(text, TokenizeConfig(vocab_size=300, min_frequency=1))
    save_tokenizer(tok, data / "tokenize" / "tokenizer.json")
    sha = tokenizer_sha256(data / "tokenize" / "tokenizer.json")
    docs = [tok.encode(t).ids for t in text]
    for split in ("train", "val"):
        write_tokens(data / "tokenize", split, docs, [0] * len(docs), 300, eot_id=0)
    n_tok, n_bytes = sum(len(d) for d in docs), sum(len(t.encode()) for t in text)
    (data / "tokenize" / "meta.json").write_text(json.dumps({
        "dtype": "uint16", "vocab_size": 300, "sources": ["ref"], "val_bytes_per_source": {"ref": n_bytes},
        "val_tokens_per_source": {"ref": n_tok}, "val_docs_per_source": {"ref": len(docs)}}))  # fmt: skip
    model = tiny(0, vocab_size=300, block_size=32)
    save_model(tiny(2, vocab_size=300, block_size=32), data / "pretrain" / "model")  # not the SFT weights
    save_model(model, data / "sft" / "model")
    (data / "sft" / "model" / "chat.json").write_text(json.dumps({"tokenizer_sha256": sha}))
    save_reward_model(RewardModel(tiny(1, vocab_size=300, block_size=32)), data / "reward" / "model", sha, {})
    r = random.Random(0)

    def record(split: str, i: int) -> dict:
        a, b = r.randint(1, 20), r.randint(1, 20)
        return {"id": f"{split}-{i}", "family": "arithmetic", "kind": "answer", "format": "integer",
                "messages": [{"role": "user", "content": f"What is {a} + {b}?"}], "reference": str(a + b)}  # fmt: skip

    inst = data / "instructions"
    inst.mkdir(parents=True)
    evals = [record("eval", i) for i in range(10)]
    for split, rows in (("ppo", [record("ppo", i) for i in range(8)]), ("eval", evals)):
        (inst / f"{split}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    tasks = data / "evaluate" / "tasks"  # the evaluate stage's tasks: a choice one and a greedy one
    items = {"choice": [{"context": f"What is {i} + 1?", "choices": [str(i + 1), "sum", "numbers"], "label": 0}
                        for i in range(6)],
             "greedy": [{"context": "The sum of", "completion": " numbers."}] * 4}  # fmt: skip
    for kind, rows_ in items.items():
        for side in ("train", "test"):
            (tasks / kind).mkdir(parents=True, exist_ok=True)
            (tasks / kind / f"{side}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows_))
    (data / "sft" / "eval.jsonl").write_text("".join(
        json.dumps({"id": e["id"], "response": e["reference"] + "<|end|>", "fewshot": ""}) + "\n" for e in evals
    ))  # fmt: skip
    return files_params(root, {"ppo": {"steps": 2, "rollout_prompts": 4, "minibatch_size": 2, "ppo_epochs": 1,
                                       "max_new_tokens": 4, "val_prompts": 3, "eval_interval": 1, "tax_windows": 3,
                                       "ptx_coef": 1.0, "ptx_batch_size": 2}})  # fmt: skip


def test_the_stage_keeps_the_best_gold_checkpoint_and_writes_its_figures(tmp_path: Path) -> None:
    from pipeline.stage import run_stage
    from stages import ppo

    params = parse_params(_project(tmp_path))
    m = run_stage("ppo", ppo.body, tmp_path, params, ppo.HEADLINE)
    out = tmp_path / "data" / "ppo"
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "chat.json").is_file()
    assert m["variant"] == "ppo-ptx" and m["data"] == {"prompts": 8, "val_prompts": 3, "test_prompts": 7,
                                                       "episodes": 8}  # fmt: skip
    # the over-optimisation curve: a validation at step 0 (the SFT policy, KL 0) and after each step
    val = (out / "plots" / "val.csv").read_text().splitlines()
    assert val[0] == "step,gold,rm,kl,exact" and len(val) == 1 + 3
    assert m["overoptimisation"]["sft"]["kl"] == 0.0
    best = m["overoptimisation"]["best"]
    assert best["gold"] == max(float(line.split(",")[1]) for line in val[1:])
    # SFT against itself at step 0 is a tie on every prompt
    for mode in ("greedy", "sampled"):
        w = m["eval"][mode]["win_rate"]["ppo_vs_sft"]
        assert w["n"] == 7 and w["low"] <= w["value"] <= w["high"]
    assert m["eval"]["sft_vs_fewshot"]["value"] == 1.0  # the planted SFT answers are right, few-shot empty
    # the alignment tax measures each model it names: the LM loss on the fixed validation windows and
    # the zero-shot accuracy on the evaluate stage's tasks, recomputed here from the saved weights
    from pipeline.eval.inputs import text_encoder
    from pipeline.eval.scoring import read_task_dir, task_accuracy
    from pipeline.model.export import load_model
    from pipeline.tokenizer import eot_id, load_tokenizer, open_tokens
    from pipeline.train.ppo import lm_loss_on, spread_windows

    data = tmp_path / "data"
    windows = spread_windows(open_tokens(data / "tokenize", "val").tokens, 32, 3)
    tok = load_tokenizer(data / "tokenize" / "tokenizer.json")
    saved = {"pretrain": data / "pretrain" / "model", "sft": data / "sft" / "model", "ppo": out / "model"}
    z = m["tax"]["zeroshot"]
    assert z["items"] == {"choice": 6, "greedy": 4}
    for name, folder in saved.items():
        model = load_model(folder).eval()
        assert m["tax"][name]["loss"] == pytest.approx(lm_loss_on(model, windows), abs=1e-5), name
        for task in ("choice", "greedy"):
            kind, _, test = read_task_dir(data / "evaluate" / "tasks" / task)
            acc = task_accuracy(
                model, text_encoder(tok), eot_id(tok), {"kind": kind, "test": test}, 64, "cpu"
            )
            assert z["tasks"][task][name] == pytest.approx(acc), (name, task)
    assert m["tax"]["pretrain"]["loss"] != m["tax"]["sft"]["loss"]
    assert 0 < m["perf"]["generate_share"] < 1
    assert len(m["train"]["objective"]) >= 5 and "ptx_avg" in m["train"]["loss"]
    # MLflow: the validation curve under valid/, TRL's value and ratio statistics under val/
    import mlflow

    mlflow.set_tracking_uri(params.common.tracking_uri)
    (run,) = mlflow.search_runs(experiment_names=[params.common.experiment], output_format="list")
    client = mlflow.MlflowClient()
    assert len(client.get_metric_history(run.info.run_id, "valid/gold_score")) == 3
    assert len(client.get_metric_history(run.info.run_id, "val/ratio")) == 2
    assert not {k for k in run.data.metrics if k.startswith("val/")} - {"val/ratio", "val/clipfrac_avg"}
    headline = json.loads((tmp_path / "metrics" / "ppo.json").read_text())
    assert "ppo_win_rate" in headline and "ppo_tax_bpb" in headline and "ppo_tax_zeroshot" in headline


def test_ppo_seed_reruns_training_on_the_same_held_out_prompts(tmp_path: Path) -> None:
    """`ppo.seed` varies rollouts and minibatches only: the test prompts stay those of common.seed, so
    runs at several seeds compare on one set, and each seed trains in its own checkpoint folder."""
    from pipeline.stage import run_stage
    from stages import ppo

    files = _project(tmp_path)
    out = tmp_path / "data" / "ppo"
    runs = []
    for seed in (None, 7):
        params = parse_params({**files, "ppo": {**files["ppo"], "seed": seed}})
        m = run_stage("ppo", ppo.body, tmp_path, params, ppo.HEADLINE)
        ids = [json.loads(line)["id"] for line in (out / "eval.jsonl").read_text().splitlines()]
        runs.append((ids, m["train"]["objective"]))
    assert runs[0][0] == runs[1][0]  # the same test prompts
    assert runs[0][1] != runs[1][1]  # another training run
    assert len(list((tmp_path / "checkpoints" / "ppo").iterdir())) == 2


def test_the_first_ratio_is_exactly_one_with_dropout_on() -> None:
    """Old log-probs and the update's log-probs come from one mode: before any optimiser step the
    policy is the policy that sampled, so the ratio is 1 (with dropout 0.1 in train mode it is not)."""
    policy, rm = tiny(0, dropout=0.1), RewardModel(tiny(1, dropout=0.1))
    c = cfg(ppo_epochs=1, minibatch_size=12)  # one update: its statistics are those of the first ratio
    tr = PPOTrainer(policy, ValueModel.from_reward_model(rm), rm, PROMPTS, END, c, score_fn=rule_score)
    first = tr.iteration()
    assert (
        first["val/ratio"] == 1.0
        and first["policy/approxkl_avg"] == 0.0
        and first["policy/clipfrac_avg"] == 0.0
    )


def test_every_ppo_epoch_deals_the_episodes_into_new_minibatches(monkeypatch) -> None:
    dealt: list[frozenset[int]] = []
    select = Episodes.select

    def record(self, rows):
        dealt.append(frozenset(rows.tolist()))
        return select(self, rows)

    monkeypatch.setattr(Episodes, "select", record)
    tr = trainer(cfg(ppo_epochs=4, minibatch_size=3))
    tr.iteration()
    epochs = [set(dealt[i : i + 4]) for i in range(0, 16, 4)]  # 12 episodes: 4 minibatches of 3 per epoch
    assert all(set().union(*e) == set(range(12)) for e in epochs)  # each epoch visits every episode once
    assert len({frozenset(e) for e in epochs}) > 1  # and the minibatches are not the same groups each time
