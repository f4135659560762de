"""Where raw documents come from: HTTP crawls, WARC/WET files, local files, Hugging Face datasets,
and the embedded offline default (this Python's pydoc web server plus the prose it ships).

Every reader yields raw-document dicts with the columns of :data:`RAW_SCHEMA`; ``text`` holds the
content as fetched (HTML or plain text) — extraction happens in the clean stage.
"""

from __future__ import annotations

import ast
import glob
import hashlib
import io
import re
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.config import FilesSource, HfSource, HttpSource, PydocSource, PythonDocsSource, WarcSource
from pipeline.errors import LineageError
from pipeline.io import DOC_SCHEMA, iter_jsonl

# when and how fast a page was fetched lives in the fetch log only: the documents hold nothing that
# changes between two crawls of the same content, so the stages after crawl rerun only on new text
RAW_SCHEMA = pa.schema([*DOC_SCHEMA, ("status", pa.int32()), ("final_url", pa.string())])

FETCH_LOG_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("url", pa.string()),
        ("final_url", pa.string()),
        ("status", pa.int32()),
        ("content_type", pa.string()),
        ("error", pa.string()),
        ("depth", pa.int32()),
        ("nbytes", pa.int64()),
        ("fetched_at", pa.float64()),
        ("fetch_s", pa.float64()),
    ]
)


def doc_id(source: str, key: str) -> str:
    return f"{source}/{hashlib.sha1(key.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}"


def raw_doc(source: str, role: str, url: str, text: str, content_type: str, **fetch: Any) -> dict[str, Any]:
    return {
        "id": doc_id(source, url),
        "source": source,
        "role": role,
        "url": url,
        "text": text,
        "content_type": content_type,
        "status": fetch.get("status"),
        "final_url": fetch.get("final_url", url),
        "fetched_at": fetch.get("fetched_at", time.time()),
        "fetch_s": fetch.get("fetch_s", 0.0),
    }


# ------------------------------------------------------------------------------------------ HTTP crawl
def read_http(
    name: str, src: HttpSource | PydocSource, seeds: list[str], in_scope: Any
) -> tuple[list[dict], list[dict]]:
    """Crawl ``seeds``; returns (kept documents, fetch log rows)."""
    from pipeline.text.crawl import crawl

    fetches = crawl(seeds, src, in_scope)
    docs, log = [], []
    for f in fetches:
        log.append(
            {
                "source": name, "url": f.url, "final_url": f.final_url, "status": f.status,
                "content_type": f.content_type, "error": f.error, "depth": f.depth, "nbytes": f.nbytes,
                "fetched_at": f.fetched_at, "fetch_s": f.fetch_s,
            }
        )  # fmt: skip
        if f.error is None and f.content is not None:
            docs.append(
                raw_doc(
                    name, src.role, f.url, f.content, f.content_type, status=f.status,
                    final_url=f.final_url, fetched_at=f.fetched_at, fetch_s=f.fetch_s,
                )
            )  # fmt: skip
    return docs, log


def read_http_source(name: str, src: HttpSource) -> tuple[list[dict], list[dict]]:
    from pipeline.text.crawl import host_scope, normalize_url

    seeds = []
    for s in src.seeds:
        n = normalize_url(s)
        if n is None:
            raise LineageError(f"crawl.sources.{name}.seeds: {s!r} is not an http(s) URL")
        seeds.append(n)
    scope = host_scope(seeds, src.allow_hosts if src.scope == "allow" else None)
    return read_http(name, src, seeds, scope)


