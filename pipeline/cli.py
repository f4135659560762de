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
    params = load_params(root / "params.yaml")  # fail before any stage starts on a bad params file
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
    env = pipeline_env(root, None, verbose=args.verbose)
    overrides: dict[str, str] = {}
    if args.profile:
        env[PROFILE_ENV] = os.environ[PROFILE_ENV] = args.profile  # the parent run is tagged with it too
        sets = profile_overrides(root, args.profile)[1::2]
        overrides = dict(a.lstrip("+").split("=", 1) for a in sets)
    parent = start_pipeline_run(params, root, " ".join(["lineage", *sys.argv[1:]]), overrides)
    env[PARENT_ENV] = parent
    rc = 1
    with prefect_server(root) if args.server else contextlib.nullcontext(None) as url:
        if url:
            env["PREFECT_API_URL"] = url
        print(
            "lineage:", " ".join(cmd), f"(Prefect API {url or 'per stage'}; MLflow run {parent})", flush=True
        )
        proc = subprocess.Popen(cmd, env=env)
        try:
            rc = proc.wait()
        except KeyboardInterrupt:  # the stage got the Ctrl-C too: let dvc record it before we go
            try:
                proc.wait(timeout=30)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                proc.terminate()
            rc = 130
        end_pipeline_run(params, root, parent, ok=rc == 0)
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
    if rc == 0:
        report = root / "data" / "report" / "report.html"
        where = (
            f"logged to MLflow run {parent} (`dvc exp apply` brings data/report/ back)"
            if args.profile
            else str(report.relative_to(root))
            if report.is_file()
            else "not made (run `dvc repro report`)"
        )
        print(f"lineage: report: {where}\nlineage: dashboards (MLflow + Prefect): lineage ui", flush=True)
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
    return subprocess.call(["dvc", "push", *args.dvc_args], env=pipeline_env(Path.cwd(), None))


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


def cmd_checkpoints(_: argparse.Namespace) -> int:
    rows = checkpoint_index(Path.cwd())
    if not rows:
        print("lineage: no checkpoints yet (checkpoints/<stage>/<run key>/ckpt.pt)")
        return 0
    for r in rows:
        shape = (
            f"{r['arch']} {r['n_layer']}x{r['n_head']}x{r['n_embd']} vocab {r['vocab_size']}"
            if "arch" in r
            else "shape unknown"
        )
        step = (
            f"max_steps {r['max_steps']}"
            if "max_steps" in r
            else f"steps {r['steps']}"
            if "steps" in r
            else ""
        )
        tok = "own tokenizer" if r["tokenizer"] else "no tokenizer beside it"
        print(f"{r['path']}  {r['modified']}  {shape}  {step}  {r.get('profile', '')}  {tok}")
    return 0


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
        if ckpt.with_name("tokenizer.json").is_file():  # the tokenizer it was trained with
            tokenizer_file = ckpt.with_name("tokenizer.json")
        source = f"{ckpt} (step {state.get('step', '?')})"
    else:
        model = load_model(root / "data" / args.stage / "model")
        source = str(root / "data" / args.stage / "model")
    tokenizer = load_tokenizer(Path(args.tokenizer) if args.tokenizer else tokenizer_file)
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


def fit_context(chat: Any, history: list[dict[str, str]], budget: int) -> tuple[list[int], int]:
    """The conversation as a prompt of at most ``budget`` tokens: the oldest turns go first, and a last
    turn longer than the window keeps its end (the model then sees the end of the question). Returns
    the ids and how many earlier turns were left out."""
    for dropped in range(len(history)):
        ids = chat.encode_prompt(history[dropped:])
        if len(ids) <= budget:
            return ids, dropped
    return chat.encode_prompt(history[-1:])[-budget:], len(history) - 1


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
    history: list[dict[str, str]] = []
    try:
        while True:
            if tty:
                try:
                    line = input("you> ")
                except EOFError:
                    print(file=sys.stderr)
                    break
            else:
                line = sys.stdin.readline()
                if not line:
                    break
            if not line.strip():
                continue
            history.append({"role": "user", "content": line.strip()})
            ids, dropped = fit_context(chat, history, budget)
            if args.verbose:
                print(
                    f"lineage: context {len(ids)} tokens, {dropped} earlier turns left out", file=sys.stderr
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
    run.add_argument("--name", help="the experiment's name (with --profile; default: DVC picks one)")
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
    ex.add_argument("dvc_args", nargs=argparse.REMAINDER, help="more `dvc exp show` options (e.g. --md)")
    ex.set_defaults(fn=cmd_exp)
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
    push.add_argument("dvc_args", nargs=argparse.REMAINDER, help="more `dvc push` options (e.g. -r NAME)")
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
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except LineageError as e:
        print(f"error: lineage: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
