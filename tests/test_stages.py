"""Stages run in a temporary project root on a small local corpus (files sources)."""

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.config import parse_params
from pipeline.errors import LineageError
from pipeline.stage import main, run_stage
from stages import clean, crawl, dedup, mix, quality
from tests.conftest import ROOT, files_params, write_corpus

BODIES = {
    "crawl": crawl.body,
    "clean": clean.body,
    "quality": quality.body,
    "dedup": dedup.body,
    "mix": mix.body,
}


def run_chain(root: Path, params, upto: str = "mix") -> dict:
    metrics = {}
    for name, body in BODIES.items():
        metrics[name] = run_stage(name, body, root, params)
        if name == upto:
            break
    return metrics


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("proj")
    write_corpus(root, n_ref=50, n_web=80)
    # a planted duplicate across sources and an evaluation set that leaks into one document
    params = parse_params(plant(root))
    return root, params, run_chain(root, params)


def plant(root: Path) -> dict:
    """A mirror source (not quality-filtered) holding an exact and a near copy of reference
    documents, and an evaluation set that leaks 20 words of one reference document."""
    ref = [(root / "corpus" / "ref" / f"doc00{i}.txt").read_text() for i in range(3)]
    words = ref[1].split(" ")
    near = " ".join("zzz" if i in (10, 50, 90) else w for i, w in enumerate(words))  # Jaccard ~0.9
    (root / "corpus" / "mirror.jsonl").write_text(
        json.dumps({"text": ref[0]}) + "\n" + json.dumps({"text": near}) + "\n"
    )
    leak = " ".join(ref[2].split()[40:60])
    (root / "eval.jsonl").write_text(json.dumps({"question": leak}) + "\n")
    return files_params(
        root,
        {
            "crawl": {"sources": {"mirror": {"kind": "files", "globs": ["corpus/mirror.jsonl"]}}},
            "dedup": {"eval_files": ["eval.jsonl"], "priority": ["ref", "mirror", "web"]},
            "mix": {"total_tokens": 40_000},
        },
    )


def test_chain_outputs_and_metrics(chain):
    root, params, m = chain
    for stage in BODIES:
        saved = json.loads((root / "data" / stage / "metrics.json").read_text())
        assert saved["perf"]["wall_s"] > 0
    assert m["crawl"]["docs_out"] == 50 + 80 + 2
    assert m["clean"]["docs_in"] == 132 and m["clean"]["docs_out"] + sum(m["clean"]["drops"].values()) == 132
    assert 0.9 < m["quality"]["classifier"]["auc"] <= 1.0
    assert m["quality"]["sources"]["ref"]["keep_rate"] == 1.0  # only negatives are filtered
    assert m["dedup"]["exact_duplicates"] == 1 and m["dedup"]["near_duplicates"] == 1
    assert m["dedup"]["cross_source_clusters"] == 2 and m["dedup"]["sources"]["mirror"]["out"] == 0
    assert m["dedup"]["decontamination"]["docs_contaminated"] == 1
    clusters = pq.read_table(root / "data" / "dedup" / "clusters.parquet").to_pylist()
    assert {(c["kind"], c["kept_source"], tuple(c["removed_sources"])) for c in clusters} == {
        ("exact", "ref", ("mirror",)), ("near", "ref", ("mirror",)),
    }, "the reference copy must survive its duplicates (dedup.priority)"  # fmt: skip
    shares = {s: v["tokens_out"] for s, v in m["mix"]["sources"].items()}
    total = sum(shares.values())
    for s, w in params.mix.weights.items():
        assert abs(shares[s] / total - w) <= 0.02 * w
        assert m["mix"]["sources"][s]["val_docs"] >= 1
    val = pq.read_table(root / "data" / "mix" / "val").to_pylist()
    train_ids = {r["id"].split("@")[0] for r in pq.read_table(root / "data" / "mix" / "train").to_pylist()}
    assert not train_ids & {r["id"] for r in val}, "validation documents leak into training"


def test_every_stage_logged_one_mlflow_run(chain):
    import mlflow

    root, params, _ = chain
    mlflow.set_tracking_uri(params.common.tracking_uri)
    runs = mlflow.search_runs(experiment_names=[params.common.experiment], output_format="list")
    by_stage = {r.data.tags["stage"]: r for r in runs}
    assert set(by_stage) == set(BODIES)
    q = by_stage["quality"]
    assert (
        q.data.params["quality.alpha"] == "3.0"
        and "params_hash" in q.data.tags
        and "git_commit" in q.data.tags
    )
    assert q.data.metrics["classifier/auc"] > 0.9
    assert "clean.min_words" in by_stage["clean"].data.params
    # every number of a stage's metrics.json is in its MLflow run, under its path, with its value
    from pipeline.stage import flatten_metrics

    for name in ("clean", "mix"):
        flat = flatten_metrics(json.loads((root / "data" / name / "metrics.json").read_text()))
        logged = by_stage[name].data.metrics
        assert len(flat) > 5 and {k: logged.get(k) for k in flat} == pytest.approx(flat), name
    art = mlflow.artifacts.list_artifacts(run_id=q.info.run_id)
    assert {"score_histogram.png", "classifier.skops"} <= {a.path for a in art}


