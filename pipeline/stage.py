"""What every stage entry point shares: params in, atomic output folder, flow, tracking, metrics out."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import Params, load_params
from pipeline.errors import LineageError
from pipeline.io import atomic_dir, disk_full, remove_stale_temp_dirs, stage_lock, write_json
from pipeline.orchestration import Orchestrator, prefect_api, setup_env
from pipeline.redact import redact


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


def _pattern(glob: str) -> re.Pattern[str]:
    """A metric-key glob as a regex whose groups capture what each ``*`` matched (one path part)."""
    return re.compile("^" + "([^/]*)".join(re.escape(part) for part in glob.split("*")) + "$")


def headline_metrics(metrics: dict[str, Any], keys: Sequence[str]) -> dict[str, float]:
    """The few numbers of a stage worth comparing across experiments, under short names unique
    across stages (DVC then heads each column with the name alone, not the file path too).

    Each entry is ``name=pattern`` or just ``pattern``: a glob over the flattened metric keys (``/``
    between levels) whose ``*`` parts fill the ``*`` of the name, e.g. ``bpb/*=val/sources/*/bpb``.
    """
    flat = flatten_metrics(metrics)
    out: dict[str, float] = {}
    for entry in keys:
        name, _, glob = entry.rpartition("=")
        name = name or glob
        rx = _pattern(glob)
        for k, v in flat.items():
            m = rx.match(k)
            if m:
                label = name
                for part in m.groups():
                    label = label.replace("*", part, 1)
                out.setdefault(label, round(v, 4) if abs(v) < 1e6 else v)
    return out


def summary_keys(flat: dict[str, float], keys: Sequence[str]) -> set[str]:
    """The flattened metric keys a stage's run shows as MLflow metrics: those its headline globs
    pick and perf/; the rest stays in the metrics.json artifact. A stage that declares no headline
    shows them all."""
    if not keys:
        return set(flat)
    patterns = [_pattern(entry.rpartition("=")[2]) for entry in keys]
    return {k for k in flat if k.startswith("perf/") or any(rx.match(k) for rx in patterns)}


def run_stage(
    stage: str,
    body: Callable[[StageContext], dict[str, Any]],
    root: Path,
    params: Params,
    headline: Sequence[str] = (),
) -> dict[str, Any]:
    """Run one stage in ``root``; returns its metrics. Raises LineageError on bad input.

    Writes data/<stage>/ atomically (with the detailed metrics.json) and metrics/<stage>.json (the
    headline numbers DVC compares across experiments). The MLflow run ends FAILED unless all of
    that succeeded; models are registered only then.
    """
    from pipeline.tracking import stage_run

    setup_env(params.common, root)
    data = root / "data"
    for stale in remove_stale_temp_dirs(data):
        print(f"{stage}: removed {stale.relative_to(root)}, left by a killed run", file=sys.stderr)
    with stage_lock(data, stage), prefect_api(root, params.common) as api:
        orch = Orchestrator(params.common, use_prefect=api is not None)
        t0 = time.perf_counter()
        with stage_run(stage, params, root) as tracker:
            with atomic_dir(data / stage) as out:
                ctx = StageContext(stage, params, root, out, orch, tracker)
                metrics = orch.run(
                    stage,
                    lambda: body(ctx),
                    params,
                    tags=[f"mlflow:{tracker.run_id}"] if tracker.run_id else [],
                    on_flow_run=lambda fid: tracker.link_flow_run(fid, api),
                )
                metrics.setdefault("perf", {})
                metrics["perf"]["wall_s"] = round(time.perf_counter() - t0, 3)
                metrics["perf"]["flow_overhead_s"] = round(orch.overhead_s, 3)
                write_json(out / "metrics.json", metrics)
            try:
                write_json(root / "metrics" / f"{stage}.json", headline_metrics(metrics, headline))
            except OSError as e:
                raise LineageError(f"{root / 'metrics'}: cannot write {stage}.json ({e})") from None
            flat = flatten_metrics(metrics)
            tracker.log_summary(flat, summary_keys(flat, headline), metrics)
            tracker.commit()  # deferred model registrations: only for a stage that succeeded
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
        setup_env(params.common, root)
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


def launch(
    stage: str,
    body: Callable[[StageContext], dict[str, Any]],
    headline: Sequence[str] = (),
    argv: list[str] | None = None,
) -> int:
    """The entry point of a stage that can train on several devices: with ``<stage>.nproc_per_node``
    above 1 it relaunches itself under torchrun (DDP); rank 0 then runs as :func:`main` does, the
    other ranks with no flow, no tracking and their outputs discarded."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "RANK" not in os.environ:
        params_path = Path(args[args.index("--params") + 1] if "--params" in args else "params.yaml")
        root = Path(args[args.index("--root") + 1] if "--root" in args else ".")
        try:
            nproc = getattr(
                load_params(params_path if params_path.is_absolute() else root / params_path), stage
            ).nproc_per_node
        except LineageError as e:
            print(f"error: {stage}: {e}", file=sys.stderr)
            return 1
        if nproc > 1:
            import subprocess

            torchrun = Path(sys.executable).with_name("torchrun")
            cmd = [str(torchrun), "--standalone", f"--nproc_per_node={nproc}", "-m", f"stages.{stage}", *args]
            return subprocess.call(cmd)
    if int(os.environ.get("RANK", 0)) != 0:
        return run_worker(stage, body, args)
    return main(stage, body, args, headline=headline)


