"""`dtype: auto` picks what is fast on the machine, and one key sets it for every torch stage."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import DTYPE_SECTIONS, parse_params
from pipeline.train import loop
from tests.conftest import shipped_params

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_auto_on_cpu_is_bf16_only_with_native_support(monkeypatch, native):
    monkeypatch.setattr(loop, "cpu_bf16_native", lambda: native)
    assert loop.autocast_dtype("auto", CPU) == (torch.bfloat16 if native else torch.float32)
    assert loop.autocast_dtype(None, CPU) == (torch.bfloat16 if native else torch.float32)
    assert loop.autocast_dtype("float32", CPU) == torch.float32


def test_explicit_bf16_without_native_support_runs_as_asked_and_warns_once(monkeypatch, capsys):
    monkeypatch.setattr(loop, "cpu_bf16_native", lambda: False)
    monkeypatch.setattr(loop, "_WARNED_SLOW_BF16", False)
    assert loop.autocast_dtype("bfloat16", CPU) == torch.bfloat16
    assert loop.autocast_dtype("bfloat16", CPU) == torch.bfloat16
    err = capsys.readouterr().err
    assert err.count("warning: dtype bfloat16 on a CPU without native bf16") == 1


def test_native_check_reads_the_cpu_features(monkeypatch):
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert loop.cpu_bf16_native() is False  # AVX2 / AVX512 without BF16: emulated, slow
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert loop.cpu_bf16_native() is True


def test_common_dtype_reaches_every_torch_stage_that_does_not_set_its_own():
    raw = shipped_params()
    raw["common"]["dtype"] = "float32"
    params = parse_params(raw)
    for name in DTYPE_SECTIONS:
        own = raw.get(name, {}).get("dtype")
        assert getattr(params, name).dtype == (own or "float32"), name
    assert params.pretrain.dtype == "float32" and params.sft.dtype == "float32"
    raw["common"]["dtype"] = "bfloat16"
    raw["sft"]["dtype"] = "float32"
    params = parse_params(raw)
    assert params.pretrain.dtype == "bfloat16" and params.reward.dtype == "bfloat16"
    assert params.evaluate.dtype == "bfloat16" and params.finetune.dtype == "bfloat16"
    assert params.sft.dtype == "float32"  # a stage's own key wins


def test_dvc_reruns_torch_stages_when_common_dtype_changes():
    import yaml

    from tests.conftest import ROOT

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name in DTYPE_SECTIONS:
        assert "common.dtype" in stages[name]["params"], name
