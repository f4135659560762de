"""`lineage`: the common cases around `dvc repro` — run a pipeline (one Prefect server and one MLflow
parent run for the whole execution), see where it stands (status, exp, report), open the dashboards
(ui: MLflow and Prefect), share its artifacts (push), and sample from or chat with a trained model."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import flatten, load_params
from pipeline.errors import LineageError
from pipeline.io import stale_temp_dirs
from pipeline.orchestration import QUIET_ENV, prefect_server, shared_server
from pipeline.tracking import (
    PARENT_ENV,
    PROFILE_ENV,
    end_pipeline_run,
    pipeline_stages,
    resolve_tracking_uri,
    start_pipeline_run,
)


def profile_overrides(root: Path, profile: str) -> list[str]:
    """`-S key=value` arguments for `dvc exp run` from profiles/<profile>.yaml."""
    path = root / "profiles" / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (root / "profiles").glob("*.yaml"))
        raise LineageError(f"profile {profile!r}: {path} not found (profiles: {known})")
    data = yaml.safe_load(path.read_text()) or {}
    present = flatten(yaml.safe_load((root / "params.yaml").read_text()) or {})
    args = []
    for key, value in flatten(data).items():
        text = (
            "null"
            if value is None
            else json.dumps(value)
            if isinstance(value, list | dict | bool)
            else str(value)
        )
        plus = "" if key in present else "+"  # Hydra's syntax for a key params.yaml does not have yet
        args += ["-S", f"{plus}{key}={text}"]
    return args


VERBOSE_ENV = {
    "LINEAGE_VERBOSE": "1",
    "PREFECT_LOGGING_LOGGERS_PREFECT_LEVEL": "INFO",
    "PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL": "INFO",
    "PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL": "INFO",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "0",
    "TRANSFORMERS_VERBOSITY": "info",
    "HF_HUB_DISABLE_PROGRESS_BARS": "0",
}


def pipeline_env(root: Path, api_url: str | None, verbose: bool = False) -> dict[str, str]:
    env = {**os.environ, **{k: os.environ.get(k, v) for k, v in QUIET_ENV.items()}}
    if verbose:
        env.update(VERBOSE_ENV)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)


LAST_RUN = Path(".dvc") / "tmp" / "lineage" / "last-run"  # this machine's own last results (git-ignored)
STATE = ("params.yaml", "dvc.lock", "metrics")
RESTORED = "params.yaml, dvc.lock, metrics/ and data/ are back at the last commit"


def save_last_run(root: Path) -> None:
    """Keep params.yaml, dvc.lock and metrics/ of a finished run: the outputs they describe are in
    this machine's DVC cache, so `lineage restore` can always come back to them."""
    import shutil

    dest = root / LAST_RUN
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        for name in STATE:
            src = root / name
            if src.is_dir():
                shutil.copytree(src, tmp / name)
            elif src.is_file():
                shutil.copy2(src, tmp / name)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    except OSError as e:  # the run itself succeeded: say so and go on
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"lineage: could not keep a copy of this run's dvc.lock in {dest} ({e})", file=sys.stderr)


def uncached_outputs(root: Path, lock_text: str | None) -> list[str] | None:
    """The outputs a dvc.lock describes whose content is not in this machine's DVC cache (a folder's
    manifest and every file in it); None when the lock cannot be read."""
    from dvc.repo import Repo

    try:
        lock = yaml.safe_load(lock_text or "") or {}
        cache = Repo(str(root)).cache.local
    except Exception:
        return None
    missing = []
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            md5 = out.get("md5")
            if not md5:
                continue
            path = Path(cache.oid_to_path(md5))
            present = path.is_file()
            if present and md5.endswith(".dir"):
                try:
                    files = json.loads(path.read_text())
                    present = all(Path(cache.oid_to_path(f["md5"])).is_file() for f in files)
                except (OSError, ValueError, KeyError, TypeError):
                    present = False
            if not present:
                missing.append(out.get("path", md5))
    return missing


def _checkout(root: Path, env: dict[str, str]) -> bool:
    """data/ as dvc.lock describes it, replacing whatever a stage run outside DVC left there."""
    return subprocess.call(["dvc", "checkout", "--force", "--quiet"], cwd=root, env=env) == 0


def restore_workspace(root: Path, env: dict[str, str]) -> tuple[bool, str]:
    """Put params.yaml, dvc.lock, metrics/ and data/ back to the last commit's state (an experiment
    changes all four in the workspace). When the commit's outputs were made elsewhere and are not in
    this machine's DVC cache, this machine's own last run of the committed params.yaml is restored
    instead; failing that nothing is touched. Returns (done, a line saying what happened)."""
    head_lock = _git(root, "show", "HEAD:dvc.lock")
    missing = uncached_outputs(root, head_lock.stdout) if head_lock.returncode == 0 else []
    if missing is None:
        return False, "the last commit's dvc.lock cannot be read; nothing was changed"
    if not missing:
        keep = ":(exclude)metrics/seeds"  # seed groups (`lineage seeds`) are results of their own
        tracked = _git(root, "ls-files", "--", *STATE, keep).stdout.split()  # the files, not the folders
        if tracked and _git(root, "checkout", "HEAD", "--", *tracked).returncode != 0:
            return False, "git could not check out params.yaml, dvc.lock and metrics/ of the last commit"
        untracked = _git(
            root, "ls-files", "--others", "--exclude-standard", "metrics", "dvc.lock", keep
        ).stdout.split()
        for f in untracked:
            (root / f).unlink(missing_ok=True)
        if not _checkout(root, env):
            return (
                False,
                "params.yaml, dvc.lock and metrics/ are back at the last commit; `dvc checkout -f` failed",
            )
        return True, RESTORED
    shown = ", ".join(missing[:2]) + (f" and {len(missing) - 2} more" if len(missing) > 2 else "")
    own = root / LAST_RUN
    head_params = _git(root, "show", "HEAD:params.yaml").stdout
    own_params = (own / "params.yaml").read_text() if (own / "params.yaml").is_file() else None
    own_lock = (own / "dvc.lock").read_text() if (own / "dvc.lock").is_file() else None
    if (
        own_params is not None
        and _same_yaml(own_params, head_params)
        and uncached_outputs(root, own_lock) == []
    ):
        import shutil

        _git(root, "checkout", "HEAD", "--", "params.yaml")
        (root / "dvc.lock").write_text(own_lock or "")
        for f in (root / "metrics").glob("*.json"):  # seed groups (metrics/seeds/) stay
            f.unlink()
        if (own / "metrics").is_dir():
            shutil.copytree(own / "metrics", root / "metrics", dirs_exist_ok=True)
        if _checkout(root, env):
            return True, (
                f"the last commit's outputs ({shown}) were made elsewhere and are not in this machine's DVC "
                "cache; params.yaml is back at the last commit, and dvc.lock, metrics/ and data/ hold your own "
                "last run of it (`dvc pull` brings the committed ones, then `lineage restore` again)"
            )
        return False, "your own last run's outputs could not be checked out (`dvc checkout -f` failed)"
    return False, (
        f"nothing was changed: the last commit's outputs ({shown}) are not in this machine's DVC cache, and "
        "no run of your own of its params.yaml is; either `dvc pull` them (then `lineage restore`), or "
        "`git checkout params.yaml && lineage run` to make them here"
    )


