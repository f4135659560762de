"""The GPT model family (gpt1, gpt2, gpt3) and its checkpoint / Hugging Face export."""

from pipeline.model.gpt import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig"]
