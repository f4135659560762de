"""Checkpoints (safetensors + config.json) and conversion to Hugging Face transformers models.

Hugging Face counterparts, each giving the same logits as our model:

* ``gpt1`` -> ``OpenAIGPTLMHeadModel``: post-norm, Conv1D weights stored ``[in, out]`` (the
  transpose of ``nn.Linear``), attention scaled by ``1/sqrt(head_dim)``. Its ``afn`` must be
  ``"gelu"``: that model's own activation table maps ``"gelu"`` to ``gelu_new`` (tanh) and has no
  ``"gelu_new"`` entry.
* ``gpt2`` -> ``GPT2LMHeadModel``: pre-norm with ``ln_f``, Conv1D weights, ``gelu_new``.
* ``gpt3`` -> ``GPTNeoForCausalLM``: pre-norm, ``nn.Linear`` weights, layers alternating
  ``"global"`` / ``"local"`` with ``window_size = window``. A GPT-Neo local layer lets token ``i``
  see key ``j`` when ``0 <= i - j < window_size`` (its mask is ``tril(1) xor tril(1, -window_size)``),
  which is our sparse-layer rule. GPT-Neo has no q/k/v biases, so only ``bias=False`` models
  export, and it does not scale attention scores, so ``1/sqrt(head_dim)`` is folded into the
  query weights.

Models built with ``bias=False`` export to gpt1/gpt2 with zero biases (HF layers always have them).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import LineageError
from pipeline.model.gpt import GPT, GPTConfig

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TIED = "lm_head.weight"  # the same tensor as transformer.wte.weight; saved once, re-tied on load
EOT = "<|endoftext|>"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def save_model(model: GPT, directory: Path) -> None:
    """Write ``model.safetensors`` and ``config.json`` into ``directory`` (each via a temporary file
    and an atomic rename, weights first, so a reader never sees half a file)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k != TIED}
    tmp_weights = directory / (WEIGHTS + ".tmp")
    tmp_config = directory / (CONFIG + ".tmp")
    save_file(tensors, str(tmp_weights), metadata={"format": "pt"})
    tmp_config.write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    os.replace(tmp_weights, directory / WEIGHTS)
    os.replace(tmp_config, directory / CONFIG)


def load_model(directory: Path, map_location: str | torch.device = "cpu") -> GPT:
    """Rebuild a model saved by :func:`save_model`; LineageError if anything does not fit."""
    from pipeline.io import load_safetensors, read_json, rerun_hint

    directory = Path(directory)
    weights, config_path = directory / WEIGHTS, directory / CONFIG
    for path in (config_path, weights):
        if not path.is_file():
            raise LineageError(f"model checkpoint incomplete: {path} not found")
    try:
        config = GPTConfig.from_dict(read_json(config_path))
    except LineageError as exc:
        raise LineageError(f"invalid model config {exc}") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise LineageError(
            f"invalid model config {config_path}: {_one_line(exc)}; {rerun_hint(config_path)}"
        ) from None
    tensors = load_safetensors(weights, str(map_location))

    model = GPT(config)
    expected = {k: v for k, v in model.state_dict().items() if k != TIED}
    for key, ref in expected.items():
        if key not in tensors:
            raise LineageError(f"{weights} does not match its {config.arch} config: missing tensor {key}")
        if tuple(tensors[key].shape) != tuple(ref.shape):
            raise LineageError(
                f"{weights} does not match its {config.arch} config: {key} has shape "
                f"{tuple(tensors[key].shape)}, expected {tuple(ref.shape)}"
            )
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise LineageError(f"{weights} does not match its {config.arch} config: unexpected tensor {extra[0]}")
    model.load_state_dict(tensors, strict=False)  # lm_head.weight follows wte (tied)
    return model.to(map_location)


# --- Hugging Face ---------------------------------------------------------------------------------


