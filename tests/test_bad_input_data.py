"""Bad data, as real sets and damaged pipeline files bring it: each case is one line naming the file
(and the record line, or the stage to rerun), or a drop that is counted; never a traceback, a loop
without end or a silent wrong value. Also the commands around the data: chat, sample, push, restore."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from pipeline.config import TokenizeConfig, parse_params
from pipeline.errors import LineageError
from pipeline.feedback.config import ComparisonSource, DemonstrationSource
from pipeline.feedback.data import comparisons, demonstrations, read_records
from pipeline.model.export import save_model
from pipeline.tokenizer import save_tokenizer, train_tokenizer
from tests.conftest import ROOT, files_params
from tests.test_remote import git, sh

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def deadline():
    """A parse that loops forever fails the test after 10 s instead of eating the machine's memory."""

    def stop(*_):
        raise TimeoutError("still running after 10 s")

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def demos(tmp: Path, lines: list, layout: str = "auto", **kw) -> list[dict]:
    write_lines(tmp / "d.jsonl", lines)
    src = DemonstrationSource(path="d.jsonl", layout=layout)
    records, origin = read_records(src, tmp, "instructions.demonstrations")
    return demonstrations(records, src.layout, origin, **kw)


def ranked(tmp: Path, lines: list, layout: str = "auto", **kw) -> list[dict]:
    write_lines(tmp / "c.jsonl", lines)
    src = ComparisonSource(path="c.jsonl", layout=layout)
    records, origin = read_records(src, tmp, "instructions.comparisons")
    return comparisons(records, src.layout, origin, **kw)


GOOD_DOLLY = {"instruction": "Say hi.", "response": "Hi!"}
GOOD_PAIR = {"prompt": "Q?", "chosen": "good", "rejected": "bad"}
GOOD_RANKED = {"prompt": "Q?", "responses": ["a", "b"], "ranks": [0, 1]}
OASST_CYCLE = [
    {"message_id": "1", "parent_id": "3", "role": "prompter", "text": "Hello?"},
    {"message_id": "2", "parent_id": "1", "role": "assistant", "text": "Hi.", "rank": 0},
    {"message_id": "3", "parent_id": "2", "role": "prompter", "text": "More?"},
]


