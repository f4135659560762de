"""Where raw documents come from: HTTP crawls, WARC/WET files, local files, Hugging Face datasets,
and the embedded offline default (a small local web of this Python's pydoc pages and the project
pages of installed distributions, plus the reference prose Python ships).

Every reader yields raw-document dicts with the columns of :data:`RAW_SCHEMA`; ``text`` holds the
content as fetched (HTML or plain text) — extraction happens in the clean stage.
"""

from __future__ import annotations

import ast
import glob
import hashlib
import io
import os
import re
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.config import (
    DistSplit,
    FilesSource,
    HfSource,
    HttpSource,
    PydocSource,
    PyEnvDocsSource,
    PythonDocsSource,
    WarcSource,
)
from pipeline.errors import LineageError
from pipeline.io import DOC_SCHEMA, iter_jsonl

# when and how fast a page was fetched lives in the fetch log only: the documents hold nothing that
# changes between two crawls of the same content, so the stages after crawl rerun only on new text
# page_kind: what kind of page a document is where its source knows it (the embedded web: "api" for
# pydoc's pages, "prose" for project pages), else null
RAW_SCHEMA = pa.schema(
    [*DOC_SCHEMA, ("page_kind", pa.string()), ("status", pa.int32()), ("final_url", pa.string())]
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
        ("truncated", pa.bool_()),  # cut at max_bytes (oversize: truncate)
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
        "page_kind": fetch.get("page_kind"),
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
                "fetched_at": f.fetched_at, "fetch_s": f.fetch_s, "truncated": f.truncated,
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
    from pipeline.text.web import host_scope, normalize_url

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
            # pydoc's pages show os.environ (cgi, os): a bare environment keeps this process's
            # variables (tokens, service URLs) out of the pages and so out of the corpus
            env={"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8"},
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


def read_pydoc_source(
    name: str, src: PydocSource, split: DistSplit | None = None
) -> tuple[list[dict], list[dict]]:
    """Crawl the embedded web from its home page (pydoc's module index); every document is tagged
    with its page kind."""
    with EmbeddedWeb(src, split or DistSplit()) as web:
        opts = src.model_copy(update={"exclude": pydoc_excludes(src)})
        # its own origin only: host scope ignores ports, and other loopback services are not the web
        docs, log = read_http(name, opts, [web.url], lambda url: url.startswith(web.url))
    for d in docs:  # the port changes every run: key documents by path so ids are stable
        path = re.sub(r"^http://127\.0\.0\.1:\d+", "", d["url"])
        d["url"] = f"pydoc:{path}"
        d["final_url"] = "pydoc:" + re.sub(r"^http://127\.0\.0\.1:\d+", "", d.get("final_url") or "")
        d["id"] = doc_id(name, d["url"])
        d["page_kind"] = page_kind(path)
    return docs, log


# ------------------------------------------------------------------ the embedded web's project pages
PROJECTS_PREFIX = "/projects/"


def page_kind(path: str) -> str:
    """'prose' for a project page of the embedded web, 'api' for pydoc's pages."""
    return "prose" if path.startswith(PROJECTS_PREFIX) else "api"


def dist_side(name: str, split: DistSplit) -> str:
    """'web' or 'reference': the side of ``split`` a distribution's text belongs to, from a seeded
    hash of its name, so the split is stable across runs and machines and never depends on order."""
    digest = hashlib.sha256(f"{split.seed}\0{name.lower()}".encode()).digest()
    return "web" if int.from_bytes(digest[:8], "big") < split.web_share * 2**64 else "reference"


def installed_distributions(path: list[str] | None = None) -> Iterator[tuple[str, Any]]:
    """(lowercased name, distribution) of each installed distribution once, by name; ``path``: the
    folders to search instead of ``sys.path``."""
    from importlib import metadata

    seen: set[str] = set()
    found = metadata.distributions(path=path) if path is not None else metadata.distributions()
    for dist in sorted(found, key=lambda d: (d.metadata["Name"] or "").lower()):
        dname = (dist.metadata["Name"] or "").lower()
        if dname and dname not in seen:
            seen.add(dname)
            yield dname, dist


def readme(dist: Any) -> str:
    """A distribution's long description (the body of its METADATA, or its Description field)."""
    body = dist.metadata.get_payload() if hasattr(dist.metadata, "get_payload") else None
    body = body or dist.metadata.get("Description") or ""
    return body if isinstance(body, str) else ""


@dataclass(frozen=True)
class Project:
    """One distribution on the web side of the split: the text and links of its project page."""

    name: str
    slug: str
    version: str
    summary: str
    license: str
    readme: str
    requires: tuple[str, ...]  # slugs of its requirements that have a page too

    @property
    def path(self) -> str:
        return f"{PROJECTS_PREFIX}{self.slug}.html"


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def web_projects(split: DistSplit, min_chars: int) -> list[Project]:
    """The distributions whose READMEs become the embedded web's prose pages, by name."""
    chosen = [
        (dname, dist)
        for dname, dist in installed_distributions()
        if dist_side(dname, split) == "web" and len(readme(dist)) >= min_chars
    ]
    slugs = {_slug(d) for d, _ in chosen}
    projects = []
    for dname, dist in chosen:
        reqs = [re.split(r"[\s;<>=!~\[(]", r, maxsplit=1)[0] for r in dist.requires or []]
        md = dist.metadata
        lic = md.get("License-Expression") or (md.get("License") or "").split("\n")[0][:80] or "its licence"
        projects.append(
            Project(
                name=md["Name"], slug=_slug(dname), version=md.get("Version") or "", summary=md.get("Summary") or "",
                license=lic, readme=readme(dist),
                requires=tuple(dict.fromkeys(_slug(r) for r in reqs if _slug(r) in slugs and _slug(r) != _slug(dname))),
            )
        )  # fmt: skip
    return projects


def render_markup(text: str) -> str:
    """A README as HTML, the way an index renders it: Markdown (CommonMark and tables; raw HTML in
    it passes through). reST underlined titles come out as headings, literal blocks as code."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": True}).enable("table").render(text)


def _ranked(key: str, projects: list[Project], k: int) -> list[Project]:
    """``k`` projects picked for ``key`` by hash: a fixed, evenly spread choice of cross-links."""
    return sorted(projects, key=lambda p: hashlib.sha1(f"{key}\0{p.slug}".encode()).digest())[:k]


def project_page(i: int, projects: list[Project]) -> str:
    """Project ``i``'s page: the README between a site header with navigation, a sidebar of related
    projects and a footer, the boilerplate a real project index puts around every page."""
    from html import escape as e

    p = projects[i]
    prev, nxt = projects[i - 1], projects[(i + 1) % len(projects)]
    by_slug = {q.slug: q for q in projects}
    related = [by_slug[s] for s in p.requires] + [q for q in _ranked(p.slug, projects, 5) if q is not p]
    related = list(dict.fromkeys(related))[:6]
    items = "".join(f'<li><a href="{q.path}">{e(q.name)}</a> {e(q.summary)}</li>' for q in related)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(p.name)} {e(p.version)} | project pages</title>
<meta name="description" content="{e(p.summary)}"></head>
<body>
<header class="site-header"><a class="logo" href="/">Python on this machine</a>
<nav><ul><li><a href="/">Module index</a></li><li><a href="{prev.path}">&larr; {e(prev.name)}</a></li>
<li><a href="{nxt.path}">{e(nxt.name)} &rarr;</a></li><li><a href="/search?key=">Search</a></li></ul></nav>
</header>
<main><article class="project-description">
<h1>{e(p.name)} {e(p.version)}</h1>
<p class="summary">{e(p.summary)}</p>
{render_markup(p.readme)}
</article>
<aside class="sidebar"><h2>Related projects</h2><ul>{items}</ul></aside>
</main>
<footer class="site-footer"><p>{e(p.name)} is distributed under {e(p.license)}. This page was generated
from the package metadata of an installed distribution.</p>
<p><a href="/">Module index</a> | <a href="{prev.path}">Previous project</a> | <a href="{nxt.path}">Next
project</a> | Served from 127.0.0.1</p></footer>
</body></html>
"""


def featured_bar(path: str, projects: list[Project], k: int = 2) -> str:
    """The site bar put at the top of each of pydoc's pages: links into the project pages."""
    from html import escape as e

    links = " &middot; ".join(f'<a href="{p.path}">{e(p.name)}</a>' for p in _ranked(path, projects, k))
    return f'<div class="site-bar"><a href="/">Home</a> | Projects: {links}</div>'


class EmbeddedWeb:
    """The embedded offline web on one loopback port: pydoc's pages (passed through from
    :class:`PydocServer`, each with a site bar linking to project pages) and the project pages of
    the web side of the distributions, so a crawl from the home page finds both kinds by links."""

    def __init__(self, src: PydocSource, split: DistSplit):
        self.src, self.split = src, split
        self.pydoc = PydocServer(src.stdlib_only)
        self.projects: list[Project] = []
        self.index: dict[str, int] = {}
        self.cache: dict[str, bytes] = {}
        self.lock = threading.Lock()  # pydoc answers one request at a time
        self.httpd: ThreadingHTTPServer | None = None
        self.url = ""

    def __enter__(self) -> EmbeddedWeb:
        if self.src.prose_pages:
            self.projects = web_projects(self.split, self.src.prose_min_chars)
            self.index = {p.path: i for i, p in enumerate(self.projects)}
        self.pydoc.__enter__()
        try:
            self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
            self.httpd.daemon_threads = True
            threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        except BaseException:
            self.pydoc.__exit__(None, None, None)
            raise
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
        self.pydoc.__exit__(*exc)

    def get(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of ``path``."""
        if path in self.index:
            if path not in self.cache:
                self.cache[path] = project_page(self.index[path], self.projects).encode("utf-8")
            return 200, "text/html; charset=utf-8", self.cache[path]
        if path.startswith(PROJECTS_PREFIX):
            return 404, "text/plain; charset=utf-8", b"no such project page\n"
        return self._pydoc(path)

    def _pydoc(self, path: str) -> tuple[int, str, bytes]:
        import http.client
        from urllib.parse import urlsplit

        parts = urlsplit(self.pydoc.url)
        with self.lock:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self.src.timeout_s)
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                status, ctype, body = resp.status, resp.getheader("Content-Type") or "", resp.read()
            finally:
                conn.close()
        if status == 200 and ctype.startswith("text/html") and self.projects:
            bar = featured_bar(path, self.projects).encode("utf-8")
            m = re.search(rb"<body[^>]*>", body, re.I)
            body = body[: m.end()] + bar + body[m.end() :] if m else bar + body
        return status, ctype, body


def _handler(web: EmbeddedWeb) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server hook's name
            try:
                status, ctype, body = web.get(self.path)
            except OSError:
                status, ctype, body = 502, "text/plain; charset=utf-8", b"pydoc did not answer\n"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the hook's signature
            pass  # the crawl keeps its own fetch log

    return Handler


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
        from pipeline.text.netguard import Inflater

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
        from pipeline.text.netguard import open_url

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
    from pipeline.text.web import text_problem

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
    """Rows of a Hub data set, or of a local copy (a ``save_to_disk`` folder, a folder of parquet or
    JSONL files, one such file; relative to the project root): :func:`pipeline.hfdata.open_dataset`."""
    from pipeline.hfdata import open_dataset

    key = f"crawl.sources.{name}"
    ds = open_dataset(
        src.dataset, key=f"{key}.dataset", config=src.config, split=src.split, streaming=src.streaming,
        data_files=src.data_files, root=root,
    )  # fmt: skip
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


def python_distributions(min_chars: int, split: DistSplit | None = None) -> Iterator[tuple[str, str]]:
    """READMEs (the long description in METADATA) and licence files of installed distributions on
    the reference side of ``split``: the web side's READMEs are the embedded web's prose pages."""
    split = split or DistSplit()
    for dname, dist in installed_distributions():
        if dist_side(dname, split) != "reference":
            continue
        body = readme(dist)
        if len(body) >= min_chars:
            yield f"{dname}/README", body
        for f in dist.files or []:
            if LICENSE_RE.search(str(f)):
                try:
                    text = f.read_text()
                except (OSError, UnicodeDecodeError):
                    continue
                if text and len(text) >= min_chars:
                    yield f"{dname}/{f}", text


def read_python_docs_source(name: str, src: PythonDocsSource, split: DistSplit | None = None) -> list[dict]:
    if src.part == "topics":
        items = ((k, v) for k, v in python_topics() if len(v) >= src.min_chars)
    elif src.part == "docstrings":
        items = python_docstrings(src.min_chars)
    else:
        items = python_distributions(src.min_chars, split)
    docs = []
    for key, text in items:
        docs.append(raw_doc(name, src.role, f"python:{src.part}/{key}", text, "text/plain"))
        if src.max_docs and len(docs) >= src.max_docs:
            break
    return docs


# ------------------------------------------------------- docstrings and docs of the installed environment
BUNDLED_DOC_SUFFIXES = {".md", ".rst"}
README_RE = re.compile(r"(^|/)(README|CHANGES|CHANGELOG|HISTORY)[^/]*\.txt$", re.I)


def bundled_doc(rel: str) -> bool:
    """A doc a distribution ships as a file: Markdown or reST, or a README/changelog in plain text
    (other .txt files are mostly data: word lists, tables); licence files are `dist_docs`' text."""
    suffix = Path(rel).suffix.lower()
    return (suffix in BUNDLED_DOC_SUFFIXES or bool(README_RE.search(rel))) and not LICENSE_RE.search(rel)


def normalize_dist_name(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): case and runs of -_. ignored."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed_file(rel: str) -> bool:
    """Whether a RECORD entry is a file inside the environment's package folders (not a script in
    bin/, not the metadata folder, not bytecode)."""
    parts = rel.split("/")
    return not (
        rel.startswith("../")
        or parts[0].endswith((".dist-info", ".egg-info"))
        or "__pycache__" in parts
        or rel.endswith((".pyc", ".pyo"))
    )


def code_docstrings(
    source: bytes, module: str, filename: str = "<unknown>"
) -> Iterator[tuple[int, str, str]]:
    """(line, qualified name, docstring) of a module's, classes' and functions' docstrings, nested
    definitions included, in source order; read with ``ast``, nothing is imported."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences in old code are SyntaxWarnings
        try:
            tree = ast.parse(source, filename=filename)
        except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError, MemoryError):
            return
    doc = ast.get_docstring(tree, clean=True)
    if doc:
        yield 1, module, doc

    def visit(body: list[ast.stmt], prefix: str) -> Iterator[tuple[int, str, str]]:
        # definitions sit in statement lists only (bodies of defs, if/for/while/with/try, match cases)
        for st in body:
            if isinstance(st, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                qual = f"{prefix}.{st.name}"
                d = ast.get_docstring(st, clean=True)
                if d:
                    yield st.lineno, qual, d
                yield from visit(st.body, qual)
                continue
            for field in ("body", "orelse", "finalbody"):
                inner = getattr(st, field, None)
                if isinstance(inner, list):
                    yield from visit(inner, prefix)
            for part in [*getattr(st, "handlers", []), *getattr(st, "cases", [])]:
                yield from visit(part.body, prefix)

    try:
        yield from visit(tree.body, module)
    except RecursionError:
        return


def env_documents(src: PyEnvDocsSource, path: list[str] | None = None) -> Iterator[tuple[str, str, str]]:
    """(distribution, key, text) of every docstring of ``src.min_chars`` or more in the chosen
    installed distributions, and of the docs they bundle as files, in a fixed order: distributions
    by name, files by path, docstrings in source order. Copies stay copies (dedup's job)."""
    wanted = {normalize_dist_name(d) for d in src.distributions}
    excluded = {normalize_dist_name(d) for d in src.exclude}
    for dname, dist in installed_distributions(path):
        norm = normalize_dist_name(dname)
        if (wanted and norm not in wanted) or norm in excluded:
            continue
        files = sorted({str(f) for f in dist.files or [] if _installed_file(str(f))})
        taken = 0
        for rel in files:
            suffix = Path(rel).suffix.lower()
            is_doc = src.bundled_docs and bundled_doc(rel)
            if suffix != ".py" and not is_doc:
                continue
            full = Path(dist.locate_file(rel))
            try:
                if not full.is_file() or full.stat().st_size > src.max_file_bytes:
                    continue
                data = full.read_bytes()
            except OSError:
                continue
            if suffix == ".py":
                if b'"""' not in data and b"'''" not in data and src.min_chars >= 80:
                    continue  # no triple quotes: no docstring this long (a cheap test before parsing)
                module = rel[:-3].replace("/", ".").removesuffix(".__init__")
                items = (
                    (f"{rel}:{line}:{qual}", doc)
                    for line, qual, doc in code_docstrings(data, module, rel)
                    if len(doc) >= src.min_chars
                )
            else:
                text = data.decode("utf-8", errors="replace")
                items = iter([(rel, text)] if len(text.strip()) >= src.min_chars else [])
            for key, text in items:
                yield norm, key, text
                taken += 1
                if src.max_per_distribution and taken >= src.max_per_distribution:
                    break
            if src.max_per_distribution and taken >= src.max_per_distribution:
                break


def read_py_env_docs_source(name: str, src: PyEnvDocsSource, path: list[str] | None = None) -> list[dict]:
    """The environment's docstrings and bundled docs as reference documents, within the source's
    caps (``max_docs``, ``max_bytes``): the same environment gives the same documents."""
    docs: list[dict] = []
    nbytes = 0
    for dist, key, text in env_documents(src, path):
        size = len(text.encode("utf-8", "surrogatepass"))
        if src.max_bytes and nbytes + size > src.max_bytes:
            break
        nbytes += size
        docs.append(raw_doc(name, src.role, f"pyenv:{dist}/{key}", text, "text/plain"))
        if src.max_docs and len(docs) >= src.max_docs:
            break
    return docs


def _record_files(dist: Any) -> list[str]:
    """The paths a distribution's RECORD lists, read from disk each time (some libraries, Dask among
    them, cache `importlib.metadata` lookups for the life of the process)."""
    import csv

    base = getattr(dist, "_path", None)
    record = Path(base) / "RECORD" if base is not None else None
    if record is not None and record.is_file():
        try:
            return [row[0] for row in csv.reader(record.read_text(encoding="utf-8").splitlines()) if row]
        except (OSError, UnicodeDecodeError, csv.Error):
            pass
    return [str(f) for f in dist.files or []]


def env_manifest(path: list[str] | None = None) -> dict[str, Any]:
    """What the embedded sources read from this machine, as one hash: the Python version (the
    standard library's docs) and each installed distribution's name, version and file list. Two
    environments with the same hash give the embedded sources the same text."""
    import platform

    lines = [f"python {platform.python_implementation()} {platform.python_version()}"]
    for dname, dist in installed_distributions(path):
        files = sorted(f for f in _record_files(dist) if not f.endswith((".pyc", ".pyo")))
        listing = hashlib.sha256("\n".join(files).encode("utf-8", "surrogatepass")).hexdigest()
        lines.append(f"{normalize_dist_name(dname)}=={dist.metadata.get('Version') or ''} {listing}")
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    return {
        "manifest": digest,
        # the first 48 bits as a number: headline metrics are numbers, and a float holds this exactly
        "manifest_id": int(digest[:12], 16),
        "distributions": len(lines) - 1,
        "python": platform.python_version(),
    }


def read_source(
    name: str, src: Any, root: Path, split: DistSplit | None = None
) -> tuple[list[dict], list[dict]]:
    """Documents and fetch log for one configured source; ``split`` (crawl.dist_split) deals the
    installed distributions between the embedded web and the reference source."""
    if isinstance(src, HttpSource):
        return read_http_source(name, src)
    if isinstance(src, PydocSource):
        return read_pydoc_source(name, src, split)
    if isinstance(src, WarcSource):
        return read_warc_source(name, src, root), []
    if isinstance(src, FilesSource):
        return read_files_source(name, src, root), []
    if isinstance(src, HfSource):
        return read_hf_source(name, src, root), []
    if isinstance(src, PythonDocsSource):
        return read_python_docs_source(name, src, split), []
    if isinstance(src, PyEnvDocsSource):
        return read_py_env_docs_source(name, src), []
    raise LineageError(f"crawl.sources.{name}.kind: unknown kind {getattr(src, 'kind', '?')!r}")
