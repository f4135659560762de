"""Each stage's code dependencies, computed: the import closure of ``stages/<stage>.py`` inside the
project, so that DVC reruns a stage whenever a module that shapes its outputs changes.

Imports are read with ``ast`` (nothing is imported), at any depth: stages import lazily inside
functions. A module in `NO_OUTPUT_EFFECT` is left out with everything only it imports: it decides how
a run is shown or driven, never what the stage writes. ``lineage dag --check`` compares dvc.yaml's
``.py`` deps with the closure, ``lineage dag --write`` rewrites them (comments and data deps kept).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGES = ("pipeline", "stages")

# Modules whose changes cannot change a stage's outputs; each with why.
NO_OUTPUT_EFFECT = {
    "pipeline/progress.py": "progress bars and lines on the terminal",
    "pipeline/tracking.py": "MLflow runs, params and metrics (a side channel)",
    "pipeline/orchestration.py": "Prefect flows and task runners (same outputs on every runner, tested)",
    "pipeline/procs.py": "starting and stopping child servers",
    "pipeline/errors.py": "the one-line error type",
    "pipeline/cli.py": "the `lineage` command, never imported by a stage's work",
    "pipeline/dag.py": "this module",
    "pipeline/vega.py": "offline Vega for `dvc plots show`",
}


def _module_file(root: Path, dotted: str) -> Path | None:
    base = root.joinpath(*dotted.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _imported(root: Path, path: Path) -> set[str]:
    """Project modules ``path`` imports (as dotted names, parents included: importing
    ``pipeline.eval.lm`` runs ``pipeline/eval/__init__.py`` first)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import module`
    out: set[str] = set()
    for name in names:
        if name.split(".")[0] not in PACKAGES:
            continue
        parts = name.split(".")
        out.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return out


def closure(root: Path, entry: str) -> list[str]:
    """Project files (relative paths) whose code runs when ``entry`` (e.g. ``stages/sft.py``) runs,
    minus `NO_OUTPUT_EFFECT` and what only they import; empty ``__init__.py`` files left out."""
    root = Path(root)
    seen: set[str] = set()
    todo = [root / entry]
    while todo:
        path = todo.pop()
        rel = path.relative_to(root).as_posix()
        if rel in seen or rel in NO_OUTPUT_EFFECT:
            continue
        seen.add(rel)
        for dotted in _imported(root, path):
            found = _module_file(root, dotted)
            if found is not None:
                todo.append(found)
    keep = {p for p in seen if not (p.endswith("__init__.py") and not (root / p).read_text().strip())}
    return [entry] + sorted(keep - {entry})


def stage_entry(cmd: str) -> str | None:
    """``python -m stages.sft`` -> ``stages/sft.py``."""
    words = cmd.split()
    if "-m" in words and words.index("-m") + 1 < len(words):
        mod = words[words.index("-m") + 1]
        if mod.startswith("stages."):
            return mod.replace(".", "/") + ".py"
    return None


def declared(root: Path) -> dict[str, tuple[str, list[str]]]:
    """Per stage of dvc.yaml: its entry file and the ``.py`` files among its deps."""
    import yaml

    stages = yaml.safe_load((Path(root) / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, st in stages.items():
        entry = stage_entry(st.get("cmd", ""))
        if entry is None:
            continue
        out[name] = (entry, [d for d in st.get("deps", []) if isinstance(d, str) and d.endswith(".py")])
    return out


def _drift(root: Path) -> dict[str, tuple[list[str], list[str], list[str]]]:
    """Per stage whose dvc.yaml code deps differ from the closure: (closure, missing, extra)."""
    diff = {}
    for name, (entry, deps) in declared(root).items():
        want = closure(root, entry)
        missing = [p for p in want if p not in deps]
        extra = [p for p in deps if p not in want]
        if missing or extra:
            diff[name] = (want, missing, extra)
    return diff


def differences(root: Path) -> dict[str, tuple[list[str], list[str]]]:
    """Per stage whose dvc.yaml code deps differ from the closure: (missing, extra)."""
    return {name: (missing, extra) for name, (_, missing, extra) in _drift(root).items()}


def write(root: Path) -> list[str]:
    """Rewrite each stage's ``.py`` deps in dvc.yaml as its closure, keeping comments, order of the
    other deps and everything else; returns the stages changed."""
    path = Path(root) / "dvc.yaml"
    lines = path.read_text().split("\n")
    changed = _drift(root)
    out: list[str] = []
    stage: str | None = None
    in_deps = False
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if indent == 2 and stripped.endswith(":") and not stripped.startswith("#"):
            stage, in_deps = stripped[:-1], False
        elif indent == 4 and stripped.endswith(":"):
            in_deps = stripped == "deps:"
            out.append(line)
            if in_deps and stage in changed:
                out.extend(f"      - {p}" for p in changed[stage][0])
            continue
        if in_deps and stage in changed and stripped.startswith("- ") and stripped[2:].endswith(".py"):
            continue
        out.append(line)
    if changed:
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text("\n".join(out))
        tmp.replace(path)
    return list(changed)
