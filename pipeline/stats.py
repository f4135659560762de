"""Seed groups and significance: one configuration run at several seeds, each headline metric as a
mean with its standard deviation and 95% t-interval, and two groups compared by Welch's t-test.

A seed group is a JSON file, ``metrics/seeds/<group>.json`` (written by `lineage seeds`): its members'
headline metrics, the statistics over them and the command that made them. Pure functions and file
reading only, so the report stage can show a group's spread without anything else.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SEEDS_DIR = Path("metrics") / "seeds"
ALPHA = 0.01  # a difference counts when Welch's p is below this (modded-nanogpt's bar for a record)
CONFIDENCE = 0.95


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """n, mean, sample standard deviation and the t-distribution interval of the mean; with one
    value there is no spread to estimate, so std and the interval are None."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        raise ValueError("no values to summarize")
    mean = sum(xs) / n
    out: dict[str, Any] = {"n": n, "mean": mean, "std": None, "low": None, "high": None, "half_width": None}
    if n >= 2:
        from scipy import stats

        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
        out.update(std=std, half_width=half, low=mean - half, high=mean + half)
    return out


def welch(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Welch's t-test of two samples (unequal variances). Two samples without any spread differ for
    certain when their means differ (p 0) and not at all when they agree (p 1); fewer than two values
    on a side give no test (p None)."""
    xa, xb = [float(v) for v in a], [float(v) for v in b]
    mean_a = sum(xa) / len(xa) if xa else math.nan
    mean_b = sum(xb) / len(xb) if xb else math.nan
    out: dict[str, Any] = {"mean_a": mean_a, "mean_b": mean_b, "diff": mean_b - mean_a, "t": None, "p": None}
    if len(xa) < 2 or len(xb) < 2:
        return out
    if max(xa) == min(xa) and max(xb) == min(xb):
        out["p"] = 1.0 if mean_a == mean_b else 0.0
        return out
    from scipy import stats

    res = stats.ttest_ind(xa, xb, equal_var=False)
    out.update(t=float(res.statistic), p=float(res.pvalue))
    return out


def group_stats(members: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per headline metric (``stage/name``... as the members' ``metrics`` hold them): the summary over
    the members that have it, with the values themselves."""
    names: dict[str, None] = {}
    for m in members:
        names.update(dict.fromkeys(m["metrics"]))
    out = {}
    for name in names:
        values = [m["metrics"][name] for m in members if isinstance(m["metrics"].get(name), int | float)]
        if values:
            out[name] = {**summarize(values), "values": values}
    return out


def compare(a: dict[str, Any], b: dict[str, Any], alpha: float = ALPHA) -> list[dict[str, Any]]:
    """Every headline metric both groups have: means, difference (b - a), Welch's p and whether it is
    below ``alpha``."""
    rows = []
    for name, sa in a["stats"].items():
        sb = b["stats"].get(name)
        if sb is None:
            continue
        test = welch(sa["values"], sb["values"])
        p = test["p"]
        rows.append(
            {
                "metric": name,
                "a": sa,
                "b": sb,
                "diff": test["diff"],
                "t": test["t"],
                "p": p,
                "significant": p is not None and p < alpha,
            }
        )
    return rows


def fmt_value(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.4g}"


def fmt_stat(s: dict[str, Any]) -> str:
    """``mean ± half-width`` of the 95% interval (the mean alone for one run)."""
    if s.get("half_width") is None:
        return fmt_value(s["mean"])
    return f"{fmt_value(s['mean'])} ± {fmt_value(s['half_width'])}"


def comparison_table(a: dict[str, Any], b: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per metric, a `*` where the difference is significant."""
    lines = [
        f"| metric | {a['group']} (n={len(a['members'])}) | {b['group']} (n={len(b['members'])}) "
        f"| difference | Welch p | p < {ALPHA:g} |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = "n/a" if r["p"] is None else f"{r['p']:.2g}"
        lines.append(
            f"| {r['metric']} | {fmt_stat(r['a'])} | {fmt_stat(r['b'])} | {fmt_value(r['diff'])} | {p} "
            f"| {'*' if r['significant'] else ''} |"
        )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- group files


def seed_keys(params: dict[str, Any]) -> dict[str, Any]:
    """The seeds of a params dict (dumped Params): `common.seed` and each section's own `seed`."""
    keys = {}
    for section, body in params.items():
        if isinstance(body, dict) and "seed" in body:
            keys[f"{section}.seed"] = body["seed"]
    return keys


def params_key(params: dict[str, Any]) -> str:
    """A hash of the params with every seed taken out: the runs of one seed group share it, so the
    report finds the group of the configuration it shows."""
    bare = {
        s: ({k: v for k, v in b.items() if k != "seed"} if isinstance(b, dict) else b)
        for s, b in params.items()
    }
    return hashlib.sha256(json.dumps(bare, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_group(path: Path) -> dict[str, Any]:
    from pipeline.errors import LineageError

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise LineageError(f"{path}: not a readable seed group ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("stats"), dict) or "members" not in data:
        raise LineageError(
            f"{path}: not a seed group (no `stats` and `members`); `lineage seeds` writes them"
        )
    return data


def groups(root: Path) -> dict[str, dict[str, Any]]:
    """Every seed group under metrics/seeds/, by name."""
    folder = root / SEEDS_DIR
    return {p.stem: read_group(p) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def group_for(root: Path, params: dict[str, Any]) -> dict[str, Any] | None:
    """The latest seed group run with these params (seeds aside), if any."""
    key = params_key(params)
    found = [g for g in groups(root).values() if g.get("params_key") == key and len(g["members"]) >= 2]
    return max(found, key=lambda g: g.get("created", ""), default=None)


def report_rows(group: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, cell) per headline metric: mean ± 95% half-width, standard deviation, the range."""
    rows = []
    for name, s in group["stats"].items():
        sd = fmt_value(s.get("std"))
        lo, hi = fmt_value(s.get("low")), fmt_value(s.get("high"))
        rows.append((name, f"{fmt_stat(s)} (sd {sd}; 95% [{lo}, {hi}])"))
    return rows


def group_markdown(group: dict[str, Any]) -> str:
    """The group as a page: what made it, then one row per headline metric."""
    seeds = ", ".join(str(m["seed"]) for m in group["members"])
    lines = [
        f"# seed group `{group['group']}`",
        "",
        f"`{group['command']}` at commit {group.get('commit', '?')[:12]}"
        + (" (dirty)" if group.get("dirty") else "")
        + f", profile {group.get('profile') or 'none'}; seeds {seeds}.",
        "",
        "Mean ± half-width of the 95% t-interval of the mean, standard deviation, the interval, the values.",
        "",
        "| metric | mean ± 95% | sd | 95% interval | values |",
        "|---|---|---|---|---|",
    ]
    for name, s in group["stats"].items():
        values = ", ".join(fmt_value(v) for v in s["values"])
        lines.append(
            f"| {name} | {fmt_stat(s)} | {fmt_value(s.get('std'))} | "
            f"[{fmt_value(s.get('low'))}, {fmt_value(s.get('high'))}] | {values} |"
        )
    return "\n".join(lines) + "\n"