# ------------------------------------------------------------- real instruction and comparison data
@pytest.mark.parametrize(
    "kind, lines, needle",
    [
        ("demo", [GOOD_DOLLY, {"response": "no instruction"}], r"d\.jsonl:2: no 'instruction' field"),
        ("demo", [GOOD_DOLLY, {"instruction": 5, "response": "x"}], r"d\.jsonl:2: 'instruction' must be a string, got int"),
        ("demo", [GOOD_DOLLY, "[1, 2]"], r"d\.jsonl:2: expected a JSON object, got list"),
        ("demo", [{"prompt": "P", "response": "R"}, {"prompt": None, "response": "R"}], r"d\.jsonl:2: 'prompt' must be a string, got null"),
        ("demo", [{"prompt": "P", "response": "R"}, "", {"prompt": "P2", "response": None}], r"d\.jsonl:3: 'response' must be a string, got null"),
        ("demo", OASST_CYCLE, r"d\.jsonl:\d: message_id '\d' is its own ancestor"),
        ("cmp", [GOOD_RANKED, {"prompt": "Q", "responses": ["a", "b"], "ranking": ["x", "y"]}], r"c\.jsonl:2: ranking must be a permutation of the integers"),
        ("cmp", [GOOD_RANKED, {"prompt": "Q", "responses": ["a", "b"], "ranking": [0.0, 1.0]}], r"c\.jsonl:2: ranking must be a permutation of the integers"),
        ("cmp", [GOOD_RANKED, {"prompt": "Q", "responses": ["a", "b"], "ranks": [True, False]}], r"c\.jsonl:2: ranks must hold 2 integers"),
        ("cmp", [GOOD_RANKED, {"prompt": "Q", "responses": "ab", "ranks": [0, 1]}], r"c\.jsonl:2: responses must be a list of strings"),
        ("cmp", [GOOD_RANKED, {"prompt": None, "responses": ["a", "b"], "ranks": [0, 1]}], r"c\.jsonl:2: 'prompt' must be a string, got null"),
        ("cmp", [GOOD_PAIR, "7"], r"c\.jsonl:2: expected a JSON object, got int"),
        ("cmp", [GOOD_PAIR, {"prompt": "Q", "chosen": None, "rejected": "b"}], r"c\.jsonl:2: 'chosen' must be a string, got null"),
    ],
    ids=["missing-field", "wrong-type", "non-object-line", "null-prompt", "null-response", "oasst-cycle",
         "ranking-not-int", "ranking-floats", "ranks-bools", "responses-string", "ranked-null-prompt",
         "pair-non-object", "null-chosen"],
)  # fmt: skip
def test_malformed_real_data_is_one_line_naming_file_and_line(tmp_path, deadline, kind, lines, needle):
    with pytest.raises(LineageError, match=needle) as e:
        (demos if kind == "demo" else ranked)(tmp_path, lines)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "kind, lines, kw, kept, reason",
    [
        ("cmp", [GOOD_PAIR, {"prompt": "Q2", "chosen": "same", "rejected": "same"}], {}, 1, "identical_responses"),
        ("cmp", [GOOD_PAIR, {"prompt": "Q?", "chosen": "bad", "rejected": "good"},
                 {"prompt": "Q3", "chosen": "x", "rejected": "y"}], {}, 1, "contradictory"),
        ("cmp", [GOOD_PAIR, {"prompt": "Q2", "chosen": "y" * 500, "rejected": "z"}], {"max_chars": 100}, 1, "too_long"),
        ("demo", [GOOD_DOLLY, {"instruction": "Long?", "response": "w" * 5000}], {"max_chars": 1000}, 1, "too_long"),
    ],
    ids=["chosen-equals-rejected", "opposite-rankings", "long-comparison", "long-demonstration"],
)  # fmt: skip
def test_data_that_teaches_nothing_or_too_much_is_dropped_and_counted(
    tmp_path, kind, lines, kw, kept, reason
):
    dropped: Counter = Counter()
    out = (demos if kind == "demo" else ranked)(tmp_path, lines, dropped=dropped, **kw)
    assert len(out) == kept
    assert dropped[reason] == len(lines) - kept and sum(dropped.values()) == len(lines) - kept


@pytest.mark.slow
def test_the_instructions_stage_counts_what_it_dropped(tmp_path, capsys):
    from pipeline.stage import run_stage
    from stages import instructions

    rows = [{"prompt": f"Question {i}?", "response": f"Answer {i}."} for i in range(6)]
    rows.append({"prompt": "A long one?", "response": "word " * 20_000})  # 100 kB: past the cap
    write_lines(tmp_path / "d.jsonl", rows)
    data = files_params(tmp_path, {"instructions": {
        "demonstrations": {"path": "d.jsonl", "max_chars": 2000}, "sizes": {"sft": 3, "rm": 1, "ppo": 1, "eval": 1},
    }})  # fmt: skip
    metrics = run_stage("instructions", instructions.body, tmp_path, parse_params(data))
    assert metrics["dropped"]["demonstrations"] == {"too_long": 1}
    assert "instructions: dropped demonstrations: 1 longer than max_chars" in capsys.readouterr().err
    assert all(
        len(json.loads(x)["reference"]) < 2000 for x in (tmp_path / "data/instructions/sft.jsonl").open()
    )


# ------------------------------------------------------------------------------------------ params
@pytest.mark.parametrize(
    "section, value, key",
    [("common", -1, "common.seed"), ("common", 2**70, "common.seed"), ("ppo", -5, "ppo.seed")],
)
def test_a_seed_out_of_range_is_refused_with_its_key(tmp_path, section, value, key):
    data = files_params(tmp_path, {section: {"seed": value}})
    with pytest.raises(LineageError, match=rf"{key}: Input should be"):
        parse_params(data, "params.yaml")


