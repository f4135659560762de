"""What every stage entry point shares: params in, atomic output folder, flow, tracking, metrics out."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import Params, load_params
from pipeline.errors import LineageError
from pipeline.io import atomic_dir, write_json
from pipeline.orchestration import Orchestrator, setup_env


@dataclass
class StageContext:
    stage: str
    params: Params
    root: Path
    out: Path  # the temporary folder that becomes data/<stage>/ on success
    orch: Orchestrator
    tracker: Any  # pipeline.tracking.Tracker; None on non-zero torchrun ranks

    def input(self, stage: str, *parts: str) -> Path:
        path = self.root / "data" / stage
        if not path.is_dir():
            raise LineageError(f"{path}: missing; run `dvc repro {stage}` first")
        return path.joinpath(*parts)


def flatten_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_metrics(v, key + "/"))
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def run_stage(
    stage: str, body: Callable[[StageContext], dict[str, Any]], root: Path, params: Params
) -> dict[str, Any]:
    """Run one stage in ``root``; returns its metrics. Raises LineageError on bad input."""
    from pipeline.tracking import stage_run

    setup_env(params.common)
    orch = Orchestrator(params.common)
    t0 = time.perf_counter()
    with atomic_dir(root / "data" / stage) as out, stage_run(stage, params, root) as tracker:
        ctx = StageContext(stage, params, root, out, orch, tracker)
        metrics = orch.run(stage, lambda: body(ctx))
        metrics.setdefault("perf", {})
        metrics["perf"]["wall_s"] = round(time.perf_counter() - t0, 3)
        metrics["perf"]["flow_overhead_s"] = round(orch.overhead_s, 3)
        write_json(out / "metrics.json", metrics)
        tracker.log_metrics(flatten_metrics(metrics))
    return metrics


def run_worker(stage: str, body: Callable[[StageContext], dict[str, Any]], argv: list[str]) -> int:
    """A non-zero torchrun rank: the same body, no flow, no tracking, outputs discarded."""
    import tempfile

    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--root", default=".")
    args = ap.parse_args(argv)
    root = Path(args.root).resolve()
    try:
        params = load_params(root / args.params)
        setup_env(params.common)
        with tempfile.TemporaryDirectory() as out:
            body(
                StageContext(
                    stage,
                    params,
                    root,
                    Path(out),
                    Orchestrator(params.common.model_copy(update={"task_runner": "sync"})),
                    None,
                )
            )
    except LineageError as e:
        print(f"error: {stage}: {e}", file=sys.stderr)
        return 1
    return 0


def make_dirs(root: Path, *names: str) -> None:
    """Create the output folders DVC tracks, so an empty result is an empty folder, not a missing one."""
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)


def main(stage: str, body: Callable[[StageContext], dict[str, Any]], argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=f"python -m stages.{stage}", description=f"Run the {stage} stage.")
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--root", default=".", help="project root holding data/ (default: .)")
    args = ap.parse_args(argv)
    root = Path(args.root).resolve()
    try:
        params = load_params(root / args.params if not Path(args.params).is_absolute() else args.params)
        metrics = run_stage(stage, body, root, params)
    except LineageError as e:
        print(f"error: {stage}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"error: {stage}: interrupted; nothing was written", file=sys.stderr)
        return 130
    summary = {k: v for k, v in flatten_metrics(metrics).items() if not k.startswith("perf/")}
    shown = ", ".join(f"{k}={v:g}" for k, v in list(summary.items())[:8])
    print(f"{stage}: done in {metrics['perf']['wall_s']:.1f}s; {shown}")
    return 0