def _same_yaml(a: str, b: str) -> bool:
    try:
        return yaml.safe_load(a) == yaml.safe_load(b)
    except yaml.YAMLError:
        return False


def cmd_run(args: argparse.Namespace) -> int:
    root = Path.cwd()
    if not (root / "dvc.yaml").is_file():
        raise LineageError(f"{root}: no dvc.yaml here; run lineage from the project root")
    params = load_params(root / "params.yaml")  # fail before any stage starts on a bad params file
    sets = [a for kv in args.set_param for a in ("-S", kv)]
    for kv in args.set_param:
        if "=" not in kv:
            raise LineageError(f"-S {kv}: give KEY=VALUE, e.g. -S ppo.seed=2")
    experiment = bool(args.profile or sets)
    if experiment:
        found = profile_overrides(root, args.profile) if args.profile else []
        cmd = ["dvc", "exp", "run", *found, *sets, *args.stages]
        if args.name:
            cmd[3:3] = ["--name", args.name]
        if _git(root, "rev-parse", "HEAD").returncode != 0:
            raise LineageError("--profile/-S run a DVC experiment, which needs a git commit: commit first")
        if _git(root, "status", "--porcelain", "--", "params.yaml").stdout.strip():
            raise LineageError(
                "params.yaml has uncommitted changes: commit them (or `git checkout params.yaml`) "
                "first, since the workspace is restored to the last commit after the experiment"
            )
    else:
        cmd = ["dvc", "repro", *args.stages]
    env = pipeline_env(root, None, verbose=args.verbose)
    overrides: dict[str, str] = {}
    found = found if experiment else []
    if experiment:
        if args.profile:
            env[PROFILE_ENV] = os.environ[PROFILE_ENV] = args.profile  # the parent run is tagged with it too
        overrides = dict(a.lstrip("+").split("=", 1) for a in [*found, *sets][1::2])
    parent = start_pipeline_run(params, root, " ".join(["lineage", *sys.argv[1:]]), overrides)
    env[PARENT_ENV] = parent
    rc = 1
    with prefect_server(root) if args.server else contextlib.nullcontext(None) as url:
        if url:
            env["PREFECT_API_URL"] = url
        print(
            "lineage:", " ".join(cmd), f"(Prefect API {url or 'per stage'}; MLflow run {parent})", flush=True
        )
        # DVC's own progress bars off (`--verbose` keeps them): see pipeline/dvc_quiet.py
        launch = cmd if args.verbose else [sys.executable, "-m", "pipeline.dvc_quiet", *cmd[1:]]
        proc = subprocess.Popen(launch, env=env)
        try:
            rc = proc.wait()
        except KeyboardInterrupt:  # the stage got the Ctrl-C too: let dvc record it before we go
            try:
                proc.wait(timeout=30)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                proc.terminate()
            rc = 130
        end_pipeline_run(params, root, parent, ok=rc == 0, status="KILLED" if rc in (130, -2) else None)
    if rc == 0 and not experiment:
        save_last_run(root)
    if experiment:
        before = _git(root, "rev-parse", "--short", "HEAD").stdout.strip()
        restored, said = restore_workspace(root, env)
        if said != RESTORED:  # not restored, or to this machine's own last run
            print(f"lineage: {said}", file=sys.stdout if restored else sys.stderr, flush=True)
        if rc == 0:
            print(
                f"lineage: the experiment is saved (`dvc exp show` lists it against {before}); the "
                + (
                    "workspace is back at the last commit. "
                    if restored
                    else "workspace could not be restored. "
                )
                + "Bring its params and results into the workspace with `dvc exp apply <name>`.",
                flush=True,
            )
        elif restored:
            print("lineage: the experiment failed; the workspace is back at the last commit", flush=True)
    if rc == 0:
        report = root / "data" / "report" / "report.html"
        where = (
            f"logged to MLflow run {parent} (`dvc exp apply` brings data/report/ back)"
            if experiment
            else str(report.relative_to(root))
            if report.is_file()
            else "not made (run `dvc repro report`)"
        )
        print(f"lineage: report: {where}\nlineage: dashboards (MLflow + Prefect): lineage ui", flush=True)
        if not experiment and baseline_changes(root):
            print(
                "lineage: dvc.lock and metrics/ now hold this run, not the last commit's: `lineage baseline` "
                "commits them, so experiments compare against your run and `lineage push` + `dvc pull` "
                "elsewhere fetch its outputs",
                flush=True,
            )
    return rc


BASELINE_PATHS = ("params.yaml", "dvc.lock", "metrics")


def baseline_changes(root: Path) -> list[str]:
    """The files of params.yaml, dvc.lock and metrics/ that differ from the last commit."""
    out = _git(root, "status", "--porcelain", "--untracked-files=all", "--", *BASELINE_PATHS).stdout
    return [line[3:] for line in out.splitlines() if line.strip()]