@pytest.mark.parametrize(
    "evaluate, needle",
    [
        (
            {"models": ["pretrain", "sft/x"]},
            r"evaluate\.models: 'sft/x': only finetune names one of its models",
        ),
        (
            {"curve_tasks": ["cloze", "clozee"]},
            r"evaluate\.curve_tasks: 'clozee' is not among evaluate\.tasks",
        ),
    ],
    ids=["model-with-a-name", "unknown-curve-task"],
)
def test_evaluate_params_that_would_be_ignored_are_refused(tmp_path, evaluate, needle):
    with pytest.raises(LineageError, match=needle):
        parse_params(files_params(tmp_path, {"evaluate": evaluate}), "params.yaml")


# ------------------------------------------------------------------------------ damaged pipeline files
from tests.test_chat import tiny  # noqa: E402 - the chat tests' model (their tokenizer `tok` is in conftest)


def _reward_model(root: Path, tok) -> Path:
    from pipeline.model.reward import RewardModel, save_reward_model

    d = root / "data" / "reward" / "model"
    save_reward_model(RewardModel(tiny(tok.get_vocab_size())), d, "abc", {})
    return d


def _split(root: Path, name: str) -> Path:
    d = root / "data" / "instructions"
    d.mkdir(parents=True, exist_ok=True)
    return d / name


def _task(root: Path, side: str) -> Path:
    d = root / "data" / "evaluate" / "tasks" / "cloze"
    d.mkdir(parents=True, exist_ok=True)
    for s in ("train", "test"):
        write_lines(d / f"{s}.jsonl", [{"context": "a b", "completion": " c"}])
    return d / f"{side}.jsonl"


def _read(kind: str, root: Path, tok) -> None:
    """What the stage that reads ``kind`` does with it."""
    if kind in ("reward.json", "reward_head.safetensors"):
        from pipeline.model.reward import load_reward_model

        load_reward_model(root / "data" / "reward" / "model", "abc")
    elif kind == "meta.json":
        from pipeline.tokenizer import read_meta

        read_meta(root / "data" / "tokenize")
    elif kind == "config.json":
        from pipeline.model.export import load_model

        load_model(root / "data" / "sft" / "model")
    elif kind == "sft.jsonl":
        from pipeline.feedback.data import read_split

        read_split(root / "data" / "instructions", "sft")
    elif kind == "comparisons.jsonl":
        from pipeline.feedback import data

        data.read_jsonl(root / "data" / "instructions" / "comparisons.jsonl", data.COMPARISON_FIELDS)
    elif kind == "task":
        from pipeline.eval.scoring import read_task_dir

        read_task_dir(root / "data" / "evaluate" / "tasks" / "cloze")
    elif kind == "step_10.pt":
        from pipeline.eval.lm import load_kept

        # a checkpoint pretrain listed (its hash checked by kept_checkpoints) is loaded without unpickling
        load_kept(
            root / "checkpoints" / "pretrain" / "k" / "step_10.pt",
            tiny(tok.get_vocab_size()).config.to_dict(),
        )
    elif kind == "metrics.json":
        from pipeline import report

        report.build(root, root / "out", ["sft"], {}, {}, {})
    elif kind == "chat.json":
        from pipeline.cli import main

        cwd, stdin = os.getcwd(), sys.stdin
        os.chdir(root)
        sys.stdin = io.StringIO("")  # no conversation: only the model's files are read
        try:
            rc = main(["chat", "--stage", "sft"])
        finally:
            os.chdir(cwd)
            sys.stdin = stdin
        assert rc == 1
        raise LineageError("see stderr")


