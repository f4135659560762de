"""Seed groups: statistics, the `dvc exp run` commands of `lineage seeds` (subprocess injected, no real
pipeline), the Welch comparison of `lineage exp --groups` on planted groups, and the report's ±."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml

from pipeline import report, seeds, stats
from pipeline.cli import main
from pipeline.config import load_params

ROOT = Path(__file__).resolve().parents[1]


def test_summary_is_mean_sample_sd_and_t_interval():
    s = stats.summarize([1.0, 2.0, 3.0])
    assert s["n"] == 3 and s["mean"] == 2.0 and s["std"] == pytest.approx(1.0)
    # t(0.975, 2 df) = 4.3027: the interval of three runs is much wider than mean +- 2 sd/sqrt(n)
    assert s["half_width"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert (s["low"], s["high"]) == pytest.approx((2 - s["half_width"], 2 + s["half_width"]))
    one = stats.summarize([0.7])
    assert one["mean"] == 0.7 and one["std"] is None and one["low"] is None


def test_welch_matches_the_textbook_values():
    # 1..5 against 6..10: t = -5 on 8 degrees of freedom, two-sided p = 0.00105
    w = stats.welch([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])
    assert w["t"] == pytest.approx(-5.0) and w["p"] == pytest.approx(0.0010528, rel=1e-4)
    assert w["diff"] == pytest.approx(5.0)
    assert stats.welch([1, 2, 3], [1.5, 2.5, 3.5, 2, 4])["p"] == pytest.approx(0.39264, rel=1e-4)
    assert stats.welch([0.5, 0.5], [0.5, 0.5])["p"] == 1.0  # no spread, same value: no difference
    assert stats.welch([0.5, 0.5], [0.6, 0.6])["p"] == 0.0
    assert stats.welch([0.5], [0.6, 0.7])["p"] is None  # one run is no sample


def _group(name: str, metrics: dict[str, list[float]], key: str = "k") -> dict:
    n = len(next(iter(metrics.values())))
    members = [{"seed": 1337 + i, "metrics": {m: v[i] for m, v in metrics.items()}} for i in range(n)]
    return {
        "group": name,
        "command": f"lineage seeds {n} --group {name}",
        "commit": "abc123",
        "params_key": key,
        "created": "2026-01-01T00:00:00",
        "members": members,
        "stats": stats.group_stats(members),
    }


def _plant(root: Path, *groups: dict) -> None:
    folder = root / stats.SEEDS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for g in groups:
        (folder / f"{g['group']}.json").write_text(json.dumps(g))


def test_exp_marks_only_differences_below_p_001(tmp_path: Path, monkeypatch, capsys):
    base = _group("base", {"win_rate": [0.50, 0.51, 0.49, 0.50], "val_loss": [5.10, 5.30, 5.00, 5.20]})
    better = _group("ptx", {"win_rate": [0.60, 0.61, 0.59, 0.60], "val_loss": [5.15, 5.35, 4.95, 5.25]})
    _plant(tmp_path, base, better)
    rows = {r["metric"]: r for r in stats.compare(base, better)}
    assert rows["win_rate"]["significant"] and rows["win_rate"]["p"] < 1e-4
    assert rows["win_rate"]["diff"] == pytest.approx(0.10)
    assert not rows["val_loss"]["significant"] and rows["val_loss"]["p"] > 0.5
    monkeypatch.chdir(tmp_path)
    assert main(["exp", "--groups", "base", "ptx"]) == 0
    out = capsys.readouterr().out
    lines = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert lines["win_rate"].rstrip().endswith("| * |") and not lines["val_loss"].rstrip().endswith("| * |")
    assert "0.5 ± 0.01299" in lines["win_rate"]  # mean ± t(0.975, 3) * sd / 2
    assert "1 of 2 headline metrics differ at p < 0.01" in out
    assert main(["exp", "--groups", "base", "nope"]) == 1
    assert "seed group 'nope'" in capsys.readouterr().err


def _project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ppo"]["seed"] = 7  # a stage seed that is set moves with common.seed
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "profiles").mkdir()
    (root / "profiles" / "small.yaml").write_text("pretrain:\n  max_steps: 10\ncommon:\n  seed: 5\n")
    (root / "metrics").mkdir()
    return root


class FakeDvc:
    """Stands in for `dvc`: each `dvc exp run` leaves its params and a headline metric in the
    workspace that depend on the seeds it was given, as a real experiment would."""

    def __init__(self, root: Path, fail_seed: int | None = None):
        self.root, self.fail_seed, self.calls = root, fail_seed, []

    def __call__(self, cmd: list[str], env: dict[str, str]) -> int:
        self.calls.append((cmd, env.get("LINEAGE_PARENT_RUN_ID")))
        if cmd[:3] != ["dvc", "exp", "run"]:
            return 0
        sets = dict(a.lstrip("+").split("=", 1) for a in cmd[cmd.index("-S") :][1::2])
        seed = int(sets["common.seed"])
        if seed == self.fail_seed:
            return 1
        params = yaml.safe_load((self.root / "params.yaml").read_text())
        params["common"]["seed"] = seed
        params["ppo"]["seed"] = int(sets["ppo.seed"])
        (self.root / "params.yaml").write_text(yaml.safe_dump(params))
        (self.root / "metrics" / "ppo.json").write_text(json.dumps({"ppo_win_rate": 0.5 + 0.01 * (seed % 3)}))
        return 0


class FakeTracker:
    def __init__(self):
        self.members, self.ended = [], None

    def start_member(self, member, command):
        self.members.append(member["seed"])
        return f"run-{member['seed']}"

    def end_member(self, run, ok):
        pass

    def end(self, group, files, ok):
        self.ended = (group["group"] if group else None, [f.name for f in files], ok)


def test_seeds_runs_each_seed_as_an_experiment_and_writes_the_group(tmp_path: Path):
    root = _project(tmp_path)
    original = (root / "params.yaml").read_text()
    dvc, tracker, restored = FakeDvc(root), FakeTracker(), []

    def restore(r, env):
        (r / "params.yaml").write_text(original)  # back to the last commit, as restore_workspace does
        restored.append(r)
        return True, "restored"

    result = seeds.run_group(
        root, 3, "g", command="lineage seeds 3", runner=dvc, tracker=tracker, restore=restore, env={}
    )
    runs = [(c, parent) for c, parent in dvc.calls if c[:3] == ["dvc", "exp", "run"]]
    assert [c for c, _ in runs] == [
        ["dvc", "exp", "run", "--name", f"g-seed{s}", "-S", f"common.seed={s}", "-S", f"ppo.seed={7 + i}"]
        for i, s in enumerate([1337, 1338, 1339])
    ]
    assert [p for _, p in runs] == ["run-1337", "run-1338", "run-1339"]  # each under its MLflow run
    removes = [c for c, _ in dvc.calls if c[:3] == ["dvc", "exp", "remove"]]
    assert [c[-1] for c in removes] == ["g-seed1337", "g-seed1338", "g-seed1339"]  # a rerun replaces them
    assert restored == [root] and (root / "params.yaml").read_text() == original
    assert tracker.members == [1337, 1338, 1339] and tracker.ended == ("g", ["g.json", "g.md"], True)
    s = result["stats"]["ppo_win_rate"]
    assert s["values"] == pytest.approx([0.52, 0.5, 0.51]) and s["mean"] == pytest.approx(0.51)
    written = stats.read_group(root / "metrics" / "seeds" / "g.json")
    assert written["stats"] == json.loads(json.dumps(result["stats"]))
    # the group is known by its params with the seeds taken out: the report finds it for these params
    assert written["params_key"] == stats.params_key(
        load_params(root / "params.yaml").model_dump(mode="json")
    )
    assert "| ppo_win_rate | 0.51 ± 0.02484 |" in (root / "metrics" / "seeds" / "g.md").read_text()


def test_seeds_with_a_profile_and_given_seeds(tmp_path: Path):
    root = _project(tmp_path)
    dvc = FakeDvc(root, fail_seed=3)
    result = seeds.run_group(
        root, 3, "small", "small", [1, 2, 3], runner=dvc, restore=lambda r, e: (True, "restored"), env={}
    )
    runs = [c for c, _ in dvc.calls if c[:3] == ["dvc", "exp", "run"]]
    # the profile's keys are applied, but the seeds are the group's: its common.seed is dropped
    assert runs[0] == [
        "dvc", "exp", "run", "--name", "small-seed1", "-S", "pretrain.max_steps=10",
        "-S", "common.seed=1", "-S", "ppo.seed=3",
    ]  # fmt: skip
    assert [m["seed"] for m in result["members"]] == [1, 2] and result["failed"] == ["small-seed3 (exit 1)"]
    assert result["stats"]["ppo_win_rate"]["n"] == 2


def test_report_card_shows_the_spread_of_its_own_seed_group(tmp_path: Path):
    params = load_params(ROOT / "params.yaml").model_dump(mode="json")
    mine = _group("mine", {"val_loss": [5.1, 5.3, 5.2]}, key=stats.params_key(params))
    other = _group("other", {"val_loss": [4.0, 4.1, 4.2]}, key="elsewhere")
    _plant(tmp_path, mine, other)
    rep = report.build(tmp_path, tmp_path / "out", [], params, {}, {})
    (section,) = [rows for stage, _, rows in rep.sections if stage == "seeds"]
    assert re.fullmatch(r"5\.2 ± 0\.2484 \(sd 0\.1; 95% \[4\.952, 5\.448\]\)", dict(section)["val_loss"])
    (tmp_path / "metrics" / "seeds" / "mine.json").unlink()
    rep = report.build(tmp_path, tmp_path / "out", [], params, {}, {})
    assert not [s for s in rep.sections if s[0] == "seeds"]  # another configuration's group is not ours
    # so the report stage reruns when a group is committed
    assert report.SEEDS_DEP in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["report"]["deps"]
