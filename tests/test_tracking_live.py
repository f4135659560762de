"""A small pipeline against a live `mlflow server` on a free loopback port, checked through MLflow's
REST API as a dashboard would see it: one parent run with a child per stage, curves without a step-0
summary point, per-source figures once, DVC inputs, the report artifact, the registered model's tags
and alias."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline import procs
from pipeline.config import parse_params
from pipeline.orchestration import free_port
from pipeline.stage import run_stage
from pipeline.tracking import PARENT_ENV, dvc_hash, end_pipeline_run, start_pipeline_run
from stages import clean, crawl, dedup, mix, pretrain, quality, report, tokenize
from tests.conftest import files_params, write_corpus

STAGES = {
    "crawl": crawl, "clean": clean, "quality": quality, "dedup": dedup, "mix": mix, "tokenize": tokenize,
    "pretrain": pretrain, "report": report,
}  # fmt: skip
PRETRAIN = {
    "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "batch_size": 4, "max_steps": 12, "warmup_steps": 2,
    "log_interval": 2, "eval_interval": 4, "eval_windows": 2, "checkpoint_interval": 0, "sample_tokens": 0,
    "peak_flops": 1e11, "export_hf": False,
}  # fmt: skip


def _get(base: str, endpoint: str, **query: Any) -> dict[str, Any]:
    url = f"{base}/api/2.0/mlflow/{endpoint}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _post(base: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{base}/api/2.0/mlflow/{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = procs.spawn(
        [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{tmp / 'store.db'}", "--artifacts-destination",
         str(tmp / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=(tmp / "server.log").open("w"), stderr=__import__("subprocess").STDOUT,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        procs.stop(proc)
        pytest.fail("mlflow server did not come up: " + (tmp / "server.log").read_text()[-2000:])
    yield base
    procs.stop(proc, timeout_s=3)


def test_a_pipeline_execution_is_one_parent_run_with_a_child_per_stage(
    server, tmp_path, monkeypatch, one_thread
):
    write_corpus(tmp_path)
    data = files_params(tmp_path, {
        "common": {"tracking_uri": server}, "quality": {"n_features": 1024}, "tokenize": {"vocab_size": 300},
        "pretrain": PRETRAIN,
    })  # fmt: skip
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump({"stages": {s: {"cmd": f"python -m stages.{s}"} for s in STAGES}})
    )
    spec = yaml.safe_load((tmp_path / "dvc.yaml").read_text())
    spec["stages"]["clean"]["deps"] = ["data/crawl/docs"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(spec))
    params = parse_params(data)
    parent = start_pipeline_run(params, tmp_path, "pytest")
    monkeypatch.setenv(PARENT_ENV, parent)
    for name, module in STAGES.items():
        if name == "clean":  # the lock DVC would have written after crawl: clean logs it as its input
            md5 = dvc_hash(tmp_path / "data" / "crawl" / "docs")
            lock = {"schema": "2.0", "stages": {"crawl": {"outs": [{"path": "data/crawl/docs", "md5": md5}]}}}
            (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
        run_stage(name, module.body, tmp_path, params)
    end_pipeline_run(params, tmp_path, parent, ok=True)

    exp = _get(server, "experiments/get-by-name", experiment_name="gpt-lineage")["experiment"]
    runs = _post(server, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})[
        "runs"
    ]
    tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs}
    parents = [rid for rid, t in tags.items() if t.get("lineage.kind") == "pipeline"]
    assert parents == [parent]
    children = {t["stage"]: rid for rid, t in tags.items() if t.get("mlflow.parentRunId") == parent}
    assert sorted(children) == sorted(STAGES)
    assert len(runs) == len(STAGES) + 1
    by_id = {r["info"]["run_id"]: r for r in runs}
    assert by_id[parent]["info"]["status"] == "FINISHED"
    assert tags[parent]["reused"] == "none"

    # curves are step metrics with no step-0 summary point; per-source figures are logged once
    pre = by_id[children["pretrain"]]
    keys = {m["key"] for m in pre["data"]["metrics"]}
    assert {"train/loss", "val/loss", "val/sources/ref/bpb", "perf/mfu", "model/params"} <= keys
    assert not any(k.startswith("val/ref/") for k in keys)
    for key in ("val/loss", "train/loss", "val/sources/web/bpb", "perf/tokens_per_s"):
        steps = [
            m["step"]
            for m in _get(server, "metrics/get-history", run_id=pre["info"]["run_id"], metric_key=key)[
                "metrics"
            ]
        ]
        assert len(steps) >= 3 and 0 not in steps and len(steps) == len(set(steps)), (key, steps)
    # a summary without a curve is one stepless value
    (point,) = _get(server, "metrics/get-history", run_id=pre["info"]["run_id"], metric_key="model/params")[
        "metrics"
    ]
    assert point["step"] == 0

    # inputs: the upstream outputs with their DVC hashes as digests
    inputs = by_id[children["clean"]].get("inputs", {}).get("dataset_inputs", [])
    assert [(d["dataset"]["name"], d["dataset"]["digest"]) for d in inputs] == [("data/crawl/docs", md5[:36])]

    # the report, on its own run and on the parent
    for rid in (children["report"], parent):
        files = {f["path"] for f in _get(server, "artifacts/list", run_id=rid).get("files", [])}
        assert "report.html" in files, (rid, files)

    # the registered model: safetensors (no pickle), tags, and the default profile's alias
    model = _get(server, "registered-models/get", name="gpt-lineage-pretrain")["registered_model"]
    assert model["description"] and model.get("aliases", [{}])[0].get("alias") == "default"
    (version,) = _get(server, "model-versions/search", filter="name='gpt-lineage-pretrain'")["model_versions"]
    vtags = {t["key"]: t["value"] for t in version.get("tags", [])}
    assert vtags["profile"] == "default" and vtags["params_hash"] == params.section_hash("pretrain")
    assert vtags["dvc_md5"] == dvc_hash(tmp_path / "data" / "pretrain" / "model")
    metrics = json.loads((tmp_path / "data" / "pretrain" / "metrics.json").read_text())
    assert float(vtags["val_loss"]) == pytest.approx(metrics["val"]["loss"], abs=1e-4)
    assert version["run_id"] == children["pretrain"] and version["description"]
    # the version is an MLflow model that loads from the registry and generates; weights as
    # safetensors, code as source files, nothing pickled
    import mlflow

    mlflow.set_tracking_uri(server)
    loaded = mlflow.pyfunc.load_model("models:/gpt-lineage-pretrain@default")
    (text,) = loaded.predict(["the river"], params={"max_new_tokens": 3})
    assert isinstance(text, str)
    local = Path(
        mlflow.artifacts.download_artifacts(
            "models:/gpt-lineage-pretrain@default", dst_path=str(tmp_path / "dl")
        )
    )
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert {"MLmodel", "artifacts/model/model.safetensors", "artifacts/model/config.json"} <= files, files
    assert not [f for f in files if f.endswith((".pkl", ".pickle"))]