def cmd_baseline(args: argparse.Namespace) -> int:
    """Commit this workspace's params.yaml, dvc.lock and metrics/ (the run just made here), so
    `lineage exp` and `dvc metrics diff` compare against it and another clone can `dvc pull` its
    outputs after `lineage push`. Refuses while `dvc status` shows a stage out of date."""
    root = Path.cwd()
    if _git(root, "rev-parse", "HEAD").returncode != 0:
        raise LineageError(f"{root}: not a git repository with a commit; `git init` and commit first")
    env = pipeline_env(root, None)
    status = subprocess.run(["dvc", "status", "--json"], cwd=root, env=env, capture_output=True, text=True)
    try:
        stale = json.loads(status.stdout or "{}")
    except ValueError:
        stale = None
    if status.returncode != 0 or stale is None:
        raise LineageError(f"`dvc status` failed: {(status.stderr.strip().splitlines() or ['?'])[-1]}")
    if stale:
        raise LineageError(
            f"the workspace is not up to date ({', '.join(sorted(stale))} changed): `lineage run` first, "
            "so the baseline is a complete run"
        )
    changed = baseline_changes(root)
    if not changed:
        print("lineage: params.yaml, dvc.lock and metrics/ already match the last commit: it is the baseline")
        return 0
    paths = [p for p in BASELINE_PATHS if (root / p).exists()]
    _git(root, "add", "--", *paths)
    msg = args.message or "Baseline: dvc.lock and metrics of the run made in this workspace"
    done = _git(root, "commit", "-q", "-m", msg, "--", *paths)
    if done.returncode != 0:
        raise LineageError(f"git commit failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    sha = _git(root, "rev-parse", "--short", "HEAD").stdout.strip()
    print(f"lineage: committed {len(changed)} files as {sha}: this run is the baseline that `lineage exp` and "
          "`dvc metrics diff` compare against")  # fmt: skip
    print("lineage: to share it: `lineage push` (its outputs to the DVC remote) and `git push`; another "
          "clone then runs `git pull && dvc pull`")  # fmt: skip
    return 0


def cmd_restore(_: argparse.Namespace) -> int:
    root = Path.cwd()
    if not (root / "dvc.yaml").is_file():
        raise LineageError(f"{root}: no dvc.yaml here; run lineage from the project root")
    done, said = restore_workspace(root, pipeline_env(root, None))
    print(f"lineage: {said}", file=sys.stderr if not done else sys.stdout)
    return 0 if done else 1


# dependency hashes are one column each in `dvc exp show`; the metrics and params tell experiments apart
EXP_DROP = "^(data|stages|pipeline|bench)/"


def transpose_experiments(csv_text: str) -> str:
    """`dvc exp show --csv` turned on its side: one row per changed param or metric, one column per
    experiment, so a comparison of a few experiments fits a terminal however many metrics differ."""
    import csv

    rows = list(csv.DictReader(csv_text.splitlines()))
    if not rows:
        return "no experiments to show\n"
    meta = {"Experiment", "rev", "typ", "Created", "parent", "State", "Executor"}
    names = [r.get("Experiment") or r.get("rev") or "?" for r in rows]
    keys = [k for k in rows[0] if k not in meta]
    if not keys:
        return f"no param or metric differs between {', '.join(names)}\n"
    keys.sort(key=lambda k: "." not in k)  # params (section.key) first, then metrics in stage order
    table = [["", *names]] + [[k, *(_short(r.get(k, "")) for r in rows)] for k in keys]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in table
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _short(value: str, width: int = 24) -> str:
    """A number to 5 significant digits; any other value (a list of tasks, a path) cut to ``width``."""
    try:
        f = float(value)
    except ValueError:
        if not value:  # not set in this experiment
            return "-"
        return value if len(value) <= width else value[: width - 3] + "..."
    return f"{f:.5g}"


def cmd_exp(args: argparse.Namespace) -> int:
    if args.groups:  # two seed groups: Welch's t-test per headline metric
        from pipeline.seeds import cmd_compare

        sys.stdout.write(cmd_compare(Path.cwd(), *args.groups, as_json=args.json))
        return 0
    cmd = ["dvc", "exp", "show", "--csv", "--only-changed", "--drop", EXP_DROP, *args.dvc_args]
    out = subprocess.run(cmd, env=pipeline_env(Path.cwd(), None), capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        return out.returncode
    sys.stdout.write(transpose_experiments(out.stdout))
    return 0


def cmd_status(_: argparse.Namespace) -> int:
    root = Path.cwd()
    env = pipeline_env(root, None)
    stale = stale_temp_dirs(root / "data")
    for p in stale:
        print(f"lineage: {p.relative_to(root)} was left by a killed run (removed when any stage next starts)")
    rc = subprocess.call(["dvc", "status"], env=env)
    if rc == 0:
        print(headline_table(root))
    return rc


def headline_table(root: Path, width: int = 110) -> str:
    """The headline metrics of each stage (metrics/<stage>.json) in DAG order, one stage per
    paragraph, wrapped to ``width``: what `dvc metrics show` puts in one very wide row each."""
    import textwrap

    import yaml

    stages = list(yaml.safe_load((root / "dvc.yaml").read_text()).get("stages", {}))
    lines = []
    for stage in stages:
        path = root / "metrics" / f"{stage}.json"
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError):
            lines.append(f"{stage:<13} not run")
            continue
        shown = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
        lines += textwrap.wrap(shown, width, initial_indent=f"{stage:<13} ", subsequent_indent=" " * 14)
    return "\n".join(lines)


def cmd_ui(args: argparse.Namespace) -> int:
    """MLflow's UI on the project's store and Prefect's server (UI + API) on the project's home, both
    on loopback, until Ctrl-C or SIGTERM, which stop both and their workers. The Prefect server is
    announced in .prefect/server.json, so stages started meanwhile report their flow runs to it; an
    already running project server (`lineage run`) is reused instead."""
    from pipeline import procs

    root = Path.cwd()
    params = load_params(root / "params.yaml")
    uri = resolve_tracking_uri(params.common.tracking_uri, root)
    log = root / "mlruns" / "ui.log"  # the server's own chatter (uvicorn workers, warnings)
    log.parent.mkdir(exist_ok=True)
    with log.open("w") as fh:
        mlflow_proc = procs.spawn(
            [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", uri,
             "--host", args.host, "--port", str(args.port)],
            env=pipeline_env(root, None), stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip
    running = shared_server(root) if args.prefect else None
    prefect_ctx = (
        prefect_server(root, port=args.prefect_port or None)
        if args.prefect and running is None
        else contextlib.nullcontext(running)
    )
    # the signal handler only turns SIGTERM into SystemExit: stopping the servers from inside it
    # would wait on a child the interrupted main thread is already waiting on (a deadlock); the
    # finally clauses below (and prefect_server's) stop both
    with procs.terminate_on_signals(lambda: None), prefect_ctx as api:
        try:
            print(f"lineage: MLflow UI   http://{args.host}:{args.port}  (log {log})", flush=True)
            if api:
                print(f"lineage: Prefect UI  {api.removesuffix('/api')}  (API {api})", flush=True)
            elif args.prefect:
                print(f"lineage: Prefect did not start (see {root / '.prefect' / 'server.log'})", flush=True)
            print("lineage: Ctrl-C stops them", flush=True)
            return mlflow_proc.wait()
        except KeyboardInterrupt:
            return 130
        finally:
            procs.stop(mlflow_proc)


def cmd_report(args: argparse.Namespace) -> int:
    """The path of the report card (data/report/report.html), or open it in a browser."""
    path = Path.cwd() / "data" / "report" / ("report.md" if args.markdown else "report.html")
    if not path.is_file():
        raise LineageError(f"{path}: no report yet; `dvc repro report` (or `lineage run`) makes it")
    print(path)
    if args.open:
        import webbrowser

        webbrowser.open(path.as_uri())
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """`dvc push`: every stage's outputs to the default DVC remote (.dvc/config), or to ``-r NAME``."""
    remote = ["-r", args.remote] if args.remote else []
    return subprocess.call(["dvc", "push", *remote, *args.dvc_args], env=pipeline_env(Path.cwd(), None))


def _damaged_names(repo: Any, oids: list[str]) -> list[str]:
    """The workspace paths (output, or file inside an output folder) of the cache objects ``oids``."""
    names: dict[str, str] = {}
    for out in repo.index.outs:
        path = os.path.relpath(out.fs_path, repo.root_dir)
        value = getattr(out.hash_info, "value", None) or ""
        if value.split(".")[0] in oids:
            names[value.split(".")[0]] = path
        if value.endswith(".dir"):
            with contextlib.suppress(Exception):
                from dvc_data.hashfile.tree import Tree

                for key, _meta, hi in Tree.load(out.cache, out.hash_info):
                    if hi.value in oids:
                        names[hi.value] = f"{path}/{'/'.join(key)}"
    return [names.get(o, f"the object {o}") for o in oids]


def cmd_pull(args: argparse.Namespace) -> int:
    """`dvc pull` that refuses damaged copies: the project's remote verifies what it downloads
    (`verify = true` in .dvc/config), and a file whose content does not match its hash is named
    here and left out of the workspace, instead of DVC's vague "is your cache up to date?"."""
    import logging

    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    root = Path.cwd()
    os.environ.update({k: os.environ.get(k, v) for k, v in QUIET_ENV.items()})
    damaged: list[str] = []

    class Damaged(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("corrupted cache file"):
                damaged.append(Path(str(record.args[0])).parent.name + Path(str(record.args[0])).name)

    catch, logger = Damaged(logging.DEBUG), logging.getLogger("dvc_data.hashfile.db")
    level, logger.level = logger.level, logging.DEBUG
    logger.addHandler(catch)
    failed = ""
    try:
        with Repo(str(root)) as repo:
            try:
                stats = repo.pull(targets=args.targets or None, remote=args.remote, jobs=args.jobs)
            except DvcException as e:
                failed, stats = " ".join(str(e).split()), {}
            names = _damaged_names(repo, sorted(set(damaged))) if damaged else []
    except DvcException as e:  # not a DVC repository, a remote that cannot be read
        raise LineageError(f"dvc pull: {' '.join(str(e).split())}") from None
    finally:
        logger.removeHandler(catch)
        logger.setLevel(level)
    if names:
        raise LineageError(
            f"the remote's copy of {', '.join(names)} is damaged (its content does not match the hash "
            "dvc.lock records) and was not checked out; push it again from a workspace that has it "
            "(`lineage push`) or rebuild it with `dvc repro`"
        )
    if failed:
        raise LineageError(f"dvc pull: {failed}")
    fetched = stats.get("fetched", 0) if isinstance(stats, dict) else 0
    print(f"lineage: pulled {fetched} file(s); the workspace matches dvc.lock")
    return 0


def checkpoint_index(root: Path) -> list[dict[str, Any]]:
    """One entry per training run folder under checkpoints/<stage>/<run key>/: the run key is a
    hash of the params that change what is learned and of the tokenizer, so these say which is which."""
    out = []
    for ckpt in sorted((root / "checkpoints").glob("*/*/ckpt.pt")):
        info_file = ckpt.with_name("run.json")
        info = json.loads(info_file.read_text()) if info_file.is_file() else checkpoint_tag(ckpt)
        params_file = ckpt.with_name("params.json")  # written by the stage beside its checkpoints
        with contextlib.suppress(OSError, ValueError):
            info["params"] = json.loads(params_file.read_text())
        if "params" not in info and info_file.is_file():
            info["params"] = {k: v for k, v in info.items() if k != "profile"}
        out.append({
            "path": str(ckpt.relative_to(root)), "stage": ckpt.parent.parent.name,
            "modified": time.strftime("%Y-%m-%d %H:%M", time.localtime(ckpt.stat().st_mtime)),
            "tokenizer": ckpt.with_name("tokenizer.json").is_file(), **info,
        })  # fmt: skip
    return out


def checkpoint_tag(ckpt: Path) -> dict[str, Any]:
    """The model shape and run length a checkpoint of the supervised or PPO loop records about
    itself (its ``model_config``), read without loading the tensors; {} when it cannot be read."""
    import torch

    try:
        tag = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get("model_config", {})
    except Exception:  # a damaged file is listed anyway: loading it names the problem
        return {}
    keep = ("arch", "n_layer", "n_head", "n_embd", "vocab_size", "steps")
    return {k: tag[k] for k in keep if k in tag} if isinstance(tag, dict) else {}


def differing_params(rows: list[dict[str, Any]]) -> list[str]:
    """For each checkpoint, the params (params.json beside it) whose values differ between the runs
    of its stage, as ``key=value``: what tells two runs of one stage apart."""
    out = []
    for r in rows:
        if not r.get("params"):
            out.append("")
            continue
        peers = [p["params"] for p in rows if p["stage"] == r["stage"] and p.get("params")]
        keys = sorted({k for p in peers for k in p} if len(peers) > 1 else set())
        mine = r.get("params", {})
        differ = [k for k in keys if len({json.dumps(p.get(k), sort_keys=True) for p in peers}) > 1]
        out.append(" ".join(f"{k}={_short(json.dumps(mine.get(k)).strip(chr(34)), 16)}" for k in differ))
    return out


def checkpoint_table(rows: list[dict[str, Any]]) -> str:
    """The checkpoints as an aligned table with a header; the last column names the params that
    differ from the other runs of the same stage."""
    table = [["checkpoint", "modified", "model", "steps", "profile", "tokenizer", "differs"]]
    for r, differ in zip(rows, differing_params(rows), strict=True):
        shape = (
            f"{r['arch']} {r['n_layer']}x{r['n_head']}x{r['n_embd']} v{r['vocab_size']}"
            if "arch" in r
            else "?"
        )
        steps = str(r.get("max_steps", r.get("steps", "")))
        tok = "beside it" if r["tokenizer"] else "-"
        table.append([r["path"], r["modified"], shape, steps, r.get("profile") or "-", tok, differ or "-"])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    )


def cmd_checkpoints(_: argparse.Namespace) -> int:
    rows = checkpoint_index(Path.cwd())
    if not rows:
        print("lineage: no checkpoints yet (checkpoints/<stage>/<run key>/ckpt.pt)")
        return 0
    print(checkpoint_table(rows))
    return 0


def check_model_tokenizer(source: str, recorded: Path, tokenizer_file: Path) -> None:
    """The tokenizer a model was trained with, as the model records it: ``chat.json``'s sha256 (SFT,
    PPO), the ``tokenizer.json`` a checkpoint keeps beside it, or the exported ``hf/tokenizer.json``
    (pretrain, whose vocabulary is compared, since transformers rewrites the file). A tokenizer of the
    same size with other ids is refused like one of another size."""
    from pipeline.io import read_json
    from pipeline.model.reward import tokenizer_sha256

    hint = "give the tokenizer it was trained with (--tokenizer)"
    if recorded.name == "chat.json":
        want = str(read_json(recorded, ("tokenizer_sha256",))["tokenizer_sha256"])
        have = tokenizer_sha256(tokenizer_file)
        if want != have:
            raise LineageError(
                f"{source}: trained with the tokenizer of sha256 {want[:12]}, not {tokenizer_file} "
                f"(sha256 {have[:12]}); {hint}"
            )
    elif recorded.name == "tokenizer.json" and recorded.parent.name == "hf":
        try:
            theirs = json.loads(recorded.read_text())["model"].get("vocab")
            ours = json.loads(Path(tokenizer_file).read_text())["model"].get("vocab")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return  # the load of the tokenizer names a damaged file; here only a mismatch matters
        if theirs != ours:
            raise LineageError(f"{source}: trained with another vocabulary than {tokenizer_file}'s; {hint}")
    elif tokenizer_sha256(recorded) != tokenizer_sha256(tokenizer_file):
        raise LineageError(f"{source}: trained with {recorded}, and {tokenizer_file} differs from it; {hint}")


def _recorded_tokenizer(model_dir: Path) -> Path | None:
    for path in (model_dir / "chat.json", model_dir.parent / "hf" / "tokenizer.json"):
        if path.is_file():
            return path
    return None


def cmd_sample(args: argparse.Namespace) -> int:
    """Generations from a stage's saved model (data/<stage>/model) or from a training checkpoint."""
    import torch

    from pipeline.model.export import load_model
    from pipeline.model.gpt import GPT, GPTConfig
    from pipeline.tokenizer import load_tokenizer

    root = Path.cwd()
    tokenizer_file = root / "data" / "tokenize" / "tokenizer.json"
    if args.checkpoint:
        from pipeline.train.checkpoint import load_checkpoint

        ckpt = Path(args.checkpoint)
        state = load_checkpoint(ckpt)
        model = GPT(GPTConfig.from_dict(state["model_config"]))
        model.load_state_dict(state["model"])
        recorded = ckpt.with_name("tokenizer.json") if ckpt.with_name("tokenizer.json").is_file() else None
        if recorded is not None:  # the tokenizer it was trained with
            tokenizer_file = recorded
        source = f"{ckpt} (step {state.get('step', '?')})"
    else:
        model = load_model(root / "data" / args.stage / "model")
        source = str(root / "data" / args.stage / "model")
        recorded = _recorded_tokenizer(root / "data" / args.stage / "model")
    tokenizer = load_tokenizer(Path(args.tokenizer) if args.tokenizer else tokenizer_file)
    if recorded is not None:
        check_model_tokenizer(source, recorded, Path(args.tokenizer) if args.tokenizer else tokenizer_file)
    if tokenizer.get_vocab_size() != model.config.vocab_size:
        raise LineageError(
            f"{source}: the model has a vocabulary of {model.config.vocab_size} ids, the tokenizer "
            f"{args.tokenizer or tokenizer_file} {tokenizer.get_vocab_size()}: give the tokenizer it was "
            "trained with (--tokenizer)"
        )
    print(f"lineage: {source}: {model.num_params():,} parameters", file=sys.stderr)
    model.eval()
    eot = tokenizer.token_to_id("<|endoftext|>")
    gen = torch.Generator().manual_seed(args.seed)
    for i, prompt in enumerate(args.prompt or [""]):
        ids = tokenizer.encode(prompt).ids or [eot]
        for _ in range(args.num_samples):
            out = model.generate(
                torch.tensor([ids]), args.tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                generator=gen, eos_token=eot,
            )  # fmt: skip
            print(f"--- sample {i} ---\n{tokenizer.decode(out[0].tolist())}")
    return 0


def turn_ids(chat: Any, message: dict[str, str]) -> list[int]:
    """One turn as the chat template encodes it: role id, content, end id."""
    return [chat.role[message["role"]], *chat.text(message["content"]), chat.end]


def fit_context(
    chat: Any, history: list[dict[str, str]], budget: int, encoded: list[list[int]] | None = None
) -> tuple[list[int], int]:
    """The conversation as a prompt of at most ``budget`` tokens: the oldest turns go first, and a last
    turn longer than the window keeps its end (the model then sees the end of the question). Returns
    the ids and how many earlier turns were left out. ``encoded`` holds each turn's ids (see
    :func:`turn_ids`) so a long conversation is not encoded again at every turn."""
    encoded = encoded if encoded is not None else [turn_ids(chat, m) for m in history]
    used, start = 1, len(history)  # 1: the assistant marker that ends the prompt
    while start > 0 and used + len(encoded[start - 1]) <= budget:
        start -= 1
        used += len(encoded[start])
    if start == len(history):
        return [*encoded[-1], chat.role["assistant"]][-budget:], len(history) - 1
    return [t for ids in encoded[start:] for t in ids] + [chat.role["assistant"]], start


def read_turn(stream: Any, max_bytes: int) -> tuple[bytes | None, bool]:
    """One line of a byte stream, holding at most its last ``max_bytes`` bytes however long it is;
    (None, False) at the end of input. The flag says whether the line was cut."""
    buf = stream.readline(max_bytes + 1)
    if not buf:
        return None, False
    total = len(buf)
    while not buf.endswith(b"\n"):
        more = stream.readline(max_bytes + 1)
        if not more:
            break
        total += len(more)
        buf = (buf + more)[-(max_bytes + 1) :]
    line = buf.removesuffix(b"\n")
    cut = total - buf.endswith(b"\n") > len(line)
    if cut:  # the first bytes kept may be the middle of a character
        line = line.lstrip(bytes(range(0x80, 0xC0)))
    return line, cut


def stream_reply(
    model: Any, ids: list[int], max_new_tokens: int, *, temperature: float, top_k: int | None,
    top_p: float | None, generator: Any, stop: set[int],
) -> Any:  # fmt: skip
    """Yield the reply's ids one at a time as they are sampled (the KV cache keeps each step to one
    position), until a ``stop`` id, ``max_new_tokens`` or the end of the context window."""
    import torch
    import torch.nn.functional as F

    from pipeline.model.gpt import KVCache, filter_logits

    block = model.config.block_size
    cache = KVCache(model.config.n_layer, block)
    x = torch.tensor([ids], dtype=torch.long)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            if cache.length + x.size(1) > block:
                return
            logits = model(x, cache=cache)[0][:, -1, :]
            if temperature == 0:
                nxt = int(logits.argmax(-1))
            else:
                probs = F.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
                nxt = int(torch.multinomial(probs, 1, generator=generator))
            if nxt in stop:
                return
            yield nxt
            x = torch.tensor([[nxt]], dtype=torch.long)


def cmd_chat(args: argparse.Namespace) -> int:
    """A conversation with a stage's model in the chat template (pipeline/feedback/chat.py): each line
    is a user turn, the reply streams as it is sampled, the history is kept and cropped to the context
    window (oldest turns first). Ctrl-D (end of input) ends it."""
    import torch

    from pipeline.feedback.chat import ChatTokens
    from pipeline.model.export import load_model
    from pipeline.tokenizer import load_tokenizer

    root = Path.cwd()
    model_dir = root / "data" / args.stage / "model"
    if not (model_dir / "config.json").is_file():
        raise LineageError(f"{model_dir}: no model; run `dvc repro {args.stage}` first")
    tok_file = Path(args.tokenizer) if args.tokenizer else root / "data" / "tokenize" / "tokenizer.json"
    if not tok_file.is_file():
        raise LineageError(f"{tok_file}: tokenizer not found; run `dvc repro tokenize` first")
    chat = ChatTokens(load_tokenizer(tok_file), str(tok_file))
    model = load_model(model_dir).eval()
    recorded = _recorded_tokenizer(model_dir)
    if recorded is not None:
        check_model_tokenizer(str(model_dir), recorded, tok_file)
    if chat.tok.get_vocab_size() != model.config.vocab_size:
        raise LineageError(
            f"{model_dir}: the model has {model.config.vocab_size} ids, the tokenizer {tok_file} "
            f"{chat.tok.get_vocab_size()}: give the tokenizer it was trained with (--tokenizer)"
        )
    max_new = min(args.max_new_tokens, model.config.block_size - 1)
    budget = model.config.block_size - max_new
    stop = {chat.end} | {i for i in [chat.tok.token_to_id("<|endoftext|>")] if i is not None}
    generator = torch.Generator().manual_seed(args.seed)
    tty = sys.stdin.isatty()
    if tty:
        print(f"lineage: chatting with {model_dir.relative_to(root)} ({model.num_params():,} parameters, "
              f"{model.config.block_size}-token window); Ctrl-D ends", file=sys.stderr)  # fmt: skip
    # only what fits the window is kept: each turn encoded once, the oldest forgotten for good
    history: list[dict[str, str]] = []
    encoded: list[list[int]] = []
    left_out = 0
    cap = args.max_input_chars
    try:
        while True:
            cut = False
            if tty:
                try:
                    line = input("you> ")
                except EOFError:
                    print(file=sys.stderr)
                    break
                except UnicodeDecodeError:
                    print("lineage: that line is not UTF-8 text; skipped", file=sys.stderr)
                    continue
            else:
                raw, cut = read_turn(sys.stdin.buffer, 4 * cap)
                if raw is None:
                    break
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    print(f"lineage: a line is not UTF-8 text (byte {e.start}); skipped", file=sys.stderr)
                    continue
            line = line.strip()
            if len(line) > cap:
                line, cut = line[-cap:], True
            if cut:
                print(f"lineage: a line longer than --max-input-chars ({cap}) was cut to its last {cap} "
                      "characters", file=sys.stderr)  # fmt: skip
            if not line:
                continue
            if not tty:  # piped input: echo the turn, so the output reads as a transcript
                print(f"you> {line}", flush=True)
            history.append({"role": "user", "content": line})
            encoded.append(turn_ids(chat, history[-1]))
            ids, dropped = fit_context(chat, history, budget, encoded)
            if dropped:
                del history[:dropped], encoded[:dropped]
                if not left_out:
                    print(f"lineage: the conversation outgrew the model's {model.config.block_size}-token "
                          "window; its oldest turns are left out from here on", file=sys.stderr)  # fmt: skip
                left_out += dropped
            if args.verbose:
                print(
                    f"lineage: context {len(ids)} tokens, {left_out} earlier turns left out", file=sys.stderr
                )
            print("assistant> ", end="", flush=True)
            reply: list[int] = []
            shown = ""
            for tok_id in stream_reply(model, ids, max_new, temperature=args.temperature, top_k=args.top_k,
                                       top_p=args.top_p, generator=generator, stop=stop):  # fmt: skip
                reply.append(tok_id)
                text = chat.tok.decode(reply, skip_special_tokens=False).rstrip("\ufffd")  # half a character
                print(text[len(shown) :], end="", flush=True)
                shown = text
            text = chat.tok.decode(reply, skip_special_tokens=False)
            print(text[len(shown) :], flush=True)
            history.append({"role": "assistant", "content": text})
            encoded.append(turn_ids(chat, history[-1]))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return 0


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default after its help, unless the help already says it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, True) or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action) or text


