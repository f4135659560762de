"""`lineage results`: docs/results.md written from the committed metrics (metrics/<stage>.json of the
default run, metrics/seeds/<group>.json of each seed group), with the commands that made them, so
the results page never disagrees with the metrics. The README cites figures the same way: a number
followed by ``<!-- metrics/<file>.json:<key> -->`` is checked against that metric by
:func:`check_citations` (tests/test_results.py runs it on README.md)."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from pipeline import stats
from pipeline.errors import LineageError

RESULTS = Path("docs") / "results.md"
DEFAULT_COMMAND = (
    "`make run` (= `lineage run`: `dvc repro` of the whole DAG, each stage `python -m stages.<stage>`)"
)

# a number (1,234 | 0.756 | 58.8% | 1.2M), optional spaces, then the citation comment
CITATION_RE = re.compile(
    r"(?P<number>-?\d[\d,]*(?:\.\d+)?)(?P<unit>%|[kM])?\**\s*<!--\s*(?P<file>metrics/[\w./-]+\.json):(?P<key>[^\s>]+)\s*-->"
)
SCALE = {"%": 100.0, "k": 1e-3, "M": 1e-6, None: 1.0}


def lookup(data: Any, key: str) -> Any:
    """``key`` in a metrics JSON: a top-level name (which may hold ``/``, as ``bpb/py_reference``),
    else a path of ``/``-separated parts, each part the longest name present at its level."""
    parts = key.split("/")
    node = data
    while parts:
        if not isinstance(node, dict):
            raise KeyError(key)
        for j in range(len(parts), 0, -1):
            name = "/".join(parts[:j])
            if name in node:
                node, parts = node[name], parts[j:]
                break
        else:
            raise KeyError(key)
    return node


def check_citations(text: str, root: Path) -> list[str]:
    """One line per cited figure that disagrees with its metric (shown to the precision it is
    written with, a percentage as 100x), names a missing file or key, or is not a number."""
    problems = []
    for m in CITATION_RE.finditer(text):
        where = f"line {text.count(chr(10), 0, m.start()) + 1}"
        shown, unit, file, key = m["number"], m["unit"], m["file"], m["key"]
        path = root / file
        try:
            value = lookup(json.loads(path.read_text()), key)
        except OSError:
            problems.append(f"{where}: {shown}{unit or ''} cites {file}, which does not exist")
            continue
        except (KeyError, ValueError):
            problems.append(f"{where}: {shown}{unit or ''} cites {file}:{key}, which has no such number")
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            problems.append(f"{where}: {file}:{key} is {value!r}, not a number")
            continue
        number = float(shown.replace(",", ""))
        decimals = len(shown.split(".")[1]) if "." in shown else 0
        expected = value * SCALE[unit]
        if abs(round(expected, decimals) - number) > 0.5 * 10**-decimals + 1e-9:
            problems.append(
                f"{where}: README says {shown}{unit or ''}, {file}:{key} is {value:g} "
                f"(to {decimals} decimals: {expected:.{decimals}f}{unit or ''})"
            )
    return problems


def citations(text: str) -> list[tuple[str, str]]:
    """(file, key) of every citation in ``text``."""
    return [(m["file"], m["key"]) for m in CITATION_RE.finditer(text)]


# --------------------------------------------------------------------------------------- results.md
def _num(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return str(v)
    if float(v).is_integer() and abs(v) >= 1:
        return f"{v:,.0f}"
    return f"{v:.4g}"


def _stage_order(root: Path) -> list[str]:
    from pipeline.tracking import pipeline_stages

    return pipeline_stages(root)


def render(root: Path) -> str:
    """docs/results.md from what is committed under metrics/ (nothing else: no clock, no git)."""
    order = _stage_order(root)
    files = sorted(
        (root / "metrics").glob("*.json"),
        key=lambda p: (order.index(p.stem) if p.stem in order else 99, p.stem),
    )
    lines = [
        "# Results",
        "",
        "Written by `lineage results` from the committed metrics; do not edit by hand (tests/test_results.py",
        "fails when this page or a figure the README cites disagrees with them). Figures measured by",
        "`bench/` scripts are in bench/README.md, not here.",
        "",
        "## The default run",
        "",
        f"Made by {DEFAULT_COMMAND} on the committed params.yaml; each stage's headline numbers from",
        "`metrics/<stage>.json` (`dvc metrics show` prints the same; `data/<stage>/metrics.json` has the rest).",
        "",
        "| stage | metric | value |",
        "|---|---|---|",
    ]
    for path in files:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise LineageError(f"{path}: not readable JSON ({e})") from None
        for key, value in data.items():
            lines.append(f"| {path.stem} | {key} | {_num(value)} |")
    found = stats.groups(root)
    lines += ["", "## Seed groups", ""]
    if not found:
        lines.append("None committed yet: `lineage seeds N` (or `lineage seeds N --profile NAME`) makes one.")
    for name, g in found.items():
        seeds = ", ".join(str(m["seed"]) for m in g["members"])
        lines += [
            f"### {name}",
            "",
            f"Made by `{g.get('command', '?')}` at commit {str(g.get('commit', '?'))[:12]}"
            + (" (uncommitted changes)" if g.get("dirty") else "")
            + f"; profile {g.get('profile') or 'none'}; seeds {seeds}"
            + (f"; failed: {', '.join(g['failed'])}" if g.get("failed") else "")
            + f". Mean ± half-width of the 95% t-interval, standard deviation, runs (`{stats.SEEDS_DIR}/{name}.json`).",
            "",
            "| metric | mean ± 95% | sd | n |",
            "|---|---|---|---|",
        ]
        for metric, s in g["stats"].items():
            lines.append(f"| {metric} | {stats.fmt_stat(s)} | {stats.fmt_value(s.get('std'))} | {s['n']} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def cmd_results(args: argparse.Namespace) -> int:
    root = Path.cwd()
    text = render(root)
    out = root / RESULTS
    if args.check:
        current = out.read_text() if out.is_file() else ""
        problems = (
            check_citations((root / "README.md").read_text(), root) if (root / "README.md").is_file() else []
        )
        if current != text:
            problems.insert(0, f"{RESULTS} is out of date with metrics/: run `lineage results`")
        for p in problems:
            print(f"lineage results: {p}")
        return 1 if problems else 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    print(f"lineage: wrote {RESULTS} from metrics/ ({len(text.splitlines())} lines)")
    return 0


def add_parser(sub: Any, formatter: Any) -> None:
    rs = sub.add_parser(
        "results",
        help="write docs/results.md from the committed metrics (default run and seed groups)",
        formatter_class=formatter,
    )
    rs.add_argument(
        "--check", action="store_true",
        help="write nothing; fail when docs/results.md or a figure the README cites disagrees with metrics/",
    )  # fmt: skip
    rs.set_defaults(fn=cmd_results)
