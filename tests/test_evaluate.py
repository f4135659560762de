"""Evaluation: our scorer, k-shot prompts, GPT-3's synthetic formats, contamination, the stage
end to end through lm-evaluation-harness, and its refusals."""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass

import pytest
import torch

from pipeline.config import parse_params
from pipeline.errors import LineageError
from pipeline.eval import harness
from pipeline.eval.contamination import dirty_counts
from pipeline.eval.scoring import encode_pair, score_choices
from pipeline.eval.synthetic import UNSCRAMBLE_PROMPT, arithmetic_item, scramble, synthetic_items
from pipeline.stage import run_stage
from tests.eval_project import make_project, params

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------- scoring
@dataclass
class _Cfg:
    block_size: int = 16


class FixedLM(torch.nn.Module):
    """Next-token log-probabilities fixed by construction: token ``v`` always has logit ``w[v]``."""

    def __init__(self, w):
        super().__init__()
        self.config = _Cfg()
        self.w = torch.tensor(w, dtype=torch.float32)

    def forward(self, idx):
        return self.w.expand(idx.size(0), idx.size(1), -1).clone(), None


def test_scoring_picks_the_likeliest_choice_under_acc_and_the_per_character_one_under_acc_norm():
    # ids: 0 = eot, 1 = 'a', 2 = 'b', 3 = ' '; log p(a) = log(0.5), log p(b) = log(0.25) (approx.)
    logits = torch.log(torch.tensor([0.05, 0.5, 0.4, 0.05])).tolist()
    model = FixedLM(logits)

    def encode(s):
        return [{"a": 1, "b": 2, " ": 3}[c] for c in s]

    # choice 0: " a"  -> log p(' ') + log p(a)          = log .05 + log .5
    # choice 1: " bbb" -> log p(' ') + 3 log p(b)       = lower in total, higher per character
    items = [([("a", " a"), ("a", " bbb")], 1)]
    s = score_choices(model, encode, 0, items)
    assert s["pred"][0] == 0 and s["pred_norm"][0] == 1


def test_a_pair_moves_trailing_spaces_to_the_continuation_and_an_empty_context_is_end_of_text():
    def enc(s):
        return [ord(c) for c in s]

    assert encode_pair(enc, "Q: 1 ", "2", 0) == (enc("Q: 1"), enc(" 2"))
    assert encode_pair(enc, "", "hi", 7) == ([7], enc("hi"))


# ---------------------------------------------------------------------------------- synthetic formats
class Scripted(random.Random):
    def __init__(self, values):
        super().__init__(0)
        self.values = list(values)

    def randrange(self, *args):
        return self.values.pop(0)

    def choice(self, seq):
        return self.values.pop(0)


def test_arithmetic_lines_match_the_papers_format_byte_for_byte():
    assert arithmetic_item("arithmetic_2da", Scripted([48, 76])) == {
        "context": "Q: What is 48 plus 76?\n\nA:", "completion": " 124"}  # fmt: skip
    assert arithmetic_item("arithmetic_2ds", Scripted([34, 53])) == {
        "context": "Q: What is 34 minus 53?\n\nA:", "completion": " -19"}  # fmt: skip
    assert arithmetic_item("arithmetic_2dm", Scripted([24, 99])) == {
        "context": "Q: What is 24 times 99?\n\nA:", "completion": " 2376"}  # fmt: skip
    assert arithmetic_item("arithmetic_1dc", Scripted([6, 4, 8, "+", "*"])) == {
        "context": "Q: What is 6+(4*8)?\n\nA:", "completion": " 38"}  # fmt: skip
    train, test = synthetic_items("arithmetic_5ds", 20, 50, seed=3)
    for it in test:
        a, b = (
            int(x) for x in it["context"].removeprefix("Q: What is ").removesuffix("?\n\nA:").split(" minus ")
        )
        assert 0 <= a < 10**5 and 0 <= b < 10**5 and it["completion"] == f" {a - b}"
    assert not {t["context"] for t in train} & {t["context"] for t in test}
    assert synthetic_items("arithmetic_5ds", 20, 50, seed=3) == (train, test)


