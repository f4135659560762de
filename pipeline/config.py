"""Typed params: every section of params.yaml is a pydantic model that refuses unknown keys.

Only stage entry points read params.yaml; library code receives these objects. A bad key or value
fails at load with its dotted name (``quality.alpha``) and what was expected.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline.errors import LineageError
from pipeline.eval.config import EvaluateConfig, FinetuneConfig
from pipeline.feedback.config import ComparisonsConfig, InstructionsConfig, PpoConfig, RewardConfig, SftConfig
from pipeline.section import NAME_RE, Section

# --------------------------------------------------------------------------------------------- common
SEED_MAX = 2**32 - 1  # numpy's and torch's generators take seeds in 0..2**32-1


class CommonConfig(Section):
    seed: int = Field(1337, ge=0, le=SEED_MAX)
    # compute dtype of every torch stage (a stage's own `dtype` overrides it): auto = bf16 autocast where
    # the hardware has bf16 natively (CUDA, AVX512-BF16/AMX CPUs), else float32, which is 5-35x faster
    # than emulated bf16 on CPUs without it
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "gpt-lineage"
    task_runner: Literal["threads", "processes", "dask", "ray", "sync"] = "threads"
    workers: int = Field(1, ge=1, le=4096)
    dask_address: str | None = None  # an existing Dask scheduler; None = a local cluster of `workers`
    ray_address: str | None = None
    shard_size: int = Field(500, ge=1)  # documents per parquet shard
    offline: bool = True  # sets HF_HUB_OFFLINE / HF_DATASETS_OFFLINE so hub names fail fast


# ---------------------------------------------------------------------------------------------- crawl
class SourceBase(Section):
    role: Literal["web", "reference"] = "web"
    max_docs: int | None = Field(None, ge=1)


class CrawlOptions(Section):
    """Politeness and limits shared by every HTTP crawl (the `http` and `pydoc` kinds)."""

    max_pages: int = Field(200, ge=1)
    max_depth: int = Field(10, ge=0)
    max_bytes: int = Field(2_000_000, ge=1024)  # decoded bytes per page
    # a page past max_bytes: skip it (fetch error `too_large`) or keep its first max_bytes (counted
    # as `truncated` in the fetch log and the crawl metrics)
    oversize: Literal["skip", "truncate"] = "skip"
    timeout_s: float = Field(10.0, gt=0)
    max_redirects: int = Field(5, ge=0)
    retries: int = Field(2, ge=0)
    backoff_s: float = Field(0.5, ge=0)  # first retry delay, doubled each retry
    concurrency: int = Field(4, ge=1)  # requests in flight overall
    per_host_concurrency: int = Field(2, ge=1)
    rate_limit_s: float = Field(0.0, ge=0)  # minimum delay between two requests to one host
    respect_robots: bool = True
    user_agent: str = "gpt-lineage-crawler/0.1"
    content_types: list[str] = ["text/html", "text/plain", "application/xhtml+xml"]
    exclude: list[str] = []  # regexes on the normalised URL
    # fetch non-global addresses (intranet); a loopback seed may stay on loopback
    allow_private: bool = False
    max_retry_after_s: float = Field(60.0, ge=0)  # honour Retry-After up to this; a longer wait gives up

    @field_validator("exclude")
    @classmethod
    def _regexes_compile(cls, v: list[str]) -> list[str]:
        for pattern in v:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"bad regex {pattern!r}: {e}") from None
        return v


class HttpSource(SourceBase, CrawlOptions):
    kind: Literal["http"]
    seeds: list[str] = Field(min_length=1)
    scope: Literal["host", "allow"] = "host"  # stay on the seeds' hosts, or on allow_hosts
    allow_hosts: list[str] = []

    @model_validator(mode="after")
    def _allow_needs_hosts(self) -> HttpSource:
        if self.scope == "allow" and not self.allow_hosts:
            raise ValueError("scope 'allow' needs a non-empty allow_hosts")
        return self


class PydocSource(SourceBase, CrawlOptions):
    """The embedded offline web, on one loopback port: this Python's own `pydoc` server (API pages)
    and, with `prose_pages`, project pages rendered from the READMEs of installed distributions on
    the web side of `crawl.dist_split` (prose pages), linked from the API pages and from each other."""

    kind: Literal["pydoc"]
    prose_pages: bool = True
    prose_min_chars: int = Field(600, ge=0)  # shorter READMEs get no page
    # modules whose import acts (opens a browser, prints, starts a GUI) or that `pydoc` cannot render
    exclude_modules: list[str] = [
        "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "__main__", "pydoc",
        "webbrowser", "ensurepip", "venv", "lib2to3", "test", "xxlimited", "xxsubtype", "_xx",
    ]  # fmt: skip
    stdlib_only: bool = True


class WarcSource(SourceBase):
    kind: Literal["warc"]
    paths: list[str] = Field(min_length=1)  # local paths, globs or http(s) URLs of .warc/.wet(.gz)
    record_types: list[Literal["response", "conversion", "resource"]] = ["response", "conversion"]
    timeout_s: float = Field(60.0, gt=0)
    # limits against hostile or damaged archives (a gzip member is one record in a well-formed .warc.gz)
    max_bytes: int = Field(5_000_000_000, ge=1024)  # bytes read per file (compressed, as stored)
    max_decompressed_bytes: int = Field(50_000_000_000, ge=1024)  # bytes decompressed per file
    max_record_bytes: int = Field(64_000_000, ge=1024)  # decompressed bytes per record (gzip member)
    # http(s) paths are fetched like crawl pages: robots.txt, this user agent, no private addresses
    allow_private: bool = False
    respect_robots: bool = True
    user_agent: str = "gpt-lineage-crawler/0.1"
    max_redirects: int = Field(5, ge=0)


class FilesSource(SourceBase):
    kind: Literal["files"]
    globs: list[str] = Field(min_length=1)  # .txt .md .html .htm .jsonl .parquet
    text_field: str = "text"


class HfSource(SourceBase):
    kind: Literal["hf"]
    dataset: str  # a hub name ("HuggingFaceFW/fineweb-edu") or a local path / data dir
    config: str | None = None
    split: str = "train"
    text_field: str = "text"
    streaming: bool = True
    data_files: list[str] | None = None


class PythonDocsSource(SourceBase):
    """Reference prose shipped with the running Python: edited text to learn what 'good' looks like."""

    kind: Literal["python_docs"]
    part: Literal["topics", "docstrings", "distributions"]
    min_chars: int = Field(600, ge=0)
    role: Literal["web", "reference"] = "reference"


class PyEnvDocsSource(SourceBase):
    """The docstrings of the installed distributions of this environment (read with `ast`, nothing
    imported) and the docs and READMEs they bundle as files: reference text that grows with the
    environment, with the copies real code holds (docstrings copied across modules) left for dedup."""

    kind: Literal["py_env_docs"]
    role: Literal["web", "reference"] = "reference"
    min_chars: int = Field(200, ge=0)  # shorter docstrings and files are skipped
    distributions: list[str] = []  # names to read (case and -/_ ignored); empty: every installed one
    exclude: list[str] = []  # names never read
    bundled_docs: bool = True  # .md/.rst/.txt files (READMEs, docs) inside the installed packages
    max_per_distribution: int | None = Field(None, ge=1)  # documents from one distribution at most
    max_bytes: int | None = Field(None, ge=1)  # UTF-8 bytes of text at most, over the whole source
    max_file_bytes: int = Field(2_000_000, ge=1)  # larger files (generated tables, vendored blobs) skipped


Source = Annotated[
    HttpSource | PydocSource | WarcSource | FilesSource | HfSource | PythonDocsSource | PyEnvDocsSource,
    Field(discriminator="kind"),
]


class DistSplit(Section):
    """Installed distributions are dealt by a seeded hash of their name: `web_share` of them become
    the embedded web's prose pages, the rest feed the `distributions` reference source; never both."""

    web_share: float = Field(0.5, ge=0, le=1)
    seed: int = 0


