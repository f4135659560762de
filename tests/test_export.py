"""Checkpoints and Hugging Face export: the same logits after every round trip, clear errors otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.errors import LineageError
from pipeline.model import GPT, GPTConfig
from pipeline.model.export import export_hf, load_model, save_model, to_hf

EOT = "<|endoftext|>"


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(arch: str, **kw) -> GPT:
    cfg = dict(arch=arch, vocab_size=96, block_size=24, n_layer=2, n_head=4, n_embd=32, window=5)
    cfg.update(kw)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**cfg)).eval()
    with torch.no_grad():  # move LayerNorms and biases off their init so every tensor matters
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


CASES = {
    "gpt1": dict(arch="gpt1"),
    "gpt2": dict(arch="gpt2"),
    "gpt3": dict(arch="gpt3", bias=False, n_layer=3),  # odd layer count, window 5 < block_size 24
    "gpt2-nobias": dict(arch="gpt2", bias=False),
}


def tokens(model: GPT, batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, model.config.vocab_size, (batch, model.config.block_size), generator=gen)


@pytest.mark.parametrize("case", CASES)
def test_hf_logits_match(case: str) -> None:
    model = tiny(**CASES[case])
    hf = to_hf(model)
    assert not hf.training
    x = tokens(model)
    with torch.no_grad():
        ours, _ = model(x)
        theirs = hf(x).logits
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


def test_gpt3_export_depends_on_the_window() -> None:
    """The match above is not luck: a GPT-Neo window one off gives different logits."""
    model = tiny(**CASES["gpt3"])
    x = tokens(model)
    for window in (4, 6):
        model.config.window = window
        hf = to_hf(model)
        model.config.window = 5
        with torch.no_grad():
            assert not torch.allclose(model(x)[0], hf(x).logits, atol=1e-3)


def test_gpt3_with_qkv_bias_does_not_export() -> None:
    with pytest.raises(LineageError, match="bias"):
        to_hf(tiny("gpt3", bias=True))


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = tiny(**CASES["gpt3"])
    save_model(model, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_model(tmp_path / "ckpt")
    assert loaded.config == model.config
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    x = tokens(model)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x)[0], model(x)[0])


def test_loading_into_another_arch_or_shape_names_the_key(tmp_path: Path) -> None:
    save_model(tiny("gpt2"), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())

    (tmp_path / "config.json").write_text(json.dumps({**config, "arch": "gpt1"}))
    with pytest.raises(LineageError, match="unexpected tensor transformer.ln_f"):
        load_model(tmp_path)

    (tmp_path / "config.json").write_text(json.dumps({**config, "n_embd": 64}))
    with pytest.raises(
        LineageError, match=r"transformer.wte.weight has shape \(96, 32\), expected \(96, 64\)"
    ):
        load_model(tmp_path)

    (tmp_path / "config.json").write_text(json.dumps({**config, "n_layer": 3}))
    with pytest.raises(LineageError, match="missing tensor transformer.h.2.ln_1.weight"):
        load_model(tmp_path)

    (tmp_path / "config.json").write_text(json.dumps({**config, "bias": False}))
    with pytest.raises(LineageError, match="unexpected tensor transformer.h.0.attn.c_attn.bias"):
        load_model(tmp_path)


def test_bad_checkpoints_raise_one_line(tmp_path: Path) -> None:
    with pytest.raises(LineageError, match="not found"):
        load_model(tmp_path / "nowhere")

    save_model(tiny("gpt2"), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_head": 5}))
    with pytest.raises(LineageError, match="invalid model config"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(LineageError, match="invalid model config"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))

    weights = tmp_path / "model.safetensors"
    good = weights.read_bytes()
    for damaged in (good[: len(good) // 2], b"\xff" * 16 + good[16:], b""):
        weights.write_bytes(damaged)
        with pytest.raises(LineageError, match="corrupted") as info:
            load_model(tmp_path)
        assert "\n" not in str(info.value)


def tiny_tokenizer(path: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    sentences = ["the river runs to the ocean", "a garden by the mountain", "the library of the village"]
    tok.train_from_iterator(sentences * 5, trainer=trainer)
    tok.save(str(path))
    return path


@pytest.mark.parametrize("case", ["gpt1", "gpt2", "gpt3"])
def test_export_hf_reloads_with_the_same_logits(case: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = tiny(**CASES[case])
    export_hf(model, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    x = tokens(model)
    with torch.no_grad():
        assert torch.allclose(model(x)[0], hf(x).logits, atol=1e-4)


def test_export_hf_saves_the_tokenizer(tmp_path: Path) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoConfig, AutoTokenizer

    tokenizer_file = tiny_tokenizer(tmp_path / "tokenizer.json")
    model = tiny("gpt2", vocab_size=320)
    export_hf(model, tmp_path / "hf", tokenizer_file=tokenizer_file)

    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    eot_id = Tokenizer.from_file(str(tokenizer_file)).token_to_id(EOT)
    assert tok.eos_token == EOT and tok.bos_token == EOT
    assert tok.eos_token_id == eot_id
    text = "the river by the garden"
    assert tok(text)["input_ids"] == Tokenizer.from_file(str(tokenizer_file)).encode(text).ids
    assert AutoConfig.from_pretrained(tmp_path / "hf").eos_token_id == eot_id

    with pytest.raises(LineageError, match="vocab_size 64"):
        export_hf(tiny("gpt2", vocab_size=64), tmp_path / "small", tokenizer_file=tokenizer_file)
