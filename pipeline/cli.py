"""`lineage`: the common cases around `dvc repro` — run (with one Prefect server for the whole
pipeline run), status, sample (generations from a trained model), and the MLflow UI."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.config import flatten, load_params
from pipeline.errors import LineageError
from pipeline.io import stale_temp_dirs
from pipeline.orchestration import QUIET_ENV, prefect_server
from pipeline.tracking import resolve_tracking_uri


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


def pipeline_env(root: Path, api_url: str | None) -> dict[str, str]:
    env = {**os.environ, **{k: os.environ.get(k, v) for k, v in QUIET_ENV.items()}}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)


def restore_workspace(root: Path, env: dict[str, str]) -> bool:
    """Put params.yaml, dvc.lock, metrics/ and data/ back to the last commit's state (an experiment
    changes all four in the workspace). Returns False when that could not be done."""
    tracked = [
        p
        for p in ("params.yaml", "dvc.lock", "metrics")
        if _git(root, "ls-files", "--error-unmatch", p).returncode == 0
    ]
    if tracked and _git(root, "checkout", "HEAD", "--", *tracked).returncode != 0:
        return False
    untracked = _git(root, "ls-files", "--others", "--exclude-standard", "metrics", "dvc.lock").stdout.split()
    for f in untracked:
        (root / f).unlink(missing_ok=True)
    return subprocess.call(["dvc", "checkout", "--quiet"], cwd=root, env=env) == 0


def cmd_run(args: argparse.Namespace) -> int:
    root = Path.cwd()
    if not (root / "dvc.yaml").is_file():
        raise LineageError(f"{root}: no dvc.yaml here; run lineage from the project root")
    load_params(root / "params.yaml")  # fail before any stage starts on a bad params file
    if args.profile:
        cmd = ["dvc", "exp", "run", *profile_overrides(root, args.profile), *args.stages]
        if args.name:
            cmd[3:3] = ["--name", args.name]
        if _git(root, "rev-parse", "HEAD").returncode != 0:
            raise LineageError("--profile runs a DVC experiment, which needs a git commit: commit first")
        if _git(root, "status", "--porcelain", "--", "params.yaml").stdout.strip():
            raise LineageError(
                "params.yaml has uncommitted changes: commit them (or `git checkout params.yaml`) "
                "first, since the workspace is restored to the last commit after the experiment"
            )
    else:
        cmd = ["dvc", "repro", *args.stages]
    env = pipeline_env(root, None)
    with prefect_server(root) if args.server else contextlib.nullcontext(None) as url:
        if url:
            env["PREFECT_API_URL"] = url
        print("lineage:", " ".join(cmd), f"(Prefect API {url or 'per stage'})", flush=True)
        try:
            rc = subprocess.call(cmd, env=env)
        except KeyboardInterrupt:
            rc = 130
    if args.profile:
        before = _git(root, "rev-parse", "--short", "HEAD").stdout.strip()
        restored = restore_workspace(root, env)
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
    return rc


def cmd_restore(_: argparse.Namespace) -> int:
    root = Path.cwd()
    if restore_workspace(root, pipeline_env(root, None)):
        print("lineage: params.yaml, dvc.lock, metrics/ and data/ are back at the last commit")
        return 0
    print(
        "lineage: params.yaml, dvc.lock and metrics/ are back at the last commit; some outputs of that "
        "commit are not in the DVC cache (`dvc pull` or `dvc repro` brings them)",
        file=sys.stderr,
    )
    return 1


# dependency hashes are one column each in `dvc exp show`; the metrics and params tell experiments apart
EXP_DROP = "^(data|stages|pipeline|bench)/"


def cmd_exp(args: argparse.Namespace) -> int:
    cmd = ["dvc", "exp", "show", "--only-changed", "--drop", EXP_DROP, "--precision", "4", *args.dvc_args]
    return subprocess.call(cmd, env=pipeline_env(Path.cwd(), None))


def cmd_status(_: argparse.Namespace) -> int:
    root = Path.cwd()
    env = pipeline_env(root, None)
    stale = stale_temp_dirs(root / "data")
    for p in stale:
        print(f"lineage: {p.relative_to(root)} was left by a killed run (removed when any stage next starts)")
    rc = subprocess.call(["dvc", "status"], env=env)
    return rc or subprocess.call(["dvc", "metrics", "show"], env=env)


def cmd_ui(args: argparse.Namespace) -> int:
    """MLflow's UI on the project's store until Ctrl-C or SIGTERM, which stop it and its workers."""
    from pipeline import procs

    params = load_params(Path.cwd() / "params.yaml")
    uri = resolve_tracking_uri(params.common.tracking_uri, Path.cwd())
    proc = procs.spawn(
        [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", uri,
         "--host", args.host, "--port", str(args.port)],
        env=pipeline_env(Path.cwd(), None),
    )  # fmt: skip
    print(f"lineage: MLflow UI at http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    with procs.terminate_on_signals(lambda: procs.stop(proc)):
        try:
            return proc.wait()
        except KeyboardInterrupt:
            return 130
        finally:
            procs.stop(proc)


def cmd_sample(args: argparse.Namespace) -> int:
    """Generations from a stage's saved model (data/<stage>/model) or from a training checkpoint."""
    import torch

    from pipeline.model.export import load_model
    from pipeline.model.gpt import GPT, GPTConfig
    from pipeline.tokenizer import load_tokenizer

    root = Path.cwd()
    if args.checkpoint:
        from pipeline.train.checkpoint import load_checkpoint

        state = load_checkpoint(Path(args.checkpoint))
        model = GPT(GPTConfig.from_dict(state["model_config"]))
        model.load_state_dict(state["model"])
    else:
        model = load_model(root / "data" / args.stage / "model")
    tokenizer = load_tokenizer(
        Path(args.tokenizer) if args.tokenizer else root / "data" / "tokenize" / "tokenizer.json"
    )
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lineage", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="dvc repro (or dvc exp run with a profile) with one Prefect server")
    run.add_argument("stages", nargs="*", help="stages to run (default: the whole DAG)")
    run.add_argument(
        "--profile",
        help="run a DVC experiment with profiles/NAME.yaml applied (`dvc exp run -S ...`), then restore "
        "the workspace to the last commit",
    )
    run.add_argument("--name", help="the experiment's name (with --profile)")
    run.add_argument("--no-server", dest="server", action="store_false", help="no shared Prefect server")
    run.set_defaults(fn=cmd_run)
    sub.add_parser(
        "status", help="dvc status and dvc metrics show; names folders left by killed runs"
    ).set_defaults(fn=cmd_status)
    ex = sub.add_parser(
        "exp",
        help="experiments side by side: `dvc exp show --only-changed` without the dependency-hash columns",
    )
    ex.add_argument("dvc_args", nargs=argparse.REMAINDER, help="more `dvc exp show` options (e.g. --md)")
    ex.set_defaults(fn=cmd_exp)
    sub.add_parser(
        "restore",
        help="put params.yaml, dvc.lock, metrics/ and data/ back to the last commit (after `dvc exp run`)",
    ).set_defaults(fn=cmd_restore)
    sm = sub.add_parser("sample", help="print generations from a stage's model")
    sm.add_argument(
        "--stage", default="pretrain", help="stage whose data/<stage>/model to load (default: pretrain)"
    )
    sm.add_argument("--checkpoint", help="a training checkpoint (ckpt.pt) instead of a stage's model")
    sm.add_argument("--tokenizer", help="tokenizer.json (default: data/tokenize/tokenizer.json)")
    sm.add_argument(
        "--prompt", action="append", help="prompt text (repeatable; default: start of a document)"
    )
    sm.add_argument("--tokens", type=int, default=100)
    sm.add_argument("--num-samples", type=int, default=1)
    sm.add_argument("--temperature", type=float, default=0.8)
    sm.add_argument("--top-k", type=int, default=50)
    sm.add_argument("--top-p", type=float, default=None)
    sm.add_argument("--seed", type=int, default=0)
    sm.set_defaults(fn=cmd_sample)
    ui = sub.add_parser("ui", help="the MLflow UI on the tracking store of params.yaml")
    ui.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1)")
    ui.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    ui.set_defaults(fn=cmd_ui)
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except LineageError as e:
        print(f"error: lineage: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
