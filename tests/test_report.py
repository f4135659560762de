"""The report card: declarations fill the table, missing stages say "not run", dvc.yaml's report
stage depends on exactly what the report reads, the page is self-contained."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from pipeline import report
from pipeline.io import write_csv
from tests.conftest import ROOT


def test_dvc_yaml_report_stage_is_last_and_depends_on_what_it_reads():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(stages)[-1] == "report"
    deps = set(stages["report"]["deps"])
    needed = report.report_deps([s for s in stages if s != "report"])
    missing = sorted(set(needed) - deps)
    assert not missing, f"add to the report stage's deps in dvc.yaml: {missing}"
    # nothing else from data/: the report must not rerun for data it does not read
    assert {d for d in deps if d.startswith("data/")} == set(needed)


def test_rows_fill_from_globs_and_side_by_side_keys():
    spec = report.StageReport(
        "t",
        (
            report.Row("{} in / out", "sources/*/in", "sources/*/out", fmt="int"),
            report.Row("rate", "rate", fmt="pct"),
            report.Row("absent", "nothing/here"),
        ),
    )
    flat = report.flatten({"sources": {"a": {"in": 10, "out": 7}, "b": {"in": 3}}, "rate": 0.25})
    assert report.table_rows(spec, flat) == [
        ("a in / out", "10 / 7"),
        ("b in / out", "3 / n/a"),
        ("rate", "25.0%"),
    ]


def test_keep_curve_is_the_pareto_rule():
    from pipeline.text.quality import keep_probability

    rng = np.random.default_rng(0)
    for score, alpha in ((0.9, 9.0), (0.5, 3.0), (0.1, 1.0)):
        sim = float(np.mean(rng.pareto(alpha, 200_000) > 1 - score))
        assert keep_probability(score, alpha) == pytest.approx(sim, abs=0.005)


def test_report_marks_stages_not_run_and_inlines_its_plots(tmp_path):
    data = tmp_path / "data"
    (data / "pretrain").mkdir(parents=True)
    metrics = {
        "val": {"loss": 5.25, "sources": {"ref": {"bpb": 2.5}}},
        "perf": {"wall_s": 12.0, "flow_overhead_s": 1.0},
    }
    (data / "pretrain" / "metrics.json").write_text(json.dumps(metrics))
    write_csv(
        data / "pretrain" / "plots" / "train.csv",
        [{"step": s, "loss": 6 - s / 10, "lr": 1e-3} for s in range(1, 9)],
    )
    write_csv(data / "pretrain" / "plots" / "val.csv", [{"step": 4, "loss": 5.6}, {"step": 8, "loss": 5.25}])
    out = tmp_path / "out"
    out.mkdir()
    changed = {"pretrain.n_layer": (4, 2)}
    rep = report.build(tmp_path, out, ["crawl", "pretrain"], {}, {"git commit": "abc"}, changed)
    md = report.to_markdown(rep)
    assert "| crawl | not run |" in md and "| pretrain | validation loss (nats/token) | 5.25 |" in md
    assert "| pretrain | ref bits per byte | 2.5 |" in md
    assert "| pretrain.n_layer | 4 | 2 |" in md
    assert "sft | not run (not in dvc.yaml yet)" in md  # declared, not yet in the pipeline
    assert (out / "plots" / "pretrain_loss.png").is_file()
    page = report.to_html(rep, out)
    assert "data:image/png;base64," in page and "http" not in page.replace("http-equiv", "")


def test_lineage_report_prints_the_path(tmp_path):
    cmd = [sys.executable, "-m", "pipeline.cli", "report"]
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    missing = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "dvc repro report" in missing.stderr
    (tmp_path / "data" / "report").mkdir(parents=True)
    (tmp_path / "data" / "report" / "report.html").write_text("<html></html>")
    found = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert found.returncode == 0 and found.stdout.strip() == str(tmp_path / "data" / "report" / "report.html")


def test_lineage_status_lists_headline_metrics_per_stage_within_the_width_and_marks_stages_not_run(tmp_path):
    from pipeline.cli import headline_table

    (tmp_path / "dvc.yaml").write_text("stages:\n  crawl: {cmd: a}\n  pretrain: {cmd: b}\n  ppo: {cmd: c}\n")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "crawl.json").write_text('{"pages": 1074, "crawl_docs": 1752}')
    many = {f"bpb/source_{i}": 2.0 + i / 7 for i in range(12)}
    (tmp_path / "metrics" / "pretrain.json").write_text(json.dumps(many))
    out = headline_table(tmp_path, width=80).splitlines()
    assert out[0] == "crawl         pages=1074  crawl_docs=1752"
    assert out[1].startswith("pretrain      bpb/source_0=2  ") and len(out) > 3
    assert all(len(line) <= 80 for line in out)
    assert out[-1] == "ppo           not run"


def test_lineage_exp_puts_experiments_side_by_side_and_cuts_long_values():
    from pipeline.cli import transpose_experiments

    tasks = "['cloze', 'next_passage', 'arithmetic_2da', 'arithmetic_2ds', 'arithmetic_3da']"
    csv_text = (
        "Experiment,rev,typ,Created,evaluate.tasks,pretrain.n_layer,val_loss,rm_val_acc\n"
        f',workspace,baseline,,"{tasks}",4,5.23231,\n'
        f',main,baseline,2026-11-27,"{tasks}",4,5.23231,\n'
        "bumpy-tans,abc123,branch_base,2026-11-27,\"['cloze']\",2,5.70041,0.7045\n"
    )
    lines = transpose_experiments(csv_text).splitlines()
    assert lines[0].split() == ["workspace", "main", "bumpy-tans"]
    assert lines[1].startswith("evaluate.tasks") and "['cloze', 'next_passa..." in lines[1]
    assert lines[1].endswith("['cloze']")
    assert lines[2].split() == ["pretrain.n_layer", "4", "4", "2"]
    assert lines[3].split() == ["val_loss", "5.2323", "5.2323", "5.7004"]
    assert lines[4].split() == ["rm_val_acc", "-", "-", "0.7045"]  # a metric the others do not have
    assert max(map(len, lines)) <= 120
    same = "rev,Created\nworkspace,\nmain,2026-11-27T15:29:50\n"  # no experiment, nothing changed
    assert transpose_experiments(same) == "no param or metric differs between workspace, main\n"


def _evaluate_and_reward(tmp_path, n_tasks=12):
    data = tmp_path / "data"
    tasks = {
        f"task{i}": {f"k{k}": {"acc": 0.0 if i else 0.25 + k / 100} for k in (0, 1, 4)}
        for i in range(n_tasks)
    }
    evaluate = {"models": {"pretrain": {"tasks": tasks, "synthetic_mean": {"k0": 0.1, "k1": 0.2, "k4": 0.3}}},
                "perf": {"wall_s": 30.0, "flow_overhead_s": 1.0}}  # fmt: skip
    (data / "evaluate").mkdir(parents=True)
    (data / "evaluate" / "metrics.json").write_text(json.dumps(evaluate))
    write_csv(data / "evaluate" / "plots" / "kshot.csv", [
        {"series": f"{m}/task{i}", "k": k, "acc": 0.1 * i + k / 10} for m in ("pretrain", "sft", "ppo")
        for i in range(n_tasks) for k in (0, 1, 4)
    ])  # fmt: skip
    (data / "reward").mkdir(parents=True)
    (data / "reward" / "metrics.json").write_text(
        json.dumps({"val": {"pair_acc": 0.69}, "perf": {"wall_s": 20.0, "flow_overhead_s": 1.0}})
    )
    write_csv(data / "reward" / "plots" / "val.csv", [{"step": 100, "pair_acc": 0.69, "top1": 0.6}])


def test_the_report_opens_with_the_papers_claims_beside_this_runs_figures(tmp_path):
    _evaluate_and_reward(tmp_path)
    out = tmp_path / "out"
    rep = report.build(tmp_path, out, ["evaluate", "reward", "ppo"], {}, {"git commit": "abc"}, {})
    md = report.to_markdown(rep)
    first = md.split("\n## ")[1]
    assert first.startswith("the papers' claims")
    lines = {line.split(" | ")[2]: line for line in first.splitlines() if line.startswith("| ")}
    gpt3 = lines["synthetic tasks mean, 0-shot / largest k"]
    assert "| 10.0% / 30.0% |" in gpt3 and "86.4%" in gpt3  # k4 is the largest k here
    assert "| 69.0% |" in lines["pairwise accuracy on held-out prompts"]
    assert "ppo: not run" in lines["win rate, PPO vs SFT, greedy (95% CI)"]
    assert md.index("the papers' claims") < md.index("## run") < md.index("the run in one table")


def test_task_by_k_accuracies_are_one_line_per_task_and_the_all_zero_tasks_one_line(tmp_path):
    _evaluate_and_reward(tmp_path)
    out = tmp_path / "out"
    rep = report.build(tmp_path, out, ["evaluate", "reward"], {}, {}, {})
    (section,) = [lines for stage, _, lines in rep.sections if stage == "evaluate"]
    labels = dict(section)
    assert labels["pretrain task0 accuracy by k-shot"] == "k0 25.0% · k1 26.0% · k4 29.0%"
    zero = labels["pretrain: 0.0% at every k"]
    assert zero.split(", ") == [f"task{i}" for i in range(1, 12)]
    assert labels["pretrain synthetic tasks mean by k-shot"] == "k0 10.0% · k1 20.0% · k4 30.0%"
    assert len(section) <= 4  # was one line per task x k: 36 here


def test_a_one_point_curve_is_not_drawn_and_k_shot_curves_are_small_multiples(tmp_path):
    _evaluate_and_reward(tmp_path)
    out = tmp_path / "out"
    rep = report.build(tmp_path, out, ["evaluate", "reward"], {}, {}, {})
    names = [n for n, _ in rep.figures]
    assert "reward_val.png" not in names and any("one point only" in n for n in rep.notes)
    assert "evaluate_kshot.png" in names
    fig = report.plot_facets(report.REPORT["evaluate"].plots[0], [report.read_csv(
        tmp_path / "data" / "evaluate" / "plots" / "kshot.csv")], {})  # fmt: skip
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 12 and all(
        len(ax.get_lines()) == 3 for ax in panels
    )  # a panel per task, a line per model
    assert len(fig.legends) == 1 and len(fig.legends[0].get_texts()) == 3


def test_the_wall_time_total_counts_this_execution_and_names_where_the_rest_came_from(tmp_path):
    _evaluate_and_reward(tmp_path)
    out = tmp_path / "out"
    origins = {
        "evaluate": report.THIS_EXECUTION,
        "reward": "an earlier execution (2026-12-01 10:00, run ab12cd34)",
    }
    rep = report.build(tmp_path, out, ["evaluate", "reward"], {}, {}, {}, origins)
    rows = {r[0]: r for r in rep.timings}
    assert rows["total"][1] == "30.0s" and "1 stages' outputs come from earlier ones" in rows["total"][3]
    assert rows["reward"][3].startswith("an earlier execution")
