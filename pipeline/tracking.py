"""MLflow: one run per stage execution, tagged so a run can be traced to its code, params and data."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import Params, flatten


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=False
        )
        return out.stdout.strip() or "none"
    except OSError:
        return "none"


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


class Tracker:
    def __init__(self, mlflow: Any):
        self._mlflow = mlflow
        self._on_success: list[Any] = []

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        clean = {
            k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
        }
        if clean:
            self._mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_dict(self, data: Any, name: str) -> None:
        self._mlflow.log_dict(data, name)

    def log_figure(self, fig: Any, name: str) -> None:
        self._mlflow.log_figure(fig, name)

    def log_text(self, text: str, name: str) -> None:
        self._mlflow.log_text(text, name)

    def log_model(self, model: Any, registered_name: str) -> None:
        """Log a torch model and register it in the MLflow model registry, once the stage has
        succeeded: a failed stage never adds a model version."""
        self._on_success.append(lambda: self._register(model, registered_name))

    def commit(self) -> None:
        """Run what waits for the stage's success (model registrations)."""
        pending, self._on_success = self._on_success, []
        for action in pending:
            action()

    @staticmethod
    def _register(model: Any, registered_name: str) -> None:
        import mlflow.pytorch
        import torch

        # the registry copy is MLflow's pickle flavour (what mlflow.pytorch.load_model reads); the
        # pipeline itself only ever loads the safetensors files in data/<stage>/model
        mlflow.pytorch.log_model(
            model, name="model", registered_model_name=registered_name, serialization_format="pickle",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )  # fmt: skip


@contextlib.contextmanager
def stage_run(stage: str, params: Params, root: Path) -> Iterator[Tracker]:
    import logging

    import mlflow

    for name in ("mlflow", "alembic"):  # store creation/migration chatter on every new database
        logging.getLogger(name).setLevel(logging.WARNING)
    mlflow.set_tracking_uri(resolve_tracking_uri(params.common.tracking_uri, root))
    exp = mlflow.get_experiment_by_name(params.common.experiment)
    if exp is None:
        mlflow.create_experiment(
            params.common.experiment, artifact_location=(root / "mlruns").resolve().as_uri()
        )
    mlflow.set_experiment(params.common.experiment)
    tags = {
        "stage": stage,
        "git_commit": git_commit(root),
        "params_hash": params.section_hash(stage),
        **dvc_input_hashes(root, stage),
    }
    with mlflow.start_run(run_name=stage, tags=tags):
        logged = {f"common.{k}": v for k, v in flatten(params.common.model_dump(mode="json")).items()}
        logged.update(
            {f"{stage}.{k}": v for k, v in flatten(getattr(params, stage).model_dump(mode="json")).items()}
        )
        mlflow.log_params({k: str(v)[:6000] for k, v in logged.items()})
        yield Tracker(mlflow)
