"""Real demonstrations and comparisons, from a local file or a ``datasets`` name, in the layouts the
public sets use; and the prompt-disjoint splits every later stage reads.

Demonstration layouts (``auto`` picks by the keys of the first record):

* ``prompt_response``: ``prompt`` + ``response`` (or ``completion``);
* ``dolly`` (databricks-dolly-15k): ``instruction``, optional ``context``, ``response``;
* ``alpaca``: ``instruction``, optional ``input``, ``output``;
* ``messages``: ``messages`` (or ``conversations``): ``[{role, content}]``; roles ``user``/``human``/
  ``prompter``, ``assistant``/``gpt``/``bot``, ``system``; ShareGPT's ``from``/``value`` too;
* ``oasst`` (OpenAssistant oasst1 rows): ``message_id``, ``parent_id``, ``role``, ``text``; every
  assistant message of rank 0 (or unranked) becomes one conversation, its ancestors the prompt;
* ``hh`` (Anthropic HH-RLHF): the ``chosen`` transcript, ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``.

Comparison layouts: ``chosen_rejected`` (HH: two transcripts that share the prompt, or ``prompt`` +
``chosen`` + ``rejected``) and ``ranked`` (``prompt`` or ``messages``, ``responses``, ``ranks`` with
0 = best, or ``ranking``, the response indices best first).

A demonstration becomes ``{messages, reference}`` (the prompt turns and the final assistant turn);
a comparison ``{messages, responses, ranks}``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import LineageError
from pipeline.feedback.chat import check_messages
from pipeline.feedback.config import DataSource

ROLE_NAMES = {
    "user": "user", "human": "user", "prompter": "user", "system": "system",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "model": "assistant",
}  # fmt: skip
SPLITS = ("sft", "rm", "ppo", "eval")
HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


# ------------------------------------------------------------------------------------------- reading
class Records(list):
    """Raw records, and where each came from: ``file:line`` for JSONL, ``origin: record i`` else."""

    def __init__(self, rows: Iterable[Any], origin: str, lines: Sequence[int] | None = None):
        super().__init__(rows)
        self.origin = origin
        self.lines = list(lines) if lines is not None else None

    def where(self, i: int) -> str:
        return f"{self.origin}:{self.lines[i]}" if self.lines is not None else f"{self.origin}: record {i}"


def _where(records: Sequence[Any], origin: str, i: int) -> str:
    return records.where(i) if isinstance(records, Records) else f"{origin}: record {i}"


def read_records(src: DataSource, root: Path, key: str) -> tuple[Records, str]:
    """The raw records of ``src`` (every one a JSON object) and a name for error messages."""
    if src.path is not None:
        path = Path(src.path) if Path(src.path).is_absolute() else root / src.path
        origin = str(src.path)
        if path.is_dir():  # a folder saved with datasets (save_to_disk), or of parquet/JSONL files
            records = Records(_read_dataset(src, root, key), origin)
        elif not path.is_file():
            raise LineageError(f"{key}.path: {origin} not found")
        else:
            records = _read_file(path, origin)
    else:
        origin = f"dataset {src.dataset}"
        records = Records(_read_dataset(src, root, key), origin)
    if src.max_records is not None:
        records = Records(
            records[: src.max_records], origin, records.lines[: src.max_records] if records.lines else None
        )
    if not records:
        raise LineageError(f"{origin}: no records")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise LineageError(f"{records.where(i)}: expected a JSON object, got {type(rec).__name__}")
    return records, origin


def _read_file(path: Path, origin: str) -> Records:
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            return Records(pq.read_table(path).to_pylist(), origin)
        opener = gzip.open if name.endswith(".gz") else open
        if name.endswith((".jsonl", ".jsonl.gz")):
            rows, lines = [], []
            with opener(path, "rb") as fh:
                for n, raw in enumerate(fh, start=1):
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError:
                        raise LineageError(f"{origin}:{n}: not UTF-8 text") from None
                    if not line.strip():
                        continue
                    try:
                        rows.append(json.loads(line))
                    except ValueError as e:
                        raise LineageError(f"{origin}:{n}: not valid JSON ({str(e)[:80]})") from None
                    lines.append(n)
            return Records(rows, origin, lines)
        with opener(path, "rt", encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise LineageError(
            f"{origin}: cannot read it ({type(e).__name__}: {str(e).splitlines()[0][:100]})"
        ) from None
    if isinstance(data, dict):  # {"train": [...]} or {"data": [...]}
        data = next((v for v in data.values() if isinstance(v, list)), None)
    if not isinstance(data, list):
        raise LineageError(f"{origin}: expected a list of records (or .jsonl, one per line)")
    return Records(data, origin)


def _read_dataset(src: DataSource, root: Path, key: str) -> list[dict[str, Any]]:
    """A Hub name, or a local copy: a ``save_to_disk`` folder, a folder of data files (relative to
    the project root), through :func:`pipeline.hfdata.open_dataset`."""
    from pipeline.hfdata import open_dataset

    field = "path" if src.path is not None else "dataset"
    name = src.path if src.path is not None else src.dataset
    ds = open_dataset(name, key=f"{key}.{field}", config=src.config, split=src.split, root=root)
    n = len(ds) if src.max_records is None else min(len(ds), src.max_records)
    return ds.select(range(n)).to_list()


def _text(rec: dict[str, Any], names: tuple[str, ...], where: str, optional: bool = False) -> str:
    """The string under the first of ``names`` present: a missing, null or non-string field is one
    line naming the record (never the text "None")."""
    for n in names:
        if n in rec:
            value = rec[n]
            if value is None and optional:
                return ""
            if not isinstance(value, str):
                got = "null" if value is None else type(value).__name__
                raise LineageError(f"{where}: {n!r} must be a string, got {got}")
            return value
    if optional:
        return ""
    raise LineageError(f"{where}: no {names[0]!r} field (keys: {', '.join(sorted(map(str, rec))[:8])})")


# ------------------------------------------------------------------------------------ demonstrations
def detect_demo_layout(rec: dict[str, Any]) -> str:
    if "messages" in rec or "conversations" in rec:
        return "messages"
    if {"message_id", "parent_id", "role", "text"} <= set(rec):
        return "oasst"
    if "instruction" in rec and "response" in rec:
        return "dolly"
    if "instruction" in rec and "output" in rec:
        return "alpaca"
    if "prompt" in rec and ("response" in rec or "completion" in rec):
        return "prompt_response"
    if "chosen" in rec:
        return "hh"
    raise LineageError(f"cannot tell the layout of a record with keys {sorted(rec)[:8]}; set layout")


def parse_hh(transcript: str, where: str) -> list[dict[str, str]]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b"`` -> messages."""
    text = transcript if transcript.startswith("\n\n") else "\n\n" + transcript.lstrip("\n")
    parts = HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise LineageError(f"{where}: not an HH transcript (\\n\\nHuman: ... \\n\\nAssistant: ...)")
    return [
        {"role": "user" if who == "Human" else "assistant", "content": turn.strip()}
        for who, turn in zip(parts[1::2], parts[2::2], strict=True)
    ]


