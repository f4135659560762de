"""What a user sees first: MLflow runs that compare executions, models that load from the registry,
a terminal that is neither noisy nor silent, and the small commands around the pipeline."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.config import parse_params
from tests.conftest import files_params


def _git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True, capture_output=True
    )


@pytest.fixture
def committed(tmp_path: Path):
    """A git project with two stages' headline metrics and a committed params.yaml."""
    data = files_params(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump({"stages": {"pretrain": {"cmd": "x"}, "ppo": {"cmd": "y"}}})
    )
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "pretrain.json").write_text(json.dumps({"val_loss": 5.12, "mfu": 0.08}))
    (tmp_path / "metrics" / "ppo.json").write_text(json.dumps({"ppo_win_rate": 0.59}))
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "init")
    return tmp_path, data


@pytest.mark.slow
def test_parent_runs_carry_headline_metrics_resolved_params_and_distinct_names(committed, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    from pipeline import tracking

    root, data = committed
    params = parse_params(data)
    monkeypatch.delenv(tracking.PROFILE_ENV, raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    first = tracking.start_pipeline_run(params, root, "lineage run")
    tracking.end_pipeline_run(params, root, first, ok=True)
    # an experiment: ppo.seed set explicitly, params.yaml changed in the workspace
    data2 = {**data, "ppo": {"seed": 2}}
    (root / "params.yaml").write_text(yaml.safe_dump(data2))
    (root / "metrics" / "ppo.json").write_text(json.dumps({"ppo_win_rate": 0.61}))
    monkeypatch.setattr(tracking.time, "strftime", lambda f, *a: "12-03 18:00:01")
    second = tracking.start_pipeline_run(parse_params(data2), root, "lineage run")
    tracking.end_pipeline_run(parse_params(data2), root, second, ok=False, status="KILLED")

    mlflow.set_tracking_uri(data["common"]["tracking_uri"])
    client = MlflowClient()
    a, b = client.get_run(first), client.get_run(second)
    assert a.data.metrics == {"pretrain/val_loss": 5.12, "pretrain/mfu": 0.08, "ppo/ppo_win_rate": 0.59}
    assert b.info.status == "KILLED"
    assert b.data.params == {"ppo.seed": "2"}
    assert a.info.run_name[:25] != b.info.run_name[:25] and "ppo.seed=2" in b.info.run_name


def test_a_stage_seed_left_to_common_is_logged_as_the_seed_it_uses():
    from pipeline.tracking import resolved_value

    params = parse_params(files_params(Path("/tmp")))
    assert params.ppo.seed is None
    assert resolved_value(params, "ppo.seed", None) == 1337
    assert resolved_value(params, "ppo.seed", 2) == 2
    assert resolved_value(params, "mix.weights", None) is None


def test_a_stage_run_shows_its_headline_and_perf_and_keeps_the_rest_as_an_artifact():
    from pipeline.stage import summary_keys
    from pipeline.tracking import Tracker

    class FakeMlflow:
        def __init__(self):
            self.metrics, self.dicts = {}, {}

        def log_metrics(self, metrics, step=None):
            self.metrics.update(metrics)

        def log_dict(self, data, name):
            self.dicts[name] = data

    flat = {f"eval/task{i}/k{k}/acc": 0.0 for i in range(40) for k in range(5)}
    flat |= {"eval/greedy/win_rate/value": 0.6, "perf/wall_s": 3.0, "model/params": 1e5}
    fake = FakeMlflow()
    t = Tracker(fake)
    t.log_summary(flat, summary_keys(flat, ["win=eval/greedy/win_rate/value"]), {"eval": "..."})
    assert set(fake.metrics) == {"eval/greedy/win_rate/value", "perf/wall_s"}
    assert fake.dicts == {"metrics.json": {"eval": "..."}}
    assert t.summary["model/params"] == 1e5  # still tags the registered model


def _lineage(root: Path, *args: str) -> subprocess.CompletedProcess:
    import os
    import sys

    from tests.conftest import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], cwd=root, capture_output=True, text=True, env=env,
        timeout=300,
    )  # fmt: skip