class CrawlConfig(Section):
    dist_split: DistSplit = DistSplit()
    sources: dict[str, Source] = Field(min_length=1)

    @field_validator("sources")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if not re.match(NAME_RE, name):
                raise ValueError(f"source name {name!r} must match {NAME_RE}")
        return v


# ---------------------------------------------------------------------------------------------- clean
class CleanConfig(Section):
    """Gopher (Rae et al. 2021, App. A) thresholds by default; a document failing any is dropped."""

    extractor: Literal["trafilatura", "fallback"] = "trafilatura"
    # trafilatura's trade-off (favor_recall / neither / favor_precision); bench/extraction.py: precision
    # scores the best word F1 on real article pages
    focus: Literal["recall", "balanced", "precision"] = "precision"
    include_tables: bool = True
    fallback: bool = True  # plain lxml text when trafilatura rejects a page
    dropped_samples: int = Field(5, ge=0)  # dropped documents kept per reason in dropped_samples.json
    normalization: Literal["NFC", "NFKC"] = "NFKC"
    min_words: int = Field(50, ge=0)
    max_words: int = Field(100_000, ge=1)
    min_mean_word_length: float = Field(3.0, ge=0)
    max_mean_word_length: float = Field(10.0, gt=0)
    max_symbol_word_ratio: float = Field(0.1, ge=0)
    max_bullet_lines: float = Field(0.9, ge=0, le=1)
    max_ellipsis_lines: float = Field(0.3, ge=0, le=1)
    min_alpha_words: float = Field(0.8, ge=0, le=1)
    min_stop_words: int = Field(2, ge=0)
    max_dup_line_frac: float = Field(0.3, ge=0, le=1)
    max_dup_para_frac: float = Field(0.3, ge=0, le=1)
    max_dup_line_char_frac: float = Field(0.2, ge=0, le=1)
    max_dup_para_char_frac: float = Field(0.2, ge=0, le=1)
    max_top_ngram_char_frac: dict[int, float] = {2: 0.20, 3: 0.18, 4: 0.16}
    max_dup_ngram_char_frac: dict[int, float] = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    # where a repeated 5..10-gram counts: inside one line (one extracted block: a paragraph, an API
    # entry), or anywhere in the document as Gopher measured it; bench/docs_site.py compares them
    dup_ngram_unit: Literal["line", "document"] = "line"
    languages: list[str] = ["en"]  # empty = no language check
    min_language_score: float = Field(0.65, ge=0, le=1)

    @model_validator(mode="after")
    def _bounds(self) -> CleanConfig:
        if self.min_words > self.max_words:
            raise ValueError("min_words must not exceed max_words")
        if self.min_mean_word_length > self.max_mean_word_length:
            raise ValueError("min_mean_word_length must not exceed max_mean_word_length")
        return self


