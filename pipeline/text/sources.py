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

RAW_SCHEMA = pa.schema(
    [
        *DOC_SCHEMA,
        ("status", pa.int32()),
        ("final_url", pa.string()),
        ("fetched_at", pa.float64()),
        ("fetch_s", pa.float64()),
    ]
)

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
        d["id"] = doc_id(name, d["url"])
    return docs, log


# ------------------------------------------------------------------------------------------------ WARC
def _open_stream(path: str, timeout_s: float) -> Any:
    if re.match(r"https?://", path):
        import httpx

        try:
            r = httpx.get(path, timeout=timeout_s, follow_redirects=True)
            r.raise_for_status()
        except httpx.HTTPError as e:
            raise LineageError(f"{path}: cannot fetch WARC: {type(e).__name__}: {e}") from None
        return io.BytesIO(r.content)
    return open(path, "rb")  # noqa: SIM115 - closed by the caller


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
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    docs: list[dict] = []
    for path in expand_paths(src.paths, root, f"crawl.sources.{name}.paths"):
        stream = _open_stream(path, src.timeout_s)
        records = 0
        try:
            for rec in ArchiveIterator(stream):
                records += 1
                if not str(rec.format).startswith("warc"):  # warcio reads any text as legacy ARC
                    raise LineageError(
                        f"{path}: not a valid WARC/WET file: record {records} is {rec.format!r}, not WARC"
                    )
                if rec.rec_type not in src.record_types:
                    continue
                url = rec.rec_headers.get_header("WARC-Target-URI") or ""
                if rec.rec_type == "response":
                    if rec.http_headers is None:
                        continue
                    ctype = (rec.http_headers.get_header("Content-Type") or "").split(";")[0].strip().lower()
                    status = int(rec.http_headers.get_statuscode() or 0)
                    if status != 200 or not ctype.startswith("text/"):
                        continue
                    charset = _charset(rec.http_headers.get_header("Content-Type") or "")
                else:
                    ctype = (
                        "text/plain"
                        if rec.rec_type == "conversion"
                        else (rec.rec_headers.get_header("Content-Type") or "text/plain").split(";")[0]
                    )
                    status, charset = 200, "utf-8"
                body = rec.content_stream().read()
                text = body.decode(charset or "utf-8", errors="replace")
                date = rec.rec_headers.get_header("WARC-Date") or ""
                docs.append(
                    raw_doc(name, src.role, url, text, ctype, status=status, fetched_at=_warc_time(date))
                )
                if src.max_docs and len(docs) >= src.max_docs:
                    return docs
        except ArchiveLoadFailed as e:
            raise LineageError(f"{path}: not a valid WARC/WET file: {str(e).splitlines()[0]}") from None
        except LineageError:
            raise
        except Exception as e:  # warcio fails in many ways on damaged input (zlib, headers, None URIs)
            raise LineageError(f"{path}: corrupt WARC/WET file: {type(e).__name__}: {e}") from None
        finally:
            stream.close()
        if records == 0:
            raise LineageError(f"{path}: not a valid WARC/WET file: no WARC records found")
    return docs


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
