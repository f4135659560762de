"""One decoder-only transformer that can be built as GPT-1, GPT-2 or GPT-3.

Read top to bottom: the config, then attention, the MLP, a block, and the model.

* ``gpt1`` (Radford et al. 2018): post-norm blocks ``x = ln_1(x + attn(x)); x = ln_2(x + mlp(x))``,
  no final LayerNorm.
* ``gpt2`` (Radford et al. 2019): pre-norm blocks ``x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))``,
  a final LayerNorm ``ln_f``, and residual output projections initialised with std
  ``0.02 / sqrt(2 * n_layer)``.
* ``gpt3`` (Brown et al. 2020): the gpt2 layout whose layers alternate dense and locally banded
  sparse attention. Layer ``i`` is sparse when ``i`` is odd; there a token sees itself and the
  ``window - 1`` tokens before it (the same rule as GPT-Neo's "local" layers with ``window_size``).

All three use learned token and position embeddings, a 4x GELU MLP (tanh approximation, i.e.
``gelu_new``), an lm_head tied to the token embeddings, and N(0, 0.02) initialisation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

ARCHS = ("gpt1", "gpt2", "gpt3")


@dataclass
class GPTConfig:
    """Sizes and switches of a model; invalid values raise ValueError when the config is built.

    ``window`` matters only for ``gpt3``: in a sparse layer query position ``i`` may attend to key
    position ``j`` when ``0 <= i - j < window``, i.e. to itself and the ``window - 1`` previous
    tokens. That is exactly the local mask of Hugging Face GPT-Neo with ``window_size = window``.
    """

    arch: str = "gpt2"
    vocab_size: int = 512
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    window: int = 64

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; expected one of {', '.join(ARCHS)}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"window must be an integer >= 1, got {self.window!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig keys: {', '.join(unknown)}")
        return cls(**d)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention; banded (local) when ``window`` is given."""

    def __init__(self, config: GPTConfig, window: int | None = None, layer: int = 0):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.layer = layer  # where this layer's keys and values live in a KVCache
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v fused
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.window = window
        if window is not None:
            # built once for the longest sequence; forward slices the top-left T x T corner
            self.register_buffer("band", band_mask(config.block_size, window), persistent=False)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> torch.Tensor:
        """``mask`` (B, 1, T, T_past + T), True = may attend, comes with padding or a cache; without
        it the T queries see the T keys causally (the training path)."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if cache is not None:
            k, v = cache.append(self.layer, k, v)  # the keys and values of every position so far
        dropout_p = self.dropout if self.training else 0.0
        if mask is not None:
            if self.window is not None:  # the band counts cached positions too: query i is key slot past + i
                mask = mask & self.band[k.size(2) - T : k.size(2), : k.size(2)]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        elif self.window is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            mask = self.band[:T, :T]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))


class KVCache:
    """The keys and values of the positions already processed, per layer, so that generating a token
    costs one position's work instead of re-encoding the whole context. Each layer's buffer is
    allocated once, for ``max_length`` positions, and filled in place."""

    def __init__(self, n_layer: int, max_length: int):
        self.max_length = max_length
        self.length = 0  # positions held (padding included); GPT.hidden advances it after each call
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one layer's new keys and values (B, n_head, T, head_dim); return all held so far."""
        if self.k[layer] is None:
            shape = (k.size(0), k.size(1), self.max_length, k.size(3))
            self.k[layer], self.v[layer] = k.new_zeros(shape), v.new_zeros(shape)
        end = self.length + k.size(2)
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


