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
