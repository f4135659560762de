"""MLflow: one parent run per pipeline execution, one child run per stage execution.

A *pipeline execution* is one `lineage run` or one plain `dvc repro` / `dvc exp run`. `lineage run`
creates the parent run itself and hands its id to the stages in ``LINEAGE_PARENT_RUN_ID``. Under a
plain `dvc repro` there is no wrapper process, so a stage identifies its execution by the DVC process
above it (its pid and start time, from /proc) and attaches to the parent run tagged with that key,
creating it when it is the first stage to run. A stage that DVC skipped gets no run; the parent
names the stages it reused and the earlier run that made their outputs.

Naming: curves are step metrics (``train/loss``, ``val/loss``, ``val/sources/<src>/bpb``...);
summaries (the flattened data/<stage>/metrics.json) are logged without a step, except where a curve
of the same name exists: its last point is the summary, so no false step-0 point is added to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import Params, flatten
from pipeline.redact import redact

PARENT_ENV = "LINEAGE_PARENT_RUN_ID"  # set by `lineage run` for every stage it launches
PROFILE_ENV = "LINEAGE_PROFILE"  # the profile `lineage run --profile` applied
DEFAULT_ALIAS = "default"  # registry alias: the latest model trained with the default params
KIND_TAG = "lineage.kind"  # "pipeline" on parent runs, "stage" on stage runs
EXECUTION_TAG = "lineage.execution"  # the DVC process a parent run belongs to (plain `dvc repro`)
METRICS_MD5_TAG = "lineage.metrics_md5"  # md5 of the data/<stage>/metrics.json a stage run wrote
OWNER_TAG = "lineage.owner"  # host:pid:start-time of the process that keeps a run RUNNING

log = logging.getLogger("lineage.tracking")


# ------------------------------------------------------------------------------------------- git, DVC
def _git(root: Path, *args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return ""
    return out.stdout if out.returncode == 0 else ""


def git_commit(root: Path) -> str:
    return _git(root, "rev-parse", "HEAD").strip() or "none"


def git_dirty(root: Path) -> bool:
    """Uncommitted changes to the code. params.yaml, dvc.lock and metrics/ are left out: every
    `dvc exp run` changes them, and the changed params are reported on their own."""
    out = _git(root, "status", "--porcelain", "--", ".", ":!params.yaml", ":!dvc.lock", ":!metrics")
    return bool(out.strip())


def changed_params(root: Path) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (value at HEAD, value now)}`` for every param that differs from the last commit
    (what `dvc exp run -S` or a profile set); empty outside git or before the first commit."""
    head = _git(root, "show", "HEAD:params.yaml")
    try:
        before = flatten(yaml.safe_load(head) or {}) if head else None
        now = flatten(yaml.safe_load((root / "params.yaml").read_text()) or {})
    except (OSError, yaml.YAMLError):
        return {}
    if before is None:
        return {}
    return {
        k: (before.get(k), now.get(k)) for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)
    }


def dvc_input_hashes(root: Path, stage: str) -> dict[str, str]:
    """The DVC hashes of the data this run reads: for each data dep of ``stage`` in dvc.yaml, the
    md5 dvc.lock records for the upstream outputs under it (DVC locks a stage as soon as it has
    run, so these are the inputs of this very run)."""
    try:
        spec = yaml.safe_load((root / "dvc.yaml").read_text()) or {}
        lock = yaml.safe_load((root / "dvc.lock").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    deps = [d for d in spec.get("stages", {}).get(stage, {}).get("deps", []) if str(d).startswith("data/")]
    out: dict[str, str] = {}
    for upstream in (lock.get("stages") or {}).values():
        for o in upstream.get("outs", []):
            path = o.get("path", "")
            if "md5" in o and any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps):
                out[f"dvc.input.{path}"] = o["md5"]
    return out


def file_md5(path: Path) -> str:
    from pipeline.io import file_digest

    return file_digest(path, "md5")


