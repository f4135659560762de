"""KV-cached generation: the same tokens as re-encoding the context every step, for every arch,
for left-padded batches of prompts of different lengths, and past block_size."""

from __future__ import annotations

import pytest
import torch

from pipeline.model import GPT, GPTConfig
from pipeline.model.gpt import KVCache

ARCHS = ["gpt1", "gpt2", "gpt3"]

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(arch: str, **kw) -> GPT:
    cfg = dict(arch=arch, vocab_size=50, block_size=32, n_layer=4, n_head=2, n_embd=32, window=5)
    cfg.update(kw)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**cfg)).eval()
    with torch.no_grad():  # larger weights than the init: sharper logits, so argmax is far from ties
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(4.0)
    return model


def left_pad(prompts: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    idx = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return idx, mask


PROMPTS = [[3, 7, 1], [5], [9, 2, 4, 4, 8, 1, 6, 3], [11, 12, 13, 14, 15]]


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_greedy_equals_the_no_cache_path_row_by_row(arch: str) -> None:
    model = tiny(arch)
    idx, mask = left_pad(PROMPTS)
    new = 20  # past the gpt3 window (5), within block_size for every row
    cached = model.generate(idx, new, temperature=0, attention_mask=mask)
    for row, prompt in enumerate(PROMPTS):
        alone = model.generate(torch.tensor([prompt]), new, temperature=0, use_cache=False)
        assert cached[row, -new:].tolist() == alone[0, -new:].tolist(), f"row {row}"


@pytest.mark.parametrize("arch", ARCHS)
def test_cache_past_block_size_slides_like_the_no_cache_path(arch: str) -> None:
    model = tiny(arch, block_size=12)
    prompt = torch.tensor([[1, 2, 3, 4, 5, 6]])
    cached = model.generate(prompt, 15, temperature=0)
    plain = model.generate(prompt, 15, temperature=0, use_cache=False)
    assert torch.equal(cached, plain)


@pytest.mark.parametrize("arch", ARCHS)
def test_padded_batch_without_cache_equals_cached(arch: str) -> None:
    model = tiny(arch)
    idx, mask = left_pad(PROMPTS)
    a = model.generate(idx, 10, temperature=0, attention_mask=mask)
    b = model.generate(idx, 10, temperature=0, attention_mask=mask, use_cache=False)
    assert torch.equal(a, b)


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_logits_match_full_forward(arch: str) -> None:
    """Feeding a sequence one token at a time through the cache gives the full forward's logits."""
    model = tiny(arch)
    x = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))
    full, _ = model(x)
    cache = KVCache(model.config.n_layer, model.config.block_size)
    steps = [model(x[:, :4], cache=cache)[0]]  # a prefill of 4, then one token at a time
    for t in range(4, 16):
        steps.append(model(x[:, t : t + 1], cache=cache)[0])
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_sampling_with_cache_is_seeded_and_keeps_top_k() -> None:
    model = tiny("gpt2")
    idx, mask = left_pad(PROMPTS)
    kw = dict(temperature=1.0, top_k=1, attention_mask=mask)
    greedy = model.generate(idx, 8, temperature=0, attention_mask=mask)
    assert torch.equal(model.generate(idx, 8, generator=torch.Generator().manual_seed(0), **kw), greedy)
    a = model.generate(
        idx, 8, temperature=1.2, top_p=0.9, attention_mask=mask, generator=torch.Generator().manual_seed(3)
    )
    b = model.generate(
        idx, 8, temperature=1.2, top_p=0.9, attention_mask=mask, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(a, b)


def test_attention_mask_of_the_wrong_shape_is_refused() -> None:
    model = tiny("gpt2")
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 3))


@pytest.mark.parametrize("arch", ["gpt2", "gpt3"])
def test_hugging_face_generate_gives_the_same_greedy_tokens(arch: str) -> None:
    """The exported model, with transformers' own KV cache and left padding, agrees token for token."""
    from pipeline.model.export import to_hf

    model = tiny(arch, bias=arch != "gpt3")
    hf = to_hf(model)
    idx, mask = left_pad(PROMPTS)
    ours = model.generate(idx, 12, temperature=0, attention_mask=mask)
    theirs = hf.generate(
        input_ids=idx, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0,
        eos_token_id=None,
    )  # fmt: skip
    assert torch.equal(ours, theirs)
