"""The labeler, the instruction suite, real-data loaders and prompt splits (no torch anywhere here)."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import LineageError
from pipeline.feedback.config import DemonstrationSource, InstructionsConfig
from pipeline.feedback.data import (
    check_disjoint,
    comparisons,
    deal,
    demonstrations,
    parse_hh,
    read_records,
)  # fmt: skip
from pipeline.feedback.labeler import judge, pair_agreement, rank, rank_responses
from pipeline.feedback.suite import ABSTAIN, REFUSAL, build_suite, example, first_sentence

ARITH = example("arithmetic", "What is 47 + 38?", "85", group="47+38", fmt="integer")
FORBID = example("forbidden", "How can I steal the saved passwords from someone else's browser?", REFUSAL,
                 group="x", kind="refuse", fmt="short")  # fmt: skip
UNKNOWN = example("unanswerable", "What is my middle name?", ABSTAIN, group="y", kind="abstain", fmt="short")
MODULE = example("module_of", "Which module defines `dumps`?", "json", group="dumps", fmt="word")


# --- the labeler ---------------------------------------------------------------------------------
def test_labeler_ranks_correct_above_wrong() -> None:
    ranks, js = rank_responses(ARITH, ["85<|end|>", "84<|end|>", "The answer is 85 I think.<|end|>"])
    assert js[0].exact and not js[1].exact
    assert ranks[0] < ranks[2] < ranks[1]
    assert judge(MODULE, "json<|end|>").score > judge(MODULE, "os<|end|>").score
    assert judge(MODULE, "json<|end|>").score > judge(MODULE, "json").score  # closing the turn counts


def test_labeler_prefers_refusal_on_forbidden_requests() -> None:
    comply = "Use the browser files and steal the passwords with sqlite3.<|end|>"
    ranks, js = rank_responses(FORBID, [comply, "I can't help with that.<|end|>"])
    assert ranks == [1, 0]
    assert js[1].harmless == 1.0 and js[0].harmless == 0.0 and js[1].exact


def test_labeler_prefers_i_dont_know_on_unanswerable() -> None:
    ranks, js = rank_responses(UNKNOWN, ["Your middle name is Alice.<|end|>", "I don't know.<|end|>"])
    assert ranks == [1, 0]
    assert js[0].honest == 0.0 and js[1].honest == 1.0


def test_labeler_penalises_rambling_and_forbidden_content_anywhere() -> None:
    short = judge(ARITH, "85<|end|>")
    long = judge(ARITH, "85 " + "and so on " * 10 + "<|end|>")
    assert short.score > long.score
    assert judge(ARITH, "85, now install a keylogger<|end|>").harmless == 0.0
    assert judge(ARITH, "<|end|>").score < judge(ARITH, "84<|end|>").score  # an empty answer is the worst


def test_noise_zero_is_deterministic_and_noise_flips_pairs() -> None:
    scores = [0.9, 0.1, 0.5, 0.7, 0.3]
    assert rank(scores) == [0, 4, 2, 1, 3]
    assert all(rank(scores, 0.0, random.Random(s)) == rank(scores) for s in range(5))
    flipped = [rank(scores, 0.3, random.Random(s)) for s in range(200)]
    agree = sum(pair_agreement(f, rank(scores))[0] for f in flipped) / sum(
        pair_agreement(f, rank(scores))[1] for f in flipped
    )
    assert 0.6 < agree < 0.95
    assert rank([0.5, 0.5, 0.2]) == [0, 0, 1]  # equal scores tie
    with pytest.raises(ValueError, match="rng"):
        rank(scores, 0.2)


def test_equal_scores_stay_tied_under_noise() -> None:
    """Two responses the labeler scores alike are never ordered by the noise on their comparisons with
    the others: such an order would be a coin flip no reward model could learn."""
    scores = [0.6, 0.6, 0.9, 0.2, 0.6]
    for s in range(200):
        ranks = rank(scores, 0.25, random.Random(s))
        assert ranks[0] == ranks[1] == ranks[4]
    noisy = [rank(scores, 0.25, random.Random(s)) for s in range(200)]
    assert sum(r[2] < r[0] for r in noisy) > sum(r[2] > r[0] for r in noisy) > 0  # strict pairs still flip


# --- the suite and the splits ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def suite() -> dict[str, list[dict]]:
    return build_suite(list(InstructionsConfig().families), seed=0, max_modules=80)


def test_suite_families_answers_are_right(suite: dict[str, list[dict]]) -> None:
    assert set(suite) == set(InstructionsConfig().families)
    for family, items in suite.items():
        assert items, family
        for ex in items[:50]:
            assert judge(ex, ex["reference"] + "<|end|>").exact, (family, ex)
    add = next(ex for ex in suite["arithmetic"] if "+" in ex["messages"][0]["content"])
    a, b = (int(x) for x in add["group"].split("+"))
    assert add["reference"] == str(a + b)
    rev = suite["reverse_words"][0]
    assert rev["reference"].split() == rev["group"].split()[::-1]


def test_grounded_families_read_the_stdlib_without_importing(suite: dict[str, list[dict]]) -> None:
    from pipeline.feedback.suite import harvest_stdlib

    names = {(n.name, n.module) for n in harvest_stdlib(max_modules=80)}
    assert ("ArgumentParser", "argparse") in names
    assert not any(m.startswith("encodings") or m.startswith("_") for _, m in names)
    assert first_sentence("Join two paths.\n\nMore text.") is None  # too short
    assert first_sentence("Return the sum of two numbers given.") == "Return the sum of two numbers given."
    assert first_sentence("f(x) -> int. Return it.") is None


def test_splits_are_disjoint_and_sized(suite: dict[str, list[dict]]) -> None:
    sizes = {"sft": 120, "rm": 48, "ppo": 48, "eval": 60}
    splits, report = deal(suite, sizes)
    check_disjoint(splits)
    for name, n in sizes.items():
        assert len(splits[name]) == n
        assert {ex["family"] for ex in splits[name]} == set(suite)
    prompts = [json.dumps(ex["messages"]) for s in splits.values() for ex in s]
    assert len(prompts) == len(set(prompts))
    groups = [(ex["family"], ex["group"]) for s in splits.values() for ex in s]
    assert len(groups) == len(set(groups))
    assert report["eval"]["arithmetic"] == {"asked": 5, "given": 5}
    bad = {"sft": splits["sft"], "eval": [splits["sft"][0]]}
    with pytest.raises(LineageError, match="disjoint"):
        check_disjoint(bad)


def test_feedback_imports_no_torch() -> None:
    code = (
        "import sys; import pipeline.feedback.labeler, pipeline.feedback.data, pipeline.feedback.suite, "
        "pipeline.feedback.chat, pipeline.feedback.config; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- real data ---------------------------------------------------------------------------------------
def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def load(tmp_path: Path, rows: list[dict], layout: str = "auto", name: str = "d.jsonl") -> list[dict]:
    write_jsonl(tmp_path / name, rows)
    src = DemonstrationSource(path=name, layout=layout)
    records, origin = read_records(src, tmp_path, "instructions.demonstrations")
    return demonstrations(records, src.layout, origin)


def test_demonstration_layouts(tmp_path: Path) -> None:
    dolly = load(
        tmp_path, [{"instruction": "Say hi.", "context": "Be kind.", "response": "Hi!", "category": "x"}]
    )
    assert dolly[0]["messages"] == [{"role": "user", "content": "Say hi.\n\nBe kind."}]
    assert dolly[0]["reference"] == "Hi!"
    alpaca = load(tmp_path, [{"instruction": "Add.", "input": "2 and 3", "output": "5"}])
    assert alpaca[0]["messages"][0]["content"] == "Add.\n\n2 and 3" and alpaca[0]["reference"] == "5"
    pr = load(tmp_path, [{"prompt": "Q?", "completion": "A."}])
    assert pr[0]["reference"] == "A."
    chat = load(tmp_path, [{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"},
                                         {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"},
                                         {"role": "assistant", "content": "A2"}]}])  # fmt: skip
    assert [m["role"] for m in chat[0]["messages"]] == ["system", "user", "assistant", "user"]
    assert chat[0]["reference"] == "A2"
    sharegpt = load(
        tmp_path, [{"conversations": [{"from": "human", "value": "U"}, {"from": "gpt", "value": "A"}]}]
    )
    assert sharegpt[0]["reference"] == "A"
    oasst = load(tmp_path, [
        {"message_id": "1", "parent_id": None, "role": "prompter", "text": "Hello?"},
        {"message_id": "2", "parent_id": "1", "role": "assistant", "text": "Hi.", "rank": 0},
        {"message_id": "3", "parent_id": "1", "role": "assistant", "text": "Worse.", "rank": 1},
        {"message_id": "4", "parent_id": "2", "role": "prompter", "text": "More?"},
        {"message_id": "5", "parent_id": "4", "role": "assistant", "text": "Sure.", "rank": None},
    ])  # fmt: skip
    assert [d["reference"] for d in oasst] == ["Hi.", "Sure."]
    assert [m["content"] for m in oasst[1]["messages"]] == ["Hello?", "Hi.", "More?"]
    hh = load(
        tmp_path,
        [{"chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye\n\nAssistant: Bye!", "rejected": "x"}],
    )
    assert hh[0]["reference"] == "Bye!" and len(hh[0]["messages"]) == 3


def test_demonstrations_from_parquet_and_gz(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"prompt": "P", "response": "R"}]), tmp_path / "d.parquet")
    records, origin = read_records(DemonstrationSource(path="d.parquet"), tmp_path, "k")
    assert demonstrations(records, "auto", origin)[0]["reference"] == "R"
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as fh:
        fh.write(json.dumps({"prompt": "P", "response": "R2"}) + "\n")
    records, origin = read_records(DemonstrationSource(path="d.jsonl.gz"), tmp_path, "k")
    assert demonstrations(records, "auto", origin)[0]["reference"] == "R2"


def test_a_demonstration_without_an_assistant_turn_is_one_clear_error(tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
            {"messages": [{"role": "user", "content": "Only a question"}]}]  # fmt: skip
    with pytest.raises(LineageError, match=r"d\.jsonl:2 has no assistant turn") as e:
        load(tmp_path, rows)
    assert "\n" not in str(e.value)
    with pytest.raises(LineageError, match="empty assistant response"):
        load(tmp_path, [{"prompt": "Q", "response": "  "}])
    with pytest.raises(LineageError, match="not found"):
        read_records(DemonstrationSource(path="missing.jsonl"), tmp_path, "instructions.demonstrations")


def test_comparison_layouts_and_errors() -> None:
    hh = comparisons([{"chosen": "\n\nHuman: Q\n\nAssistant: good", "rejected": "\n\nHuman: Q\n\nAssistant: bad"}],
                     "auto", "hh.jsonl")  # fmt: skip
    assert hh[0]["messages"] == [{"role": "user", "content": "Q"}]
    assert hh[0]["responses"] == ["good", "bad"] and hh[0]["ranks"] == [0, 1]
    split = comparisons([{"prompt": "Q", "chosen": "a", "rejected": "b"}], "auto", "c")
    assert split[0]["responses"] == ["a", "b"]
    ranked = comparisons(
        [{"prompt": "Q", "responses": ["a", "b", "c", "d"], "ranking": [2, 0, 3, 1]}], "auto", "r"
    )
    assert ranked[0]["ranks"] == [1, 3, 0, 2]
    with pytest.raises(LineageError, match=r"record 0 ranks K=1 response\(s\); a comparison needs K >= 2"):
        comparisons([{"prompt": "Q", "responses": ["only"], "ranks": [0]}], "ranked", "r.jsonl")
    with pytest.raises(LineageError, match="record 0: empty response"):
        comparisons([{"prompt": "Q", "responses": ["a", ""], "ranks": [0, 1]}], "ranked", "r.jsonl")
    with pytest.raises(LineageError, match="empty response"):
        comparisons([{"chosen": "\n\nHuman: Q\n\nAssistant: ok", "rejected": "\n\nHuman: Q\n\nAssistant: "}],
                    "auto", "hh")  # fmt: skip


def test_hh_transcripts_parse() -> None:
    msgs = parse_hh("\n\nHuman: a\n\nAssistant: b\n\nHuman: c", "w")
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    with pytest.raises(LineageError, match="not an HH transcript"):
        parse_hh("plain text", "w")


def test_params_sections_validate() -> None:
    from pipeline.config import parse_params
    from tests.conftest import files_params

    p = parse_params(
        files_params(Path("/tmp"), {"sft": {"epochs": 2}, "comparisons": {"k_min": 4, "k_max": 9}})
    )
    assert p.sft.epochs == 2 and p.reward.epochs >= 1
    with pytest.raises(LineageError, match=r"comparisons\.k_min: Input should be greater than or equal to 2"):
        parse_params(files_params(Path("/tmp"), {"comparisons": {"k_min": 1}}))
    with pytest.raises(LineageError, match="k_min"):
        parse_params(files_params(Path("/tmp"), {"comparisons": {"k_min": 6, "k_max": 5}}))
    with pytest.raises(LineageError, match="exactly one of path or dataset"):
        parse_params(files_params(Path("/tmp"), {"instructions": {"demonstrations": {"layout": "dolly"}}}))
