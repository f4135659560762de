import random

import numpy as np
import pytest

from pipeline.config import QualityConfig
from pipeline.text.quality import (
    load_classifier,
    make_classifier,
    pareto_keep,
    save_classifier,
    train_classifier,
)
from tests.conftest import junk, prose

CFG = QualityConfig(positives=["ref"], negatives=["web"])


@pytest.mark.parametrize("score", [0.0, 0.25, 0.5, 0.75, 0.9, 1.0])
def test_pareto_keep_rate_matches_gpt3_formula(score: float):
    n = 200_000
    keep = pareto_keep(np.full(n, score), 9.0, np.random.default_rng(7))
    expected = (2 - score) ** -9
    se = np.sqrt(expected * (1 - expected) / n)
    assert abs(keep.mean() - expected) <= 4 * se + 1e-12


def test_pareto_rule_is_seeded():
    s = np.random.default_rng(0).random(1000)
    a = pareto_keep(s, 9.0, np.random.default_rng(3))
    b = pareto_keep(s, 9.0, np.random.default_rng(3))
    assert (a == b).all()


def test_features_are_the_gpt3_hashing_setup():
    vec = make_classifier(CFG, 0).steps[0][1]
    assert vec.n_features == 2**18 and vec.alternate_sign is False and vec.lowercase is True
    assert vec.build_analyzer()("Hello, World  foo-bar") == [
        "hello,",
        "world",
        "foo-bar",
    ]  # whitespace tokens


def test_classifier_separates_reference_from_web_on_held_out_folds(tmp_path):
    rng = random.Random(0)
    pos = [prose(rng, 150) for _ in range(60)]
    neg = [junk(rng, 150) for _ in range(60)]
    clf, metrics, labels, scores = train_classifier(pos, neg, CFG, seed=0)
    assert metrics["auc"] > 0.95 and metrics["precision"] > 0.9 and metrics["recall"] > 0.9
    assert len(scores) == 120 and set(labels) == {0, 1}
    assert scores[:60].mean() > scores[60:].mean()
    path = tmp_path / "classifier.skops"
    save_classifier(clf, path)
    again = load_classifier(path)
    texts = [prose(rng, 100), junk(rng, 100)]
    assert np.allclose(again.predict_proba(texts), clf.predict_proba(texts))