@pytest.mark.slow
def test_lineage_baseline_commits_this_workspaces_run_once_it_is_up_to_date(tmp_path):
    root = tmp_path
    (root / "params.yaml").write_text("a: 1\n")
    (root / "dvc.yaml").write_text(
        yaml.safe_dump({"stages": {"s": {
            "cmd": "mkdir -p data/s metrics && cp params.yaml data/s/out && echo '{\"x\": 1}' > metrics/s.json",
            "params": ["a"], "outs": ["data/s"], "metrics": [{"metrics/s.json": {"cache": False}}],
        }}})
    )  # fmt: skip
    _git(root, "init", "-q")
    subprocess.run([Path(__import__("sys").executable).parent / "dvc", "init", "-q"], cwd=root, check=True)
    _git(root, "add", ".")
    _git(root, "commit", "-qm", "project")
    (root / "params.yaml").write_text("a: 2\n")  # changed but not run yet: no baseline of it
    stale = _lineage(root, "baseline")
    assert stale.returncode == 1 and stale.stderr.count("\n") == 1 and "`lineage run` first" in stale.stderr
    subprocess.run([Path(__import__("sys").executable).parent / "dvc", "repro", "-q"], cwd=root, check=True)
    done = _lineage(root, "baseline")
    assert done.returncode == 0, done.stderr
    assert "git pull && dvc pull" in done.stdout
    head = subprocess.run(
        ["git", "show", "--stat", "--format=%s", "HEAD"], cwd=root, capture_output=True, text=True
    )
    assert {"params.yaml", "dvc.lock", "metrics/s.json"} <= {
        ln.split("|")[0].strip() for ln in head.stdout.splitlines()
    }
    assert not subprocess.run(["git", "status", "--porcelain", "--", "dvc.lock", "metrics"], cwd=root,
                              capture_output=True, text=True).stdout  # fmt: skip
    again = _lineage(root, "baseline")
    assert again.returncode == 0 and "already" in again.stdout


def test_lineage_run_help_says_how_to_change_a_param():
    from tests.conftest import ROOT

    out = " ".join(_lineage(ROOT, "run", "--help").stdout.split())
    assert "-S KEY=VALUE" in out and "ppo.seed=2" in out and "lineage baseline" in out


@pytest.mark.slow
def test_a_registered_model_loads_from_the_registry_and_generates(tmp_path, monkeypatch):
    """`mlflow.pyfunc.load_model("models:/gpt-lineage-sft@default")` and predict: the registry holds
    an MLflow model, not loose files; greedy output equals GPT.generate's on the same prompt."""
    import mlflow
    import torch

    from pipeline.config import TokenizeConfig
    from pipeline.feedback.chat import ChatTokens
    from pipeline.model import GPT, GPTConfig
    from pipeline.model.export import save_model
    from pipeline.tokenizer import save_tokenizer, train_tokenizer
    from pipeline.tracking import stage_run

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    tok = train_tokenizer(["What is the sum of two and three? Five. Hello there."] * 20,
                          TokenizeConfig(vocab_size=300, min_frequency=1))  # fmt: skip
    tok_file = save_tokenizer(tok, tmp_path / "data" / "tokenize" / "tokenizer.json")
    torch.manual_seed(0)
    model = GPT(GPTConfig(arch="gpt2", vocab_size=tok.get_vocab_size(), block_size=32, n_layer=1, n_head=2,
                          n_embd=16)).eval()  # fmt: skip
    save_model(model, tmp_path / "data" / "sft" / "model")
    params = parse_params(files_params(tmp_path))
    monkeypatch.chdir(tmp_path)
    with stage_run("sft", params, tmp_path) as tracker:
        tracker.log_model(model, "gpt-lineage-sft", weights="model")
        tracker.commit()

    mlflow.set_tracking_uri(params.common.tracking_uri)
    loaded = mlflow.pyfunc.load_model("models:/gpt-lineage-sft@default")
    (reply,) = loaded.predict(["What is the sum of two and three?"], params={"max_new_tokens": 6})
    chat = ChatTokens(tok, str(tok_file))
    ids = chat.encode_prompt([{"role": "user", "content": "What is the sum of two and three?"}])
    want = model.generate(torch.tensor([ids]), 6, top_k=1, eos_token=chat.end)[0, len(ids) :].tolist()
    assert reply == tok.decode([i for i in want if i != chat.end], skip_special_tokens=True)
    assert isinstance(reply, str)


SCRIPT = """
import sys
from pipeline.config import CommonConfig
from pipeline.orchestration import Orchestrator, _drain_prefect
ids = []
def body():
    print("ux-stage: step 5/10, loss 3.2", file=sys.stderr, flush=True)
    return {"ok": 1}
Orchestrator(CommonConfig(task_runner="threads")).run("ux-flow", body, None, tags=["mlflow:run123"],
                                                      on_flow_run=ids.append)
_drain_prefect()
print("FLOW", ids[0])
"""


@pytest.mark.slow
def test_a_flow_run_gets_the_stage_output_and_its_mlflow_run_while_the_terminal_stays_quiet(prefect_api):
    """The terminal shows the stage's line once and no Prefect chatter; Prefect's log of the flow
    run has the line, and the flow run is tagged with the MLflow run (and hands its id back)."""
    import asyncio
    import os
    import sys
    import uuid

    from pipeline.orchestration import QUIET_ENV
    from tests.conftest import ROOT

    env = {**os.environ, **QUIET_ENV, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": prefect_api}
    run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stderr.strip() == "ux-stage: step 5/10, loss 3.2", run.stderr[-2000:]
    flow_run_id = run.stdout.split("FLOW ")[1].split()[0]

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def read():
        async with get_client() as client:
            fr = await client.read_flow_run(uuid.UUID(flow_run_id))
            logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[fr.id])))
            return fr, [log.message for log in logs]

    fr, messages = asyncio.run(read())
    assert "mlflow:run123" in fr.tags
    assert "ux-stage: step 5/10, loss 3.2" in messages