def _damage(kind: str, root: Path, tok, how: str) -> Path:
    save_tokenizer(tok, root / "data" / "tokenize" / "tokenizer.json")
    if kind in ("reward.json", "reward_head.safetensors"):
        path = _reward_model(root, tok) / kind
    elif kind == "meta.json":
        path = root / "data" / "tokenize" / "meta.json"
    elif kind in ("config.json", "chat.json"):
        save_model(tiny(tok.get_vocab_size()), root / "data" / "sft" / "model")
        path = root / "data" / "sft" / "model" / kind
    elif kind in ("sft.jsonl", "comparisons.jsonl"):
        path = _split(root, kind)
    elif kind == "task":
        path = _task(root, "test")
    elif kind == "step_10.pt":
        path = root / "checkpoints" / "pretrain" / "k" / "step_10.pt"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")
    elif kind == "metrics.json":
        path = root / "data" / "sft" / "metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
    if how == "garbled":
        path.write_bytes(b"\x00\xffnot what it should be {")
    elif how == "wrong-shape":  # valid JSON, not what the reader expects
        path.write_text("[1, 2]\n" if path.suffix != ".jsonl" else '{"x": 1}\n')
    elif how == "pickle":
        import pickle

        path.write_bytes(pickle.dumps({"model": object()}))
    return path


DAMAGED = [
    ("meta.json", "garbled", "tokenize"), ("meta.json", "wrong-shape", "tokenize"),
    ("config.json", "garbled", "sft"), ("chat.json", "garbled", "sft"), ("chat.json", "wrong-shape", "sft"),
    ("reward.json", "garbled", "reward"), ("reward.json", "wrong-shape", "reward"),
    ("reward_head.safetensors", "garbled", "reward"),
    ("sft.jsonl", "garbled", "instructions"), ("sft.jsonl", "wrong-shape", "instructions"),
    ("comparisons.jsonl", "wrong-shape", "instructions"),
    ("task", "garbled", "evaluate"), ("task", "wrong-shape", "evaluate"),
    ("metrics.json", "garbled", "sft"),
    ("step_10.pt", "pickle", None),
]  # fmt: skip


@pytest.mark.parametrize("kind, how, stage", DAMAGED, ids=[f"{k}-{h}" for k, h, _ in DAMAGED])
def test_a_damaged_pipeline_file_names_itself_and_the_stage_to_rerun(tmp_path, tok, capsys, kind, how, stage):
    path = _damage(kind, tmp_path, tok, how)
    with pytest.raises(LineageError) as e:
        _read(kind, tmp_path, tok)
    said = capsys.readouterr().err.strip() if kind == "chat.json" else str(e.value)
    assert "\n" not in said and "Traceback" not in said, said
    assert path.name in said, said
    assert (f"dvc repro -f {stage}" in said) if stage else f"rm {path}" in said, said


def test_a_missing_input_is_not_reported_as_an_output_failure(tmp_path):
    from pipeline.io import atomic_dir

    (tmp_path / "data" / "pretrain").mkdir(parents=True)
    with pytest.raises(LineageError) as e, atomic_dir(tmp_path / "data" / "evaluate"):
        (tmp_path / "data" / "pretrain" / "model" / "config.json").read_text()
    assert "cannot write" not in str(e.value)
    assert "data/pretrain/model/config.json: missing; run `dvc repro pretrain`" in str(e.value)


# -------------------------------------------------------------------------------- evaluate's inputs
@pytest.mark.parametrize(
    "test_lines, needle",
    [
        (
            [b'{"context": "a", "choices": ["x", "y"], "label": 0}\n', b'{"context": "caf\xe9"}\n'],
            r"test\.jsonl:2: not UTF-8 text",
        ),
        (
            [b'{"context": "a", "choices": "xy", "label": 0}\n'],
            r"test\.jsonl: line 1: choices must be a list",
        ),
        ([], r"test\.jsonl: no items"),
    ],
    ids=["non-utf8", "choices-string", "empty-test"],
)
def test_an_external_task_folder_is_checked_side_by_side(tmp_path, test_lines, needle):
    from pipeline.eval.scoring import read_task_dir

    d = tmp_path / "mytask"
    d.mkdir()
    (d / "train.jsonl").write_text(json.dumps({"context": "a", "choices": ["x", "y"], "label": 1}) + "\n")
    (d / "test.jsonl").write_bytes(b"".join(test_lines))
    with pytest.raises(LineageError, match=needle):
        read_task_dir(d)


@pytest.mark.parametrize("text", ["task: [unclosed\n", "- just\n- a list\n", b"task: caf\xe9\n"],
                         ids=["malformed", "not-a-mapping", "non-utf8"])  # fmt: skip
