"""lm-evaluation-harness as the scoring engine of the evaluate stage.

Our tasks are lm-eval task YAML in ``pipeline/eval/tasks/`` (``lineage_<task>.yaml``, each including
one of two templates: multiple choice, or greedy completion), over JSONL that the stage writes to
``data/evaluate/tasks/<task>/{train,test}.jsonl``. The YAML names those files relative to the
project root, so ``lm_eval --include_path pipeline/eval/tasks`` from the root runs them as they
are; in-process the same config is given to lm-eval with the absolute paths of this run.

External tasks: any lm-eval task name (its data must be reachable: offline, only what the
Hugging Face cache holds) or the path of a task YAML.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import LineageError

TASKS_DIR = Path(__file__).parent / "tasks"


def quiet() -> None:
    """Logs stay quiet: lm-eval, datasets and transformers report at ERROR, no progress bars."""
    import os

    os.environ["TQDM_DISABLE"] = "1"
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    for name in ("lm_eval", "lm-eval", "datasets", "transformers", "accelerate", "evaluate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # tqdm reads TQDM_DISABLE when it is imported, which happened long before: lm-eval's own bars
    # (one per task while it builds requests) are switched off where lm-eval looks tqdm up
    import sys

    from tqdm import tqdm

    class SilentTqdm(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    for name, module in list(sys.modules.items()):
        if name.startswith("lm_eval") and getattr(module, "tqdm", None) is tqdm:
            module.tqdm = SilentTqdm  # type: ignore[attr-defined]


def task_config(task: str, data_dir: Path) -> dict[str, Any]:
    """The full lm-eval config of ``lineage_<task>`` with its data files under ``data_dir/<task>/``."""
    path = TASKS_DIR / f"lineage_{task}.yaml"
    if not path.is_file():
        raise LineageError(f"evaluate.tasks: no task {task!r} (no {path.relative_to(TASKS_DIR.parents[2])})")
    cfg = read_yaml(path, "evaluate.tasks")
    include = cfg.pop("include", None)
    if include:
        cfg = {**read_yaml(path.parent / include, "evaluate.tasks"), **cfg}
    cfg["dataset_kwargs"] = {
        "data_files": {side: str(Path(data_dir) / task / f"{side}.jsonl") for side in ("train", "test")}
    }
    return cfg


def read_yaml(path: Path, key: str) -> dict[str, Any]:
    """A task YAML as a mapping; unreadable, malformed or not a mapping is one line naming it. lm-eval's
    own tags (``!function``) are kept as text: lm-eval resolves them when it loads the task."""

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, tag, node: f"{tag} {getattr(node, 'value', '')}")
    try:
        data = yaml.load(Path(path).read_bytes().decode("utf-8"), Loader=Loader)  # noqa: S506 - a SafeLoader
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        reason = " ".join(str(e).split())[:160]
        raise LineageError(
            f"{key}: {path} is not a readable task YAML ({type(e).__name__}: {reason})"
        ) from None
    if not isinstance(data, dict):
        raise LineageError(f"{key}: {path} is not a task YAML (a mapping of keys to values)")
    return data


def task_manager(external: list[str]) -> Any:
    """lm-eval's TaskManager over our folder, with lm-eval's own tasks only when external names
    are asked for (indexing them all costs seconds)."""
    from lm_eval.tasks import TaskManager

    paths = [str(TASKS_DIR)] + [str(Path(e).parent) for e in external if e.endswith((".yaml", ".yml"))]
    return TaskManager(
        include_path=paths, include_defaults=any(not e.endswith((".yaml", ".yml")) for e in external)
    )


def check_external(tm: Any, external: list[str]) -> list[str]:
    """lm-eval task names for each external entry; one line for an unknown one."""
    names = []
    for e in external:
        if e.endswith((".yaml", ".yml")):
            path = Path(e)
            if not path.is_file():
                raise LineageError(f"evaluate.external: {e} not found")
            cfg = read_yaml(path, "evaluate.external")
            if not isinstance(cfg.get("task"), str):
                raise LineageError(f"evaluate.external: {e} has no `task:` name")
            names.append(cfg["task"])
        elif e in tm.all_tasks:
            names.append(e)
        else:
            raise LineageError(
                f"evaluate.external: {e!r} is not an lm-eval task name (and no task YAML path)"
            )
    return names


def hf_lm(model: Any, tokenizer: Any, batch_size: int, max_length: int, device: str = "cpu") -> Any:
    """lm-eval's HFLM around a transformers model (a folder or a loaded model) and its tokenizer."""
    from lm_eval.models.huggingface import HFLM

    quiet()

    class QuietHFLM(HFLM):  # no progress bars: the stage's log stays quiet
        def loglikelihood(self, requests: Any, disable_tqdm: bool = False) -> Any:
            return super().loglikelihood(requests, disable_tqdm=True)

        def generate_until(self, requests: Any, disable_tqdm: bool = False) -> Any:
            return super().generate_until(requests, disable_tqdm=True)

    return QuietHFLM(
        pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length, device=device
    )


def evaluate(
    lm: Any, tasks: list[dict[str, Any] | str], k: int, seed: int, tm: Any
) -> dict[str, dict[str, float]]:
    """``{task: {metric: value, metric_stderr: value, n: items}}`` at ``k`` demonstrations."""
    from lm_eval import simple_evaluate

    quiet()
    try:
        out = simple_evaluate(
            model=lm, tasks=tasks, num_fewshot=k, task_manager=tm, log_samples=False, bootstrap_iters=1000,
            random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
        )  # fmt: skip
    except LineageError:
        raise
    except Exception as e:  # unreachable data offline, a malformed task file
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise LineageError(
            f"evaluate: lm-eval could not run the tasks at k={k}: {type(e).__name__}: {msg}"
        ) from None
    results: dict[str, dict[str, float]] = {}
    for name, res in out["results"].items():
        row: dict[str, float] = {}
        for key, v in res.items():
            if "," not in key or not isinstance(v, int | float):
                continue
            metric, _ = key.split(",", 1)
            row[metric] = float(v)
        n = out.get("n-samples", {}).get(name, {})
        row["n"] = float(n.get("effective", n.get("original", 0)))
        results[name] = row
    return results


def prompts(tasks: list[dict[str, Any]], k: int, seed: int) -> dict[str, list[str]]:
    """The exact prompt lm-eval builds for every test item of each task at ``k`` shots."""
    tm = task_manager([])
    quiet()
    loaded = tm.load(tasks)["tasks"]
    out = {}
    for name, task in loaded.items():
        task.set_fewshot_seed(seed)
        out[name] = [task.fewshot_context(doc, k) for doc in task.eval_docs]
    return out
