"""`lineage seeds N`: the current params (or a profile) at N seeds, each a DVC experiment, grouped
under one MLflow parent run; the group's headline metrics go to metrics/seeds/<group>.json (mean,
standard deviation, 95% t-interval) and a Markdown page beside it. `lineage exp --groups A B` then
compares two groups with Welch's t-test (pipeline/stats.py holds the statistics)."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pipeline import stats
from pipeline.config import flatten, load_params
from pipeline.errors import LineageError
from pipeline.io import write_json

Runner = Callable[[list[str], dict[str, str]], int]


def _call(cmd: list[str], env: dict[str, str]) -> int:
    return subprocess.call(cmd, env=env)


def headline(root: Path) -> dict[str, float]:
    """The workspace's headline metrics (metrics/<stage>.json), under their short names."""
    out: dict[str, float] = {}
    for path in sorted((root / "metrics").glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for k, v in data.items() if isinstance(data, dict) else []:
            if isinstance(v, int | float) and not isinstance(v, bool):
                out.setdefault(k, float(v))
    return out


def member_sets(base: dict[str, Any], seed: int) -> dict[str, int]:
    """The seed params of one member: `common.seed` = ``seed``, each stage seed that is set moved by
    the same offset (a stage seed of null follows common.seed already)."""
    offset = seed - int(base["common.seed"])
    sets = {"common.seed": seed}
    for key, value in base.items():
        if key != "common.seed" and value is not None:
            sets[key] = int(value) + offset
    return sets


def plan(
    root: Path, n: int, group: str, profile: str | None, seeds: list[int] | None
) -> list[dict[str, Any]]:
    """The members of a group: seed, experiment name and the `dvc exp run` command of each."""
    from pipeline.cli import profile_overrides

    params = load_params(root / "params.yaml").model_dump(mode="json")
    profile_args = profile_overrides(root, profile) if profile else []
    over = {a.lstrip("+").split("=", 1)[0]: a.split("=", 1)[1] for a in profile_args[1::2]}
    base = stats.seed_keys(params)
    for key in base:
        if key in over:
            base[key] = None if over[key] == "null" else int(over[key])
    # the seeds are ours to set: a profile's own seed settings give the base only
    kept: list[str] = []
    for flag, arg in zip(profile_args[::2], profile_args[1::2], strict=True):
        if arg.lstrip("+").split("=", 1)[0] not in base:
            kept += [flag, arg]
    start = int(base["common.seed"])
    chosen = seeds or [start + i for i in range(n)]
    if len(set(chosen)) != len(chosen):
        raise LineageError(f"--seeds: {chosen} repeats a seed")
    present = flatten(yaml.safe_load((root / "params.yaml").read_text()) or {})
    members = []
    for seed in chosen:
        sets = member_sets(base, seed)
        args = [a for k, v in sets.items() for a in ("-S", f"{'' if k in present else '+'}{k}={v}")]
        name = f"{group}-seed{seed}"
        members.append(
            {
                "seed": seed,
                "experiment": name,
                "sets": sets,
                "cmd": ["dvc", "exp", "run", "--name", name, *kept, *args],
            }
        )
    return members


class MlflowGroup:
    """The group's MLflow parent run; each member's pipeline run is nested under it."""

    def __init__(self, root: Path, group: str, command: str):
        from mlflow import MlflowClient

        from pipeline.tracking import setup_mlflow

        self.root, self.params = root, load_params(root / "params.yaml")
        exp_id = setup_mlflow(self.params, root)
        self.client = MlflowClient()
        tags = {"lineage.seed_group": group, "lineage.command": command}
        self.run_id = self.client.create_run(exp_id, run_name=f"seeds {group}", tags=tags).info.run_id

    def start_member(self, member: dict[str, Any], command: str) -> str:
        from pipeline.tracking import start_pipeline_run

        run = start_pipeline_run(
            self.params, self.root, command, {k: str(v) for k, v in member["sets"].items()}
        )
        self.client.set_tag(run, "mlflow.parentRunId", self.run_id)  # nested under the group
        self.client.set_tag(
            run, "lineage.seed_group", self.client.get_run(self.run_id).data.tags["lineage.seed_group"]
        )
        self.client.set_tag(run, "lineage.seed", str(member["seed"]))
        return run

    def end_member(self, run: str, ok: bool) -> None:
        from pipeline.tracking import end_pipeline_run

        end_pipeline_run(self.params, self.root, run, ok)

    def end(self, group: dict[str, Any] | None, files: list[Path], ok: bool) -> None:
        if group is not None:
            for name, s in group["stats"].items():
                for what in ("mean", "std", "low", "high"):
                    if s.get(what) is not None:
                        self.client.log_metric(self.run_id, f"{name}/{what}", float(s[what]))
            for f in files:
                self.client.log_artifact(self.run_id, str(f))
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


def run_group(
    root: Path,
    n: int,
    group: str,
    profile: str | None = None,
    seeds: list[int] | None = None,
    command: str = "",
    runner: Runner = _call,
    tracker: Any = None,
    restore: Callable[[Path, dict[str, str]], bool] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run every member as a DVC experiment, read its headline metrics from the workspace, restore
    the workspace, then write the group. ``runner``, ``tracker`` and ``restore`` are the outside
    world (dvc, MLflow, git), given so the bookkeeping can be tested without them."""
    from pipeline.cli import pipeline_env, restore_workspace
    from pipeline.tracking import PARENT_ENV

    members = plan(root, n, group, profile, seeds)
    env = dict(env if env is not None else pipeline_env(root, None))
    restore = restore or restore_workspace
    done: list[dict[str, Any]] = []
    keys: set[str] = set()
    failed: list[str] = []
    try:
        for m in members:
            runner(["dvc", "exp", "remove", "--quiet", m["experiment"]], {**env, "DVC_NO_ANALYTICS": "1"})
            run_id = tracker.start_member(m, command) if tracker else None
            member_env = {**env, **({PARENT_ENV: run_id} if run_id else {})}
            print(f"lineage: seeds {group}: {' '.join(m['cmd'])}", flush=True)
            rc = runner(m["cmd"], member_env)
            if tracker:
                tracker.end_member(run_id, rc == 0)
            if rc != 0:
                failed.append(f"{m['experiment']} (exit {rc})")
                continue
            keys.add(stats.params_key(load_params(root / "params.yaml").model_dump(mode="json")))
            done.append(
                {
                    "seed": m["seed"],
                    "experiment": m["experiment"],
                    "sets": m["sets"],
                    "metrics": headline(root),
                }
            )
    finally:
        restored, _ = restore(root, env)
    if not done:
        raise LineageError(f"seeds {group}: no member finished ({', '.join(failed)})")
    from pipeline.tracking import git_commit, git_dirty

    result = {
        "group": group,
        "command": command or f"lineage seeds {n} --group {group}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "commit": git_commit(root),
        "dirty": git_dirty(root),
        "profile": profile,
        "params_key": sorted(keys)[0] if len(keys) == 1 else None,
        "failed": failed,
        "members": done,
        "stats": stats.group_stats(done),
    }
    folder = root / stats.SEEDS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / f"{group}.json", result)
    md = folder / f"{group}.md"
    tmp = md.with_suffix(".md.tmp")
    tmp.write_text(stats.group_markdown(result))
    os.replace(tmp, md)
    if tracker:
        tracker.end(result, [folder / f"{group}.json", md], not failed)
    if not restored:
        print(
            "lineage: the workspace could not be restored to the last commit (`lineage restore`)",
            file=sys.stderr,
        )
    return result


# -------------------------------------------------------------------------------------------- commands
def cmd_seeds(args: argparse.Namespace) -> int:
    root = Path.cwd()
    if not (root / "dvc.yaml").is_file():
        raise LineageError(f"{root}: no dvc.yaml here; run lineage from the project root")
    if args.n < 2 and not args.seeds:
        raise LineageError("N: a seed group needs at least 2 runs for a spread")
    from pipeline.cli import _git

    if _git(root, "status", "--porcelain", "--", "params.yaml").stdout.strip():
        raise LineageError(
            "params.yaml has uncommitted changes: commit them first (each seed is a DVC experiment "
            "on the last commit, and the workspace is restored to it afterwards)"
        )
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    group = args.group or args.profile or "default"
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", group):
        raise LineageError(f"--group {group!r}: use letters, digits, '.', '_' and '-' (it names a file)")
    command = (
        " ".join(["lineage", *sys.argv[1:]]) if sys.argv[1:2] == ["seeds"] else f"lineage seeds {args.n}"
    )
    from pipeline.cli import pipeline_env
    from pipeline.orchestration import prefect_server
    from pipeline.tracking import PROFILE_ENV

    env = pipeline_env(root, None)
    if args.profile:  # every member's MLflow run is tagged with the profile, as `lineage run --profile`
        env[PROFILE_ENV] = os.environ[PROFILE_ENV] = args.profile
    tracker = MlflowGroup(root, group, command)
    n = len(seeds) if seeds else args.n
    with prefect_server(root) as url:  # one Prefect server for every run of the group
        if url:
            env["PREFECT_API_URL"] = url
        try:
            result = run_group(root, n, group, args.profile, seeds, command, tracker=tracker, env=env)
        except KeyboardInterrupt:
            tracker.end(None, [], False)
            print(
                "error: lineage: seeds: interrupted; the workspace is back at the last commit",
                file=sys.stderr,
            )
            return 130
        except BaseException:
            tracker.end(None, [], False)
            raise
    print(stats.group_markdown(result))
    print(
        f"lineage: seed group written to {stats.SEEDS_DIR / (group + '.json')} and .md; commit them. "
        "`dvc repro report` shows the spread in the report card; `lineage exp --groups A B` compares groups."
    )
    return 0 if not result["failed"] else 1


def cmd_compare(root: Path, a: str, b: str, as_json: bool = False) -> str:
    """The comparison `lineage exp --groups A B` prints."""
    found = stats.groups(root)
    for name in (a, b):
        if name not in found:
            raise LineageError(
                f"seed group {name!r}: {stats.SEEDS_DIR / (name + '.json')} not found "
                f"(groups: {sorted(found) or 'none; `lineage seeds N` makes one'})"
            )
    rows = stats.compare(found[a], found[b])
    if as_json:
        return json.dumps(rows, indent=2) + "\n"
    sig = sum(r["significant"] for r in rows)
    return (
        stats.comparison_table(found[a], found[b], rows)
        + f"\n{sig} of {len(rows)} headline metrics differ at p < {stats.ALPHA:g} (Welch's t-test; difference = "
        f"{b} - {a}; ± is the half-width of the 95% t-interval of the mean)\n"
    )


def add_parser(sub: Any, formatter: Any) -> None:
    sp = sub.add_parser(
        "seeds",
        help="run the current params (or a profile) at N seeds as DVC experiments, one MLflow parent; "
        "writes each headline metric's mean, sd and 95%% interval to metrics/seeds/<group>.json",
        formatter_class=formatter,
    )
    sp.add_argument("n", type=int, help="number of seeds (common.seed, common.seed+1, ...)")
    sp.add_argument("--group", help="the group's name (default: the profile's name, else `default`)")
    sp.add_argument("--profile", help="apply profiles/NAME.yaml to every run (default: params.yaml as it is)")
    sp.add_argument("--seeds", help="comma-separated seeds instead of common.seed + 0..N-1, e.g. 1337,2,3")
    sp.set_defaults(fn=cmd_seeds)