def test_a_bad_external_task_yaml_is_one_line(tmp_path, text):
    from pipeline.eval.harness import check_external

    path = tmp_path / "mine.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(LineageError, match=r"evaluate\.external: .*mine\.yaml is not a"):
        check_external(None, [str(path)])


# ----------------------------------------------------------------------------------- lineage chat
def _chat_project(root: Path, tok, block: int = 48) -> None:
    save_tokenizer(tok, root / "data" / "tokenize" / "tokenizer.json")
    save_model(tiny(tok.get_vocab_size(), block), root / "data" / "sft" / "model")


def _chat(root: Path, monkeypatch, data: bytes, *args: str) -> tuple[int, str, int]:
    """`lineage chat` in-process on ``data`` piped in: (exit code, stderr, characters encoded)."""
    from pipeline import cli
    from pipeline.feedback.chat import ChatTokens

    encoded = [0]
    real = ChatTokens.text

    def text(self, content):
        encoded[0] += len(content)
        return real(self, content)

    monkeypatch.setattr(ChatTokens, "text", text)
    monkeypatch.chdir(root)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    rc = cli.main(["chat", "--stage", "sft", "--temperature", "0", "--max-new-tokens", "4", *args])
    return rc, err.getvalue(), encoded[0]


def test_chat_encodes_each_turn_once_however_long_the_conversation(tmp_path, tok, monkeypatch):
    _chat_project(tmp_path, tok)
    lines = [f"What is the sum of two and three? {i}" for i in range(60)]
    rc, err, encoded = _chat(tmp_path, monkeypatch, "".join(x + "\n" for x in lines).encode())
    assert rc == 0 and "Traceback" not in err
    assert err.count("oldest turns are left out") == 1
    typed = sum(len(x) for x in lines)
    assert encoded < 3 * typed  # each turn (and each short reply) encoded once, not at every turn


def test_chat_cuts_a_huge_line_and_says_so_once(tmp_path, tok, monkeypatch):
    _chat_project(tmp_path, tok)
    rc, err, encoded = _chat(
        tmp_path, monkeypatch, b"dumps " * 200_000 + b"\nHello\n", "--max-input-chars", "500"
    )
    assert rc == 0 and "Traceback" not in err
    assert err.count("was cut to its last 500 characters") == 1
    assert encoded < 2000


def test_chat_skips_a_line_that_is_not_utf8(tmp_path, tok, monkeypatch):
    _chat_project(tmp_path, tok)
    rc, err, _ = _chat(tmp_path, monkeypatch, b"Hello \xff\xfe there\nHello\n")
    assert rc == 0 and "Traceback" not in err
    assert "not UTF-8 text" in err and len(err.strip().splitlines()) == 1


def test_chat_into_a_closed_pipe_stops_quietly(tmp_path, tok):
    _chat_project(tmp_path, tok)
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first reply
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "chat", "--stage", "sft", "--max-new-tokens", "4"],
        input=b"Hello\n" * 5, stdout=w, stderr=subprocess.PIPE, cwd=tmp_path, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    os.close(w)
    err = proc.stderr.decode()
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert proc.returncode == 141


