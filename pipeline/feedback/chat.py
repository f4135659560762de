"""The one chat template, built from the tokenizer's role tokens.

A conversation is a list of ``{"role": "system" | "user" | "assistant", "content": str}``. Each turn
is its role token, its content, and ``<|end|>``::

    <|system|>Be brief.<|end|><|user|>What is 2 + 3?<|end|><|assistant|>5<|end|>

A prompt ends with ``<|assistant|>``; the model writes the response and closes it with ``<|end|>``,
which is where generation stops. Contents are encoded with special tokens treated as plain text,
so a user who types ``<|end|>`` cannot close a turn; role and end tokens are inserted by id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tokenizers import Tokenizer

from pipeline.errors import LineageError

ROLES = ("system", "user", "assistant")
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
END = "<|end|>"
Message = dict[str, str]


def render(messages: Sequence[Message], generation_prompt: bool = True) -> str:
    """The template as text (for samples and logs; the model reads :func:`encode_prompt`)."""
    text = "".join(f"{ROLE_TOKENS[m['role']]}{m['content']}{END}" for m in messages)
    return text + ROLE_TOKENS["assistant"] if generation_prompt else text


class ChatTokens:
    """The role and end ids of one tokenizer, and encoding of conversations with them."""

    def __init__(self, tok: Tokenizer, origin: str = "tokenizer"):
        self.tok = tok
        ids: dict[str, int] = {}
        for name in [*ROLE_TOKENS.values(), END]:
            i = tok.token_to_id(name)
            if i is None:
                raise LineageError(
                    f"{origin}: has no {name} token; the chat template needs tokenize.special_tokens "
                    f"to hold {', '.join([*ROLE_TOKENS.values(), END])}"
                )
            ids[name] = i
        self.role = {r: ids[t] for r, t in ROLE_TOKENS.items()}
        self.end = ids[END]

    def text(self, content: str) -> list[int]:
        before = self.tok.encode_special_tokens
        self.tok.encode_special_tokens = True  # role markers inside content stay plain text
        try:
            return self.tok.encode(content, add_special_tokens=False).ids
        finally:
            self.tok.encode_special_tokens = before

    def encode_prompt(self, messages: Sequence[Message]) -> list[int]:
        """Every turn, then ``<|assistant|>``: what the model continues."""
        ids: list[int] = []
        for m in messages:
            ids += [self.role[m["role"]], *self.text(m["content"]), self.end]
        return [*ids, self.role["assistant"]]

    def encode_example(self, messages: Sequence[Message], response: str) -> tuple[list[int], int]:
        """Prompt + response + ``<|end|>``, and where the response starts (its first id's index)."""
        prompt = self.encode_prompt(messages)
        return [*prompt, *self.text(response), self.end], len(prompt)

    def decode_response(self, ids: Sequence[int]) -> str:
        """Generated ids as the labeler reads them: the text up to ``<|end|>``, then ``<|end|>`` if it
        was emitted (anything after it is never shown)."""
        ids = list(ids)
        ended = self.end in ids
        if ended:
            ids = ids[: ids.index(self.end)]
        text = self.tok.decode(ids, skip_special_tokens=False)
        return text + END if ended else text


def split_end(response: str) -> tuple[str, bool]:
    """(content, ended): the response up to its first ``<|end|>``, and whether there was one."""
    head, sep, _ = response.partition(END)
    return head, bool(sep)


def check_messages(messages: Any, where: str) -> list[Message]:
    """A list of role/content dicts with known roles and string contents, or one clear error."""
    if not isinstance(messages, list) or not messages:
        raise LineageError(f"{where}: messages must be a non-empty list of {{role, content}}")
    out = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise LineageError(
                f"{where}: each message needs a role in {ROLES} and a string content; got {m!r:.80}"
            )
        out.append({"role": m["role"], "content": m["content"]})
    return out
