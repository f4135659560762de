"""The GPT model: learning, causality, gpt3's banded layers, optimizer groups, generation, sizes."""

from __future__ import annotations

import pytest
import torch

from pipeline.model import GPT, GPTConfig
from pipeline.model.gpt import filter_logits

ARCHS = ["gpt1", "gpt2", "gpt3"]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(arch: str = "gpt2", **kw) -> GPT:
    cfg = dict(arch=arch, vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, window=4)
    cfg.update(kw)
    torch.manual_seed(0)
    return GPT(GPTConfig(**cfg))


# --- learning and causality ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_loss_falls_on_a_tiny_corpus(arch: str) -> None:
    text = "the quick brown fox jumps over the lazy dog. " * 20
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text])
    model = tiny(arch, vocab_size=len(chars))
    opt = model.configure_optimizer(weight_decay=0.01, lr=1e-2, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(0)
    T = model.config.block_size

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(0, len(data) - T - 1, (8,), generator=gen)
        x = torch.stack([data[s : s + T] for s in starts])
        y = torch.stack([data[s + 1 : s + T + 1] for s in starts])
        return x, y

    losses = []
    for _ in range(80):
        x, y = batch()
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 2.5  # about ln(vocab) at the start
    assert sum(losses[-10:]) / 10 < 0.6


def test_loss_ignores_minus_one_targets() -> None:
    model = tiny().eval()
    x = torch.randint(0, 64, (2, 8))
    y = torch.randint(0, 64, (2, 8))
    logits, full = model(x, y)
    masked = y.clone()
    masked[:, 4:] = -1
    _, part = model(x, masked)
    expected = torch.nn.functional.cross_entropy(logits[:, :4].reshape(-1, 64), y[:, :4].reshape(-1))
    assert full is not None and part is not None
    assert torch.allclose(part, expected)
    assert logits.shape == (2, 8, 64)


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_do_not_see_the_future(arch: str) -> None:
    model = tiny(arch).eval()
    x = torch.randint(0, 64, (2, 16))
    base, _ = model(x)
    for t in (0, 5, 14):
        changed = x.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 1) % 64
        out, _ = model(changed)
        assert torch.allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-6)
        assert not torch.allclose(out[:, t + 1], base[:, t + 1])


def test_architectures_have_the_documented_layout() -> None:
    gpt1, gpt2 = tiny("gpt1"), tiny("gpt2")
    assert "ln_f" not in gpt1.transformer and "ln_f" in gpt2.transformer
    for model in (gpt1, gpt2):
        assert model.lm_head.weight is model.transformer.wte.weight
        names = {n for n, _ in model.named_parameters()}
        for part in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
            assert f"transformer.h.1.{part}.weight" in names
    # post-norm: every block output is layer-normed, so with unit LN weights each position has std ~1
    h = gpt1.transformer.h[0](torch.randn(1, 5, 32))
    assert torch.allclose(h.std(-1, unbiased=False), torch.ones(1, 5), atol=1e-3)


def test_gpt2_scales_the_residual_projections_at_init() -> None:
    model = GPT(GPTConfig(arch="gpt2", n_layer=8, n_embd=256, n_head=4, vocab_size=64))
    proj = model.transformer.h[0].mlp.c_proj.weight.std().item()
    fc = model.transformer.h[0].mlp.c_fc.weight.std().item()
    assert fc == pytest.approx(0.02, rel=0.05)
    assert proj == pytest.approx(0.02 / 4, rel=0.05)  # 0.02 / sqrt(2 * 8)


# --- gpt3 banded sparse layers --------------------------------------------------------------------


def test_gpt3_alternates_dense_and_banded_masks() -> None:
    model = tiny("gpt3", n_layer=3, window=3)
    assert [model.layer_is_sparse(i) for i in range(3)] == [False, True, False]
    assert not any(tiny("gpt2").layer_is_sparse(i) for i in range(2))
    T, w = 7, 3
    causal = torch.tensor([[j <= i for j in range(T)] for i in range(T)])
    banded = torch.tensor([[j <= i and i - j < w for j in range(T)] for i in range(T)])
    assert torch.equal(model.attention_mask(0, T), causal)
    assert torch.equal(model.attention_mask(1, T), banded)
    assert torch.equal(model.attention_mask(2, T), causal)
    assert model.attention_mask(1, T).dtype == torch.bool
    assert banded[6].tolist() == [False] * 4 + [True] * 3  # itself and the window-1 before it


def test_sparse_layer_sees_only_its_window() -> None:
    model = tiny("gpt3", window=4).eval()
    attn = model.transformer.h[1].attn  # layer 1 is sparse; layer 0 is dense and would leak
    x = torch.randn(1, 16, 32)
    base = attn(x)
    j = 3
    changed = x.clone()
    changed[:, j] += 1.0
    diff = (attn(changed) - base).abs().amax(-1)[0]
    for i in range(16):
        if j <= i < j + 4:
            assert diff[i] > 1e-4, i
        else:
            assert diff[i] == 0, i
    # the dense layer sees everything before it
    dense = model.transformer.h[0].attn
    assert (dense(changed) - dense(x)).abs().amax(-1)[0][15] > 1e-4