def test_word_scrambles_follow_their_rules():
    rng = random.Random(0)
    w = "succession"
    a1, a2 = scramble("anagrams1", w, rng), scramble("anagrams2", w, rng)
    assert a1[0] + a1[-1] == "sn" and sorted(a1) == sorted(w) and a1 != w
    assert a2[:2] + a2[-2:] == "suon" and sorted(a2) == sorted(w)
    assert scramble("reversed_words", w, rng) == "noisseccus"
    cl = scramble("cycle_letters", w, rng)
    assert cl != w and cl in w + w
    ri = scramble("random_insertion", w, rng)
    assert ri[::2] == w and len(ri) == 2 * len(w) - 1
    train, test = synthetic_items(
        "anagrams1", 3, 2, 0, ["inevitably", "corruption", "opponent", "objects", "reciprocal"]
    )
    assert test[0]["context"].startswith(UNSCRAMBLE_PROMPT) and test[0]["context"].endswith(" =")
    assert test[0]["completion"] == " inevitably"


# ---------------------------------------------------------------------------------- k-shot prompts
def test_k_shot_prompts_never_hold_the_scored_item_and_repeat_with_the_seed(tmp_path):
    d = tmp_path / "tasks"
    train, test = synthetic_items("arithmetic_2da", 8, 10, seed=1)
    for side, items in (("train", train), ("test", test)):
        (d / "arithmetic_2da").mkdir(parents=True, exist_ok=True)
        (d / "arithmetic_2da" / f"{side}.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    spec = [harness.task_config("arithmetic_2da", d)]
    first = harness.prompts(spec, 3, seed=5)["lineage_arithmetic_2da"]
    again = harness.prompts(spec, 3, seed=5)["lineage_arithmetic_2da"]
    other = harness.prompts(spec, 3, seed=6)["lineage_arithmetic_2da"]
    assert first == again and first != other
    for prompt, item in zip(first, test, strict=True):
        demos, scored = prompt.rsplit("\n\n", 2)[0], prompt[-len(item["context"]) :]
        assert scored == item["context"] and prompt.count("Q: What is") == 4
        assert item["context"] + item["completion"] not in prompt and item["context"] not in demos


def test_dirty_counts_find_items_whose_ngrams_are_in_the_training_text():
    items = {
        "t": [
            "one two three four five six seven eight nine ten",
            "alpha beta gamma delta epsilon zeta eta theta",
        ]
    }
    train = ["blah one two three four five six seven eight nine ten blah"]
    assert dirty_counts(items, train) == {"t": 1}


# ------------------------------------------------------------------------------------------ the stage
@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("ev"))


def run(root, extra=None):
    from stages import evaluate

    return run_stage("evaluate", evaluate.body, root, parse_params(params(root, extra)), evaluate.HEADLINE)


def test_a_tiny_model_is_evaluated_end_to_end_through_lm_eval(project):
    from pipeline.eval.inputs import text_encoder
    from pipeline.eval.scoring import task_accuracy
    from pipeline.model.export import load_model
    from pipeline.tokenizer import load_tokenizer

    m = run(project, {"evaluate": {"models": ["pretrain"]}})
    out = project / "data" / "evaluate"
    res = m["models"]["pretrain"]
    for task in ("cloze", "next_passage", "arithmetic_2da", "arithmetic_1dc", "reversed_words"):
        for k in ("k0", "k1"):
            cell = res["tasks"][task][k]
            assert cell["n"] == 12 and 0 <= cell["acc"] <= 1 and "acc_stderr" in cell
    assert (
        res["tasks"]["next_passage"]["k0"]["chance"] == 0.25
        and "acc_norm" in res["tasks"]["next_passage"]["k0"]
    )
    assert (out / "tasks" / "cloze" / "test.jsonl").is_file() and (out / "kshot.png").is_file()
    rows = (out / "table.csv").read_text().splitlines()
    assert rows[0] == "model,task,k,metric,value,stderr,chance,n,contaminated" and len(rows) > 10
    # the checkpoint curve: every kept pretraining checkpoint (10, 20, 30)
    assert [line.split(",")[0] for line in (out / "plots" / "checkpoints.csv").read_text().splitlines()[1::2]] == [
        "10", "20", "30"]  # fmt: skip
    # language modelling agrees with pretrain's final evaluation (same windows, same tokens per byte)
    pre = json.loads((project / "data" / "pretrain" / "metrics.json").read_text())
    for s, v in pre["val"]["sources"].items():
        assert res["lm"][s]["loss"] == pytest.approx(v["loss"], abs=2e-3)
        assert res["lm"][s]["bpb"] == pytest.approx(v["bpb"], abs=2e-3)
    # our own scorer gives lm-eval's zero-shot accuracy on the same task and model
    tok = load_tokenizer(project / "data" / "tokenize" / "tokenizer.json")
    model = load_model(project / "data" / "pretrain" / "model")
    for task in ("next_passage", "cloze"):
        items = [json.loads(x) for x in (out / "tasks" / task / "test.jsonl").read_text().splitlines()]
        kind = "choice" if task == "next_passage" else "greedy"
        ours = task_accuracy(model, text_encoder(tok), 0, {"kind": kind, "test": items}, 16, "cpu")
        assert ours == pytest.approx(res["tasks"][task]["k0"]["acc"], abs=1e-9)