# -------------------------------------------------------------------------------------------- quality
class QualityConfig(Section):
    """GPT-3 App. A: hashed word features, logistic regression, Pareto keep rule."""

    positives: list[str] = Field(min_length=1)  # reference sources (the 'good' class)
    negatives: list[str] = Field(min_length=1)  # raw web sources; the filter is applied to these
    n_features: int = Field(2**18, ge=16)
    # counts: raw term counts per document, as Spark's HashingTF (GPT-3's features): a long document
    # that reads like the reference gets a confident score; l2: counts scaled to unit length
    features: Literal["counts", "l2"] = "counts"
    alpha: float = Field(9.0, gt=0)
    C: float = Field(1.0, gt=0)
    class_weight: Literal["balanced", "none"] = "none"  # balanced: class sizes do not shift the scores
    max_iter: int = Field(1000, ge=10)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    histogram_bins: int = Field(40, ge=2)


# ---------------------------------------------------------------------------------------------- dedup
class DedupConfig(Section):
    # MinHash features: word n-grams, GPT-3's (hashed whitespace tokens, as the quality classifier), char n-grams
    features: Literal["word", "gpt3", "char"] = "word"
    ngram: int = Field(2, ge=1)  # words per shingle (features: word)
    char_ngram: int = Field(7, ge=1)  # characters per shingle (features: char)
    hash_features: int = Field(2**18, ge=16)  # hashing-vectorizer buckets (features: gpt3)
    minhash: Literal["numpy", "datasketch"] = "numpy"  # signatures: vectorised, or datasketch's MinHash.bulk
    # lsh: bands sorted in this process (numpy); datasketch: its MinHashLSH, the reference (same pairs);
    # distributed: band keys grouped on Dask
    index: Literal["lsh", "datasketch", "distributed"] = "lsh"
    partitions: int | None = Field(None, ge=1)  # index: distributed; shuffle partitions (None: one per shard)
    num_perm: int = Field(112, ge=8)
    bands: int | None = Field(37, ge=1)  # bands x rows <= num_perm; None = let datasketch pick for threshold
    rows: int | None = Field(3, ge=1)
    threshold: float = Field(0.45, gt=0, lt=1)  # LSH threshold when bands/rows are None
    min_jaccard: float = Field(0.45, ge=0, le=1)  # candidate pairs are kept only above this estimate
    priority: list[str] = []  # sources kept first inside a cluster; the rest follow in name order
    eval_files: list[str] = []  # more evaluation sets for 13-gram decontamination (.txt .jsonl .parquet)
    # and the test side of every real task named in finetune.tasks / evaluate.external (local files)
    decontaminate_tasks: bool = True
    eval_text_fields: list[str] = ["text", "question", "context", "goal", "sentence", "premise", "hypothesis"]
    decontam_ngram: int = Field(13, ge=1)
    decontam_margin: int = Field(200, ge=0)  # characters removed each side of a match
    decontam_min_piece: int = Field(200, ge=0)  # shorter pieces are dropped
    decontam_max_pieces: int = Field(10, ge=1)  # a document cut into more pieces is dropped
    decontam_max_doc_freq: int = Field(10, ge=1)  # 13-grams in more training docs are ignored

    @model_validator(mode="after")
    def _bands_rows(self) -> DedupConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both bands and rows, or neither")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands*rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self