def test_same_inputs_same_outputs(chain, tmp_path):
    root, params, _ = chain
    write_corpus(tmp_path, n_ref=50, n_web=80)
    run_chain(tmp_path, parse_params(plant(tmp_path)))
    a = pq.read_table(root / "data" / "mix" / "train").to_pylist()
    b = pq.read_table(tmp_path / "data" / "mix" / "train").to_pylist()
    assert [(r["id"], r["text"]) for r in a] == [(r["id"], r["text"]) for r in b]


@pytest.mark.parametrize("runner", ["dask", "processes"])
@pytest.mark.usefixtures("prefect_api")
def test_parallel_runners_with_two_workers_match_sync(chain, tmp_path, runner):
    root, params, _ = chain
    (tmp_path / "data").mkdir()
    subprocess.run(["cp", "-r", str(root / "data" / "crawl"), str(tmp_path / "data" / "crawl")], check=True)
    runner_params = params.model_copy(
        update={"common": params.common.model_copy(update={"task_runner": runner, "workers": 2,
                                                           "tracking_uri": f"sqlite:///{tmp_path / 'm.db'}"})}
    )  # fmt: skip
    m = run_stage("clean", clean.body, tmp_path, runner_params)
    ours = json.loads((root / "data" / "clean" / "metrics.json").read_text())
    assert m["docs_out"] == ours["docs_out"] and m["drops"] == ours["drops"]
    for shard in sorted((root / "data" / "clean" / "docs").glob("*.parquet")):
        assert pq.read_table(shard).equals(pq.read_table(tmp_path / "data" / "clean" / "docs" / shard.name))


def write_params(root: Path, data: dict) -> None:
    import yaml

    (root / "params.yaml").write_text(yaml.safe_dump(data))


def test_unreachable_url_is_one_line_and_writes_nothing(tmp_path, capsys):
    data = files_params(tmp_path)
    data["crawl"]["sources"]["web"] = {
        "kind": "http",
        "seeds": ["http://127.0.0.1:9/"],
        "retries": 0,
        "timeout_s": 2,
    }
    write_corpus(tmp_path)
    write_params(tmp_path, data)
    assert main("crawl", crawl.body, ["--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(
        "error: crawl: crawl.sources.web: produced no documents (fetch errors: {'connect': 1})"
    )
    assert "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "data" / "crawl").exists()
    assert not list((tmp_path / "data").glob(".crawl.tmp-*"))


def test_corpus_filtered_to_nothing_is_one_line(tmp_path, capsys):
    write_corpus(tmp_path)
    write_params(tmp_path, files_params(tmp_path, {"clean": {"min_words": 5000, "max_words": 10000}}))
    assert main("crawl", crawl.body, ["--root", str(tmp_path)]) == 0
    assert main("clean", clean.body, ["--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(
        "error: clean: clean: all 100 documents were filtered out (drop reasons: {'min_words': 100})"
    )
    assert not (tmp_path / "data" / "clean").exists()


def test_bad_params_is_one_line(tmp_path, capsys):
    data = files_params(tmp_path)
    data["crawl"]["sources"]["web"]["kind"] = "ftp"
    write_params(tmp_path, data)
    assert main("crawl", crawl.body, ["--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("error: crawl: ") and "crawl.sources.web: Input tag 'ftp'" in err and "\n" not in err
    )


def test_missing_upstream_is_named():
    with pytest.raises(LineageError, match=r"data/crawl: missing; run `dvc repro crawl` first"):
        from pipeline.stage import StageContext

        StageContext("clean", None, Path("/nonexistent"), Path("/tmp"), None, None).input("crawl", "docs")


class SlowSite(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path == "/robots.txt":
            self.send_error(404)
            return
        time.sleep(0.2)
        n = int(self.path.strip("/").removesuffix(".html") or 0)
        body = f"<html><body><p>page {n}</p><a href='/{n + 1}.html'>next</a><a href='/{n + 2}.html'>skip</a></body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


def test_killed_stage_leaves_no_output_and_reruns_cleanly(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowSite)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        data = files_params(tmp_path)
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        data["crawl"]["sources"]["web"] = {"kind": "http", "seeds": [url], "max_pages": 200, "concurrency": 1}
        write_params(tmp_path, data)
        write_corpus(tmp_path)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-m", "stages.crawl", "--root", str(tmp_path)], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list((tmp_path / "data").glob(".crawl.tmp-*/docs")):
            time.sleep(0.1)
        assert list((tmp_path / "data").glob(".crawl.tmp-*")), "the stage never started writing"
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (tmp_path / "data" / "crawl").exists()
        data["crawl"]["sources"]["web"]["max_pages"] = 5
        write_params(tmp_path, data)
        assert subprocess.run([sys.executable, "-m", "stages.crawl", "--root", str(tmp_path)], cwd=ROOT, env=env,
                              capture_output=True).returncode == 0  # fmt: skip
        assert (tmp_path / "data" / "crawl" / "metrics.json").is_file()
        assert not list((tmp_path / "data").glob(".crawl.tmp-*"))
    finally:
        server.shutdown()
