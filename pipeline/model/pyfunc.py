"""The GPT family as an MLflow model (``python_function`` flavor): a registered version loads with
``mlflow.pyfunc.load_model("models:/<name>@<alias>")`` and its ``predict`` generates text.

The model is logged *from code* (pipeline/model/pyfunc_model.py), never pickled: the version holds
the safetensors weights + config.json, the tokenizer, and this package as code, so loading it runs
only code that ships with the project. Chat models (SFT, PPO) wrap each prompt in the chat template.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc

PARAMS = {"max_new_tokens": 64, "temperature": 0.0, "top_k": 50, "seed": 0}


def _prompts(model_input: Any) -> list[str]:
    """Prompts from what pyfunc passes: a DataFrame (a ``prompt`` column, else the first), a list, a
    string or a dict of lists."""
    if hasattr(model_input, "columns"):
        col = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
        return [str(p) for p in model_input[col].tolist()]
    if isinstance(model_input, dict):
        return [str(p) for p in model_input.get("prompt", next(iter(model_input.values()), []))]
    if isinstance(model_input, str):
        return [model_input]
    return [str(p) for p in model_input]


class GPTGenerator(mlflow.pyfunc.PythonModel):
    """``predict(["prompt", ...], params={"max_new_tokens": 32, "temperature": 0.7})`` -> the text
    each prompt continues with (greedy at temperature 0)."""

    def load_context(self, context: Any) -> None:
        from pipeline.model.export import load_model
        from pipeline.tokenizer import load_tokenizer

        self.model = load_model(Path(context.artifacts["weights"])).eval()
        self.tok = load_tokenizer(context.artifacts["tokenizer"])
        self.chat = None
        if (context.model_config or {}).get("chat"):
            from pipeline.feedback.chat import ChatTokens

            self.chat = ChatTokens(self.tok, context.artifacts["tokenizer"])

    def _encode(self, prompt: str) -> list[int]:
        if self.chat is not None:
            return self.chat.encode_prompt([{"role": "user", "content": prompt}])
        eot = self.tok.token_to_id("<|endoftext|>")
        return self.tok.encode(prompt).ids or [eot]

    def predict(self, context, model_input, params=None):  # no hints: MLflow would read them as a schema
        import torch

        p = {**PARAMS, **(params or {})}
        block = self.model.config.block_size
        max_new = max(1, min(int(p["max_new_tokens"]), block - 1))
        stop = self.chat.end if self.chat is not None else self.tok.token_to_id("<|endoftext|>")
        gen = torch.Generator().manual_seed(int(p["seed"]))
        out = []
        for prompt in _prompts(model_input):
            ids = self._encode(prompt)[-(block - max_new) :]
            with torch.no_grad():
                seq = self.model.generate(
                    torch.tensor([ids]), max_new, temperature=float(p["temperature"]) or 1.0,
                    top_k=1 if float(p["temperature"]) == 0 else int(p["top_k"]) or None, generator=gen,
                    eos_token=stop,
                )  # fmt: skip
            new = [i for i in seq[0, len(ids) :].tolist() if i != stop]
            out.append(self.tok.decode(new, skip_special_tokens=True))
        return out


def log_generator(weights: Path, tokenizer: Path, *, chat: bool, name: str = "model") -> Any:
    """Log a GPT model folder (safetensors + config.json) and its tokenizer as a pyfunc model of the
    active run; returns MLflow's ModelInfo (``model_uri`` is what to register)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    here = Path(__file__).resolve()
    signature = ModelSignature(
        inputs=Schema([ColSpec("string")]),  # a list of prompts (or a one-column DataFrame)
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([
            ParamSpec(k, "double" if isinstance(v, float) else "long", v) for k, v in PARAMS.items()
        ]),
    )  # fmt: skip
    with warnings.catch_warnings():  # "no input example": one would run the model while logging it
        warnings.simplefilter("ignore", UserWarning)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(here.with_name("pyfunc_model.py")),
            artifacts={"weights": str(weights), "tokenizer": str(tokenizer)},
            code_paths=[
                str(here.parents[1])
            ],  # the `pipeline` package: GPT, the tokenizer, the chat template
            model_config={"chat": chat},
            signature=signature,
            pip_requirements=["torch", "tokenizers", "safetensors", "mlflow"],
        )