class PydocServer:
    """This Python's documentation server (``python -m pydoc -p 0``) on a free loopback port."""

    def __init__(self, stdlib_only: bool = True):
        self.stdlib_only = stdlib_only
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> PydocServer:
        # -I: no user site, no PYTHON* env; -S: no site-packages, so only the standard library is served
        flags = ["-I", "-S"] if self.stdlib_only else ["-I"]
        self.proc = subprocess.Popen(
            [sys.executable, *flags, "-m", "pydoc", "-n", "127.0.0.1", "-p", "0"],
            stdin=subprocess.PIPE,  # pydoc's server stops when its command prompt reads EOF
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        deadline = time.monotonic() + 30
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            m = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
            if m:
                self.url = m.group(1)
                return self
            if not line and self.proc.poll() is not None:
                break
        self.__exit__(None, None, None)
        raise LineageError("crawl: the pydoc server did not start (python -m pydoc -p 0)")

    def __exit__(self, *exc: Any) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("q\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def pydoc_excludes(src: PydocSource) -> list[str]:
    """URL patterns the crawl of pydoc must not visit: modules that act when imported, source
    listings, search, and the topic/keyword pages (they are the `topics` reference source)."""
    pats = [r"[?]", r"/(topics|keywords)\.html$", r"__main__"]
    for mod in src.exclude_modules:
        pats.append(rf"/{re.escape(mod)}(\.[^/]*)?\.html$")
    return pats + list(src.exclude)


def read_pydoc_source(name: str, src: PydocSource) -> tuple[list[dict], list[dict]]:
    from pipeline.text.crawl import host_scope

    with PydocServer(src.stdlib_only) as server:
        opts = src.model_copy(update={"exclude": pydoc_excludes(src)})
        docs, log = read_http(name, opts, [server.url], host_scope([server.url]))
    for d in docs:  # the port changes every run: key documents by path so ids are stable
        path = re.sub(r"^http://127\.0\.0\.1:\d+", "", d["url"])
        d["url"] = f"pydoc:{path}"
        d["final_url"] = "pydoc:" + re.sub(r"^http://127\.0\.0\.1:\d+", "", d.get("final_url") or "")
        d["id"] = doc_id(name, d["url"])
    return docs, log


# ------------------------------------------------------------------------------------------------ WARC
GZIP_MAGIC = b"\x1f\x8b"
WARC_READ_CHUNK = 1 << 20  # raw bytes per read; warcio also reads this much per step (its header lines
# are re-joined per step, so small steps make a long line quadratic)


class WarcInput(io.RawIOBase):
    """A WARC/WET file (local or an open download) as the plain, uncompressed byte stream warcio reads.

    Decompressing here, in bounded steps, rather than in warcio lets us count what a file costs and
    tell a cut file from a whole one: stored bytes are capped by ``max_bytes``, decompressed bytes by
    ``max_decompressed_bytes``, each gzip member (one record) by ``max_record_bytes``, and a file that
    ends inside a gzip member is one LineageError instead of a silently shortened last record.
    """

    def __init__(self, raw: Any, path: str, src: WarcSource, key: str) -> None:
        from pipeline.text.crawl import Inflater

        super().__init__()
        self.raw, self.path, self.src, self.key = raw, path, src, key
        first = raw.read(WARC_READ_CHUNK)
        self.stored = len(first)
        self.inflater = Inflater("gzip" if first.startswith(GZIP_MAGIC) else "identity")
        self.gzipped = first.startswith(GZIP_MAGIC)
        self.out = 0
        self.pieces: Iterator[bytes] = self._decode(first)
        self.buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self.buf:
            piece = next(self.pieces, None)
            if piece is None:
                return 0
            self.buf = memoryview(piece)
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n

    def _decode(self, first: bytes) -> Iterator[bytes]:
        """Decoded pieces of the whole file, with every cap checked before a piece is handed out."""
        import zlib

        chunk = first
        try:
            while chunk:
                for piece in self.inflater.feed(chunk):
                    self._count(len(piece))
                    yield piece
                chunk = self.raw.read(WARC_READ_CHUNK)
                self.stored += len(chunk)
                if self.stored > self.src.max_bytes:
                    self._fail(f"larger than {self.key}.max_bytes={self.src.max_bytes} bytes")
        except zlib.error as e:
            raise LineageError(f"{self.path}: corrupt WARC/WET file: bad gzip data ({e})") from None
        if not self.inflater.complete():
            raise LineageError(
                f"{self.path}: truncated WARC/WET file: it ends inside a gzip member "
                f"(a cut download or copy) after {self.stored} bytes"
            )

    def _count(self, n: int) -> None:
        self.out += n
        if self.out > self.src.max_decompressed_bytes:
            self._fail(
                f"decompresses past {self.key}.max_decompressed_bytes={self.src.max_decompressed_bytes}"
            )
        if self.gzipped and self.inflater.member_bytes > self.src.max_record_bytes:
            self._fail(
                f"a gzip member (record) decompresses past "
                f"{self.key}.max_record_bytes={self.src.max_record_bytes}"
            )

    def _fail(self, why: str) -> None:
        raise LineageError(f"{self.path}: refused WARC/WET file: {why}")

    def close(self) -> None:
        if not self.closed:
            self.raw.close()
        super().close()


def _open_stream(path: str, src: WarcSource, key: str) -> WarcInput:
    """A local file or, for an http(s) path, a download streamed under the crawler's guards."""
    if re.match(r"https?://", path):
        from pipeline.text.crawl import open_url

        raw: Any = open_url(
            path, user_agent=src.user_agent, timeout_s=src.timeout_s, max_redirects=src.max_redirects,
            allow_private=src.allow_private, respect_robots=src.respect_robots, what="WARC",
        )  # fmt: skip
    else:
        raw = open(path, "rb")  # noqa: SIM115 - closed with the WarcInput
    try:
        return WarcInput(raw, path, src, key)
    except BaseException:
        raw.close()
        raise


def expand_paths(patterns: list[str], root: Path, key: str) -> list[str]:
    out: list[str] = []
    for p in patterns:
        if re.match(r"https?://", p):
            out.append(p)
            continue
        full = p if Path(p).is_absolute() else str(root / p)
        hits = sorted(glob.glob(full, recursive=True))
        if not hits:
            raise LineageError(f"{key}: no file matches {p!r}")
        out.extend(hits)
    return out


def read_warc_source(name: str, src: WarcSource, root: Path) -> list[dict]:
    """Documents from the source's WARC/WET files, read record by record (never a whole file in memory).

    Any damage is one LineageError naming the file; a record is never emitted cut short.
    """
    key = f"crawl.sources.{name}"
    docs: list[dict] = []
    for path in expand_paths(src.paths, root, f"{key}.paths"):
        with _open_stream(path, src, key) as stream:
            if _read_warc_file(name, src, path, stream, docs):
                break
    return docs


def _read_warc_file(name: str, src: WarcSource, path: str, stream: WarcInput, docs: list[dict]) -> bool:
    """Append the file's documents to ``docs``; True once ``max_docs`` is reached."""
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    records = 0
    try:
        for rec in ArchiveIterator(stream, block_size=WARC_READ_CHUNK):
            records += 1
            if not str(rec.format).startswith("warc"):  # warcio reads any text as legacy ARC
                raise LineageError(
                    f"{path}: not a valid WARC/WET file: record {records} is {rec.format!r}, not WARC"
                )
            length = rec.rec_headers.get_header("Content-Length") or ""
            if not length.strip().isdigit():
                raise LineageError(
                    f"{path}: corrupt WARC/WET file: record {records} has no valid Content-Length"
                )
            doc = _record_doc(name, src, rec) if rec.rec_type in src.record_types else None
            _check_whole(rec, path, records)
            if doc is not None:
                docs.append(doc)
                if src.max_docs and len(docs) >= src.max_docs:
                    return True
    except ArchiveLoadFailed as e:
        raise LineageError(f"{path}: not a valid WARC/WET file: {str(e).splitlines()[0]}") from None
    except LineageError:
        raise
    except Exception as e:  # warcio fails in many ways on damaged input (headers, None URIs)
        raise LineageError(f"{path}: corrupt WARC/WET file: {type(e).__name__}: {e}") from None
    if records == 0:
        raise LineageError(f"{path}: not a valid WARC/WET file: no WARC records found")
    return False


def _check_whole(rec: Any, path: str, n: int) -> None:
    """Read what is left of the record and refuse it unless all of its Content-Length was there.

    warcio stops quietly at the end of the input, so a cut file would otherwise end in a shortened
    document that looks whole.
    """
    while rec.raw_stream.read(WARC_READ_CHUNK):
        pass
    missing = getattr(rec.raw_stream, "limit", 0)
    if missing:
        total = rec.rec_headers.get_header("Content-Length")
        raise LineageError(
            f"{path}: truncated WARC/WET file: record {n} has {missing} of its {total} bytes missing"
        )


def _record_doc(name: str, src: WarcSource, rec: Any) -> dict[str, Any] | None:
    """The raw document of one wanted record; None for records that are no text document."""
    from pipeline.text.crawl import text_problem

    url = rec.rec_headers.get_header("WARC-Target-URI") or ""
    if rec.rec_type == "response":
        if rec.http_headers is None:
            return None
        full_type = rec.http_headers.get_header("Content-Type") or ""
        ctype = full_type.split(";")[0].strip().lower()
        status = int(rec.http_headers.get_statuscode() or 0)
        if status != 200 or not ctype.startswith("text/"):
            return None
        charset = _charset(full_type)
    else:
        declared = rec.rec_headers.get_header("Content-Type") or "text/plain"
        ctype = "text/plain" if rec.rec_type == "conversion" else declared.split(";")[0]
        status, charset = 200, "utf-8"
    body = _read_payload(rec.content_stream(), src.max_record_bytes)
    if body is None:
        return None  # an HTTP Content-Encoding inside the record inflates past max_record_bytes
    text = body.decode(charset or "utf-8", errors="replace")
    if text_problem(text):
        return None
    date = rec.rec_headers.get_header("WARC-Date") or ""
    return raw_doc(name, src.role, url, text, ctype, status=status, fetched_at=_warc_time(date))


def _read_payload(stream: Any, cap: int) -> bytes | None:
    """At most ``cap`` bytes of a record's payload; None when it holds more."""
    data = bytearray()
    while chunk := stream.read(1 << 16):
        data += chunk
        if len(data) > cap:
            return None
    return bytes(data)


def _charset(content_type: str) -> str | None:
    m = re.search(r"charset=([\w-]+)", content_type, re.I)
    if not m:
        return None
    try:
        "".encode(m.group(1))
        return m.group(1)
    except LookupError:
        return None


def _warc_time(date: str) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(date.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()


# ----------------------------------------------------------------------------------------------- files
def read_files_source(name: str, src: FilesSource, root: Path) -> list[dict]:
    import pyarrow.parquet as pq

    docs: list[dict] = []
    key = f"crawl.sources.{name}"
    for path in expand_paths(src.globs, root, f"{key}.globs"):
        p = Path(path)
        suffix = p.suffix.lower()
        rel = p.relative_to(root) if p.is_relative_to(root) else p
        if suffix in {".txt", ".md", ".rst", ".html", ".htm"}:
            ctype = "text/html" if suffix in {".html", ".htm"} else "text/plain"
            docs.append(raw_doc(name, src.role, f"file:{rel}", p.read_text(errors="replace"), ctype))
        elif suffix == ".jsonl":
            for line, row in iter_jsonl(p):
                if src.text_field not in row:
                    raise LineageError(f"{path}:{line}: no field {src.text_field!r} ({key}.text_field)")
                text = str(row[src.text_field])
                docs.append(raw_doc(name, src.role, f"file:{rel}#{line - 1}", text, "text/plain"))
        elif suffix == ".parquet":
            table = pq.read_table(p)
            if src.text_field not in table.column_names:
                raise LineageError(f"{path}: no column {src.text_field!r} ({key}.text_field)")
            for i, text in enumerate(table.column(src.text_field).to_pylist()):
                docs.append(raw_doc(name, src.role, f"file:{rel}#{i}", str(text or ""), "text/plain"))
        else:
            raise LineageError(
                f"{path}: unsupported file type {suffix!r} ({key}.globs takes txt md rst html jsonl parquet)"
            )
        if src.max_docs and len(docs) >= src.max_docs:
            return docs[: src.max_docs]
    return docs


# ---------------------------------------------------------------------------------- Hugging Face hub
def read_hf_source(name: str, src: HfSource, root: Path) -> list[dict]:
    import datasets

    key = f"crawl.sources.{name}"
    local = root / src.dataset
    target = str(local) if local.exists() else src.dataset
    try:
        ds = datasets.load_dataset(
            target, src.config, split=src.split, streaming=src.streaming, data_files=src.data_files
        )
    except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LineageError(f"{key}.dataset: cannot load {src.dataset!r}: {first}") from None
    docs: list[dict] = []
    for i, row in enumerate(ds):
        if src.text_field not in row:
            raise LineageError(
                f"{key}.text_field: {src.dataset!r} has no field {src.text_field!r} (has {sorted(row)})"
            )
        url = str(row.get("url") or f"hf:{src.dataset}/{src.split}#{i}")
        docs.append(raw_doc(name, src.role, url, str(row[src.text_field] or ""), "text/plain"))
        if src.max_docs and len(docs) >= src.max_docs:
            break
    return docs


# ----------------------------------------------------------------- reference prose shipped with Python
SKIP_STDLIB_DIRS = {
    "test",
    "tests",
    "idlelib",
    "tkinter",
    "turtledemo",
    "lib2to3",
    "site-packages",
    "ensurepip",
    "venv",
}


def _stdlib_files() -> Iterator[Path]:
    base = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(base.rglob("*.py")):
        rel = path.relative_to(base).parts
        if any(p in SKIP_STDLIB_DIRS or p.startswith("__pycache__") for p in rel):
            continue
        yield path


def python_docstrings(min_chars: int) -> Iterator[tuple[str, str]]:
    """(key, docstring) for module, class and function docstrings of the standard library, read
    with ``ast`` so no module is imported."""
    base = Path(sysconfig.get_paths()["stdlib"])
    for path in _stdlib_files():
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, UnicodeDecodeError):
            continue
        module = ".".join(path.relative_to(base).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node, clean=True)
                if doc and len(doc) >= min_chars:
                    qual = module if isinstance(node, ast.Module) else f"{module}.{node.name}"
                    yield qual, doc


def python_topics() -> Iterator[tuple[str, str]]:
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield key, topics[key]


LICENSE_RE = re.compile(r"(^|/)(LICEN[CS]E|COPYING|NOTICE|AUTHORS)[^/]*$", re.I)


def python_distributions(min_chars: int) -> Iterator[tuple[str, str]]:
    """READMEs (the long description in METADATA) and licence files of installed distributions."""
    from importlib import metadata

    seen: set[str] = set()
    for dist in sorted(metadata.distributions(), key=lambda d: (d.metadata["Name"] or "").lower()):
        dname = (dist.metadata["Name"] or "").lower()
        if not dname or dname in seen:
            continue
        seen.add(dname)
        body = dist.metadata.get_payload() if hasattr(dist.metadata, "get_payload") else None
        body = body or dist.metadata.get("Description") or ""
        if isinstance(body, str) and len(body) >= min_chars:
            yield f"{dname}/README", body
        for f in dist.files or []:
            if LICENSE_RE.search(str(f)):
                try:
                    text = f.read_text()
                except (OSError, UnicodeDecodeError):
                    continue
                if text and len(text) >= min_chars:
                    yield f"{dname}/{f}", text


def read_python_docs_source(name: str, src: PythonDocsSource) -> list[dict]:
    if src.part == "topics":
        items = ((k, v) for k, v in python_topics() if len(v) >= src.min_chars)
    elif src.part == "docstrings":
        items = python_docstrings(src.min_chars)
    else:
        items = python_distributions(src.min_chars)
    docs = []
    for key, text in items:
        docs.append(raw_doc(name, src.role, f"python:{src.part}/{key}", text, "text/plain"))
        if src.max_docs and len(docs) >= src.max_docs:
            break
    return docs


def read_source(name: str, src: Any, root: Path) -> tuple[list[dict], list[dict]]:
    """Documents and fetch log for one configured source."""
    if isinstance(src, HttpSource):
        return read_http_source(name, src)
    if isinstance(src, PydocSource):
        return read_pydoc_source(name, src)
    if isinstance(src, WarcSource):
        return read_warc_source(name, src, root), []
    if isinstance(src, FilesSource):
        return read_files_source(name, src, root), []
    if isinstance(src, HfSource):
        return read_hf_source(name, src, root), []
    if isinstance(src, PythonDocsSource):
        return read_python_docs_source(name, src), []
    raise LineageError(f"crawl.sources.{name}.kind: unknown kind {getattr(src, 'kind', '?')!r}")
