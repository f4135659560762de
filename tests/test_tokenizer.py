"""Tokenizers (byte-level BPE and char), the flat token files, and the tokenize stage end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import EOT, TokenizeConfig, parse_params
from pipeline.errors import LineageError
from pipeline.stage import run_stage
from pipeline.tokenizer import (
    UNK,
    decode,
    encode_documents,
    eot_id,
    load_tokenizer,
    open_tokens,
    save_tokenizer,
    special_token_ids,
    take_bytes,
    token_dtype,
    train_tokenizer,
    write_tokens,
)
from stages import tokenize
from stages.mix import MIX_SCHEMA
from tests.conftest import files_params, prose

SPECIALS = TokenizeConfig().special_tokens
UNICODE = "Ünïcödé café — naïve 日本語テキスト 🎉🚀 emoji\n\n\ttabs  and  spaces\r\nend 👩‍👩‍👧"


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    r = random.Random(1)
    return [prose(r, r.randint(100, 250)) for _ in range(150)]


@pytest.fixture(scope="module")
def bpe(corpus):
    return train_tokenizer(corpus, TokenizeConfig(vocab_size=500))


@pytest.fixture(scope="module")
def char(corpus):
    return train_tokenizer(corpus, TokenizeConfig(kind="char", vocab_size=200))


# ---------------------------------------------------------------------------------------------- bpe
def test_bpe_special_tokens_are_single_ids_never_split(bpe):
    ids = special_token_ids(bpe)
    assert list(ids) == SPECIALS and sorted(ids.values()) == list(range(len(SPECIALS)))
    text = "river<|endoftext|>garden <|user|>hello<|assistant|>\n<|delim|><|end|>"
    enc = bpe.encode(text, add_special_tokens=False)
    for tok in ("<|endoftext|>", "<|user|>", "<|assistant|>", "<|delim|>", "<|end|>"):
        assert enc.ids.count(ids[tok]) == 1
        assert bpe.encode(tok, add_special_tokens=False).ids == [ids[tok]]
    assert decode(bpe, enc.ids) == text
    # no merge ever produces a special token's text from ordinary pieces
    assert not any("<|" in t for t in bpe.get_vocab() if t not in ids)


def test_bpe_roundtrips_unicode_emoji_newlines(bpe, corpus):
    for text in [UNICODE, corpus[0], " leading space", "", "\n\n\n", "a" * 5000]:
        assert decode(bpe, bpe.encode(text, add_special_tokens=False).ids) == text
    assert [decode(bpe, ids) for ids in encode_documents(bpe, [UNICODE, corpus[1]], batch_docs=1)] == [
        UNICODE,
        corpus[1],
    ]


def test_bpe_encodes_any_text_without_unknowns(bpe):
    r = random.Random(7)
    # random code points from every plane (surrogates excluded: they are not valid text)
    cps = [c for c in (r.randrange(1, 0x110000) for _ in range(3000)) if not 0xD800 <= c <= 0xDFFF]
    text = "".join(map(chr, cps))
    ids = bpe.encode(text, add_special_tokens=False).ids
    assert decode(bpe, ids) == text
    assert max(ids) < bpe.get_vocab_size()
    assert bpe.get_vocab()["Ā"] is not None  # byte 0x00 in GPT-2's printable byte map
    assert len({t for t in bpe.get_vocab() if len(t) == 1}) >= 256


def test_bpe_vocab_size_is_respected_and_training_is_deterministic(corpus, bpe):
    assert 256 + len(SPECIALS) < bpe.get_vocab_size() <= 500
    again = train_tokenizer(corpus, TokenizeConfig(vocab_size=500))
    assert again.to_str() == bpe.to_str()
    small = train_tokenizer(corpus, TokenizeConfig(vocab_size=300))
    assert small.get_vocab_size() == 300


def test_document_text_never_becomes_a_special_id(bpe):
    text = f"the README says {EOT} ends a document"
    [ids] = encode_documents(bpe, [text])
    assert eot_id(bpe) not in ids and decode(bpe, ids) == text
    [ids] = encode_documents(bpe, [text], allow_special=True)
    assert ids.count(eot_id(bpe)) == 1
    assert bpe.encode_special_tokens is False  # restored


def test_transformers_loads_the_saved_tokenizer_with_the_same_ids(bpe, tmp_path):
    from transformers import PreTrainedTokenizerFast

    path = save_tokenizer(bpe, tmp_path / "tokenizer.json")
    hf = PreTrainedTokenizerFast(tokenizer_file=str(path))
    text = UNICODE + " <|user|> river garden<|endoftext|>"
    assert hf(text, add_special_tokens=False)["input_ids"] == bpe.encode(text, add_special_tokens=False).ids
    assert hf.decode(hf(text)["input_ids"]) == text
    assert load_tokenizer(path).to_str() == bpe.to_str()


def test_load_tokenizer_missing_or_corrupt(tmp_path):
    with pytest.raises(LineageError, match="tokenizer file missing"):
        load_tokenizer(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LineageError, match="not a valid tokenizer.json"):
        load_tokenizer(tmp_path / "bad.json")


# --------------------------------------------------------------------------------------------- char
def test_char_ids_per_character_roundtrip_and_unknowns(char, corpus):
    vocab = char.get_vocab()
    assert special_token_ids(char) == {t: i for i, t in enumerate([*SPECIALS, UNK])}
    text = corpus[0][:300]
    ids = char.encode(text, add_special_tokens=False).ids
    assert len(ids) == len(text) and ids == [vocab[c] for c in text]
    assert decode(char, ids) == text
    assert set(text) <= set(vocab) and "\n" in vocab and " " in vocab
    ids = char.encode("river 🎉Ω", add_special_tokens=False).ids
    assert ids[-2:] == [vocab[UNK], vocab[UNK]] and len(ids) == 8
    assert char.encode("<|user|>", add_special_tokens=False).ids == [vocab["<|user|>"]]


def test_char_vocab_is_capped_by_vocab_size(corpus):
    cfg = TokenizeConfig(kind="char", vocab_size=20)
    tok = train_tokenizer(corpus, cfg)
    assert tok.get_vocab_size() == 20
    kept = set(tok.get_vocab()) - set(SPECIALS) - {UNK}
    assert " " in kept and "e" in kept  # the most frequent characters win


def test_vocab_too_small_names_the_key_and_minimum():
    with pytest.raises(LineageError, match=r"tokenize\.vocab_size: 263 .*minimum is 264"):
        train_tokenizer(["some text"], TokenizeConfig(vocab_size=263))  # 8 specials + 256 bytes
    many = [EOT, *(f"<|s{i}|>" for i in range(15))]
    with pytest.raises(LineageError, match=r"tokenize\.vocab_size: 16 .*minimum is 18"):
        train_tokenizer(["some text"], TokenizeConfig(kind="char", vocab_size=16, special_tokens=many))


def test_config_requires_endoftext():
    with pytest.raises(ValueError, match="special_tokens must include"):
        TokenizeConfig(special_tokens=["<|start|>"])
    with pytest.raises(ValueError, match="Extra inputs"):
        TokenizeConfig(vocab=100)


def test_take_bytes_caps_in_order_at_a_character_boundary():
    assert list(take_bytes(["abc", "", "déf", "ghi"], 5)) == ["abc", "d"]  # é is 2 bytes: not cut
    assert list(take_bytes(["abc", "def"], None)) == ["abc", "def"]
    assert list(take_bytes(["abc", "def"], 3)) == ["abc"]


# -------------------------------------------------------------------------------------- token files
def test_token_dtype_choice():
    assert token_dtype(500) == np.uint16 and token_dtype(65535) == np.uint16
    assert token_dtype(65536) == np.uint32 and token_dtype(200_000) == np.uint32


@pytest.mark.parametrize("vocab_size", [1000, 70_000])
def test_write_and_open_tokens_roundtrip(tmp_path, vocab_size):
    docs = [[5, 6, 7], [], [vocab_size - 1, 9]]
    written = write_tokens(tmp_path, "train", docs, [0, 1, 0], vocab_size, eot_id=0)
    assert written == {"docs": 3, "tokens": 3 + 1 + 0 + 1 + 2 + 1}
    (tmp_path / "meta.json").write_text(json.dumps({"dtype": token_dtype(vocab_size).name}))
    data = open_tokens(tmp_path, "train")
    assert data.tokens.dtype == token_dtype(vocab_size)
    assert (tmp_path / "train.bin").stat().st_size == 8 * token_dtype(vocab_size).itemsize
    assert data.tokens.tolist() == [5, 6, 7, 0, 0, vocab_size - 1, 9, 0]
    assert data.offsets.tolist() == [0, 4, 5, 8] and data.offsets.dtype == np.int64
    assert data.sources.tolist() == [0, 1, 0] and data.sources.dtype == np.int16
    assert len(data) == 3 and data.n_tokens == 8
    assert [data.doc(i).tolist() for i in range(3)] == docs
    assert data.doc(1, with_eot=True).tolist() == [0]


def test_write_tokens_refuses_ids_outside_the_vocabulary(tmp_path):
    with pytest.raises(LineageError, match="outside"):
        write_tokens(tmp_path, "x", [[1, 600]], [0], 500, eot_id=0)
    write_tokens(tmp_path, "empty", [], [], 500, eot_id=0)
    assert len(open_tokens(tmp_path, "empty", dtype="uint16")) == 0


# -------------------------------------------------------------------------------------------- stage
@pytest.fixture(scope="module")
def tracking(tmp_path_factory) -> dict:
    """One MLflow store for the stage runs here: creating a store is most of a small run's time."""
    return {"common": {"tracking_uri": f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"}}


def params_for(root: Path, tracking: dict, tokenize_section: dict):
    return parse_params(files_params(root, {**tracking, "tokenize": tokenize_section}))


def write_mix(root: Path, seed: int = 0) -> dict[str, list[dict]]:
    r = random.Random(seed)
    rows: dict[str, list[dict]] = {"train": [], "val": []}
    for split, n in (("train", 50), ("val", 8)):
        for i in range(n):
            src = "ref" if i % 3 else "web"
            text = prose(r, r.randint(30, 120)) + (" café 🎉" if i % 5 == 0 else "")
            rows[split].append({"id": f"{split}{i}", "source": src, "text": text,
                                "tokens": len(text.split()), "epoch": 0})  # fmt: skip
        per_shard = 20 if split == "train" else 3
        folder = root / "data" / "mix" / split
        folder.mkdir(parents=True)
        for k in range(0, n, per_shard):
            table = pa.Table.from_pylist(rows[split][k : k + per_shard], schema=MIX_SCHEMA)
            pq.write_table(table, folder / f"part-{k // per_shard:05d}.parquet")
    return rows


def test_stage_end_to_end(tmp_path, tracking):
    rows = write_mix(tmp_path)
    params = params_for(tmp_path, tracking, {"vocab_size": 400, "batch_docs": 7})
    m = run_stage("tokenize", tokenize.body, tmp_path, params)
    out = tmp_path / "data" / "tokenize"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["tokenizer.json", "meta.json", "metrics.json"]
        + [f"{s}{ext}" for s in ("train", "val") for ext in (".bin", ".idx.npy", ".src.npy")]
    )
    meta = json.loads((out / "meta.json").read_text())
    tok = load_tokenizer(out / "tokenizer.json")
    assert meta["kind"] == "bpe" and meta["vocab_size"] == tok.get_vocab_size() <= 400
    assert meta["dtype"] == "uint16" and meta["eot_id"] == eot_id(tok) == 0
    assert meta["special_tokens"] == {t: i for i, t in enumerate(SPECIALS)}
    assert meta["sources"] == ["ref", "web"]
    for split in ("train", "val"):
        expected = encode_documents(tok, [r["text"] for r in rows[split]])
        data = open_tokens(out, split)
        assert data.tokens.tolist() == [t for ids in expected for t in [*ids, 0]]  # order kept
        assert len(data.tokens) == sum(len(ids) + 1 for ids in expected)
        assert meta["splits"][split] == {"docs": len(rows[split]), "tokens": len(data.tokens)}
        assert data.sources.tolist() == [meta["sources"].index(r["source"]) for r in rows[split]]
        assert m[f"{split}_tokens"] == len(data.tokens) and m[f"{split}_docs"] == len(rows[split])
    for s in ("ref", "web"):
        val = [r["text"] for r in rows["val"] if r["source"] == s]
        assert meta["val_bytes_per_source"][s] == sum(len(t.encode("utf-8")) for t in val)
        assert meta["val_tokens_per_source"][s] == sum(map(len, encode_documents(tok, val)))
        assert m["sources"][s]["val_bytes"] == meta["val_bytes_per_source"][s]
        assert 1.5 < m["sources"][s]["bytes_per_token"] < 8
    assert m["vocab_size"] == meta["vocab_size"] and m["roundtrip_ok"] == 1
    all_text = [r["text"] for split in rows.values() for r in split]
    content_tokens = m["train_tokens"] + m["val_tokens"] - len(all_text)
    assert m["bytes_per_token"] == pytest.approx(sum(len(t.encode()) for t in all_text) / content_tokens)
    assert m["perf"]["encode_tokens_per_s"] > 0
    assert m["tokenizer_train_bytes"] == sum(len(r["text"].encode()) for r in rows["train"])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["val_tokens"] == m["val_tokens"]


def test_stage_char_kind_and_byte_cap(tmp_path, tracking):
    rows = write_mix(tmp_path, seed=3)
    params = params_for(tmp_path, tracking, {"kind": "char", "vocab_size": 64, "max_train_bytes": 2000})
    m = run_stage("tokenize", tokenize.body, tmp_path, params)
    out = tmp_path / "data" / "tokenize"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "char" and UNK in meta["special_tokens"]
    assert m["tokenizer_train_bytes"] == 2000 and m["tokenizer_train_docs"] < len(rows["train"])
    data = open_tokens(out, "val")
    assert data.n_tokens == sum(len(r["text"]) + 1 for r in rows["val"])  # one id per character


def test_stage_refuses_empty_training_text(tmp_path, tracking):
    for split in ("train", "val"):
        (tmp_path / "data" / "mix" / split).mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist([{"id": "a", "source": "ref", "text": "", "tokens": 0, "epoch": 0}], MIX_SCHEMA),
        tmp_path / "data" / "mix" / "train" / "part-00000.parquet",
    )
    params = params_for(tmp_path, tracking, {"vocab_size": 300})
    with pytest.raises(LineageError, match="holds no text"):
        run_stage("tokenize", tokenize.body, tmp_path, params)
    assert not (tmp_path / "data" / "tokenize").exists()