# ------------------------------------------------------------------------------------------------ mix
class MixConfig(Section):
    """GPT-3 Table 2.2: each source's weight is its share of training tokens, whatever its size."""

    weights: dict[str, float] = Field(min_length=1)
    total_tokens: int | None = Field(None, ge=1)  # None = as many tokens as the deduplicated corpus has
    val_fraction: float = Field(0.15, ge=0, lt=1)  # held out per source, before sampling
    min_val_docs: int = Field(1, ge=0)

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        if any(w < 0 for w in v.values()):
            raise ValueError("weights must be >= 0")
        total = sum(v.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"weights must sum to 1 (they sum to {total:.6g})")
        return v


# ------------------------------------------------------------------------------------------- tokenize
EOT = "<|endoftext|>"


class TokenizeConfig(Section):
    """GPT-2 byte-level BPE (or a character vocabulary) trained on the mixed training split."""

    kind: Literal["bpe", "char"] = "bpe"
    vocab_size: int = Field(4096, ge=16)  # including the special tokens (and the 256 bytes for bpe)
    min_frequency: int = Field(2, ge=1)  # bpe: a pair seen fewer times is never merged
    max_train_bytes: int | None = Field(50_000_000, ge=1)  # utf-8 bytes of train text used; None = all
    # GPT-2's end of text; GPT-1's start/delimiter/extract for fine-tuning input transforms; chat roles
    special_tokens: list[str] = [
        EOT, "<|start|>", "<|delim|>", "<|extract|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>",
    ]  # fmt: skip
    batch_docs: int = Field(256, ge=1)  # documents per encode batch

    @field_validator("special_tokens")
    @classmethod
    def _specials(cls, v: list[str]) -> list[str]:
        if EOT not in v:
            raise ValueError(f"special_tokens must include {EOT!r}")
        if any(not t for t in v):
            raise ValueError("special_tokens must not hold an empty string")
        dup = sorted({t for t in v if v.count(t) > 1})
        if dup:
            raise ValueError(f"special_tokens lists {dup} more than once")
        return v


