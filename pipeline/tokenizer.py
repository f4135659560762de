"""Tokenizers for the pretraining corpus, and the flat token files the trainers read.

Two kinds, both a :class:`tokenizers.Tokenizer` saved as ``tokenizer.json`` so later stages treat them
alike: ``bpe``, GPT-2's byte-level BPE (every byte is in the base alphabet, so any text encodes
without an unknown token and decodes back exactly), and ``char``, one id per character seen in the
training text, with ``<|unk|>`` for the others.

Token files, one set per split in one folder (``meta.json`` beside them names the dtype)::

    <split>.bin      raw little-endian token ids, uint16 when the vocabulary has <= 65535 entries,
                     else uint32; every document is followed by the <|endoftext|> id (GPT-2 style)
    <split>.idx.npy  int64, n_docs + 1 entries: document i is bin[idx[i]:idx[i+1]], whose last token
                     is its <|endoftext|>; idx[0] = 0 and idx[-1] = the number of tokens in the file
    <split>.src.npy  int16, n_docs entries: each document's index into meta.json's "sources"
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from pipeline.config import EOT, TokenizeConfig
from pipeline.errors import LineageError

UNK = "<|unk|>"  # char kind only: characters the training text never showed
BYTE_ALPHABET = 256
MAX_SOURCES = int(np.iinfo(np.int16).max) + 1


# ------------------------------------------------------------------------------------------ training
def special_tokens(cfg: TokenizeConfig) -> list[str]:
    """The special tokens the tokenizer of ``cfg`` holds, in id order (they take the first ids)."""
    extra = [UNK] if cfg.kind == "char" and UNK not in cfg.special_tokens else []
    return [*cfg.special_tokens, *extra]


def min_vocab_size(cfg: TokenizeConfig) -> int:
    """The smallest ``vocab_size`` that holds the special tokens and the base alphabet."""
    if cfg.kind == "bpe":
        return len(special_tokens(cfg)) + BYTE_ALPHABET
    return len(special_tokens(cfg)) + 1  # at least one character


def take_bytes(texts: Iterable[str], max_bytes: int | None) -> Iterator[str]:
    """``texts`` in order until ``max_bytes`` utf-8 bytes; the text that crosses the cap is cut (at a
    character boundary) and ends the stream. Empty texts are skipped."""
    left = max_bytes
    for text in texts:
        if not text:
            continue
        if left is None:
            yield text
            continue
        data = text.encode("utf-8")
        if len(data) >= left:
            cut = data[:left].decode("utf-8", "ignore")
            if cut:
                yield cut
            return
        left -= len(data)
        yield text


def train_tokenizer(texts: Iterable[str], cfg: TokenizeConfig) -> Tokenizer:
    """Train a tokenizer of ``cfg.kind`` on ``texts`` (consumed once, in order)."""
    need = min_vocab_size(cfg)
    if cfg.vocab_size < need:
        what = (
            f"{len(special_tokens(cfg))} special tokens + {BYTE_ALPHABET} byte alphabet"
            if cfg.kind == "bpe"
            else f"{len(special_tokens(cfg))} special tokens + 1 character"
        )
        raise LineageError(
            f"tokenize.vocab_size: {cfg.vocab_size} is too small for kind {cfg.kind!r}; "
            f"the minimum is {need} ({what})"
        )
    if cfg.kind == "bpe":
        return _train_bpe(texts, cfg)
    return _train_char(texts, cfg)


def _train_bpe(texts: Iterable[str], cfg: TokenizeConfig) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's split regex
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=special_tokens(cfg),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def _train_char(texts: Iterable[str], cfg: TokenizeConfig) -> Tokenizer:
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(text)
    specials = special_tokens(cfg)
    for s in specials:
        counts.pop(s, None)  # a one-character special token keeps its special id
    # the most frequent characters when they do not all fit; ties by code point, so it is deterministic
    chars = sorted(counts, key=lambda c: (-counts[c], c))[: cfg.vocab_size - len(specials)]
    vocab = {t: i for i, t in enumerate([*specials, *sorted(chars)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one per code point
    tok.decoder = decoders.Fuse()  # join the characters back without separators
    tok.add_special_tokens(specials)
    return tok


# ------------------------------------------------------------------------------------------ using it
def save_tokenizer(tok: Tokenizer, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise LineageError(f"{path}: tokenizer file missing (run the tokenize stage first)")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise LineageError(f"{path}: not a valid tokenizer.json: {str(e).splitlines()[0]}") from None


def eot_id(tok: Tokenizer) -> int:
    i = tok.token_to_id(EOT)
    if i is None:
        raise LineageError(f"the tokenizer has no {EOT} token")
    return i


def special_token_ids(tok: Tokenizer) -> dict[str, int]:
    """Every special (added) token and its id."""
    return {t.content: i for i, t in sorted(tok.get_added_tokens_decoder().items()) if t.special}


def encode_documents(
    tok: Tokenizer, texts: Sequence[str], batch_docs: int = 256, allow_special: bool = False
) -> list[list[int]]:
    """Token ids of each text, encoded ``batch_docs`` at a time.

    A special token's text inside a document (a README quoting ``<|endoftext|>``) is encoded as plain
    text unless ``allow_special``, so documents never carry a boundary or a role marker by accident.
    Nothing is added around a document; the token files add the end-of-text id.
    """
    before = tok.encode_special_tokens
    tok.encode_special_tokens = not allow_special
    try:
        out: list[list[int]] = []
        for i in range(0, len(texts), batch_docs):
            batch = [t or "" for t in texts[i : i + batch_docs]]
            out.extend(e.ids for e in tok.encode_batch(batch, add_special_tokens=False))
        return out
    finally:
        tok.encode_special_tokens = before


def decode(tok: Tokenizer, ids: Sequence[int]) -> str:
    return tok.decode(list(ids), skip_special_tokens=False)


def check_transformers(path: str | Path, samples: Sequence[str]) -> None:
    """``transformers`` loads ``path`` and encodes ``samples`` to the same ids as ``tokenizers``."""
    from transformers import PreTrainedTokenizerFast

    try:
        hf = PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token=EOT)
    except Exception as e:
        raise LineageError(f"{path}: transformers cannot load it: {str(e).splitlines()[0]}") from None
    tok = load_tokenizer(path)
    for text in samples:
        ours = tok.encode(text, add_special_tokens=False).ids
        theirs = hf(text, add_special_tokens=False)["input_ids"]
        if ours != theirs:
            raise LineageError(f"{path}: transformers encodes {text[:40]!r} differently from tokenizers")


# --------------------------------------------------------------------------------------- token files
def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (vocab_size <= 65535), else uint32; little-endian either way."""
    if vocab_size < 1:
        raise LineageError(f"vocab_size must be >= 1 (got {vocab_size})")
    return np.dtype("<u2") if vocab_size <= 65535 else np.dtype("<u4")


