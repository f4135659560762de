"""report: the report card of the pipeline run (data/report/report.md, report.html, plots/).

Reads only each stage's data/<stage>/metrics.json and declared plot CSVs (pipeline/report.py says
which), so it reruns whenever a stage's results change, and logs the page to its own MLflow run and
to the pipeline execution's parent run.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from pipeline.stage import StageContext, main


def body(ctx: StageContext) -> dict[str, Any]:
    from pipeline import report, tracking

    root = ctx.root
    stages = [s for s in tracking.pipeline_stages(root) if s != "report"]
    parent = _parent_run(ctx)
    origins = _origins(ctx, stages, parent)
    ran = [s for s, o in origins.items() if o == report.THIS_EXECUTION] if origins is not None else stages
    info = {
        "git commit": tracking.git_commit(root)[:12] + (" (dirty)" if tracking.git_dirty(root) else ""),
        "experiment": os.environ.get("DVC_EXP_NAME") or "workspace (no DVC experiment)",
        "profile": tracking.profile_name(root),
        "MLflow": f"{ctx.params.common.experiment}, parent run {parent or 'none'}",
        "this execution ran": ", ".join(ran) or "no stage before the report (outputs restored or reused)",
    }
    rep = report.build(
        root,
        ctx.out,
        stages,
        ctx.params.model_dump(mode="json"),
        info,
        tracking.changed_params(root),
        origins,
    )
    (ctx.out / "report.md").write_text(report.to_markdown(rep))
    (ctx.out / "report.html").write_text(report.to_html(rep, ctx.out))
    if ctx.tracker is not None:
        for name in ("report.html", "report.md"):
            ctx.tracker.log_artifact(ctx.out / name)
        if (ctx.out / "plots").is_dir():
            ctx.tracker.log_artifact(ctx.out / "plots")
        if parent:
            _log_to_parent(parent, ctx)
    ran = [s for s, wall, _, _ in rep.timings if s != "total" and not wall.startswith(report.NOT_RUN)]
    total = next(w for s, w, _, _ in rep.timings if s == "total")
    return {
        "stages_reported": len(ran),
        "stages_not_run": len([s for s in stages if s not in ran]),
        "plots": len(rep.figures),
        "pipeline_wall_s": float(total.rstrip("s")) if total[:1].isdigit() else 0.0,
    }


def _origins(ctx: StageContext, stages: list[str], parent: str | None) -> dict[str, str] | None:
    """Per stage, the execution that made the outputs in the workspace: this one (its MLflow run is
    a child of this parent run) or an earlier one (when it ran); None without tracking."""
    if ctx.tracker is None or not ctx.tracker.run_id or not parent:
        return None
    import time

    from mlflow import MlflowClient

    from pipeline import report, tracking

    client = MlflowClient()
    exp_id = client.get_run(ctx.tracker.run_id).info.experiment_id
    out: dict[str, str] = {}
    for stage in stages:
        if not (ctx.root / "data" / stage / "metrics.json").is_file():
            continue
        run_id = tracking.run_of_output(client, exp_id, ctx.root, stage)
        if run_id is None:
            out[stage] = "an earlier execution (no MLflow run found)"
            continue
        run = client.get_run(run_id)
        if run.data.tags.get("mlflow.parentRunId") == parent:
            out[stage] = report.THIS_EXECUTION
        else:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.info.start_time / 1000))
            out[stage] = f"an earlier execution ({when}, run {run_id[:8]})"
    return out


def _parent_run(ctx: StageContext) -> str | None:
    if ctx.tracker is None or not ctx.tracker.run_id:
        return None
    from mlflow import MlflowClient

    return MlflowClient().get_run(ctx.tracker.run_id).data.tags.get("mlflow.parentRunId")


def _log_to_parent(parent: str, ctx: StageContext) -> None:
    """The parent run carries the report too, and which stages this execution reused."""
    from mlflow import MlflowClient

    from pipeline.tracking import mark_reused

    client = MlflowClient()
    client.log_artifact(parent, str(ctx.out / "report.html"))
    client.log_artifact(parent, str(ctx.out / "report.md"))
    mark_reused(client, parent, ctx.root)


if __name__ == "__main__":
    sys.exit(main("report", body, headline=["plots", "pipeline_wall_s", "stages_reported"]))