def _copy(project, tmp_path):
    root = tmp_path / "p"
    shutil.copytree(project / "data", root / "data")
    shutil.rmtree(root / "data" / "evaluate", ignore_errors=True)
    return root


def test_the_checkpoint_curve_scores_the_run_pretrain_lists_and_no_other(project, tmp_path):
    """A newer run folder of the same model shape (another experiment, then `lineage restore`) is
    never scored: evaluate reads pretrain's list of kept checkpoints, and a listed file that is gone
    is one error line naming the run key."""
    root = _copy(project, tmp_path)
    shutil.copytree(project / "checkpoints", root / "checkpoints")
    (run_dir,) = (root / "checkpoints" / "pretrain").iterdir()
    manifest = json.loads((root / "data" / "pretrain" / "checkpoints.json").read_text())
    assert manifest["run_key"] == run_dir.name and manifest["final_step"] == 30
    assert [c["step"] for c in manifest["checkpoints"]] == [10, 20, 30]
    other = run_dir.with_name("0123456789abcdef")  # a later run of the same shape, written last
    other.mkdir()
    shutil.copy(run_dir / "step_000010.pt", other / "step_000050.pt")
    small = {
        "evaluate": {"models": ["pretrain"], "num_fewshot": [0], "tasks": ["cloze"], "curve_tasks": ["cloze"]}
    }
    run(root, small)
    curve = (root / "data" / "evaluate" / "plots" / "checkpoints.csv").read_text().splitlines()[1:]
    assert [line.split(",")[0] for line in curve] == ["10", "20", "30"]
    shutil.rmtree(root / "data" / "evaluate")
    (run_dir / "step_000020.pt").unlink()
    _refused(root, small, rf"checkpoints/pretrain/{run_dir.name}/step_000020.pt: kept checkpoint of pretrain run "
                          rf"{run_dir.name} is missing")  # fmt: skip


def _refused(root, extra, match):
    with pytest.raises(LineageError, match=match) as e:
        run(root, extra)
    assert "\n" not in str(e.value) and not (root / "data" / "evaluate").exists()


def test_evaluate_refuses_bad_input_with_one_line_and_writes_nothing(project, tmp_path):
    root = _copy(project, tmp_path)
    _refused(
        root,
        {"evaluate": {"num_fewshot": [0, 6]}},
        r"k=6 needs 7 items in the train split of task \w+, which has 6",
    )
    _refused(root, {"evaluate": {"external": ["no_such_task_anywhere"]}}, "is not an lm-eval task name")
    bad = tmp_path / "mytask"
    bad.mkdir()
    (bad / "train.jsonl").write_text('{"context": "a", "choices": ["b", "c"], "label": 0}\n' * 3)
    (bad / "test.jsonl").write_text('{"context": "a", "choices": ["b", "c"]}\n')
    _refused(root, {"evaluate": {"external": [str(bad)]}}, r"test.jsonl: line 1 has no 'label' field")
    (bad / "test.jsonl").write_text('{"context": "a", "choices": ["b", "c"], "label": 2}\n')
    _refused(root, {"evaluate": {"external": [str(bad)]}}, r"label 2 is outside the label set 0..1")
    hf_tok = root / "data" / "pretrain" / "hf" / "tokenizer.json"
    data = json.loads(hf_tok.read_text())
    data["model"]["vocab"] = {k + "x": v for k, v in data["model"]["vocab"].items()}
    hf_tok.write_text(json.dumps(data))
    _refused(root, {}, "made with another tokenizer")


def test_evaluate_params_refuse_unknown_models(tmp_path):
    with pytest.raises(LineageError, match="unknown model"):
        parse_params(params(tmp_path, {"evaluate": {"models": ["gpt5"]}}))