# --- optimizer ------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt1", "gpt3"])
def test_param_groups_split_matrices_from_biases_and_norms(arch: str) -> None:
    model = tiny(arch)
    opt = model.configure_optimizer(weight_decay=0.1, lr=1e-3, betas=(0.9, 0.95))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    d = {id(p) for p in decay["params"]}
    n = {id(p) for p in no_decay["params"]}
    assert not d & n
    assert d | n == {id(p) for p in model.parameters()}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    for name, p in model.named_parameters():
        if name.endswith(".bias") or ".ln_" in name:
            assert id(p) in n, name
        else:
            assert id(p) in d, name
    assert id(model.transformer.wte.weight) in d and id(model.transformer.wpe.weight) in d


# --- generation -----------------------------------------------------------------------------------


def test_generate_shapes_and_greedy_paths_agree() -> None:
    model = tiny().eval()
    prompt = torch.randint(0, 64, (2, 5))
    greedy = model.generate(prompt, 6, temperature=0)
    assert greedy.shape == (2, 11)
    assert torch.equal(greedy[:, :5], prompt)
    assert torch.equal(model.generate(prompt, 6, temperature=0), greedy)
    gen = torch.Generator().manual_seed(1)
    assert torch.equal(model.generate(prompt, 6, top_k=1, generator=gen), greedy)
    assert torch.equal(model.generate(prompt, 6, top_p=1e-6, generator=gen), greedy)
    sampled = model.generate(prompt, 6, temperature=1.5, top_k=10, top_p=0.9, generator=gen)
    assert sampled.shape == (2, 11)
    a = model.generate(prompt, 6, generator=torch.Generator().manual_seed(7))
    b = model.generate(prompt, 6, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_generate_crops_long_prompts_to_block_size() -> None:
    model = tiny().eval()
    prompt = torch.randint(0, 64, (1, 40))  # block_size is 16
    out = model.generate(prompt, 3, temperature=0)
    assert out.shape == (1, 43)
    tail = model.generate(prompt[:, -16:], 3, temperature=0)
    assert torch.equal(out[:, -3:], tail[:, -3:])


def test_generate_stops_when_every_row_emitted_eos() -> None:
    model = tiny().eval()
    prompt = torch.randint(0, 64, (1, 4))
    first = int(model.generate(prompt, 1, temperature=0)[0, -1])
    out = model.generate(prompt, 10, temperature=0, eos_token=first)
    assert out.shape == (1, 5)
    two = torch.cat([prompt, torch.randint(0, 64, (1, 4))])
    out = model.generate(two, 10, temperature=0, eos_token=first)
    row = out[0, 4:].tolist()  # the first row finished at once and is padded with eos
    assert row == [first] * len(row)


def test_filter_logits_top_k_then_top_p() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = filter_logits(logits, top_k=3, top_p=None).isfinite()
    assert kept.tolist() == [[True, True, True, False]]
    kept = filter_logits(logits, top_k=None, top_p=0.7).isfinite()
    assert kept.tolist() == [[True, True, False, False]]
    kept = filter_logits(logits, top_k=3, top_p=0.95).isfinite()  # renormalised over the top 3
    assert kept.tolist() == [[True, True, True, False]]


# --- sizes and validation -------------------------------------------------------------------------


def test_num_params_and_flops_per_token() -> None:
    model = tiny("gpt2")
    total = sum(p.numel() for p in model.parameters())
    assert model.num_params(non_embedding=False) == total  # tied lm_head counted once
    assert model.num_params() == total - 16 * 32
    cfg = model.config
    expected = 6 * model.num_params() + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
    assert model.flops_per_token() == expected

    # gpt3's banded layers compute the masked dense score matrix: counted at dense cost, as they run
    sparse = tiny("gpt3", n_layer=3, window=4)
    assert sparse.flops_per_token() == 6 * sparse.num_params() + 12 * 32 * (16 + 16 + 16)


@pytest.mark.parametrize(
    "bad",
    [
        dict(n_embd=30, n_head=4),
        dict(arch="gpt4"),
        dict(window=0),
        dict(n_layer=0),
        dict(vocab_size=-1),
        dict(dropout=1.5),
    ],
)
def test_bad_config_raises(bad: dict) -> None:
    with pytest.raises(ValueError):
        GPTConfig(**bad)


def test_config_dict_round_trip() -> None:
    cfg = GPTConfig(arch="gpt3", window=8, bias=False)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown GPTConfig keys: colour"):
        GPTConfig.from_dict({**cfg.to_dict(), "colour": "red"})
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)


def test_too_long_input_names_both_lengths() -> None:
    model = tiny()
    with pytest.raises(ValueError, match=r"17.*16"):
        model(torch.zeros(1, 17, dtype=torch.long))