def test_the_project_prefect_server_serves_a_ui_without_analytics(prefect_api):
    import urllib.request

    with urllib.request.urlopen(f"{prefect_api}/admin/settings", timeout=30) as r:
        server = json.loads(r.read())["server"]
    assert server["analytics_enabled"] is False
    assert server["ui"]["v2_enabled"] is False  # the v2 UI starts an analytics client regardless


def test_a_terminal_zero_columns_wide_gets_progress_lines(monkeypatch):
    """tqdm draws nothing at width 0: a terminal that reports no width gets lines instead."""
    import os
    import sys

    from pipeline import progress

    class Tty:
        def isatty(self):
            return True

        def fileno(self):
            return 2

    monkeypatch.delenv("LINEAGE_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "stderr", Tty())
    monkeypatch.setattr(os, "get_terminal_size", lambda fd=None: os.terminal_size((0, 0)))
    assert progress.mode() == "lines"
    monkeypatch.setattr(os, "get_terminal_size", lambda fd=None: os.terminal_size((80, 24)))
    assert progress.mode() == "bar"


DVC_BARS = """
import io, sys
class Tty(io.StringIO):
    def isatty(self):
        return True
sys.stderr = Tty()
if sys.argv[1] == "quiet":
    from pipeline.dvc_quiet import silence_bars
    assert silence_bars()
from dvc.lock import Lock
from dvc.progress import Tqdm
lock = Lock(sys.argv[2], friendly=True)
lock.lock()
lock.unlock()
for _ in Tqdm(range(3), desc="checking outputs", total=3):
    pass
sys.__stdout__.write(repr(sys.stderr.getvalue()))
"""


def test_lineage_run_starts_dvc_without_its_progress_bars(tmp_path):
    """On a terminal DVC's bars print lone `!` lines and a bar per output; `lineage run` starts
    DVC through pipeline.dvc_quiet, which turns them off (its log lines stay)."""
    import os
    import sys

    from tests.conftest import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def drawn(mode: str) -> str:
        cmd = [sys.executable, "-c", DVC_BARS, mode, str(tmp_path / "lock")]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=120).stdout

    assert "!" in drawn("plain")  # what a terminal got before
    assert drawn("quiet") == "''"


def test_a_final_evaluation_says_each_step_as_it_starts(monkeypatch, capsys):
    """Without a terminal, a long loop prints a line every 30 s; a stage's final evaluation, a few
    steps with no loop, prints one line as each starts and one when done, so it is never silent."""
    from pipeline.progress import Phases

    monkeypatch.setenv("LINEAGE_PROGRESS", "lines")
    monkeypatch.setenv("LINEAGE_PROGRESS_INTERVAL", "30")
    with Phases("ppo: final evaluation", 3) as ph:
        ph.next("greedy answers")
        ph.next("sampled answers")
        ph.next("alignment tax")
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "ppo: final evaluation: 0/3 parts (0%)",
        "ppo: final evaluation: 1/3 parts (33%)",
        "ppo: final evaluation: 2/3 parts (67%)",
        "ppo: final evaluation: 3/3 parts (100%)",
    ]
    assert "now sampled answers" in lines[1] and lines[-1].endswith("in 0m00s")


@pytest.mark.slow
def test_ctrl_c_marks_the_mlflow_run_killed_and_the_flow_run_cancelled(tmp_path, prefect_api, monkeypatch):
    import asyncio
    import uuid

    import mlflow
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client

    from pipeline.config import CommonConfig
    from pipeline.orchestration import Orchestrator
    from pipeline.tracking import stage_run

    params = parse_params(files_params(tmp_path))
    monkeypatch.chdir(tmp_path)
    flow_runs: list[str] = []

    def body():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), stage_run("crawl", params, tmp_path) as tracker:
        run_id = tracker.run_id
        Orchestrator(CommonConfig(task_runner="threads")).run(
            "ux-interrupted", body, on_flow_run=flow_runs.append
        )
    mlflow.set_tracking_uri(params.common.tracking_uri)
    assert MlflowClient().get_run(run_id).info.status == "KILLED"

    async def state():
        async with get_client() as client:
            return (await client.read_flow_run(uuid.UUID(flow_runs[0]))).state.type.value

    assert asyncio.run(state()) == "CANCELLED"
