"""`lineage`: the common cases around `dvc repro` — run (with one Prefect server for the whole
pipeline run), status, sample (generations from a trained model), and the MLflow UI."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import yaml

from pipeline.config import flatten, load_params
from pipeline.errors import LineageError
from pipeline.orchestration import QUIET_ENV


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def prefect_server(root: Path, timeout_s: float = 90.0) -> Iterator[str | None]:
    """A local Prefect server for one pipeline run; yields its API URL (None if it would not start,
    in which case each flow falls back to Prefect's temporary per-process server)."""
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, **QUIET_ENV, "PREFECT_HOME": str(root / ".prefect")}
    log = (root / ".prefect").joinpath("server.log")
    log.parent.mkdir(exist_ok=True)
    prefect = Path(sys.executable).with_name("prefect")
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=fh, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and proc.poll() is None and not _healthy(url):
            time.sleep(0.25)
        if _healthy(url):
            yield url
        else:
            print(
                f"lineage: Prefect server did not start (see {log}); flows use temporary servers",
                file=sys.stderr,
            )
            yield None
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


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


def cmd_run(args: argparse.Namespace) -> int:
    root = Path.cwd()
    if not (root / "dvc.yaml").is_file():
        raise LineageError(f"{root}: no dvc.yaml here; run lineage from the project root")
    if args.profile:
        cmd = ["dvc", "exp", "run", *profile_overrides(root, args.profile), *args.stages]
    else:
        cmd = ["dvc", "repro", *args.stages]
    load_params(root / "params.yaml")  # fail before any stage starts on a bad params file
    with prefect_server(root) if args.server else contextlib.nullcontext(None) as url:
        print("lineage:", " ".join(cmd), f"(Prefect API {url or 'temporary per stage'})", flush=True)
        return subprocess.call(cmd, env=pipeline_env(root, url))


def cmd_status(_: argparse.Namespace) -> int:
    env = pipeline_env(Path.cwd(), None)
    rc = subprocess.call(["dvc", "status"], env=env)
    return rc or subprocess.call(["dvc", "metrics", "show"], env=env)


def cmd_ui(args: argparse.Namespace) -> int:
    params = load_params(Path.cwd() / "params.yaml")
    return subprocess.call(
        [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", params.common.tracking_uri,
         "--port", str(args.port)],
        env=pipeline_env(Path.cwd(), None),
    )  # fmt: skip


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
    run.add_argument("--profile", help="apply profiles/NAME.yaml as `dvc exp run -S` overrides")
    run.add_argument("--no-server", dest="server", action="store_false", help="no shared Prefect server")
    run.set_defaults(fn=cmd_run)
    sub.add_parser("status", help="dvc status and dvc metrics show").set_defaults(fn=cmd_status)
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
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(fn=cmd_ui)
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except LineageError as e:
        print(f"error: lineage: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