def _hf_config(config: GPTConfig) -> Any:
    from transformers import GPT2Config, GPTNeoConfig, OpenAIGPTConfig

    common = dict(vocab_size=config.vocab_size, layer_norm_epsilon=1e-5, bos_token_id=None, eos_token_id=None)
    dropout = dict(resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout)
    if config.arch == "gpt1":
        return OpenAIGPTConfig(
            n_positions=config.block_size,
            n_embd=config.n_embd,
            n_layer=config.n_layer,
            n_head=config.n_head,
            afn="gelu",  # OpenAIGPT's table: "gelu" -> gelu_new (tanh approximation)
            **dropout,
            **common,
        )
    if config.arch == "gpt2":
        return GPT2Config(
            n_positions=config.block_size,
            n_embd=config.n_embd,
            n_layer=config.n_layer,
            n_head=config.n_head,
            n_inner=4 * config.n_embd,
            activation_function="gelu_new",
            **dropout,
            **common,
        )
    if config.bias:
        raise LineageError(
            "gpt3 exports to GPT-Neo, which has no q/k/v biases: config.bias must be False to export exactly"
        )
    attention_types: list[Any] = [[["global", "local"], config.n_layer // 2]]
    if config.n_layer % 2:
        attention_types.append([["global"], 1])
    return GPTNeoConfig(
        max_position_embeddings=config.block_size,
        hidden_size=config.n_embd,
        num_layers=config.n_layer,
        num_heads=config.n_head,
        intermediate_size=4 * config.n_embd,
        attention_types=attention_types,
        window_size=config.window,
        activation_function="gelu_new",
        resid_dropout=config.dropout,
        embed_dropout=config.dropout,
        attention_dropout=config.dropout,
        **common,
    )


def _hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights renamed (and transposed / rescaled where needed) for the HF model class."""
    cfg = model.config
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    C = cfg.n_embd

    def get(key: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A tensor, or zeros for the biases a bias=False model does not have."""
        return sd[key] if key in sd else torch.zeros(shape, dtype=sd["transformer.wte.weight"].dtype)

    out: dict[str, torch.Tensor] = {}
    if cfg.arch == "gpt1":
        out["transformer.tokens_embed.weight"] = sd["transformer.wte.weight"]
        out["transformer.positions_embed.weight"] = sd["transformer.wpe.weight"]
    else:
        out["transformer.wte.weight"] = sd["transformer.wte.weight"]
        out["transformer.wpe.weight"] = sd["transformer.wpe.weight"]
        out["transformer.ln_f.weight"] = sd["transformer.ln_f.weight"]
        out["transformer.ln_f.bias"] = get("transformer.ln_f.bias", (C,))
    out["lm_head.weight"] = sd["transformer.wte.weight"]

    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            out[p + ln + ".weight"] = sd[p + ln + ".weight"]
            out[p + ln + ".bias"] = get(p + ln + ".bias", (C,))
        linears = {
            "attn.c_attn": 3 * C,
            "attn.c_proj": C,
            "mlp.c_fc": 4 * C,
            "mlp.c_proj": C,
        }
        w = {name: sd[p + name + ".weight"] for name in linears}
        b = {name: get(p + name + ".bias", (n,)) for name, n in linears.items()}
        if cfg.arch in ("gpt1", "gpt2"):
            for name in linears:  # Conv1D keeps [in, out]
                out[p + name + ".weight"] = w[name].t()
                out[p + name + ".bias"] = b[name]
        else:
            q, k, v = w["attn.c_attn"].split(C, dim=0)
            a = p + "attn.attention."
            out[a + "q_proj.weight"] = q / math.sqrt(C // cfg.n_head)  # GPT-Neo does not scale scores
            out[a + "k_proj.weight"] = k
            out[a + "v_proj.weight"] = v
            out[a + "out_proj.weight"] = w["attn.c_proj"]
            out[a + "out_proj.bias"] = b["attn.c_proj"]
            for name in ("mlp.c_fc", "mlp.c_proj"):
                out[p + name + ".weight"] = w[name]
                out[p + name + ".bias"] = b[name]
    return {k: v.contiguous().clone().cpu() for k, v in out.items()}


def to_hf(model: GPT) -> Any:
    """The equivalent Hugging Face model (``transformers.PreTrainedModel``), in eval mode, on CPU."""
    from transformers import GPT2LMHeadModel, GPTNeoForCausalLM, OpenAIGPTLMHeadModel

    classes = {"gpt1": OpenAIGPTLMHeadModel, "gpt2": GPT2LMHeadModel, "gpt3": GPTNeoForCausalLM}
    hf_config = _hf_config(model.config)
    hf_config.tie_word_embeddings = True
    hf = classes[model.config.arch](hf_config)
    state = _hf_state_dict(model)
    hf = hf.to(state["lm_head.weight"].dtype)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != TIED]
    if missing or unexpected:
        raise LineageError(f"Hugging Face {type(hf).__name__} layout mismatch: {(missing + unexpected)[0]}")
    hf.tie_weights()
    return hf.eval()


def export_hf(model: GPT, directory: Path, tokenizer_file: Path | None = None) -> None:
    """``save_pretrained`` the HF model into ``directory`` (safetensors); with ``tokenizer_file``
    (a ``tokenizers`` JSON) also save it as a fast tokenizer, with ``<|endoftext|>`` as bos/eos
    when the vocabulary has it."""
    directory = Path(directory)
    hf = to_hf(model)
    tokenizer = None
    if tokenizer_file is not None:
        from transformers import PreTrainedTokenizerFast

        tokenizer_file = Path(tokenizer_file)
        if not tokenizer_file.is_file():
            raise LineageError(f"tokenizer file not found: {tokenizer_file}")
        try:
            tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file))
        except Exception as exc:
            raise LineageError(f"cannot load tokenizer {tokenizer_file}: {_one_line(exc)}") from None
        if len(tokenizer) > model.config.vocab_size:
            raise LineageError(
                f"tokenizer {tokenizer_file} has {len(tokenizer)} tokens, more than the model's "
                f"vocab_size {model.config.vocab_size}"
            )
        eot_id = tokenizer.get_vocab().get(EOT)
        if eot_id is not None:
            tokenizer.bos_token = EOT
            tokenizer.eos_token = EOT
            for cfg in (hf.config, hf.generation_config):
                cfg.bos_token_id = eot_id
                cfg.eos_token_id = eot_id
    directory.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(directory))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