def dtype_name(dtype: np.dtype) -> str:
    return np.dtype(dtype).newbyteorder("=").name  # "uint16" / "uint32"


def _paths(directory: Path, split: str) -> tuple[Path, Path, Path]:
    return directory / f"{split}.bin", directory / f"{split}.idx.npy", directory / f"{split}.src.npy"


def write_tokens(
    directory: str | Path,
    split: str,
    docs_tokens: Sequence[Sequence[int]],
    sources: Sequence[int],
    vocab_size: int,
    *,
    eot_id: int,
) -> dict[str, int]:
    """Write ``<split>.bin/.idx.npy/.src.npy``; each document is followed by ``eot_id``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if len(sources) != len(docs_tokens):
        raise LineageError(f"{split}: {len(docs_tokens)} documents but {len(sources)} source indices")
    if not 0 <= eot_id < vocab_size:
        raise LineageError(f"{split}: end-of-text id {eot_id} is outside the vocabulary of {vocab_size}")
    dtype = token_dtype(vocab_size)
    n = len(docs_tokens)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.fromiter((len(d) + 1 for d in docs_tokens), np.int64, count=n), out=offsets[1:])
    flat = np.empty(int(offsets[-1]), dtype=np.int64)
    for i, d in enumerate(docs_tokens):
        flat[offsets[i] : offsets[i + 1] - 1] = d
    flat[offsets[1:] - 1] = eot_id
    if flat.size and (flat.min() < 0 or flat.max() >= vocab_size):
        raise LineageError(f"{split}: token id outside 0..{vocab_size - 1} (vocab_size {vocab_size})")
    src = np.asarray(sources, dtype=np.int64)
    if src.size and (src.min() < 0 or src.max() >= MAX_SOURCES):
        raise LineageError(f"{split}: source index outside 0..{MAX_SOURCES - 1}")
    bin_path, idx_path, src_path = _paths(directory, split)
    flat.astype(dtype).tofile(bin_path)
    np.save(idx_path, offsets)
    np.save(src_path, src.astype(np.int16))
    return {"docs": n, "tokens": int(offsets[-1])}


def concat_tokens(
    directory: str | Path, split: str, parts: Sequence[tuple[str | Path, str]]
) -> dict[str, int]:
    """Join token files ``parts`` (``(folder, split)`` pairs written by `write_tokens` with one dtype)
    into ``<split>.*`` in ``directory``, in the order given."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    bin_path, idx_path, src_path = _paths(directory, split)
    offsets = [np.zeros(1, dtype=np.int64)]
    sources = [np.zeros(0, dtype=np.int16)]
    total = 0
    with bin_path.open("wb") as out:
        for folder, name in parts:
            p_bin, p_idx, p_src = _paths(Path(folder), name)
            idx = np.load(p_idx)
            offsets.append(idx[1:] + total)
            sources.append(np.load(p_src))
            with p_bin.open("rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 22)
            total += int(idx[-1])
    np.save(idx_path, np.concatenate(offsets))
    np.save(src_path, np.concatenate(sources))
    return {"docs": sum(len(s) for s in sources), "tokens": total}


@dataclass
class TokenData:
    """One split: ``tokens`` is a read-only memmap of the flat ids (documents and their EOT ids)."""

    tokens: np.ndarray
    offsets: np.ndarray  # int64, n_docs + 1
    sources: np.ndarray  # int16, n_docs
    dtype: np.dtype

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    def check_ids(self, vocab_size: int, where: str | Path) -> None:
        """Refuse ids the model has no embedding for (a token file from another tokenizer, or a
        damaged one): an index error deep in training otherwise, or silently reused checkpoints."""
        step = 1 << 24
        for i in range(0, len(self.tokens), step):
            top = int(np.max(self.tokens[i : i + step]))
            if top >= vocab_size:
                raise LineageError(
                    f"{where}: token id {top} is outside the vocabulary of {vocab_size} (meta.json); "
                    "the token files do not match their tokenizer: rerun `dvc repro -f tokenize`"
                )

    def doc(self, i: int, with_eot: bool = False) -> np.ndarray:
        """Document ``i``'s ids, without its trailing end-of-text id unless ``with_eot``."""
        end = int(self.offsets[i + 1])
        return self.tokens[int(self.offsets[i]) : end if with_eot else end - 1]


def read_meta(directory: str | Path) -> dict[str, Any]:
    from pipeline.io import read_json

    path = Path(directory) / "meta.json"
    meta = read_json(path, ("dtype",))
    if meta["dtype"] not in ("uint16", "uint32") or not isinstance(meta.get("sources", []), list):
        raise LineageError(f"{path}: damaged (dtype {str(meta['dtype'])[:20]!r} or sources); "
                           "rerun `dvc repro -f tokenize`")  # fmt: skip
    return meta


def open_tokens(
    directory: str | Path, split: str, dtype: str | np.dtype | None = None, vocab_size: int | None = None
) -> TokenData:
    """Map ``<split>.bin`` of ``directory``; the dtype and vocabulary size come from its meta.json
    unless given. Every id is checked against the vocabulary here, once, for every reader (an id
    past the embedding table is otherwise an IndexError deep in a model)."""
    directory = Path(directory)
    if dtype is None:
        meta = read_meta(directory)
        try:
            dtype, vocab_size = meta["dtype"], vocab_size or meta.get("vocab_size")
        except (KeyError, TypeError):
            raise LineageError(
                f"{directory / 'meta.json'}: no dtype entry; rerun `dvc repro -f tokenize`"
            ) from None
    dt = np.dtype(dtype).newbyteorder("<")
    bin_path, idx_path, src_path = _paths(directory, split)
    for p in (bin_path, idx_path, src_path):
        if not p.is_file():
            raise LineageError(f"{p}: token file missing")
    try:
        offsets = np.load(idx_path, allow_pickle=False)
        sources = np.load(src_path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise LineageError(
            f"{directory}/{split}: unreadable index file ({type(e).__name__}: {str(e)[:120]}); "
            "rerun `dvc repro -f tokenize`"
        ) from None
    size = bin_path.stat().st_size
    if size % dt.itemsize:
        raise LineageError(f"{bin_path}: {size} bytes is not a whole number of {dtype_name(dt)} ids")
    n = size // dt.itemsize
    tokens = np.memmap(bin_path, dtype=dt, mode="r") if n else np.zeros(0, dtype=dt)
    if len(offsets) != len(sources) + 1 or offsets[0] != 0 or int(offsets[-1]) != n:
        raise LineageError(
            f"{directory}/{split}: index and token files disagree "
            f"({len(offsets)} offsets ending at {int(offsets[-1]) if len(offsets) else None}, "
            f"{len(sources)} sources, {n} tokens)"
        )
    data = TokenData(tokens, offsets, sources, dt)
    if vocab_size is not None and n:
        data.check_ids(int(vocab_size), bin_path)
    return data
