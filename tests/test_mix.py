import numpy as np
import pytest

from pipeline.text.mix import count_tokens, plan_mix, sample_source, split_validation, truncate_tokens


def test_token_count_and_truncation_follow_gpt2_pretokens():
    text = "Hello world, it's 2024!  ok"
    assert count_tokens(text) == len(["Hello", " world", ",", " it", "'s", " 2024", "!", " ", " ok"])
    assert truncate_tokens(text, 3) == "Hello world,"


@pytest.mark.parametrize("weights", [{"a": 0.6, "b": 0.3, "c": 0.1}, {"a": 0.1, "b": 0.1, "c": 0.8}])
def test_tokens_per_source_follow_weights_not_sizes(weights):
    rng = np.random.default_rng(0)
    sizes = {"a": 400, "b": 40, "c": 4}  # documents per source: very different sizes
    docs = {s: [{"tokens": int(t)} for t in rng.integers(50, 500, n)] for s, n in sizes.items()}
    total, targets = plan_mix(docs, weights, total_tokens=100_000)
    out = {}
    for s in docs:
        picks = sample_source([d["tokens"] for d in docs[s]], targets[s], rng)
        out[s] = sum(t for _, _, t in picks)
        epochs = max(e for _, e, _ in picks) + 1
        available = sum(d["tokens"] for d in docs[s])
        assert epochs == int(np.ceil(targets[s] / available))
    for s, w in weights.items():
        assert abs(out[s] / sum(out.values()) - w) <= 0.02 * w


def test_whole_epochs_use_every_document_once():
    picks = sample_source([10, 20, 30], 120, np.random.default_rng(1))
    first_two = [(i, e) for i, e, _ in picks if e < 2]
    assert sorted(first_two) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert sum(t for *_, t in picks) == 120


def test_validation_split_keeps_a_training_document():
    rng = np.random.default_rng(0)
    assert split_validation(100, 0.1, 1, rng).sum() == 10
    assert split_validation(3, 0.1, 1, rng).sum() == 1
    assert split_validation(1, 0.5, 1, rng).sum() == 0