# ------------------------------------------------------------------------------------------- pretrain
class PretrainConfig(Section):
    """Model shape, optimisation and budget. Defaults: the embedded CPU profile (a few minutes)."""

    arch: Literal["gpt1", "gpt2", "gpt3"] = "gpt2"
    n_layer: int = Field(4, ge=1)
    n_head: int = Field(4, ge=1)
    n_embd: int = Field(128, ge=8)
    block_size: int = Field(128, ge=8)
    dropout: float = Field(0.0, ge=0, lt=1)
    bias: bool = True
    window: int = Field(64, ge=1)  # gpt3: tokens a locally banded layer sees (itself included)
    batch_size: int = Field(16, ge=1)  # sequences per micro-batch per process
    grad_accum: int = Field(1, ge=1)
    max_steps: int = Field(600, ge=1)  # also the length of the cosine schedule
    max_minutes: float | None = Field(None, gt=0)  # stop early once this much training time is spent
    lr: float = Field(3e-3, gt=0)
    min_lr: float = Field(3e-4, ge=0)
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0)
    dtype: Literal["auto", "float32", "bfloat16"] | None = None  # None = common.dtype
    compile: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    nproc_per_node: int = Field(1, ge=1)  # > 1: the stage relaunches itself under torchrun (DDP)
    log_interval: int = Field(10, ge=1)
    eval_interval: int = Field(100, ge=0)  # 0: only at the end
    eval_windows: int = Field(32, ge=1)  # validation windows per source
    checkpoint_interval: int = Field(100, ge=0)
    keep_checkpoints_every: int = Field(100, ge=0)  # > 0: keep the weights at every multiple of it
    resume: bool = True  # continue from checkpoints/pretrain/<run key>/ckpt.pt when it exists
    peak_flops: float | None = Field(None, gt=0)  # per device, for MFU; None = measured matmul peak at start
    sample_tokens: int = Field(80, ge=0)
    sample_prompts: list[str] = ["The ", "def ", "This module"]
    temperature: float = Field(0.8, ge=0)
    top_k: int | None = Field(50, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)
    export_hf: bool = True

    @model_validator(mode="after")
    def _shape(self) -> PretrainConfig:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.min_lr > self.lr:
            raise ValueError("min_lr must not exceed lr")
        return self


DTYPE_SECTIONS = ("pretrain", "finetune", "evaluate", "sft", "reward", "ppo")  # stages that run torch