def _messages(raw: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(raw, list):
        raise LineageError(f"{where}: messages must be a list")
    out = []
    for m in raw:
        if not isinstance(m, dict):
            raise LineageError(f"{where}: each message must be an object")
        role = ROLE_NAMES.get(str(m.get("role", m.get("from", ""))).lower())
        content = m.get("content", m.get("value", m.get("text")))
        if role is None or not isinstance(content, str):
            raise LineageError(f"{where}: message {m!r:.60} has no known role or no text")
        out.append({"role": role, "content": content})
    return out


def _demo_messages(rec: dict[str, Any], layout: str, where: str) -> list[dict[str, str]]:
    if layout == "messages":
        return _messages(rec.get("messages", rec.get("conversations")), where)
    if layout in ("dolly", "alpaca"):
        extra, reply = ("context", "response") if layout == "dolly" else ("input", "output")
        ctx = _text(rec, (extra,), where, optional=True).strip()
        user = _text(rec, ("instruction",), where) + (f"\n\n{ctx}" if ctx else "")
        return [
            {"role": "user", "content": user},
            {"role": "assistant", "content": _text(rec, (reply,), where)},
        ]
    if layout == "prompt_response":
        return [
            {"role": "user", "content": _text(rec, ("prompt",), where)},
            {"role": "assistant", "content": _text(rec, ("response", "completion"), where)},
        ]
    if layout == "hh":
        return parse_hh(_text(rec, ("chosen",), where), where)
    raise LineageError(f"{where}: unknown layout {layout!r}")


def _oasst_threads(records: Sequence[dict[str, Any]], origin: str) -> list[tuple[str, list[dict[str, str]]]]:
    """(where, conversation) for every assistant message of rank 0 (or unranked): its ancestors are
    the prompt. A ``parent_id`` chain that comes back on itself is one line naming the row."""
    by_id: dict[Any, int] = {}
    for i, r in enumerate(records):
        where = _where(records, origin, i)
        for f in ("message_id", "role", "text"):
            if f not in r:
                raise LineageError(f"{where}: no {f!r} field (an OpenAssistant row has message_id, parent_id, "
                                   "role, text)")  # fmt: skip
        _text(r, ("text",), where)
        by_id.setdefault(r["message_id"], i)
    threads = []
    for i, r in enumerate(records):
        if ROLE_NAMES.get(str(r.get("role")).lower()) != "assistant" or (r.get("rank") not in (None, 0)):
            continue
        chain, node, seen = [], i, set()
        while node is not None:
            if node in seen:
                row = records[node]
                raise LineageError(
                    f"{_where(records, origin, node)}: message_id {str(row['message_id'])[:40]!r} is its own "
                    "ancestor (the parent_id links form a cycle); fix or drop the row"
                )
            seen.add(node)
            chain.append(records[node])
            node = by_id.get(records[node].get("parent_id"))
        threads.append((
            _where(records, origin, i),
            [{"role": ROLE_NAMES.get(str(n["role"]).lower(), "user"), "content": n["text"]} for n in reversed(chain)],
        ))  # fmt: skip
    if not threads:
        raise LineageError(
            f"{origin}: no assistant message in the OpenAssistant rows; a demonstration needs one"
        )
    return threads


def demonstrations(
    records: Sequence[dict[str, Any]], layout: str, origin: str, max_chars: int | None = None,
    dropped: Counter | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """``{id, messages, reference, ...}`` per record: the prompt turns and the final assistant turn.
    An example longer than ``max_chars`` characters is dropped and counted in ``dropped``."""
    layout = detect_demo_layout(records[0]) if layout == "auto" else layout
    if layout == "oasst":
        conversations = _oasst_threads(records, origin)
    else:
        conversations = [
            (_where(records, origin, i), _demo_messages(r, layout, _where(records, origin, i)))
            for i, r in enumerate(records)
        ]
    dropped = Counter() if dropped is None else dropped
    out = []
    for where, conv in conversations:
        last = max((k for k, m in enumerate(conv) if m["role"] == "assistant"), default=None)
        if last is None:
            raise LineageError(f"{where} has no assistant turn; a demonstration needs the response to learn")
        prompt, reply = conv[:last], conv[last]["content"].strip()
        if not any(m["role"] == "user" for m in prompt):
            raise LineageError(f"{where} has no user turn before its assistant turn")
        if not reply:
            raise LineageError(f"{where}: empty assistant response; drop the record or fill it in")
        if max_chars is not None and sum(len(m["content"]) for m in prompt) + len(reply) > max_chars:
            dropped["too_long"] += 1
            continue
        out.append(demo_record(check_messages(prompt, where), reply, origin))
    return out


def demo_record(messages: list[dict[str, str]], reply: str, origin: str) -> dict[str, Any]:
    key = json.dumps(messages, sort_keys=True)
    return {
        "id": "demo-" + hashlib.sha1(key.encode()).hexdigest()[:12],
        "family": "demo",
        "messages": messages,
        "reference": reply,
        "answers": [reply],
        "kind": "answer",
        "format": "sentence",
        "group": key,
        "source": origin,
    }


# ------------------------------------------------------------------------------------- comparisons
COMPARISON_FIELDS = ("messages", "responses", "ranks")  # what comparisons.jsonl holds per prompt


def detect_comparison_layout(rec: dict[str, Any]) -> str:
    if "chosen" in rec and "rejected" in rec:
        return "chosen_rejected"
    if "responses" in rec:
        return "ranked"
    raise LineageError(
        f"cannot tell the comparison layout of a record with keys {sorted(rec)[:8]}; set layout"
    )


def comparisons(
    records: Sequence[dict[str, Any]], layout: str, origin: str, max_chars: int | None = None,
    dropped: Counter | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """``{id, messages, responses, ranks}`` per record (ranks: 0 = best; equal ranks tie).

    A malformed record is one line naming it. Records that teach nothing or contradict another are
    dropped and counted in ``dropped``: identical responses ranked apart (chosen == rejected), a
    response longer than ``max_chars``, and every record of a pair of responses that two records
    rank in opposite orders."""
    layout = detect_comparison_layout(records[0]) if layout == "auto" else layout
    dropped = Counter() if dropped is None else dropped
    out = []
    for i, rec in enumerate(records):
        where = _where(records, origin, i)
        if layout == "chosen_rejected":
            messages, responses = _pair(rec, where)
            ranks = [0, 1]
        else:
            messages = (
                _messages(rec["messages"], where)
                if "messages" in rec
                else [{"role": "user", "content": _text(rec, ("prompt",), where)}]
            )
            responses = rec.get("responses")
            if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
                raise LineageError(f"{where}: responses must be a list of strings")
            if len(responses) < 2:
                raise LineageError(f"{where} ranks K={len(responses)} response(s); a comparison needs K >= 2")
            ranks = _ranks(rec, len(responses), where)
        if any(not r.strip() for r in responses):
            raise LineageError(f"{where}: empty response; every ranked response needs text")
        if not any(m["role"] == "user" and m["content"].strip() for m in messages):
            raise LineageError(f"{where}: no prompt (no user turn with text)")
        if len(set(ranks)) < 2:
            raise LineageError(f"{where}: every response has the same rank; nothing to learn from")
        if any(
            a == b and ranks[x] != ranks[y] for x, a in enumerate(responses) for y, b in enumerate(responses)
        ):
            dropped["identical_responses"] += 1  # chosen == rejected: no preference to learn
            continue
        if (
            max_chars is not None
            and max(len(r) for r in responses) + sum(len(m["content"]) for m in messages) > max_chars
        ):
            dropped["too_long"] += 1
            continue
        key = json.dumps([messages, responses], sort_keys=True)
        out.append({
            "id": "cmp-" + hashlib.sha1(key.encode()).hexdigest()[:12], "family": "data",
            "messages": check_messages(messages, where), "responses": responses, "ranks": ranks,
            "group": json.dumps(messages, sort_keys=True), "source": origin, "where": where,
        })  # fmt: skip
    kept = _drop_contradictions(out, dropped)
    for c in kept:
        del c["where"]
    return kept


def _drop_contradictions(rows: list[dict[str, Any]], dropped: Counter) -> list[dict[str, Any]]:
    """The rows less those that rank one pair of responses (of one prompt) in opposite orders."""
    order: dict[tuple[str, str, str], set[int]] = {}  # (prompt, a, b) with a < b -> signs seen, by row
    for k, c in enumerate(rows):
        for x, a in enumerate(c["responses"]):
            for y, b in enumerate(c["responses"]):
                if a < b and c["ranks"][x] != c["ranks"][y]:
                    sign = 1 if c["ranks"][x] < c["ranks"][y] else -1
                    order.setdefault((c["group"], a, b), set()).add(sign * (k + 1))
    bad = set()
    for seen in order.values():
        if any(v > 0 for v in seen) and any(v < 0 for v in seen):
            bad |= {abs(v) - 1 for v in seen}
    dropped["contradictory"] += len(bad)
    return [c for k, c in enumerate(rows) if k not in bad]


def _pair(rec: dict[str, Any], where: str) -> tuple[list[dict[str, str]], list[str]]:
    chosen, rejected = _text(rec, ("chosen",), where), _text(rec, ("rejected",), where)
    if "prompt" in rec:  # prompt apart, chosen/rejected are the responses (maybe with the prompt in front)
        prompt = _text(rec, ("prompt",), where)
        messages = (
            parse_hh(prompt + "\n\nAssistant: x", where)[:-1]
            if "Human:" in prompt
            else [{"role": "user", "content": prompt}]
        )
        return messages, [chosen.removeprefix(prompt).strip(), rejected.removeprefix(prompt).strip()]
    a, b = parse_hh(chosen, where), parse_hh(rejected, where)
    if a[-1]["role"] != "assistant" or b[-1]["role"] != "assistant":
        raise LineageError(f"{where}: a transcript does not end with an assistant turn")
    return a[:-1], [a[-1]["content"], b[-1]["content"]]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _ranks(rec: dict[str, Any], k: int, where: str) -> list[int]:
    if "ranks" in rec:
        ranks = rec["ranks"]
        if not isinstance(ranks, list) or len(ranks) != k or not all(_is_int(r) and r >= 0 for r in ranks):
            raise LineageError(
                f"{where}: ranks must hold {k} integers >= 0 (0 = best), got {str(ranks)[:60]}"
            )
        return list(ranks)
    if "ranking" in rec:
        order = rec["ranking"]
        if (
            not isinstance(order, list)
            or not all(_is_int(r) for r in order)
            or sorted(order) != list(range(k))
        ):
            raise LineageError(
                f"{where}: ranking must be a permutation of the integers 0..{k - 1} (best first), "
                f"got {str(order)[:60]}"
            )
        ranks = [0] * k
        for level, idx in enumerate(order):
            ranks[idx] = level
        return ranks
    raise LineageError(f"{where}: a ranked comparison needs ranks or ranking")


# ------------------------------------------------------------------------------------------- splits
def quotas(total: int, families: list[str]) -> dict[str, int]:
    """``total`` shared evenly among ``families`` (the first ones take the remainder)."""
    base, extra = divmod(total, len(families))
    return {f: base + (i < extra) for i, f in enumerate(families)}


def deal(pools: dict[str, list[dict[str, Any]]], sizes: dict[str, int]) -> tuple[dict[str, list[dict]], dict]:
    """Deal each family's examples into the splits in order, never one group (or one prompt) into two
    splits. Returns the splits and, per split and family, how many were asked and given."""
    families = list(pools)
    taken_groups: set[tuple[str, str]] = set()
    taken_prompts: set[str] = set()
    cursor = dict.fromkeys(families, 0)
    splits: dict[str, list[dict]] = {s: [] for s in sizes}
    report: dict[str, dict[str, dict[str, int]]] = {}
    for split, total in sizes.items():
        report[split] = {}
        for family, want in quotas(total, families).items():
            got = 0
            pool = pools[family]
            while got < want and cursor[family] < len(pool):
                ex = pool[cursor[family]]
                cursor[family] += 1
                prompt = json.dumps(ex["messages"], sort_keys=True)
                if (family, ex["group"]) in taken_groups or prompt in taken_prompts:
                    continue
                taken_groups.add((family, ex["group"]))
                taken_prompts.add(prompt)
                splits[split].append(ex)
                got += 1
            report[split][family] = {"asked": want, "given": got}
    return splits, report


def check_disjoint(splits: dict[str, list[dict[str, Any]]]) -> None:
    """Refuse splits that share a prompt or a group: an evaluation would then measure memory."""
    seen: dict[str, str] = {}
    for split, items in splits.items():
        for ex in items:
            for key in (json.dumps(ex["messages"], sort_keys=True), f"{ex['family']}\n{ex['group']}"):
                other = seen.setdefault(key, split)
                if other != split:
                    raise LineageError(
                        f"splits {other} and {split} share {ex['id']}; splits must be disjoint"
                    )


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: Path, fields: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The rows of a JSONL file a stage wrote; a damaged one is one line naming file:line and the
    stage to rerun. Comparison rows (``fields`` with ``responses``) are checked for their types."""
    from pipeline.io import read_jsonl as read_rows
    from pipeline.io import rerun_hint

    rows = read_rows(path, fields)
    for i, r in enumerate(rows):
        if "messages" in fields:
            try:
                check_messages(r["messages"], "")
            except LineageError:
                raise LineageError(
                    f"{path}: row {i + 1}: damaged (messages is not a list of {{role, content}}); {rerun_hint(path)}"
                ) from None
        if "reference" in fields and not isinstance(r["reference"], str):
            raise LineageError(
                f"{path}: row {i + 1}: damaged (reference is not a string); {rerun_hint(path)}"
            )
        if "responses" in fields:
            resp, ranks = r["responses"], r.get("ranks")
            if (
                not isinstance(resp, list)
                or not all(isinstance(x, str) for x in resp)
                or not isinstance(ranks, list)
                or len(ranks) != len(resp)
                or not all(_is_int(x) for x in ranks)
            ):
                raise LineageError(
                    f"{path}: row {i + 1}: damaged (responses and ranks are not lists of strings and "
                    f"integers of one length); {rerun_hint(path)}"
                )
    return rows


SPLIT_FIELDS = ("messages", "reference")  # what every split row holds (the prompt and its answer)


def read_split(directory: Path, split: str) -> list[dict[str, Any]]:
    """One split written by the instructions stage: the one place every later stage reads prompts."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return read_jsonl(directory / f"{split}.jsonl", SPLIT_FIELDS)


def samples_md(
    title: str, examples: Sequence[dict[str, Any]], answers: Sequence[Sequence[str]], per_family: int = 3
) -> str:
    """The first ``per_family`` prompts of each family as a Markdown list: prompt, reference, then
    ``answers[i]``, one ``"label: answer"`` line per model."""
    lines = [f"# {title}\n"]
    seen: dict[str, int] = {}
    for ex, rows in zip(examples, answers, strict=True):
        if seen.get(ex["family"], 0) >= per_family:
            continue
        seen[ex["family"]] = seen.get(ex["family"], 0) + 1
        items = [
            f"- **{ex['family']}** {ex['messages'][-1]['content']!r}",
            f"reference: {ex['reference']!r}",
            *rows,
        ]
        lines.append("\n  - ".join(items))
    return "\n".join(lines) + "\n"
