import yaml

from pipeline.tracking import dvc_input_hashes


def test_input_hashes_come_from_the_upstream_outputs_in_dvc_lock(tmp_path):
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "a": {"cmd": "x", "outs": ["data/a/docs"]},
        "b": {"cmd": "y", "deps": ["stages/b.py", "data/a"], "outs": ["data/b/docs"]},
    }}))  # fmt: skip
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {
        "a": {"outs": [{"path": "data/a/docs", "md5": "aaa.dir"}, {"path": "data/a/metrics.json", "md5": "m"}]},
        "b": {"deps": [{"path": "data/a", "md5": "stale.dir"}], "outs": [{"path": "data/b/docs", "md5": "bbb.dir"}]},
    }}))  # fmt: skip
    assert dvc_input_hashes(tmp_path, "b") == {
        "dvc.input.data/a/docs": "aaa.dir",
        "dvc.input.data/a/metrics.json": "m",
    }
    assert dvc_input_hashes(tmp_path, "a") == {}
    (tmp_path / "dvc.lock").unlink()
    assert dvc_input_hashes(tmp_path, "b") == {}


def test_summaries_never_add_a_point_to_a_curve():
    from pipeline.tracking import Tracker

    class FakeMlflow:
        def __init__(self):
            self.calls = []

        def log_metrics(self, metrics, step=None):
            self.calls.append((dict(metrics), step))

    fake = FakeMlflow()
    t = Tracker(fake)
    t.log_metrics({"val/loss": 6.0}, step=10)
    t.log_metrics({"val/loss": 5.0}, step=20)
    t.log_metrics({"val/loss": 5.0, "model/params": 100, "ok": True})  # the end-of-run summary
    assert fake.calls == [({"val/loss": 6.0}, 10), ({"val/loss": 5.0}, 20), ({"model/params": 100.0}, None)]
    assert t.summary["val/loss"] == 5.0


def test_per_source_curves_use_the_summary_names():
    from pipeline.train.loop import curve_name

    assert curve_name("val/web/bpb") == "val/sources/web/bpb"
    assert curve_name("val/sources/web/bpb") == "val/sources/web/bpb"
    assert curve_name("val/loss") == curve_name("val/loss") == "val/loss"
    assert curve_name("train/loss") == "train/loss"


def test_a_stage_finds_its_dvc_process_above_it(tmp_path):
    import subprocess
    import sys

    from pipeline.tracking import _is_dvc, dvc_execution
    from tests.conftest import ROOT

    assert _is_dvc(["/x/.venv/bin/python", "/x/.venv/bin/dvc", "repro"])
    assert _is_dvc(["dvc", "exp", "run", "-S", "a=1"]) and not _is_dvc(["dvc", "push"])
    assert dvc_execution() is None  # pytest is no dvc
    # a stand-in `dvc repro` that runs two stages: both find it, under one key
    child = "from pipeline.tracking import dvc_execution; print(dvc_execution()[0])"
    fake = tmp_path / "dvc"
    fake.write_text(
        f"import subprocess, sys\nfor _ in range(2): subprocess.run([sys.executable, '-c', {child!r}])\n"
    )
    out = subprocess.run(
        [sys.executable, str(fake), "repro"], capture_output=True, text=True, timeout=60, cwd=ROOT, check=True
    )
    keys = out.stdout.split()
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0].startswith("dvc:"), out.stdout + out.stderr