def make_dirs(root: Path, *names: str) -> None:
    """Create the output folders DVC tracks, so an empty result is an empty folder, not a missing one."""
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)


def one_line(exc: BaseException) -> str:
    """An unexpected exception as one line: its type, message and where it was raised."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}{': ' + msg if msg else ''}{where}"


def _interrupt_watchdog(stage: str, grace_s: float = 3.5) -> None:
    """Ctrl-C raises KeyboardInterrupt as usual, and also arms a timer: if cleanup or a thread that
    is not ours (a flow engine's, a logging worker's) keeps the process alive past ``grace_s``, it
    exits 130 anyway. Whatever was half-written is a temporary folder the next run removes."""
    import signal
    import threading

    said = threading.Event()

    def force() -> None:
        if not said.is_set():
            print(f"error: {stage}: interrupted; nothing was written", file=sys.stderr, flush=True)
        os._exit(130)

    def handler(_signum: int, _frame: Any) -> None:
        # One Ctrl-C is enough: a terminal sends SIGINT to the whole process group and DVC forwards
        # its own copy, so later ones are ignored rather than interrupting the cleanup.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        timer = threading.Timer(grace_s, force)
        timer.daemon = True
        timer.start()
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)
    _interrupt_watchdog.said = said  # type: ignore[attr-defined]


def _disk_full(stage: str, exc: BaseException) -> int:
    """A full disk, whichever writer met it (torch, safetensors, SQLite under MLflow): one line.
    The stage's temporary files and folders are already removed by then."""
    where = ""
    e: BaseException | None = exc
    while e is not None and not where:
        where = f" writing {e.filename}" if isinstance(e, OSError) and e.filename else ""
        e = e.__cause__ or e.__context__
    print(
        f"error: {stage}: the disk is full{where} ({type(exc).__name__}); nothing was written: "
        "free some space and rerun",
        file=sys.stderr,
    )
    return 1


def main(
    stage: str,
    body: Callable[[StageContext], dict[str, Any]],
    argv: list[str] | None = None,
    headline: Sequence[str] = (),
) -> int:
    """The stage's command line: one line on stderr and a non-zero exit for anything that goes wrong
    (LINEAGE_DEBUG=1 shows the traceback of an unexpected error)."""
    ap = argparse.ArgumentParser(prog=f"python -m stages.{stage}", description=f"Run the {stage} stage.")
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--root", default=".", help="project root holding data/ (default: .)")
    args = ap.parse_args(argv)
    root = Path(args.root).resolve()
    _interrupt_watchdog(stage)
    try:
        params = load_params(root / args.params if not Path(args.params).is_absolute() else args.params)
        metrics = run_stage(stage, body, root, params, headline)
    except LineageError as e:
        print(f"error: {stage}: {redact(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        _interrupt_watchdog.said.set()  # type: ignore[attr-defined]
        print(f"error: {stage}: interrupted; nothing was written", file=sys.stderr, flush=True)
        return 130
    except OSError as e:
        if disk_full(e):
            return _disk_full(stage, e)
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"error: {stage}: {where}{e.strerror or e} ({type(e).__name__})", file=sys.stderr)
        return 1
    except Exception as e:
        if disk_full(e):
            return _disk_full(stage, e)
        if os.environ.get("LINEAGE_DEBUG"):
            traceback.print_exc()
        print(
            f"error: {stage}: unexpected {redact(one_line(e))} (LINEAGE_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1
    summary = headline_metrics(metrics, headline) or {
        k: v for k, v in flatten_metrics(metrics).items() if not k.startswith("perf/")
    }
    shown = ", ".join(f"{k}={v:g}" for k, v in list(summary.items())[:8])
    print(f"{stage}: done in {metrics['perf']['wall_s']:.1f}s; {shown}")
    return 0
