"""Results that never go stale: docs/results.md is what `lineage results` writes from metrics/, and
every figure the README cites agrees with the metric it cites."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline import results, stats
from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_readme_figures_agree_with_the_metrics_they_cite():
    text = (ROOT / "README.md").read_text()
    cited = results.citations(text)
    # the headline figures of every part of the lineage are cited, not typed
    assert {f for f, _ in cited} >= {
        "metrics/crawl.json", "metrics/pretrain.json", "metrics/finetune.json", "metrics/sft.json",
        "metrics/reward.json", "metrics/ppo.json",
    }  # fmt: skip
    assert len(cited) >= 25
    assert results.check_citations(text, ROOT) == []
    assert "docs/results.md" in text


def test_results_page_is_what_lineage_results_writes():
    assert (ROOT / results.RESULTS).read_text() == results.render(ROOT), "run `lineage results`"


def _metrics(root: Path) -> None:
    (root / "metrics").mkdir()
    (root / "metrics" / "ppo.json").write_text(json.dumps({"ppo_win_rate": 0.5883, "ppo_kl": 5.8622}))
    (root / "metrics" / "pretrain.json").write_text(
        json.dumps({"val_loss": 5.1208, "tokens_seen": 1228800.0, "bpb/py_reference": 1.9284})
    )


def test_a_figure_that_disagrees_with_its_metric_is_named(tmp_path: Path):
    _metrics(tmp_path)
    ok = (
        "wins 58.8%<!-- metrics/ppo.json:ppo_win_rate --> at KL 5.86 <!-- metrics/ppo.json:ppo_kl -->, "
        "loss **5.1**<!-- metrics/pretrain.json:val_loss --> after 1.2M<!-- metrics/pretrain.json:tokens_seen --> "
        "tokens, 1,228,800<!-- metrics/pretrain.json:tokens_seen -->, "
        "1.93<!-- metrics/pretrain.json:bpb/py_reference -->"
    )
    assert results.check_citations(ok, tmp_path) == []
    bad = (
        "intro\nwins 60.1%<!-- metrics/ppo.json:ppo_win_rate -->, loss 5.3<!-- metrics/pretrain.json:val_loss -->\n"
        "from 0.5883<!-- metrics/ppo.json:nope -->, 3<!-- metrics/sft.json:sft_exact -->, 1.20M<!-- "
        "metrics/pretrain.json:tokens_seen -->"
    )
    problems = results.check_citations(bad, tmp_path)
    assert problems == [
        "line 2: README says 60.1%, metrics/ppo.json:ppo_win_rate is 0.5883 (to 1 decimals: 58.8%)",
        "line 2: README says 5.3, metrics/pretrain.json:val_loss is 5.1208 (to 1 decimals: 5.1)",
        "line 3: 0.5883 cites metrics/ppo.json:nope, which has no such number",
        "line 3: 3 cites metrics/sft.json, which does not exist",
        "line 3: README says 1.20M, metrics/pretrain.json:tokens_seen is 1.2288e+06 (to 2 decimals: 1.23M)",
    ]


def test_results_page_lists_the_default_run_and_seed_groups_with_their_commands(tmp_path: Path, monkeypatch):
    _metrics(tmp_path)
    members = [
        {"seed": s, "metrics": {"ppo_win_rate": v}} for s, v in [(1337, 0.58), (1338, 0.60), (1339, 0.62)]
    ]
    group = {
        "group": "cpu-hour", "command": "lineage seeds 3 --profile cpu-hour", "commit": "0123456789abcdef",
        "profile": "cpu-hour", "members": members, "stats": stats.group_stats(members),
    }  # fmt: skip
    (tmp_path / "metrics" / "seeds").mkdir()
    (tmp_path / "metrics" / "seeds" / "cpu-hour.json").write_text(json.dumps(group))
    page = results.render(tmp_path)
    assert "| ppo | ppo_win_rate | 0.5883 |" in page and "| pretrain | tokens_seen | 1,228,800 |" in page
    assert "Made by `lineage seeds 3 --profile cpu-hour` at commit 0123456789ab" in page
    assert "| ppo_win_rate | 0.6 ± 0.04968 | 0.02 | 3 |" in page
    assert "make run" in page
    monkeypatch.chdir(tmp_path)
    assert main(["results", "--check"]) == 1  # not written yet
    assert main(["results"]) == 0
    assert (tmp_path / "docs" / "results.md").read_text() == page
    assert main(["results", "--check"]) == 0
    (tmp_path / "metrics" / "ppo.json").write_text(json.dumps({"ppo_win_rate": 0.61}))
    assert main(["results", "--check"]) == 1  # the metrics moved on: the page is stale


def test_lookup_reads_names_with_slashes_and_nested_keys():
    data = {"bpb/py_reference": 1.9, "stats": {"ft/source": {"mean": 0.7}}}
    assert results.lookup(data, "bpb/py_reference") == 1.9
    assert results.lookup(data, "stats/ft/source/mean") == 0.7
