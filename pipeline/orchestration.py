"""Prefect around the stages: each stage is a flow, work over shards is mapped tasks.

The task runner comes from ``common.task_runner``: threads on one machine (the data steps are
CPU-bound Python, so more than one thread only adds GIL contention: use ``processes`` to use
several cores), Dask or Ray to go past one machine, or ``sync`` (plain Python, no Prefect) as a
debugging aid and as the baseline that ``bench/orchestration.py`` measures the overhead against.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.config import CommonConfig
from pipeline.errors import LineageError

QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "TOKENIZERS_PARALLELISM": "false",
    "PREFECT_LOGGING_LOGGERS_PREFECT_LEVEL": "WARNING",
    "PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL": "INFO",
    "PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL": "WARNING",
}


def setup_env(common: CommonConfig) -> None:
    """Telemetry off, offline hub access when asked; must run before prefect/mlflow/datasets import."""
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    if common.offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def make_task_runner(common: CommonConfig) -> Any:
    if common.task_runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=common.workers)
    if common.task_runner == "processes":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=common.workers)
    if common.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if common.dask_address:
            return DaskTaskRunner(address=common.dask_address)
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": common.workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            }
        )
    if common.task_runner == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError:
            raise LineageError(
                "common.task_runner: 'ray' needs the prefect-ray package (pip install prefect-ray)"
            ) from None
        return RayTaskRunner(address=common.ray_address) if common.ray_address else RayTaskRunner()
    raise LineageError(f"common.task_runner: no runner for {common.task_runner!r}")


class _Refused:
    """A task's LineageError carried back as a value, so it is reported once and without a traceback."""

    def __init__(self, message: str):
        self.message = message


def _guarded_call(item: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    try:
        return fn(item, *args)
    except LineageError as e:
        return _Refused(str(e))


class Orchestrator:
    """Runs one stage body as a flow and maps functions over items as tasks."""

    def __init__(self, common: CommonConfig):
        self.common = common
        self.use_prefect = common.task_runner != "sync"
        self.body_s = 0.0
        self.flow_s = 0.0
        if self.use_prefect:
            import prefect  # noqa: F401 - imported with the stage, like mlflow, not inside the timed flow

    def map(
        self, fn: Callable[..., Any], items: Sequence[Any], *args: Any, name: str | None = None
    ) -> list[Any]:
        """``[fn(item, *args) for item in items]``, as Prefect tasks on the configured runner."""
        if not items:
            return []
        if not self.use_prefect:
            return [fn(item, *args) for item in items]
        from prefect import task, unmapped
        from prefect.cache_policies import NO_CACHE

        t = task(_guarded_call, name=name or fn.__name__, cache_policy=NO_CACHE, retries=0)
        results = [f.result() for f in t.map(list(items), unmapped(fn), unmapped(args))]
        for r in results:
            if isinstance(r, _Refused):
                raise LineageError(r.message)
        return results

    def run(self, name: str, body: Callable[[], Any]) -> Any:
        """Run ``body`` as the flow ``name``; records flow and body wall time for the overhead metric."""

        refused: list[LineageError] = []

        def timed_body() -> Any:
            t0 = time.perf_counter()
            try:
                return body()
            except LineageError as e:
                if not self.use_prefect:
                    raise
                # fail the flow run with the one-line reason instead of a logged traceback
                from prefect.states import Failed

                refused.append(e)
                return Failed(message=str(e))
            finally:
                self.body_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        try:
            if not self.use_prefect:
                return timed_body()
            from prefect import flow

            f = flow(
                timed_body, name=name, task_runner=make_task_runner(self.common), validate_parameters=False
            )
            state = f(return_state=True)
            if refused:
                raise refused[0]
            return state.result()
        finally:
            self.flow_s = time.perf_counter() - t0

    @property
    def overhead_s(self) -> float:
        return max(0.0, self.flow_s - self.body_s)
