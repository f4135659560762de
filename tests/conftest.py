"""Shared fixtures: small real corpora and params for running stages in a temporary project root."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import Params, parse_params

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")  # the temporary DVC projects of tests
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


def shipped_params() -> dict[str, Any]:
    """params.yaml as committed: `dvc exp run` leaves the workspace copy changed, and a test must
    not depend on what the last experiment set."""
    import subprocess

    import yaml

    out = subprocess.run(
        ["git", "show", "HEAD:params.yaml"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return yaml.safe_load(out.stdout if out.returncode == 0 else (ROOT / "params.yaml").read_text())


WORDS = [
    "river",
    "mountain",
    "garden",
    "window",
    "language",
    "history",
    "science",
    "market",
    "village",
    "teacher",
    "student",
    "music",
    "winter",
    "summer",
    "morning",
    "evening",
    "doctor",
    "library",
    "machine",
    "engine",
    "report",
    "journey",
    "forest",
    "ocean",
    "bridge",
    "castle",
    "kitchen",
    "letter",
    "animal",
    "country",
    "theory",
    "method",
    "number",
    "surface",
    "signal",
    "answer",
]
GLUE = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "that",
    "with",
    "is",
    "was",
    "for",
    "on",
    "as",
    "by",
    "have",
    "be",
    "it",
    "from",
    "at",
]


def prose(rng: random.Random, n_words: int) -> str:
    """English-like prose: content words mixed with function words, sentences and paragraphs."""
    out, sentence = [], []
    for i in range(n_words):
        sentence.append(rng.choice(GLUE) if i % 2 else rng.choice(WORDS))
        if len(sentence) >= rng.randint(8, 14):
            out.append(" ".join(sentence).capitalize() + ".")
            sentence = []
    if sentence:
        out.append(" ".join(sentence).capitalize() + ".")
    paras = [" ".join(out[i : i + 4]) for i in range(0, len(out), 4)]
    return "\n\n".join(paras)


def junk(rng: random.Random, n_words: int) -> str:
    """Web-like boilerplate: menus, prices, symbols."""
    items = [
        "Home",
        "Login",
        "Cart",
        "$19.99",
        "#deal",
        "SALE!!!",
        "Click",
        "here",
        ">>",
        "Menu",
        "FAQ",
        "(c)2024",
    ]
    return "\n".join(" | ".join(rng.choice(items) for _ in range(6)) for _ in range(max(1, n_words // 6)))


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """One Prefect server for the tests that run stages through Prefect (a task runner other than
    ``sync``), as `lineage run` gives a pipeline run: such a stage then costs a second of
    orchestration instead of a server start. Opt-in: the other tests (``files_params`` runs stages
    with ``task_runner: sync``) start no server at all."""
    from pipeline.orchestration import prefect_server

    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    with prefect_server(tmp_path_factory.mktemp("prefect")) as url:
        if url:
            os.environ["PREFECT_API_URL"] = url
        try:
            yield url
        finally:
            os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine they can stall."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def rng() -> random.Random:
    return random.Random(0)


def two_ranks_and_one_process(script_text: str, tmp_path: Path) -> tuple[Path, Path]:
    """Run a training script under torchrun with 2 ranks (argv: OUT "1") and as one process (argv:
    OUT "2", for 2-step accumulation), each with its own output folder; both must exit 0."""
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(script_text)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    ddp, one = tmp_path / "ddp", tmp_path / "one"
    for out, cmd in ((ddp, [str(torchrun), "--standalone", "--nproc_per_node=2", str(script), str(ddp), "1"]),
                     (one, [sys.executable, str(script), str(one), "2"])):  # fmt: skip
        out.mkdir()
        run = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
        assert run.returncode == 0, run.stderr[-2000:]
    return ddp, one


def files_params(tmp: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Params for a project in ``tmp`` whose sources are local files written by `write_corpus`."""
    from pipeline.config import deep_merge

    base = {
        "common": {"tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}", "shard_size": 20, "task_runner": "sync"},
        "crawl": {
            "sources": {
                "ref": {"kind": "files", "globs": ["corpus/ref/*.txt"], "role": "reference"},
                "web": {"kind": "files", "globs": ["corpus/web/*.jsonl"], "role": "web"},
            }
        },
        "clean": {"min_words": 20, "languages": ["en"]},
        "quality": {"positives": ["ref"], "negatives": ["web"], "alpha": 3.0},
        "dedup": {"priority": ["ref", "web"]},
        "mix": {"weights": {"ref": 0.6, "web": 0.4}},
    }
    return deep_merge(base, extra or {})


def write_corpus(tmp: Path, n_ref: int = 40, n_web: int = 60, seed: int = 0) -> None:
    import json

    r = random.Random(seed)
    (tmp / "corpus" / "ref").mkdir(parents=True, exist_ok=True)
    (tmp / "corpus" / "web").mkdir(parents=True, exist_ok=True)
    for i in range(n_ref):
        (tmp / "corpus" / "ref" / f"doc{i:03d}.txt").write_text(prose(r, r.randint(120, 300)))
    with (tmp / "corpus" / "web" / "pages.jsonl").open("w") as fh:
        for i in range(n_web):
            # web text: mostly prose too (so it passes the heuristics), but in a different register
            text = prose(r, r.randint(80, 200)).replace("the ", "the best ").replace("of ", "of our ")
            fh.write(json.dumps({"text": text + "\n\n" + ("Buy now at our shop today. " * 2), "i": i}) + "\n")


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, Params]:
    write_corpus(tmp_path)
    return tmp_path, parse_params(files_params(tmp_path))


@pytest.fixture(scope="module")
def tok():
    """A small BPE tokenizer of chat-like text (the chat and bad-input tests)."""
    from pipeline.config import TokenizeConfig
    from pipeline.tokenizer import train_tokenizer

    text = ["What is the sum of two and three? Five. Which module defines dumps? json. Hello there."] * 20
    return train_tokenizer(text, TokenizeConfig(vocab_size=300, min_frequency=1))