class Params(Section):
    common: CommonConfig = CommonConfig()
    crawl: CrawlConfig
    clean: CleanConfig = CleanConfig()
    quality: QualityConfig
    dedup: DedupConfig = DedupConfig()
    mix: MixConfig
    tokenize: TokenizeConfig = TokenizeConfig()
    pretrain: PretrainConfig = PretrainConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    instructions: InstructionsConfig = InstructionsConfig()
    sft: SftConfig = SftConfig()
    comparisons: ComparisonsConfig = ComparisonsConfig()
    reward: RewardConfig = RewardConfig()
    ppo: PpoConfig = PpoConfig()

    @model_validator(mode="before")
    @classmethod
    def _dtype_from_common(cls, data: Any) -> Any:
        """A torch stage whose `dtype` is null (or left out where its default is null) computes in
        `common.dtype`, so one key sets the precision of the whole run."""
        if not isinstance(data, dict):
            return data
        common = data.get("common") or {}
        shared = common.get("dtype", "auto") if isinstance(common, dict) else "auto"
        data = dict(data)
        for name in DTYPE_SECTIONS:
            sec = data.get(name) or {}
            if not isinstance(sec, dict):
                continue
            default = cls.model_fields[name].annotation.model_fields["dtype"].default
            if sec.get("dtype", default) is None:
                data[name] = {**sec, "dtype": shared}
        return data

    @model_validator(mode="before")
    @classmethod
    def _defaults_from_roles(cls, data: Any) -> Any:
        """A new source needs naming in four places; what is not given follows from each source's
        `role`: reference sources are the quality classifier's positives, web sources its negatives,
        dedup keeps reference copies first, and the mix weighs every source equally."""
        if not isinstance(data, dict) or not isinstance((data.get("crawl") or {}).get("sources"), dict):
            return data
        sources = data["crawl"]["sources"]
        default_role = {"python_docs": "reference", "py_env_docs": "reference"}
        roles = {
            name: (src.get("role") or default_role.get(src.get("kind"), "web"))
            if isinstance(src, dict)
            else "web"
            for name, src in sources.items()
        }
        refs = [n for n, r in roles.items() if r == "reference"]
        webs = [n for n, r in roles.items() if r != "reference"]
        data = dict(data)
        quality = dict(data.get("quality") or {})
        quality.setdefault("positives", refs)
        quality.setdefault("negatives", webs)
        dedup = dict(data.get("dedup") or {})
        dedup.setdefault("priority", refs + webs)
        mix = dict(data.get("mix") or {})
        mix.setdefault("weights", {n: 1 / len(sources) for n in sources} if sources else {})
        data.update(quality=quality, dedup=dedup, mix=mix)
        return data

    @model_validator(mode="after")
    def _source_names(self) -> Params:
        names = set(self.crawl.sources)
        for key, listed in [
            ("quality.positives", self.quality.positives),
            ("quality.negatives", self.quality.negatives),
            ("dedup.priority", self.dedup.priority),
            ("mix.weights", list(self.mix.weights)),
        ]:
            unknown = sorted(set(listed) - names)
            if unknown:
                raise ValueError(
                    f"{key} names unknown source(s) {unknown}; crawl.sources has {sorted(names)} (a source "
                    "is named in quality.positives or quality.negatives, dedup.priority and mix.weights; "
                    "leave those keys out to derive them from each source's role)"
                )
        overlap = set(self.quality.positives) & set(self.quality.negatives)
        if overlap:
            raise ValueError(f"quality: sources {sorted(overlap)} are both positives and negatives")
        return self

    def section_hash(self, section: str) -> str:
        """A short stable hash of one section (and `common`), used to tag tracking runs."""
        data = {
            "common": self.common.model_dump(mode="json"),
            section: getattr(self, section).model_dump(mode="json"),
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def _format_error(err: ValidationError, origin: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-after"))
    # pydantic puts the discriminator tag into the loc of union members: drop those parts
    loc = re.sub(r"\.(http|pydoc|warc|files|hf|python_docs)(?=\.|$)", "", loc)
    msg = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    got_s = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
    more = len(err.errors()) - 1
    tail = f" [+{more} more]" if more else ""
    return f"{origin}: {loc or '<root>'}: {msg}{got_s}{tail}"


def parse_params(data: dict[str, Any], origin: str = "params") -> Params:
    try:
        return Params.model_validate(data)
    except ValidationError as e:
        raise LineageError(_format_error(e, origin)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise LineageError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise LineageError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise LineageError(f"{path}: top level must be a mapping of sections")
    return parse_params(data, str(path))


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: the form `dvc exp run -S key=value` takes."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
