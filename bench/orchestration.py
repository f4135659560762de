#!/usr/bin/env python
"""Prefect's orchestration overhead per stage: the same stage run as plain Python and under Prefect.

For each stage (crawl clean quality dedup mix) the stage's entry point runs as a subprocess,
``python -m stages.<name> --params <file> --root <tmp>/<name>``, in a temporary copy of the project
(code, params, profiles) that holds a copy of the upstream data the stage reads (data/<upstream>
from this checkout; read only). Three variants, interleaved, each repeated --repeats times:

  sync       common.task_runner=sync: plain Python, Prefect is not imported
  server     common.task_runner=threads, PREFECT_API_URL pointing at one local Prefect server
             (pipeline.cli.prefect_server), as `lineage run` does
  no server  common.task_runner=threads, PREFECT_API_URL unset: Prefect starts a temporary
             server inside every stage process

By default each upstream shard is cut to its first 100 documents (--rows-per-shard; 0 copies them
whole): the stages map over the same shards, so Prefect runs the same tasks, in about 5 minutes
instead of 8 on 2 cores. Params: params.yaml with profiles/tiny.yaml merged over it (a small crawl), task_runner set per
variant, the MLflow store a sqlite file in the temporary folder. Reported per stage (median over
repeats): process wall time per variant, its difference from sync (the whole-process
orchestration overhead: import, flow and task bookkeeping, API calls), and the stage's own
perf.flow_overhead_s from its metrics.json. Goal: with a server, at most 2 s per stage.
Results: a table on stdout and bench/out/orchestration.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import machine, table, write_result  # noqa: E402 - after the path set-up above

STAGES = ["crawl", "clean", "quality", "dedup", "mix"]
VARIANTS = ["sync", "server", "no server"]
CODE = ["pipeline", "stages", "profiles", "params.yaml", "dvc.yaml", "pyproject.toml"]
GOAL_S = 2.0


class Failed(Exception):
    pass


def upstreams(root: Path) -> dict[str, list[str]]:
    """Stage -> the data/<stage> folders it depends on, from dvc.yaml."""
    import yaml

    stages = (yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages", {})
    out: dict[str, list[str]] = {}
    for name, spec in stages.items():
        deps = [d if isinstance(d, str) else next(iter(d)) for d in spec.get("deps", [])]
        out[name] = sorted({d.split("/")[1] for d in deps if d.startswith("data/") and d.count("/") >= 1})
    return out


def write_params(root: Path, tmp: Path, tiny: bool) -> dict[str, Path]:
    import yaml

    from pipeline.config import deep_merge, parse_params

    base = yaml.safe_load((root / "params.yaml").read_text()) or {}
    if tiny:
        base = deep_merge(base, yaml.safe_load((root / "profiles" / "tiny.yaml").read_text()) or {})
    files = {}
    for variant in VARIANTS:
        data = deep_merge(
            base,
            {
                "common": {
                    "task_runner": "sync" if variant == "sync" else "threads",
                    "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
                }
            },
        )
        path = tmp / f"params-{variant.replace(' ', '-')}.yaml"
        parse_params(data, str(path))  # fail here, not in every subprocess
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        files[variant] = path
    return files


def trim_shards(folder: Path, rows: int) -> None:
    """Keep the first ``rows`` documents of every shard (the number of shards, i.e. of mapped tasks,
    stays the same)."""
    import pyarrow.parquet as pq

    for p in folder.rglob("*.parquet"):
        if p.parent.name in ("docs", "dropped", "train", "val"):
            table = pq.read_table(p)
            if table.num_rows > rows:
                pq.write_table(table.slice(0, rows), p, compression="zstd")


def make_root(root: Path, tmp: Path, stage: str, ups: list[str], rows: int) -> Path:
    sroot = tmp / stage
    sroot.mkdir()
    for name in CODE:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, sroot / name)
        elif src.is_file():
            shutil.copy2(src, sroot / name)
    for up in ups:
        shutil.copytree(root / "data" / up, sroot / "data" / up)
        if rows:
            trim_shards(sroot / "data" / up, rows)
    return sroot


def base_env() -> dict[str, str]:
    from pipeline.orchestration import QUIET_ENV

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    env.update({k: os.environ.get(k, v) for k, v in QUIET_ENV.items()})
    env.pop("PYTHONPATH", None)  # the stage's own copy of the code, found from its cwd
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_once(
    stage: str, sroot: Path, params: Path, env: dict[str, str], log: Path, timeout: float
) -> dict[str, Any]:
    metrics_file = sroot / "data" / stage / "metrics.json"
    if metrics_file.exists():
        metrics_file.unlink()
    cmd = [sys.executable, "-m", f"stages.{stage}", "--params", str(params), "--root", str(sroot)]
    t0 = time.perf_counter()
    with log.open("w") as fh:
        try:
            rc = subprocess.run(
                cmd, cwd=sroot, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            rc = -1
    wall = time.perf_counter() - t0
    if rc != 0 or not metrics_file.is_file():
        tail = "\n    ".join(log.read_text(errors="replace").strip().splitlines()[-8:])
        raise Failed(f"{stage}: exit {rc} after {wall:.1f}s (log {log}):\n    {tail}")
    perf = json.loads(metrics_file.read_text()).get("perf", {})
    return {"process_s": wall, "wall_s": perf.get("wall_s"), "flow_overhead_s": perf.get("flow_overhead_s")}


def median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=ROOT, help="project root holding data/ and params.yaml")
    ap.add_argument("--stages", nargs="+", default=STAGES, choices=STAGES)
    ap.add_argument(
        "--repeats", type=int, default=2, help="runs per stage and variant; the median is reported"
    )
    ap.add_argument(
        "--rows-per-shard", type=int, default=100,
        help="keep only the first N documents of each upstream shard: the same shards, so the same mapped "
        "tasks, with a shorter body (default 100, about 5 min in all; 0 = full copies, about 8 min on 2 cores)",
    )  # fmt: skip
    ap.add_argument("--no-tiny", dest="tiny", action="store_false", help="do not merge profiles/tiny.yaml")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per stage run")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, outputs)")
    ap.add_argument("--out", type=Path, default=OUT / "orchestration.json")
    args = ap.parse_args(argv)
    root = args.root.resolve()

    ups = upstreams(root)
    missing = sorted({u for s in args.stages for u in ups.get(s, []) if not (root / "data" / u).is_dir()})
    if missing:
        print(
            f"error: {', '.join(f'data/{u}' for u in missing)} missing; run `dvc repro` (or `make run`) first",
            file=sys.stderr,
        )
        return 1

    from pipeline.orchestration import prefect_server

    os.environ.pop("PREFECT_API_URL", None)  # prefect_server would reuse it instead of starting one
    tmp = Path(tempfile.mkdtemp(prefix="bench-orchestration-"))
    t_start = time.perf_counter()
    results: dict[str, Any] = {
        "machine": machine(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "repeats": args.repeats,
        "statistic": "median over repeats",
        "tiny_profile": args.tiny,
        "rows_per_shard": args.rows_per_shard or None,
        "goal_server_overhead_s": GOAL_S,
        "runs": [],
        "errors": [],
    }
    try:
        params = write_params(root, tmp, args.tiny)
        roots = {s: make_root(root, tmp, s, ups.get(s, []), args.rows_per_shard) for s in args.stages}
        logs = tmp / "logs"
        logs.mkdir()
        env0 = base_env()
        t0 = time.perf_counter()
        with prefect_server(tmp) as url:
            results["server_start_s"] = round(time.perf_counter() - t0, 2)
            if url is None:
                print(
                    "error: the local Prefect server did not start (see .prefect/server.log)", file=sys.stderr
                )
                return 1
            envs = {
                "sync": {**env0, "PREFECT_HOME": str(tmp / ".prefect-sync")},
                "server": {**env0, "PREFECT_HOME": str(tmp / ".prefect"), "PREFECT_API_URL": url},
                "no server": {**env0, "PREFECT_HOME": str(tmp / ".prefect-ephemeral")},
            }
            # untimed warm-up: MLflow schema migration, Prefect's temporary-server database, first
            # flow registration on the server, bytecode compilation of the copied code
            warm = args.stages[-1]
            for variant in VARIANTS:
                try:
                    run_once(
                        warm,
                        roots[warm],
                        params[variant],
                        envs[variant],
                        logs / f"warmup-{variant}.log",
                        args.timeout,
                    )
                except Failed as e:
                    results["errors"].append(f"warm-up [{variant}] {e}")
                    print(f"error: warm-up [{variant}] {e}", file=sys.stderr)
                    return 1
            for rep in range(args.repeats):
                for si, stage in enumerate(args.stages):
                    k = (rep + si) % len(VARIANTS)
                    for variant in VARIANTS[k:] + VARIANTS[:k]:  # interleaved, rotating order
                        tag = f"{stage}-{variant.replace(' ', '-')}-{rep}"
                        try:
                            r = run_once(
                                stage,
                                roots[stage],
                                params[variant],
                                envs[variant],
                                logs / f"{tag}.log",
                                args.timeout,
                            )
                        except Failed as e:
                            results["errors"].append(f"[{variant}] {e}")
                            print(f"error: [{variant}] {e}", file=sys.stderr)
                            continue
                        results["runs"].append({"stage": stage, "variant": variant, "repeat": rep, **r})
                        print(
                            f"[{time.perf_counter() - t_start:5.0f}s] {stage:8s} {variant:10s} rep {rep}: "
                            f"{r['process_s']:.2f}s (flow overhead {r['flow_overhead_s']})",
                            file=sys.stderr,
                            flush=True,
                        )
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    results["summary"] = summarise(results["runs"], args.stages)
    results["total_s"] = round(time.perf_counter() - t_start, 1)
    results["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(report(results))
    write_result(args.out, results)
    return 1 if results["errors"] else 0


def summarise(runs: list[dict[str, Any]], stages: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for stage in stages:
        row: dict[str, Any] = {}
        for variant in VARIANTS:
            rs = [r for r in runs if r["stage"] == stage and r["variant"] == variant]
            row[variant] = {
                "n": len(rs),
                "process_s": median([r["process_s"] for r in rs]),
                "wall_s": median([r["wall_s"] for r in rs]),
                "flow_overhead_s": median([r["flow_overhead_s"] for r in rs]),
            }
        base = row["sync"]["process_s"]
        for variant in VARIANTS[1:]:
            p = row[variant]["process_s"]
            row[variant]["overhead_s"] = p - base if p is not None and base is not None else None
        ov = row["server"]["overhead_s"]
        row["server_within_goal"] = None if ov is None else ov <= GOAL_S
        out[stage] = row
    return out


def fmt(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def report(r: dict[str, Any]) -> str:
    rows = []
    totals = {v: 0.0 for v in VARIANTS}
    for stage, row in r["summary"].items():
        s, a, b = row["sync"], row["server"], row["no server"]
        for v in VARIANTS:
            totals[v] += row[v]["process_s"] or 0.0
        goal = {None: "-", True: "yes", False: "NO"}[row["server_within_goal"]]
        rows.append([
            stage, fmt(s["process_s"]),
            fmt(a["process_s"]), fmt(a["overhead_s"], True), fmt(a["flow_overhead_s"]),
            fmt(b["process_s"]), fmt(b["overhead_s"], True), fmt(b["flow_overhead_s"]),
            goal,
        ])  # fmt: skip
    if len(rows) > 1:
        rows.append([
            "all stages", fmt(totals["sync"]),
            fmt(totals["server"]), fmt(totals["server"] - totals["sync"], True), "",
            fmt(totals["no server"]), fmt(totals["no server"] - totals["sync"], True), "", "",
        ])  # fmt: skip
    head = (
        f"Prefect orchestration overhead per stage process (median of {r['repeats']}; seconds; "
        f"tiny profile: {r['tiny_profile']}; upstream rows per shard: {r['rows_per_shard'] or 'all'})\n"
        "sync = task_runner sync (no Prefect); server = threads + local Prefect server; "
        "no server = threads + Prefect's temporary per-process server\n"
        "delta = process wall - sync process wall; flow = perf.flow_overhead_s from the stage's metrics.json\n"
        f"goal: with a server, delta <= {GOAL_S:g} s per stage (local server started in {r.get('server_start_s', '-')} s, not counted)"
    )
    body = table(
        ["stage", "sync", "server", "delta", "flow", "no server", "delta", "flow", f"server <= {GOAL_S:g}s"],
        rows,
    )
    tail = (
        f"\ntotal benchmark time {r['total_s']}s; 1-min load average {r['loadavg_start'][0]} at start, "
        f"{r['loadavg_end'][0]} at end ({r['machine']['cpu_count']} CPUs)"
    )
    if r["errors"]:
        tail += "\nerrors:\n  " + "\n  ".join(r["errors"])
    return f"{head}\n{body}{tail}"


if __name__ == "__main__":
    sys.exit(main())