def cmd_dag(args: argparse.Namespace) -> int:
    """dvc.yaml's code deps per stage against the import closure of its entry file (pipeline.dag)."""
    from pipeline import dag

    root = Path.cwd()
    if args.write:
        changed = dag.write(root)
        print(
            f"dvc.yaml: code deps rewritten for {', '.join(changed)}" if changed else "dvc.yaml: up to date"
        )
        return 0
    diff = dag.differences(root)
    for stage, (missing, extra) in diff.items():
        for p in missing:
            print(f"{stage}: missing {p}")
        for p in extra:
            print(f"{stage}: not imported {p}")
    if diff:
        print(
            "dvc.yaml's code deps differ from the import closure: run `lineage dag --write`", file=sys.stderr
        )
        return 1
    print("dvc.yaml: every stage's code deps are its import closure")
    return 0


def _known(root: Path) -> tuple[list[str], list[str]]:
    """The profiles and stages of the project in ``root``, for the help text."""
    profiles = sorted(p.stem for p in (root / "profiles").glob("*.yaml"))
    return profiles, pipeline_stages(root)


def main(argv: list[str] | None = None) -> int:
    fmt = _Help
    profiles, stages = _known(Path.cwd())
    ap = argparse.ArgumentParser(prog="lineage", description=__doc__, formatter_class=fmt)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="dvc repro (or dvc exp run with a profile): one Prefect server, one MLflow parent run",
        description="Run the pipeline with `dvc repro` (or, with --profile, as a DVC experiment), one "
        "Prefect server for all its flows and one MLflow parent run holding every stage's run. "
        f"Stages, in order: {', '.join(stages) or '(no dvc.yaml here)'}. "
        f"Profiles (profiles/*.yaml): {', '.join(profiles) or 'none'}.",
        epilog="Change params without editing params.yaml: `lineage run -S ppo.seed=2` (or plain "
        "`dvc exp run -S ppo.seed=2`) runs a DVC experiment; `lineage exp` compares it with the "
        "baseline. Make your own run the baseline with `lineage baseline`.",
        formatter_class=fmt,
    )
    run.add_argument(
        "stages", nargs="*", metavar="STAGE",
        help=f"stages to run with what they need (default: the whole DAG); one of: {', '.join(stages)}",
    )  # fmt: skip
    run.add_argument(
        "--profile", metavar="NAME",
        help=f"run a DVC experiment with profiles/NAME.yaml applied (`dvc exp run -S ...`), then restore "
        f"the workspace to the last commit; one of: {', '.join(profiles) or 'none'} (default: params.yaml "
        "as it is)",
    )  # fmt: skip
    run.add_argument(
        "-S", "--set-param", action="append", default=[], metavar="KEY=VALUE",
        help="change one param for this run, DVC's override syntax (repeatable, e.g. -S ppo.seed=2 "
        "-S pretrain.n_layer=6): runs `dvc exp run -S ...` as with --profile, then restores the workspace "
        "(default: none)",
    )  # fmt: skip
    run.add_argument("--name", help="the experiment's name (with --profile/-S; default: DVC picks one)")
    run.add_argument(
        "--no-server", dest="server", action="store_false",
        help="no shared Prefect server: each stage starts its own, ~6 s slower a stage (default: one "
        "server for the run)",
    )  # fmt: skip
    run.add_argument(
        "--verbose", "-v", action="store_true",
        help="show every log: Prefect flow-run lines, MLflow and library INFO, warnings (default: quiet; "
        "progress and results only)",
    )  # fmt: skip
    run.set_defaults(fn=cmd_run)
    sub.add_parser(
        "status",
        help="dvc status and each stage's headline metrics (metrics/); names folders left by killed runs",
        formatter_class=fmt,
    ).set_defaults(fn=cmd_status)
    ex = sub.add_parser(
        "exp",
        help="experiments side by side: `dvc exp show --only-changed` as rows of changed params and "
        "metrics, one column per experiment (no dependency-hash columns)",
        formatter_class=fmt,
    )
    ex.add_argument(
        "--groups", nargs=2, metavar=("A", "B"),
        help="compare two seed groups (metrics/seeds/A.json, B.json; `lineage seeds`) with Welch's t-test "
        "per headline metric; `*` marks p < 0.01 (default: dvc exp show)",
    )  # fmt: skip
    ex.add_argument("--json", action="store_true", help="with --groups: the comparison as JSON")
    ex.add_argument("dvc_args", nargs=argparse.REMAINDER, help="more `dvc exp show` options (e.g. --md)")
    ex.set_defaults(fn=cmd_exp)
    bl = sub.add_parser(
        "baseline",
        help="commit params.yaml, dvc.lock and metrics/ of the run in this workspace: experiments then "
        "compare against your run, and `dvc pull` elsewhere finds its outputs",
        description=cmd_baseline.__doc__,
        formatter_class=fmt,
    )
    bl.add_argument("-m", "--message", help="the commit message (default: says it is this workspace's run)")
    bl.set_defaults(fn=cmd_baseline)
    sub.add_parser(
        "restore",
        help="put params.yaml, dvc.lock, metrics/ and data/ back to the last commit (after `dvc exp run`)",
        formatter_class=fmt,
    ).set_defaults(fn=cmd_restore)
    rp = sub.add_parser(
        "report", help="print the path of the report card (data/report/report.html)", formatter_class=fmt
    )
    rp.add_argument(
        "--open", action="store_true", help="open it in the browser (default: print the path only)"
    )
    rp.add_argument(
        "--markdown", action="store_true", help="the Markdown version (report.md; default: report.html)"
    )
    rp.set_defaults(fn=cmd_report)
    push = sub.add_parser(
        "push",
        help="dvc push: every stage's outputs to the DVC remote (default: the one in .dvc/config)",
        formatter_class=fmt,
    )
    push.add_argument(
        "-r", "--remote", metavar="NAME", help="the DVC remote to push to (default: .dvc/config's)"
    )
    push.add_argument("dvc_args", nargs=argparse.REMAINDER, help="more `dvc push` options (e.g. --jobs 4)")
    push.set_defaults(fn=cmd_push)
    pull = sub.add_parser(
        "pull",
        help="dvc pull: stage outputs from the DVC remote, verified: a damaged copy is refused and named",
        formatter_class=fmt,
    )
    pull.add_argument("targets", nargs="*", help="outputs or stages to pull (default: all)")
    pull.add_argument("-r", "--remote", help="remote name (default: the one in .dvc/config)")
    pull.add_argument("-j", "--jobs", type=int, help="parallel downloads (default: DVC's)")
    pull.set_defaults(fn=cmd_pull)
    sub.add_parser(
        "checkpoints",
        help="list training checkpoints (checkpoints/<stage>/<run key>/) with their model shape and step",
        formatter_class=fmt,
    ).set_defaults(fn=cmd_checkpoints)
    sm = sub.add_parser("sample", help="print generations from a stage's model", formatter_class=fmt)
    sm.add_argument("--stage", default="pretrain", help="stage whose data/<stage>/model to load")
    sm.add_argument(
        "--checkpoint",
        help="a training checkpoint (ckpt.pt, see `lineage checkpoints`) instead of a stage's model; the "
        "tokenizer.json beside it is used when present",
    )
    sm.add_argument(
        "--tokenizer",
        help="tokenizer.json (default: beside the checkpoint, else data/tokenize/tokenizer.json)",
    )
    sm.add_argument(
        "--prompt", action="append", help="prompt text (repeatable; default: the start of a document)"
    )
    sm.add_argument("--tokens", type=int, default=100, help="new tokens per sample")
    sm.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    sm.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (0: greedy)")
    sm.add_argument("--top-k", type=int, default=50, help="sample from the k most likely tokens only")
    sm.add_argument("--top-p", type=float, default=None, help="nucleus sampling: smallest set with this mass")
    sm.add_argument("--seed", type=int, default=0, help="random seed of the sampler")
    sm.set_defaults(fn=cmd_sample)
    ch = sub.add_parser(
        "chat",
        help="talk to a stage's model in the chat template, replies streamed; Ctrl-D ends",
        description=cmd_chat.__doc__,
        formatter_class=fmt,
    )
    ch.add_argument("--stage", default="ppo", choices=["ppo", "sft", "pretrain"],
                    help="whose data/<stage>/model answers")  # fmt: skip
    ch.add_argument("--tokenizer", help="tokenizer.json (default: data/tokenize/tokenizer.json)")
    ch.add_argument("--max-new-tokens", type=int, default=64, help="longest reply in tokens")
    ch.add_argument(
        "--max-input-chars", type=int, default=4000,
        help="a longer input line keeps its last this many characters (and says so)",
    )  # fmt: skip
    ch.add_argument("--temperature", type=float, default=0.7, help="softmax temperature (0: greedy)")
    ch.add_argument("--top-k", type=int, default=50, help="sample from the k most likely tokens only")
    ch.add_argument("--top-p", type=float, default=None, help="nucleus sampling: smallest set with this mass")
    ch.add_argument("--seed", type=int, default=0, help="random seed of the sampler")
    ch.add_argument(
        "--verbose", "-v", action="store_true", help="say on stderr how much history fits the window"
    )
    ch.set_defaults(fn=cmd_chat)
    ui = sub.add_parser(
        "ui",
        help="MLflow's UI on the store of params.yaml and Prefect's UI on .prefect/, on loopback",
        formatter_class=fmt,
    )
    ui.add_argument("--host", default="127.0.0.1", help="address MLflow's UI serves on")
    ui.add_argument("--port", type=int, default=5000, help="MLflow UI port")
    ui.add_argument("--prefect-port", type=int, default=4200, help="Prefect UI/API port (0: a free one)")
    ui.add_argument(
        "--no-prefect", dest="prefect", action="store_false", help="MLflow's UI only (default: both)"
    )
    ui.set_defaults(fn=cmd_ui)
    dg = sub.add_parser(
        "dag",
        help="check (or write) each stage's code deps in dvc.yaml against its computed import closure",
        formatter_class=fmt,
    )
    dg.add_argument("--write", action="store_true", help="rewrite dvc.yaml's .py deps (default: only check)")
    dg.set_defaults(fn=cmd_dag)
    from pipeline import results, seeds

    seeds.add_parser(sub, fmt)
    results.add_parser(sub, fmt)
    args, extra = ap.parse_known_args(argv)
    if extra:  # options of `dvc push` / `dvc exp show` that argparse's REMAINDER does not take first
        if getattr(args, "dvc_args", None) is None:
            ap.error(f"unrecognized arguments: {' '.join(extra)}")
        args.dvc_args = [*extra, *args.dvc_args]
    try:
        return args.fn(args)
    except LineageError as e:
        print(f"error: lineage: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader went away (`lineage chat ... | head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's own flush at exit must not fail again
        return 141  # 128 + SIGPIPE, as a shell reports a writer whose reader closed the pipe


if __name__ == "__main__":
    sys.exit(main())