def dvc_hash(path: Path) -> str:
    """The hash DVC 3 gives ``path`` in dvc.lock: a file's md5, or for a folder the md5 of the sorted
    JSON list of its files' md5s plus ``.dir``; computed here so a model version can carry the hash of
    its weights before DVC has locked the stage."""
    path = Path(path)
    if path.is_file():
        return file_md5(path)
    entries = [
        {"md5": file_md5(p), "relpath": p.relative_to(path).as_posix()}
        for p in sorted(path.rglob("*"))
        if p.is_file()
    ]
    entries.sort(key=lambda e: e["relpath"].split("/"))
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def resolve_tracking_uri(uri: str, root: Path) -> str:
    """A relative SQLite path means relative to the project root, wherever the stage is started."""
    prefix = "sqlite:///"
    if (
        uri.startswith(prefix)
        and not uri.startswith(prefix + "/")
        and not Path(uri[len(prefix) :]).is_absolute()
    ):
        return prefix + str((root / uri[len(prefix) :]).resolve())
    return uri


# ------------------------------------------------------------------------------------ the execution
def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks since boot) of ``pid``, from /proc (Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return int(fields[1]), int(fields[19])


def _cmdline(pid: int) -> list[str]:
    try:
        return [
            a for a in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0") if a
        ]
    except OSError:
        return []


def _is_dvc(cmd: list[str]) -> bool:
    """`dvc repro`, `dvc exp run`, `python -m dvc ...`: the process that runs the stages."""
    names = [Path(a).name for a in cmd[:3]]
    module = len(cmd) > 2 and cmd[1] == "-m" and cmd[2] in ("dvc", "pipeline.dvc_quiet")
    return ("dvc" in names or module) and any(a in ("repro", "run", "exp") for a in cmd[1:4])


def dvc_execution(pid: int | None = None, depth: int = 6) -> tuple[str, str] | None:
    """The DVC process this process runs under, as (key, command line): the key is its pid and
    start time, unique across pid reuse, shared by every stage of one `dvc repro`."""
    pid = os.getppid() if pid is None else pid
    for _ in range(depth):
        stat = _proc_stat(pid)
        if stat is None or pid <= 1:
            return None
        cmd = _cmdline(pid)
        if _is_dvc(cmd):
            return f"dvc:{pid}:{stat[1]}", " ".join(
                Path(cmd[0]).name if i == 0 else a for i, a in enumerate(cmd)
            )
        pid = stat[0]
    return None


def owner_key(pid: int | None = None) -> str:
    """``host:pid:start`` of a process (default: this one), to tell later whether it still runs."""
    import socket

    pid = os.getpid() if pid is None else pid
    stat = _proc_stat(pid)
    return f"{socket.gethostname()}:{pid}:{stat[1] if stat else 0}"


def _owner_dead(key: str) -> bool:
    """Whether the process named by an owner key (or a ``dvc:pid:start`` execution key) is gone.
    A process on another host, or a key this code did not write, is never called dead."""
    import socket

    parts = key.split(":")
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    host, pid, start = parts
    if host not in ("dvc", socket.gethostname()):
        return False
    stat = _proc_stat(int(pid))
    return stat is None or str(stat[1]) != start


def close_dead_runs(client: Any, exp_id: str) -> list[str]:
    """Runs left RUNNING by a process killed with SIGKILL (no `finally` ran to close them), stage
    runs and pipeline runs alike: marked KILLED, as killed runs' temporary folders are removed.
    Returns their ids."""
    try:
        runs = client.search_runs([exp_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    except Exception:
        return []
    closed = []
    for run in runs:
        tags = run.data.tags
        key = tags.get(OWNER_TAG) or tags.get(EXECUTION_TAG, "")
        if key and _owner_dead(key):
            with contextlib.suppress(Exception):
                client.set_terminated(run.info.run_id, "KILLED")
                closed.append(run.info.run_id)
    return closed


def profile_name(root: Path) -> str:
    """The profile of this execution: `lineage run --profile NAME` says so; otherwise `default` when
    params.yaml is the committed one, `custom` when an experiment changed it."""
    return os.environ.get(PROFILE_ENV) or ("custom" if changed_params(root) else "default")


def _quiet_mlflow() -> None:
    for name in ("mlflow", "alembic", "urllib3"):  # store creation/migration and retry chatter
        logging.getLogger(name).setLevel(logging.WARNING)


def setup_mlflow(params: Params, root: Path) -> str:
    """Point MLflow at the project's store and experiment; returns the experiment id."""
    import mlflow

    _quiet_mlflow()
    uri = resolve_tracking_uri(params.common.tracking_uri, root)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(params.common.experiment)
    if exp is not None:
        return exp.experiment_id
    local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
    # a local store keeps artifacts beside it; a tracking server decides where its artifacts go
    location = (root / "mlruns").resolve().as_uri() if local else None
    try:
        return mlflow.create_experiment(params.common.experiment, artifact_location=location)
    except Exception:  # created meanwhile by a stage running beside this one
        exp = mlflow.get_experiment_by_name(params.common.experiment)
        if exp is None:
            raise
        return exp.experiment_id


def _parent_tags(root: Path, command: str) -> dict[str, str]:
    return {
        KIND_TAG: "pipeline",
        "git_commit": git_commit(root),
        "git_dirty": str(git_dirty(root)).lower(),
        "profile": profile_name(root),
        "dvc_experiment": os.environ.get("DVC_EXP_NAME", ""),
        "command": redact(command)[:4000],
    }


def _parent_name(root: Path, changed: dict[str, tuple[Any, Any]] | None = None) -> str:
    """The time first (MLflow's run lists and chart legends cut names to about 25 characters, so two
    executions differ there), then what sets this execution apart: the DVC experiment, the changed
    params (``ppo.seed=2``), or the profile."""
    changed = changed_params(root) if changed is None else changed
    what = os.environ.get("DVC_EXP_NAME") or " ".join(f"{k}={v[1]}" for k, v in changed.items())
    if os.environ.get(PROFILE_ENV):
        what = f"{os.environ[PROFILE_ENV]} {what}".strip()
    return f"{time.strftime('%m-%d %H:%M:%S')} {what or profile_name(root)}"[:120]


def resolved_value(params: Params | None, key: str, value: Any) -> Any:
    """A param as the stage uses it: a section's ``seed`` left at None means `common.seed`."""
    if value is None and key.endswith(".seed") and not key.startswith("common.") and params is not None:
        return params.common.seed
    return value


def _log_changed_params(
    client: Any,
    run_id: str,
    root: Path,
    changed: dict[str, tuple[Any, Any]] | None = None,
    params: Params | None = None,
) -> None:
    from mlflow.entities import Param

    changed = changed_params(root) if changed is None else changed
    if changed:
        client.log_batch(
            run_id,
            params=[
                Param(k, redact(str(resolved_value(params, k, v[1])))[:6000])
                for k, v in list(changed.items())[:100]
            ],
        )


def headline_files(root: Path, stages: list[str] | None = None) -> dict[str, float]:
    """Every stage's headline metrics (metrics/<stage>.json) as ``<stage>/<name>``: what a parent
    run carries, so MLflow compares two pipeline executions metric by metric."""
    out: dict[str, float] = {}
    for stage in stages if stages is not None else pipeline_stages(root):
        try:
            values = json.loads((root / "metrics" / f"{stage}.json").read_text())
        except (OSError, ValueError):
            continue
        for k, v in values.items() if isinstance(values, dict) else ():
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[f"{stage}/{k}"] = float(v)
    return out


def log_parent_metrics(client: Any, run_id: str, root: Path, stages: list[str] | None = None) -> int:
    """Log the headline metrics of ``stages`` (default: all) on the parent run; returns how many."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in headline_files(root, stages).items()]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])
    return len(metrics)


def start_pipeline_run(
    params: Params, root: Path, command: str, overrides: dict[str, Any] | None = None
) -> str:
    """Open the parent run of one `lineage run`; its id goes to the stages in ``LINEAGE_PARENT_RUN_ID``.
    ``overrides`` are the params a profile is about to set (params.yaml does not show them yet)."""
    from mlflow import MlflowClient

    exp_id = setup_mlflow(params, root)
    client = MlflowClient()
    changed = {**changed_params(root), **{k: (None, v) for k, v in (overrides or {}).items()}}
    tags = {**_parent_tags(root, command), OWNER_TAG: owner_key()}
    run = client.create_run(exp_id, run_name=_parent_name(root, changed), tags=tags)
    _log_changed_params(client, run.info.run_id, root, changed, params)
    return run.info.run_id


def end_pipeline_run(params: Params, root: Path, run_id: str, ok: bool, status: str | None = None) -> None:
    """Close a parent run: record the reused stages and every stage's headline metrics (those it
    reused too: they are this execution's results), then FINISHED, FAILED or ``status`` (KILLED
    for a Ctrl-C)."""
    from mlflow import MlflowClient

    setup_mlflow(params, root)
    client = MlflowClient()
    with contextlib.suppress(Exception):
        mark_reused(client, run_id, root)
    if ok:
        with contextlib.suppress(Exception):
            log_parent_metrics(client, run_id, root)
    client.set_terminated(run_id, status or ("FINISHED" if ok else "FAILED"))


def _attach_parent(
    client: Any, exp_id: str, root: Path, params: Params | None = None
) -> tuple[str | None, bool]:
    """(parent run id, whether this stage manages the parent's status). ``LINEAGE_PARENT_RUN_ID``
    wins; else the parent of the DVC process above us, created by the first stage to run."""
    env_id = os.environ.get(PARENT_ENV)
    if env_id:
        return env_id, False
    found = dvc_execution()
    if found is None:
        return None, False  # a stage started by hand: a run of its own, no parent
    key, command = found
    runs = client.search_runs([exp_id], filter_string=f"tags.`{EXECUTION_TAG}` = '{key}'", max_results=1)
    if runs:
        client.update_run(runs[0].info.run_id, status="RUNNING")
        return runs[0].info.run_id, True
    run = client.create_run(
        exp_id, run_name=_parent_name(root), tags={**_parent_tags(root, command), EXECUTION_TAG: key}
    )
    _log_changed_params(client, run.info.run_id, root, params=params)
    return run.info.run_id, True


def pipeline_stages(root: Path) -> list[str]:
    try:
        return list((yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages", {}))
    except (OSError, yaml.YAMLError):
        return []


def run_of_output(client: Any, exp_id: str, root: Path, stage: str) -> str | None:
    """The stage run that wrote the data/<stage>/metrics.json now in the workspace."""
    path = root / "data" / stage / "metrics.json"
    if not path.is_file():
        return None
    runs = client.search_runs(
        [exp_id], filter_string=f"tags.`{METRICS_MD5_TAG}` = '{file_md5(path)}'", max_results=1
    )
    return runs[0].info.run_id if runs else None


def mark_reused(client: Any, parent_id: str, root: Path) -> dict[str, str]:
    """Tag the parent with the stages this execution did not run (DVC found them up to date) and
    the earlier run each one's outputs come from: ``reused.<stage> = <run id>`` and ``reused``."""
    parent = client.get_run(parent_id)
    exp_id = parent.info.experiment_id
    children = client.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")
    ran = {r.data.tags.get("stage") for r in children}
    reused: dict[str, str] = {}
    for stage in pipeline_stages(root):
        if stage not in ran and (root / "data" / stage).is_dir():
            reused[stage] = run_of_output(client, exp_id, root, stage) or "unknown"
    for stage, run_id in reused.items():
        client.set_tag(parent_id, f"reused.{stage}", run_id)
    client.set_tag(parent_id, "reused", ", ".join(reused) or "none")
    client.set_tag(parent_id, "ran", ", ".join(s for s in pipeline_stages(root) if s in ran) or "none")
    return reused


# -------------------------------------------------------------------------------------------- tracker
class Tracker:
    """What a stage logs through: metrics (curves with a step, summaries without), artifacts, and
    models, whose registration waits for the stage's success (`commit`)."""

    def __init__(self, mlflow: Any, stage: str = "", root: Path | None = None, params: Params | None = None):
        self._mlflow = mlflow
        self._on_success: list[Callable[[], None]] = []
        self.stage = stage
        self.root = Path(root) if root is not None else None
        self.params = params
        self.curves: dict[str, float] = {}  # last value of every metric logged with a step
        self.summary: dict[str, float] = {}

    @property
    def run_id(self) -> str | None:
        run = self._mlflow.active_run()
        return run.info.run_id if run else None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """With ``step``: points of curves. Without: summary values, logged once and stepless, except
        those a curve already carries (its last point is the summary; a step-0 copy would draw a
        false first point). NaN and infinities are left out: some stores keep a NaN as 0.0, a
        figure nobody measured (metrics.json keeps them as they are)."""
        clean = {
            k: float(v)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        }
        if step is not None:
            self.curves.update(clean)
        else:
            self.summary.update(clean)
            clean = {k: v for k, v in clean.items() if k not in self.curves}
        if clean:
            self._mlflow.log_metrics(clean, step=step)

    def log_summary(self, flat: dict[str, float], shown: set[str], detail: Any = None) -> None:
        """The end-of-run summary: all of ``flat`` is kept for the model registry's tags, only the
        ``shown`` keys (the headline figures and perf/) become MLflow metrics, so a run lists what a
        person reads; ``detail`` (the full metrics.json) goes along as the artifact metrics.json."""
        self.summary.update(flat)
        self.log_metrics({k: v for k, v in flat.items() if k in shown})
        if detail is not None:
            self._mlflow.log_dict(detail, "metrics.json")

    def link_flow_run(self, flow_run_id: str, api_url: str | None) -> None:
        """Tag the run with the Prefect flow run that ran the stage (its id and its page in the UI);
        the flow run carries ``mlflow:<run id>`` the other way."""
        self._mlflow.set_tag("prefect.flow_run_id", flow_run_id)
        if api_url:
            self._mlflow.set_tag(
                "prefect.flow_run_url", f"{api_url.removesuffix('/api')}/runs/flow-run/{flow_run_id}"
            )

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_dict(self, data: Any, name: str) -> None:
        self._mlflow.log_dict(data, name)

    def log_figure(self, fig: Any, name: str) -> None:
        self._mlflow.log_figure(fig, name)

    def log_text(self, text: str, name: str) -> None:
        self._mlflow.log_text(text, name)

    def log_model(
        self, model: Any, registered_name: str, *, weights: str | None = None, description: str | None = None
    ) -> None:
        """Register ``model`` in the MLflow model registry once the stage has succeeded (a failed
        stage never adds a version). The registry copy is safetensors + config.json, never a pickle:
        ``weights`` names the stage's saved model folder under data/<stage>/ (so the version carries
        the DVC hash of exactly those files); without it the model is saved with safetensors."""
        self._on_success.append(lambda: self._register(model, registered_name, weights, description))

    def commit(self) -> None:
        """Runs once the stage succeeded: tag the run with its metrics.json, then register models."""
        if self.root is not None and self.stage:
            path = self.root / "data" / self.stage / "metrics.json"
            if path.is_file():
                self._mlflow.set_tag(METRICS_MD5_TAG, file_md5(path))
        pending, self._on_success = self._on_success, []
        for action in pending:
            action()

    def _register(self, model: Any, name: str, weights: str | None, description: str | None) -> None:
        from mlflow import MlflowClient

        from pipeline.model.gpt import GPT

        tokenizer = self.root / "data" / "tokenize" / "tokenizer.json" if self.root else None
        pyfunc = isinstance(model, GPT) and tokenizer is not None and tokenizer.is_file()
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.root / "data" / self.stage / weights if weights and self.root else None
            if folder is None or not folder.is_dir():
                folder = Path(tmp) / "model"
                if pyfunc:
                    from pipeline.model.export import save_model

                    save_model(model, folder)
                else:
                    save_weights(model, folder)
            digest = dvc_hash(folder)
            if pyfunc:  # an MLflow model: `mlflow.pyfunc.load_model("models:/<name>@default")` generates
                from pipeline.model.pyfunc import log_generator

                source = log_generator(folder, tokenizer, chat=self.stage in ("sft", "ppo")).model_uri
            else:  # a classifier or reward model: its weights, loaded with the project's code
                self._mlflow.log_artifacts(str(folder), artifact_path="model")
        run_id = self.run_id
        client = MlflowClient()
        with contextlib.suppress(Exception):
            client.create_registered_model(
                name,
                description=f"gpt-lineage: the `{self.stage}` stage's model. "
                + (
                    "An MLflow pyfunc model: `mlflow.pyfunc.load_model('models:/<name>@default')"
                    ".predict(['a prompt'])` generates."
                    if pyfunc
                    else "safetensors + config.json; load with the project's code after "
                    "`mlflow artifacts download`."
                ),
            )
        if not pyfunc:
            source = f"{self._mlflow.get_run(run_id).info.artifact_uri}/model"
        profile = profile_name(self.root) if self.root else "unknown"
        tags = {
            "stage": self.stage,
            "profile": profile,
            "params_hash": self.params.section_hash(self.stage) if self.params else "",
            "dvc_md5": digest,
            "git_commit": git_commit(self.root) if self.root else "none",
        }
        if "val/loss" in self.summary:
            tags["val_loss"] = f"{self.summary['val/loss']:.4f}"
        if "model/params" in self.summary:
            tags["n_params"] = str(int(self.summary["model/params"]))
        text = description or self._describe(tags)
        if pyfunc:  # MLflow 3 registers a logged model by its models:/ URI (it links the version to it)
            import mlflow

            version = mlflow.register_model(source, name, tags=tags)
            client.update_model_version(name, version.version, description=text)
        else:
            version = client.create_model_version(name, source, run_id=run_id, tags=tags, description=text)
        if profile == "default":
            client.set_registered_model_alias(name, DEFAULT_ALIAS, version.version)

    def _describe(self, tags: dict[str, str]) -> str:
        size = f"{int(tags['n_params']):,} parameters, " if "n_params" in tags else ""
        loss = f"validation loss {tags['val_loss']}, " if "val_loss" in tags else ""
        return (
            f"{self.stage} model, profile {tags['profile']}: {size}{loss}commit {tags['git_commit'][:10]}, "
            f"weights {tags['dvc_md5']} (DVC hash of data/{self.stage}/model)"
        )


def save_weights(model: Any, folder: Path) -> None:
    """safetensors weights (shared tensors resolved) and the model's config as JSON when it has one."""
    from safetensors.torch import save_model

    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, str(folder / "model.safetensors"))
    config = getattr(model, "config", None)
    if hasattr(config, "to_dict"):
        (folder / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")


def _log_inputs(mlflow: Any, inputs: dict[str, str]) -> None:
    """Each upstream output as an MLflow dataset input whose digest is its DVC hash."""
    from mlflow.data.dataset_source import DatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    class DvcSource(DatasetSource):
        def __init__(self, path: str, md5: str):
            self.path, self.md5 = path, md5

        @staticmethod
        def _get_source_type() -> str:
            return "dvc"

        def load(self, **kwargs: Any) -> str:
            return self.path

        @staticmethod
        def _can_resolve(raw_source: Any) -> bool:
            return False

        @classmethod
        def _resolve(cls, raw_source: Any) -> DvcSource:
            raise NotImplementedError

        def to_dict(self) -> dict[str, Any]:
            return {"path": self.path, "md5": self.md5}

        @classmethod
        def from_dict(cls, source_dict: dict[Any, Any]) -> DvcSource:
            return cls(source_dict["path"], source_dict["md5"])

    for key, md5 in inputs.items():
        path = key.removeprefix("dvc.input.")
        with contextlib.suppress(Exception):
            mlflow.log_input(MetaDataset(DvcSource(path, md5), name=path, digest=md5[:36]), context="dvc")


@contextlib.contextmanager
def stage_run(stage: str, params: Params, root: Path) -> Iterator[Tracker]:
    """The stage's MLflow run, a child of its pipeline execution's parent run when there is one."""
    import mlflow
    from mlflow import MlflowClient

    exp_id = setup_mlflow(params, root)
    mlflow.set_experiment(experiment_id=exp_id)
    client = MlflowClient()
    for run_id in close_dead_runs(client, exp_id):
        log.warning("mlflow: run %s was left RUNNING by a killed process; marked KILLED", run_id)
    inputs = dvc_input_hashes(root, stage)
    tags = {
        KIND_TAG: "stage",
        OWNER_TAG: owner_key(),
        "stage": stage,
        "git_commit": git_commit(root),
        "git_dirty": str(git_dirty(root)).lower(),
        "profile": profile_name(root),
        "params_hash": params.section_hash(stage) if hasattr(params, stage) else "",
        **inputs,
    }
    parent_id, manage_parent = _attach_parent(client, exp_id, root, params)
    if parent_id:
        tags["mlflow.parentRunId"] = parent_id
    run = client.create_run(exp_id, run_name=stage, tags=tags)
    ok = interrupted = False
    try:
        with mlflow.start_run(run_id=run.info.run_id):
            logged = {f"common.{k}": v for k, v in flatten(params.common.model_dump(mode="json")).items()}
            if hasattr(params, stage):
                section = getattr(params, stage).model_dump(mode="json")
                logged.update({f"{stage}.{k}": v for k, v in flatten(section).items()})
            mlflow.log_params(
                {k: redact(str(resolved_value(params, k, v)))[:6000] for k, v in logged.items()}
            )
            _log_inputs(mlflow, inputs)
            try:
                yield Tracker(mlflow, stage, root, params)
            except KeyboardInterrupt:  # Ctrl-C: the run was stopped, not broken
                mlflow.end_run("KILLED")
                raise
            ok = True
        if parent_id:  # the parent carries each stage's headline metrics as the stage finishes
            with contextlib.suppress(Exception):
                log_parent_metrics(client, parent_id, root, [stage])
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        if manage_parent and parent_id:
            # the parent of a plain `dvc repro` stays open only while one of its stages runs
            with contextlib.suppress(Exception):
                client.set_terminated(parent_id, "FINISHED" if ok else "KILLED" if interrupted else "FAILED")