def band_mask(T: int, window: int | None) -> torch.Tensor:
    """(T, T) bool, True where query i may attend key j: j <= i, and i - j < window if given."""
    i = torch.arange(T).unsqueeze(1)
    j = torch.arange(T).unsqueeze(0)
    allowed = j <= i
    if window is not None:
        allowed &= (i - j) < window
    return allowed


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """One transformer layer: post-norm for gpt1, pre-norm otherwise."""

    def __init__(self, config: GPTConfig, window: int | None = None, layer: int = 0):
        super().__init__()
        self.post_norm = config.arch == "gpt1"
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, window, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> torch.Tensor:
        if self.post_norm:
            x = self.ln_1(x + self.attn(x, mask, cache))
            return self.ln_2(x + self.mlp(x))
        x = x + self.attn(self.ln_1(x), mask, cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList(
                    Block(config, config.window if self.layer_is_sparse(i) else None, i)
                    for i in range(config.n_layer)
                ),
            )
        )
        if config.arch != "gpt1":
            self.transformer.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying: one tensor, two roles

        self.apply(self._init_weights)
        if config.arch != "gpt1":
            # GPT-2: scale the init of the layers that write into the residual stream by 1/sqrt(N)
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        # nn.LayerNorm already starts at weight 1, bias 0

    def layer_is_sparse(self, i: int) -> bool:
        """gpt3 alternates dense (even i) and locally banded sparse (odd i) layers."""
        if not 0 <= i < self.config.n_layer:
            raise ValueError(f"layer {i} out of range for a {self.config.n_layer}-layer model")
        return self.config.arch == "gpt3" and i % 2 == 1

    def attention_mask(self, layer: int, T: int) -> torch.Tensor:
        """(T, T) bool, True = may attend: causal, and banded to ``window`` in sparse layers."""
        return band_mask(T, self.config.window if self.layer_is_sparse(layer) else None)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) at every position, and the mean cross entropy if targets are given.

        Targets equal to -1 are ignored in the loss. ``attention_mask`` and ``cache`` serve
        generation (see :meth:`hidden`).
        """
        logits = self.lm_head(self.hidden(idx, attention_mask, cache))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def hidden(
        self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> torch.Tensor:
        """The final hidden states (B, T, n_embd) that the lm_head reads (after ``ln_f`` when the
        architecture has one): GPT-1's fine-tuning heads and the reward model's scalar head sit on
        these instead of the logits.

        ``attention_mask`` (B, T_past + T) is 1 on tokens and 0 on left padding; a token's position
        counts only the tokens before it, so a padded row computes what it would alone. ``cache``
        holds the keys and values of the T_past positions before ``idx`` and receives those of ``idx``.
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (batch, time), got {tuple(idx.shape)}")
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        length = past + T
        if length > self.config.block_size:
            raise ValueError(f"sequence length {length} exceeds block_size {self.config.block_size}")
        mask = None  # the training path: T queries see T keys causally
        if attention_mask is None and cache is None:
            pos = torch.arange(T, dtype=torch.long, device=idx.device)
        else:
            if attention_mask is None:
                keep = torch.ones(B, length, dtype=torch.bool, device=idx.device)
            else:
                keep = attention_mask.bool()
                if keep.shape != (B, length):
                    raise ValueError(f"attention_mask must have shape {(B, length)}, got {tuple(keep.shape)}")
            pos = (keep.long().cumsum(1) - 1).clamp(min=0)[:, past:]
            query = torch.arange(past, length, device=idx.device).unsqueeze(1)  # key slot of each query
            key = torch.arange(length, device=idx.device).unsqueeze(0)
            # causal and never to padding; a padding query sees itself, so no softmax row is empty
            mask = ((key <= query) & (keep[:, None, :] | (key == query))).unsqueeze(1)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x, mask, cache)
        if cache is not None:
            cache.length = length
        return self.transformer.ln_f(x) if "ln_f" in self.transformer else x

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count (tied weights once). ``non_embedding`` leaves out the position embeddings;
        the token embeddings stay in because they double as the output layer (nanoGPT's convention)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward), as in PaLM appendix B and nanoGPT's MFU:

        ``6 * N`` for the weight matmuls (N = ``num_params()``, non-embedding) plus, for each layer,
        ``12 * n_embd * block_size`` for the attention scores and the weighted sum of values. This
        counts what runs: gpt3's banded layers compute the full (T, T) score matrix and mask it
        (scaled_dot_product_attention with a boolean mask skips nothing), so they cost as much as
        the dense ones; MFU would flatter them if they were counted at ``window`` keys a query.
        """
        cfg = self.config
        return float(6 * self.num_params() + cfg.n_layer * 12 * cfg.n_embd * cfg.block_size)

    def configure_optimizer(
        self,
        weight_decay: float,
        lr: float,
        betas: tuple[float, float],
        eps: float = 1e-8,
        fused: bool | None = None,
    ) -> torch.optim.AdamW:
        """AdamW with weight decay on matrices (matmul weights, embeddings) only, not on biases or
        LayerNorm parameters. ``fused=None`` uses the fused kernel when every parameter is on CUDA."""
        params = [p for p in self.parameters() if p.requires_grad]  # tied weights appear once
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        if fused is None:
            fused = all(p.is_cuda for p in params)
        groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        eos_token: int | None = None,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Append up to ``max_new_tokens`` sampled tokens to ``idx`` (B, T) and return it.

        The model sees at most the last ``block_size`` tokens. ``temperature == 0`` is greedy;
        otherwise logits are divided by the temperature, cut to the ``top_k`` most likely tokens,
        then to the smallest set whose probability reaches ``top_p`` (nucleus), and sampled.
        Once a row has emitted ``eos_token`` it is padded with ``eos_token``; generation stops
        early when every row has.

        Prompts of different lengths are left-padded, with ``attention_mask`` (B, T) 0 on the padding.
        With ``use_cache`` each step feeds only the new token and reuses the keys and values of the
        others (:class:`KVCache`). Once the sequence outgrows ``block_size`` the window slides and
        every position shifts, so from then on each step re-encodes the last ``block_size`` tokens,
        exactly as without a cache.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        block = self.config.block_size
        mask = attention_mask.bool() if attention_mask is not None else None
        cache = KVCache(self.config.n_layer, block) if use_cache else None
        done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            if cache is not None and idx.size(1) <= block:
                logits, _ = self(idx[:, cache.length :], attention_mask=mask, cache=cache)
            else:
                cache = None
                logits, _ = self(idx[:, -block:], attention_mask=None if mask is None else mask[:, -block:])
            logits = logits[:, -1, :]
            if temperature == 0:
                next_token = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = filter_logits(logits / temperature, top_k, top_p)
                probs = F.softmax(logits, dim=-1)
                next_token = torch.multinomial(probs, num_samples=1, generator=generator)
            if eos_token is not None:
                next_token = torch.where(
                    done.unsqueeze(1), torch.full_like(next_token, eos_token), next_token
                )
                done |= next_token.squeeze(1) == eos_token
            idx = torch.cat((idx, next_token), dim=1)
            if mask is not None:
                mask = torch.cat((mask, torch.ones_like(next_token, dtype=torch.bool)), dim=1)
            if eos_token is not None and bool(done.all()):
                break
        return idx


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Set to -inf every logit (B, V) outside the top k and then outside the top-p nucleus."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (the first always stays)
        before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits
