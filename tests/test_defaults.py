"""One home for every default: each params.yaml key equals the code's default, and every key of the
typed params is written in params.yaml, so what a user reads is what runs."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from pipeline.config import Params, parse_params
from tests.conftest import ROOT

# keys without a default in code: they name the user's sources (or follow from their roles)
SOURCE_KEYS = {"crawl.sources", "quality.positives", "quality.negatives", "dedup.priority", "mix.weights"}


def _plain(v: Any) -> Any:
    if isinstance(v, BaseModel):
        return v.model_dump()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def drift(model: type[BaseModel], data: dict[str, Any], prefix: str) -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}"
        if key in SOURCE_KEYS:
            continue
        default = field.get_default(call_default_factory=True)
        if name not in data:
            out.append(f"{key}: not in params.yaml (code default {default!r})")
        elif isinstance(default, BaseModel) and isinstance(data[name], dict):
            out += drift(type(default), data[name], key)
        elif isinstance(default, dict) and default and isinstance(next(iter(default.values())), BaseModel):
            continue  # a mapping of named sub-sections (finetune.tasks): checked by parse
        elif _plain(default) != data[name]:
            out.append(f"{key}: params.yaml {data[name]!r} != code default {_plain(default)!r}")
    return out


def test_params_yaml_and_code_defaults_agree():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    problems = []
    for section, field in Params.model_fields.items():
        problems += drift(field.annotation, raw.get(section, {}), section)
    assert problems == [], "\n".join(problems)


def test_the_drift_check_sees_a_changed_default(monkeypatch):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["pretrain"]["lr"] = raw["pretrain"]["lr"] * 2
    del raw["sft"]["grad_clip"]
    problems = drift(Params.model_fields["pretrain"].annotation, raw["pretrain"], "pretrain")
    problems += drift(Params.model_fields["sft"].annotation, raw["sft"], "sft")
    assert any(p.startswith("pretrain.lr: params.yaml") for p in problems)
    assert any(p.startswith("sft.grad_clip: not in params.yaml") for p in problems)


def test_roles_give_the_dedup_priority_params_yaml_writes():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    written = parse_params(raw).dedup.priority
    del raw["dedup"]["priority"]
    assert parse_params(raw).dedup.priority == written