# ------------------------------------------------------------------------ the model's own tokenizer
@pytest.mark.parametrize("command", ["chat", "sample"])
def test_a_same_size_tokenizer_with_other_ids_is_refused(tmp_path, tok, monkeypatch, capsys, command):
    from pipeline.cli import main
    from pipeline.model.reward import tokenizer_sha256

    _chat_project(tmp_path, tok)
    own = tmp_path / "data" / "tokenize" / "tokenizer.json"
    (tmp_path / "data" / "sft" / "model" / "chat.json").write_text(
        json.dumps({"tokenizer_sha256": tokenizer_sha256(own), "end_id": 0})
    )
    other = train_tokenizer(["Completely different words make other merges entirely, zebra quilt."] * 30,
                            TokenizeConfig(vocab_size=300, min_frequency=1))  # fmt: skip
    assert other.get_vocab_size() == tok.get_vocab_size() and other.get_vocab() != tok.get_vocab()
    save_tokenizer(other, tmp_path / "other.json")
    monkeypatch.chdir(tmp_path)
    extra = ["--tokens", "2"] if command == "sample" else []
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main([command, "--stage", "sft", "--tokenizer", str(tmp_path / "other.json"), *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trained with the tokenizer of sha256" in err, err


# ------------------------------------------------------------------------------------ lineage push
def test_push_takes_a_remote_name_as_the_readme_shows(monkeypatch):
    from pipeline import cli

    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, **kw: calls.append(cmd) or 0)
    assert cli.main(["push", "-r", "backup"]) == 0
    assert calls[-1][:4] == ["dvc", "push", "-r", "backup"]
    assert cli.main(["push", "--jobs", "2"]) == 0 and calls[-1] == ["dvc", "push", "--jobs", "2"]


# ---------------------------------------------------------------------------------- lineage restore
# a report whose content differs on every run (as a pipeline run on another machine would)
REPORT = (
    "import os, pathlib, yaml; p = yaml.safe_load(open('params.yaml')); d = pathlib.Path('data/report'); "
    "d.mkdir(parents=True, exist_ok=True); (d / 'report.html').write_text(f'{p} {os.getpid()}')"
)


def _project(root: Path) -> Path:
    root.mkdir()
    git(root, "init", "-q")
    assert sh(["dvc", "init", "-q"], root).returncode == 0
    (root / "params.yaml").write_text("report:\n  x: 1\n")
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"report": {
        "cmd": f'python -c "{REPORT}"', "params": ["report"], "outs": ["data/report"]}}}))  # fmt: skip
    assert sh(["dvc", "repro", "-q"], root).returncode == 0
    git(root, "add", "-A")
    git(root, "commit", "-qm", "results")
    return root


def _restore(root: Path) -> subprocess.CompletedProcess:
    return sh([sys.executable, "-m", "pipeline.cli", "restore"], root)


def _report_works(root: Path) -> bool:
    return sh([sys.executable, "-m", "pipeline.cli", "report"], root).returncode == 0


@pytest.mark.slow
def test_restore_replaces_outputs_a_stage_run_outside_dvc_changed(tmp_path):
    repo = _project(tmp_path / "a")
    committed = (repo / "data/report/report.html").read_text()
    (repo / "data/report/report.html").write_text("made by python -m stages.report")
    run = _restore(repo)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (repo / "data/report/report.html").read_text() == committed


@pytest.mark.slow
def test_restore_in_a_clone_without_the_committed_outputs_keeps_a_working_workspace(tmp_path):
    from pipeline.cli import LAST_RUN, save_last_run

    _project(tmp_path / "a")
    b = tmp_path / "b"
    git(tmp_path, "clone", "-q", str(tmp_path / "a"), str(b))
    assert sh(["dvc", "repro", "-q"], b).returncode == 0  # this machine's own run of the committed params
    own = (b / "data/report/report.html").read_text()
    save_last_run(b)  # as `lineage run` (`make run`) does after a run
    (b / "params.yaml").write_text("report:\n  x: 2\n")  # an experiment in the workspace
    assert sh(["dvc", "repro", "-q"], b).returncode == 0
    run = _restore(b)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "your own last run" in run.stdout
    assert (b / "params.yaml").read_text() == "report:\n  x: 1\n"
    assert (b / "data/report/report.html").read_text() == own and _report_works(b)
    assert "Data and pipelines are up to date" in sh(["dvc", "status"], b).stdout

    # with no run of its own to go back to, nothing is touched and the choice is spelled out
    (b / LAST_RUN).joinpath("params.yaml").write_text("report:\n  x: 3\n")
    (b / "params.yaml").write_text("report:\n  x: 2\n")
    assert sh(["dvc", "repro", "-q"], b).returncode == 0
    before = (b / "data/report/report.html").read_text()
    run = _restore(b)
    assert run.returncode == 1 and "nothing was changed" in run.stderr and "dvc pull" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert (b / "data/report/report.html").read_text() == before and _report_works(b)
