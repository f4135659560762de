"""A small polite web crawler: BFS from seeds, robots.txt, per-host pacing, bounded everything.

The crawl returns its *fetch log*: one :class:`Fetch` for every URL it attempted, kept or not, so a
stage can report why pages were dropped. Kept pages are the records whose ``error`` is None.

Behaviour worth knowing (all limits come from :class:`~pipeline.config.CrawlOptions`):

* Seeds are always attempted (robots.txt still applies); ``in_scope`` and ``exclude`` filter the
  links found on pages and every redirect hop.
* robots.txt is fetched once per origin with the crawl's own client (retried like a page).
  2xx: parsed; any 4xx: allow all (RFC 9309); a final 5xx: disallow all (RFC 9309: the server
  says it is in trouble); no answer at all (timeout, refused): allow all, so each page then reports
  its own ``timeout`` / ``connect`` error instead of a misleading ``robots``.
* ``max_pages`` counts fetches that got an HTTP response. Slots are reserved before a request
  starts, so concurrency never overshoots the limit.
* The frontier is a FIFO queue (BFS); with concurrency a page's depth can exceed its shortest
  distance when a deeper page finishes first, which only makes ``max_depth`` stricter.
* The log is returned in discovery order, whatever order the requests finished in.
* Besides the codes listed on :class:`Fetch`, a redirect can end in ``duplicate`` (its target is
  fetched under its own name), ``excluded`` or ``bad_redirect`` (a Location that is not http(s)).
* Every request (seed, link, redirect hop, robots.txt) is resolved and its addresses checked by
  :func:`address_allowed` before it is sent, and it connects to the checked address (no DNS rebinding).
  A refusal is logged as its reason (``link_local_address``, ``private_address``, ...).
* Bodies are decompressed here in bounded steps, so ``max_bytes`` counts decoded bytes and a gzip
  bomb stops at the cap (``too_large``); a body cut inside its gzip stream is ``truncated``. With
  ``oversize: truncate`` a page past the cap is kept instead, cut at ``max_bytes`` (its record says
  ``truncated=True``; nothing past the cap is read).
* A body that decodes to nothing (``empty``) or to control bytes (``binary``) is no document.
* ``Retry-After`` on 429/503 holds back the host for that long, up to ``max_retry_after_s`` (longer:
  no retry). A fractional robots.txt ``Crawl-delay`` is honoured.
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import email.utils
import io
import ipaddress
import logging
import re
import socket
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC
from urllib.parse import urljoin, urlsplit, urlunsplit
from urllib.robotparser import RobotFileParser

import httpx
import lxml.etree
import lxml.html

from pipeline.config import CrawlOptions
from pipeline.errors import LineageError
from pipeline.progress import Progress

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"http": 80, "https": 443}
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
MAX_BAD_CHAR_FRACTION = 0.01  # more U+FFFD than this after decoding: the page is not text we trust
_CHARSET_RE = re.compile(r"charset\s*=\s*[\"']?\s*([\w.:-]+)", re.IGNORECASE)
_META_CHARSET_RE = re.compile(rb"<meta[^>]*?charset\s*=\s*[\"']?\s*([\w.:-]+)", re.IGNORECASE)
_CONTROL_RE = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")  # C0 controls other than \t \n \v \f \r, and DEL
MAX_CONTROL_FRACTION = 0.01  # more control characters than this: bytes labelled as text, not text
INFLATE_STEP = 64 * 1024  # most bytes one decompression step may produce
ACCEPT_ENCODING = "gzip, deflate"  # what Inflater decodes; never let the server pick br or zstd
ROBOTS_MAX_BYTES = 512 * 1024  # Google's limit; rules past it are ignored


@dataclass
class Fetch:
    """One attempted URL: what was asked, what came back, and why it was dropped (``error``)."""

    url: str
    final_url: str
    status: int | None
    content_type: str
    content: str | None
    fetched_at: float
    fetch_s: float
    depth: int
    nbytes: int
    error: str | None
    truncated: bool = False  # cut at max_bytes (oversize: truncate)


# ------------------------------------------------------------------------------------------ URLs
def normalize_url(url: str, base: str | None = None) -> str | None:
    """The one spelling of a URL used for dedup, scope and the log; None for non-http(s) or broken URLs.

    User info (``user:pass@``) is dropped so credentials never reach the fetch log.
    """
    url = re.sub(r"[\t\n\r]", "", url).strip()  # browsers ignore these anywhere in a URL
    if base:
        url = urljoin(base.strip(), url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a bad port or a broken IPv6 literal
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname  # urlsplit lowercases it
    if scheme not in DEFAULT_PORTS or not host:
        return None
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != DEFAULT_PORTS[scheme]:
        netloc = f"{netloc}:{port}"
    return urlunsplit((scheme, netloc, _remove_dot_segments(parts.path or "/"), parts.query, ""))


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 for an absolute path: ``/a/b/../c`` -> ``/a/c``; empty segments are kept."""
    segments = path.split("/")[1:]
    out: list[str] = []
    for seg in segments:
        if seg == "..":
            if out:
                out.pop()
        elif seg != ".":
            out.append(seg)
    if segments and segments[-1] in (".", ".."):
        out.append("")  # '/a/b/..' names the directory '/a/'
    return "/" + "/".join(out)


def _hostname(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def host_scope(seeds: list[str], allow_hosts: list[str] | None = None) -> Callable[[str], bool]:
    """A scope predicate: the seeds' exact hosts, or (given ``allow_hosts``) those hosts and subdomains.

    Ports are ignored: scope is about whose site it is, not which socket serves it.
    """
    if allow_hosts:
        allowed = {_hostname("//" + h.strip().lstrip("*.")) for h in allow_hosts} - {None, ""}

        def in_allowed(url: str) -> bool:
            host = _hostname(url)
            return bool(host) and any(host == h or host.endswith("." + h) for h in allowed)

        return in_allowed
    hosts = {_hostname(s.strip()) for s in seeds} - {None, ""}
    return lambda url: _hostname(url) in hosts


# ------------------------------------------------------------------------------------------ HTML
def extract_links(html: str, base_url: str) -> list[str]:
    """Normalised ``<a href>`` targets in document order, resolved against ``<base href>`` if present.

    Parsed from UTF-8 bytes so an XML encoding declaration in the text cannot make lxml refuse it.
    """
    try:
        parser = lxml.html.HTMLParser(encoding="utf-8")
        doc = lxml.html.fromstring(html.encode("utf-8", errors="replace"), parser=parser)
    except (lxml.etree.ParserError, ValueError):  # empty or hopeless documents have no links
        return []
    base = base_url
    for el in doc.iter("base"):
        if el.get("href"):
            base = normalize_url(el.get("href"), base_url) or base_url
            break
    links: list[str] = []
    for a in doc.iter("a"):
        href = a.get("href")
        url = normalize_url(href, base) if href else None
        if url:
            links.append(url)
    return links


def _parse_content_type(value: str) -> tuple[str, str | None]:
    """('text/html', 'iso-8859-1') from 'text/html; charset="ISO-8859-1"'."""
    media, _, params = value.partition(";")
    m = _CHARSET_RE.search(params)
    return media.strip().lower(), (m.group(1) if m else None)


def _codec(name: str | None) -> str | None:
    try:
        return codecs.lookup(name).name if name else None
    except LookupError:
        return None


def decode_body(body: bytes, charset: str | None) -> str | None:
    """Text from the header charset, else ``<meta charset>``, else UTF-8; None if mostly undecodable.

    A few bad bytes are replaced (real pages have them); past 1% the declared charset is a lie and
    the text would poison training data, so the page is dropped instead.
    """
    meta = _META_CHARSET_RE.search(body[:4096])
    enc = _codec(charset) or _codec(meta.group(1).decode("ascii") if meta else None) or "utf-8"
    if enc == "utf-8":
        enc = "utf-8-sig"  # drop a byte-order mark
    try:
        return body.decode(enc)
    except UnicodeDecodeError:
        text = body.decode(enc, errors="replace")
    return None if text.count("\ufffd") > MAX_BAD_CHAR_FRACTION * len(text) else text


def text_problem(text: str) -> str | None:
    """Why decoded text is no document (``empty`` or ``binary``), or None when it is one.

    A server can label anything text/html; an image or archive often decodes "successfully" (NUL and
    other C0 bytes are valid UTF-8), so the decoded text itself is checked, whatever its charset was.
    """
    if not text.strip():
        return "empty"
    if "\x00" in text or len(_CONTROL_RE.findall(text)) > MAX_CONTROL_FRACTION * len(text):
        return "binary"
    return None


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` asks for (delta-seconds or an HTTP-date); None if absent or unreadable."""
    value = (value or "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# ------------------------------------------------------------------------------------ addresses
def address_allowed(ip: str, seed_is_loopback: bool, allow_private: bool) -> tuple[bool, str | None]:
    """May the crawl connect to ``ip``? Returns (allowed, the reason it is not).

    A page or a redirect must not steer the crawler into the network it runs in (cloud metadata at
    169.254.169.254, admin ports on localhost, the intranet). Only global addresses are allowed, except
    that a crawl whose seed is itself on loopback (the embedded pydoc server, tests) may stay on loopback,
    and ``allow_private`` (intranet crawls) allows everything.
    """
    addr = ipaddress.ip_address(ip.split("%", 1)[0])  # drop an IPv6 zone id ('fe80::1%eth0')
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:  # ::ffff:127.0.0.1 is 127.0.0.1
        addr = addr.ipv4_mapped
    if allow_private:
        return True, None
    if addr.is_loopback:
        return (True, None) if seed_is_loopback else (False, "loopback_address")
    for attr in ("is_unspecified", "is_link_local", "is_multicast", "is_private", "is_reserved"):
        if getattr(addr, attr):
            return False, attr.removeprefix("is_") + "_address"
    if not addr.is_global:  # e.g. 100.64.0.0/10, carrier-grade NAT
        return False, "non_global_address"
    return True, None


def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (an IP literal as is). Raises OSError when it does not resolve."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or DEFAULT_PORTS.get(parts.scheme, 80)


def vet_addresses(
    addrs: list[str], seed_is_loopback: bool, allow_private: bool
) -> tuple[str | None, str | None]:
    """(the address to connect to, None) when every address is allowed, else (None, the first reason).

    All of them must pass: a name resolving to one public and one private address could be
    connected to either.
    """
    if not addrs:
        return None, "dns"
    for ip in addrs:
        ok, reason = address_allowed(ip, seed_is_loopback, allow_private)
        if not ok:
            return None, reason
    return addrs[0], None


def all_loopback(addrs: list[str]) -> bool:
    """True when a seed resolves to loopback only: such a crawl may stay on loopback."""
    return bool(addrs) and all(ipaddress.ip_address(a.split("%", 1)[0]).is_loopback for a in addrs)


def pinned_request(url: str, ip: str) -> dict[str, object]:
    """``build_request`` arguments that connect to the vetted ``ip`` while asking for ``url``'s host.

    Connecting to the address that was checked, instead of letting the HTTP stack resolve the name
    again, closes the DNS-rebinding gap between check and connect. The Host header and (for https)
    the TLS server name and certificate check keep the original host.
    """
    u = httpx.URL(url)
    extensions = {"sni_hostname": u.host} if u.scheme == "https" else {}
    return {"url": str(u.copy_with(host=ip)), "headers": {"Host": u.netloc.decode("ascii")},
            "extensions": extensions}  # fmt: skip


# ------------------------------------------------------------------------------------ decompression
class Inflater:
    """Incremental decoding of a gzip / zlib stream (or identity) in steps of at most INFLATE_STEP bytes.

    zlib turns 64 KiB of zeros-gzip into 64 MiB in one call, and httpx decodes a whole network chunk at
    once, so a cap counted on its output is checked too late. Bounded steps let the caller stop at
    its cap. Concatenated gzip members (a .warc.gz is one member per record) are decoded in turn;
    ``member_bytes`` counts the current member's output and ``complete()`` says whether the input
    ended between members rather than inside one (a cut file or download).
    """

    def __init__(self, encoding: str) -> None:
        enc = encoding.strip().lower()
        wbits = {"": None, "identity": None, "gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS,
                 "deflate": zlib.MAX_WBITS}  # fmt: skip
        if enc not in wbits:
            raise ValueError(f"unsupported content encoding {encoding!r}")
        self.wbits = wbits[enc]
        self.member_bytes = 0
        self._d: zlib._Decompress | None = None
        self._started = False  # has the deflate stream produced or consumed anything yet

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Decoded pieces of ``data``; consume them all before feeding more. Raises zlib.error on bad data."""
        if self.wbits is None:
            for i in range(0, len(data), INFLATE_STEP):
                yield data[i : i + INFLATE_STEP]
            return
        pending = data
        while pending or self._d is not None:
            if self._d is None:
                self._d, self.member_bytes = zlib.decompressobj(self.wbits), 0
            out = self._decompress(pending)
            if out:
                self.member_bytes += len(out)
                yield out
            if self._d.eof:
                pending, self._d = self._d.unused_data, None
                if not pending:
                    return
            else:
                pending = self._d.unconsumed_tail
                if not pending and len(out) < INFLATE_STEP:
                    return  # all input consumed and nothing buffered: wait for more

    def _decompress(self, data: bytes) -> bytes:
        """One bounded step; HTTP 'deflate' is sometimes raw deflate without the zlib header."""
        assert self._d is not None
        try:
            out = self._d.decompress(data, INFLATE_STEP)
        except zlib.error:
            if self.wbits != zlib.MAX_WBITS or self._started:
                raise
            self.wbits, self._d = -zlib.MAX_WBITS, zlib.decompressobj(-zlib.MAX_WBITS)
            out = self._d.decompress(data, INFLATE_STEP)
        self._started = True
        return out

    def complete(self) -> bool:
        """True when the input so far ends on a stream boundary (never inside a gzip member)."""
        return self._d is None


# ---------------------------------------------------------------------------------------- crawler
@dataclass
class _Hop:
    """The outcome of one HTTP request (one redirect hop, one retry attempt)."""

    status: int | None = None
    content_type: str = ""
    charset: str | None = None
    location: str | None = None
    body: bytes | None = None
    nbytes: int = 0
    error: str | None = None
    retry_after: float | None = None  # seconds a 429/503 asked us to wait
    truncated: bool = False


@dataclass
class _Host:
    """Per-origin politeness state: concurrency, pacing, and the robots.txt rules."""

    origin: str
    sem: asyncio.Semaphore
    interval: float
    pace: asyncio.Lock = field(default_factory=asyncio.Lock)
    next_start: float = 0.0
    robots: RobotFileParser | None = None
    robots_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


_Verdict = tuple[str | None, str | None]  # (normalised redirect target, reason to stop there)


def _retryable(hop: _Hop) -> bool:
    return hop.error in ("timeout", "connect", "dns") or hop.status == 429 or (hop.status or 0) >= 500


class _Crawler:
    def __init__(self, opts: CrawlOptions, in_scope: Callable[[str], bool], client: httpx.AsyncClient):
        self.opts, self.in_scope, self.client = opts, in_scope, client
        self.exclude = [re.compile(p) for p in opts.exclude]
        self.content_types = {t.lower() for t in opts.content_types}
        self.hosts: dict[str, _Host] = {}
        self.order: dict[str, int] = {}  # every URL ever queued or redirected to -> discovery number
        self.log: list[Fetch] = []
        # (url, depth, whether its seed is on loopback: see address_allowed)
        self.queue: asyncio.Queue[tuple[str, int, bool]] = asyncio.Queue()
        self.global_sem = asyncio.Semaphore(opts.concurrency)
        self.budget = asyncio.Condition()
        self.responses = 0  # fetches that got an HTTP response: what max_pages counts
        self.pending = 0  # fetches started but not finished

    async def run(self, seeds: list[str], headers_only_log: bool) -> list[Fetch]:
        self.headers_only_log = headers_only_log
        for seed in seeds:
            self._enqueue(seed, 0, await self._seed_is_loopback(seed))
        # more workers than request slots, so one slow or paced host does not idle the whole crawl
        workers = [asyncio.create_task(self._worker()) for _ in range(2 * self.opts.concurrency)]
        host = urlsplit(seeds[0]).netloc if seeds else ""
        self.bar = Progress(self.opts.max_pages, f"crawl {host}", "pages")
        try:
            await self.queue.join()
        finally:
            self.bar.close()
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        return sorted(self.log, key=lambda f: self.order[f.url])

    def _claim(self, url: str) -> bool:
        """Mark a URL as ours; False when it was already seen (so nothing is ever fetched twice)."""
        if url in self.order:
            return False
        self.order[url] = len(self.order)
        return True

    def _enqueue(self, url: str, depth: int, loopback: bool) -> None:
        if self._claim(url):
            self.queue.put_nowait((url, depth, loopback))

    async def _seed_is_loopback(self, seed: str) -> bool:
        """Whether the seed resolves to loopback only (False when it does not resolve: its fetch says so)."""
        try:
            return all_loopback(await asyncio.to_thread(resolve_host, *_host_port(seed)))
        except (OSError, UnicodeError):
            return False

    def _excluded(self, url: str) -> bool:
        return any(p.search(url) for p in self.exclude)

    async def _worker(self) -> None:
        while True:
            url, depth, loopback = await self.queue.get()
            try:
                await self._visit(url, depth, loopback)
            except Exception as e:  # a bug must not hang queue.join(); keep it visible in the log
                log.exception("crawl of %s failed", url)
                self.log.append(_blank(url, depth, f"internal_{type(e).__name__}"))
            finally:
                self.queue.task_done()

    async def _visit(self, url: str, depth: int, loopback: bool) -> None:
        if self.responses >= self.opts.max_pages:
            return  # the crawl is over: what is still queued is dropped unattempted and unlogged
        if not await self._allowed(url, loopback):
            self.log.append(_blank(url, depth, "robots"))
            return
        if not await self._reserve():
            return
        try:
            rec = await self._fetch(url, depth, loopback)
        except BaseException:
            await self._release(got_response=False)
            raise
        await self._release(got_response=rec.status is not None)
        if rec.status is not None:
            self.bar.update(1)
        self.log.append(rec)
        if rec.error is None and rec.content_type in HTML_TYPES and depth < self.opts.max_depth:
            for link in extract_links(rec.content or "", rec.final_url):
                if self.responses < self.opts.max_pages and self.in_scope(link) and not self._excluded(link):
                    self._enqueue(link, depth + 1, loopback)
        if self.headers_only_log:
            rec.content = None

    async def _reserve(self) -> bool:
        """Take one of the max_pages slots, waiting while in-flight fetches might still hand one back."""
        async with self.budget:
            while self.responses + self.pending >= self.opts.max_pages:
                if self.pending == 0:
                    return False
                await self.budget.wait()
            self.pending += 1
            return True

    async def _release(self, got_response: bool) -> None:
        async with self.budget:
            self.pending -= 1
            self.responses += got_response
            self.budget.notify_all()

    # -------------------------------------------------------------------------------- one fetch
    async def _fetch(self, url: str, depth: int, loopback: bool) -> Fetch:
        """Fetch ``url``, following redirects by hand so each hop is checked for loops, scope, robots and
        (before any request is sent) its addresses."""
        rec = _blank(url, depth, None)
        t0 = time.monotonic()
        chain, current = [url], url
        for _ in range(self.opts.max_redirects + 1):
            hop = await self._with_retries(current, loopback)
            rec.final_url, rec.status, rec.content_type = current, hop.status, hop.content_type
            rec.nbytes, rec.truncated = hop.nbytes, hop.truncated
            if hop.location is None:
                rec.error = hop.error
                if hop.error is None:
                    rec.content = decode_body(hop.body or b"", hop.charset)
                    rec.error = "decode" if rec.content is None else text_problem(rec.content)
                    if rec.error:
                        rec.content = None
                break
            target, rec.error = await self._check_redirect(hop.location, current, chain, loopback)
            if rec.error:
                rec.final_url = target or current
                break
            chain.append(target)
            current = target
        else:
            rec.error = "too_many_redirects"
        rec.fetch_s = time.monotonic() - t0
        return rec

    async def _check_redirect(
        self, location: str, current: str, chain: list[str], loopback: bool
    ) -> _Verdict:
        """The normalised redirect target and the reason to stop there (None: follow it)."""
        target = normalize_url(location, current)
        if target is None:
            return None, "bad_redirect"
        if target in chain:
            return target, "redirect_loop"
        if not self.in_scope(target):
            return target, "out_of_scope_redirect"
        if self._excluded(target):
            return target, "excluded"
        if not self._claim(target):
            return target, "duplicate"  # fetched (or queued) under its own name
        if not await self._allowed(target, loopback):
            return target, "robots"
        return target, None

    async def _with_retries(self, url: str, loopback: bool, *, check_type: bool = True) -> _Hop:
        """One request, repeated with exponential backoff on timeouts, network errors, 5xx and 429.

        A ``Retry-After`` on the answer also holds back every request to that host; one longer than
        ``max_retry_after_s`` ends the retries (the server asked for more patience than we have).
        """
        hop = _Hop()
        for attempt in range(self.opts.retries + 1):
            if attempt:
                await asyncio.sleep(self.opts.backoff_s * 2 ** (attempt - 1))
            try:
                hop = await self._request(url, loopback, check_type=check_type)
            except (httpx.TimeoutException, TimeoutError):
                hop = _Hop(error="timeout")
            except httpx.RequestError:  # refused, reset, protocol errors
                hop = _Hop(error="connect")
            if not _retryable(hop):
                break
            if hop.retry_after is not None:
                if hop.retry_after > self.opts.max_retry_after_s:
                    break
                host = self._host(url)
                host.next_start = max(host.next_start, asyncio.get_running_loop().time() + hop.retry_after)
        return hop

    async def _vet(self, url: str, loopback: bool) -> tuple[str | None, str | None]:
        """(address to connect to, None), or (None, why not): resolved and checked before any request."""
        try:
            async with asyncio.timeout(self.opts.timeout_s):
                addrs = await asyncio.to_thread(resolve_host, *_host_port(url))
        except (OSError, UnicodeError):
            return None, "dns"
        return vet_addresses(addrs, loopback, self.opts.allow_private)

    async def _request(self, url: str, loopback: bool, *, check_type: bool) -> _Hop:
        ip, refused = await self._vet(url, loopback)
        if refused:
            return _Hop(error=refused)
        assert ip is not None
        request = self.client.build_request("GET", **pinned_request(url, ip))  # type: ignore[arg-type]
        async with (
            self._slot(self._host(url)),
            asyncio.timeout(self.opts.timeout_s),  # a whole-request limit: httpx's is per read
        ):
            resp = await self.client.send(request, stream=True)
            try:
                return await self._read(resp, check_type)
            finally:
                await resp.aclose()

    async def _read(self, resp: httpx.Response, check_type: bool) -> _Hop:
        """Look at status and headers first; stream the body only for a wanted page, up to max_bytes."""
        media, charset = _parse_content_type(resp.headers.get("content-type", ""))
        hop = _Hop(status=resp.status_code, content_type=media, charset=charset)
        if resp.is_redirect:  # 301/302/303/307/308 with a Location
            hop.location = resp.headers["location"]
            return hop
        if resp.status_code >= 300:
            hop.error = f"http_{resp.status_code}"
            if resp.status_code in (429, 503):
                hop.retry_after = retry_after_s(resp.headers.get("retry-after"))
            return hop
        if check_type and media not in self.content_types:
            hop.error = "content_type"
            return hop
        declared = resp.headers.get("content-length", "")
        truncate = self.opts.oversize == "truncate"
        if declared.isdigit() and int(declared) > self.opts.max_bytes and not truncate:
            hop.error = "too_large"
            return hop
        return await self._read_body(resp, hop)

    async def _read_body(self, resp: httpx.Response, hop: _Hop) -> _Hop:
        """The body, decompressed here in bounded steps so max_bytes counts decoded bytes and a gzip bomb
        is cut at the cap instead of being inflated whole first."""
        try:
            inflater = Inflater(resp.headers.get("content-encoding", ""))
        except ValueError:
            hop.error = "content_encoding"
            return hop
        body = bytearray()
        try:
            async for raw in resp.aiter_raw():
                for piece in inflater.feed(raw):
                    body += piece
                    hop.nbytes = len(body)
                    if len(body) > self.opts.max_bytes:
                        if self.opts.oversize == "truncate":
                            hop.body, hop.nbytes, hop.truncated = (
                                bytes(body[: self.opts.max_bytes]),
                                self.opts.max_bytes,
                                True,
                            )
                            return hop
                        hop.error = "too_large"
                        return hop
        except zlib.error:
            hop.error = "content_encoding"
            return hop
        if not inflater.complete():
            hop.error = "truncated"
            return hop
        hop.body = bytes(body)
        return hop

    # ------------------------------------------------------------------------ hosts and robots
    def _host(self, url: str) -> _Host:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        if origin not in self.hosts:
            sem = asyncio.Semaphore(self.opts.per_host_concurrency)
            self.hosts[origin] = _Host(origin, sem, self.opts.rate_limit_s)
        return self.hosts[origin]

    @asynccontextmanager
    async def _slot(self, host: _Host) -> AsyncIterator[None]:
        """Hold a per-host and a global request slot, starting no sooner than the host's pacing allows."""
        async with host.sem:
            async with host.pace:
                loop = asyncio.get_running_loop()
                wait = host.next_start - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                host.next_start = loop.time() + host.interval
            async with self.global_sem:
                yield

    async def _allowed(self, url: str, loopback: bool) -> bool:
        if not self.opts.respect_robots:
            return True
        host = self._host(url)
        async with host.robots_lock:  # the first URL of a host loads robots.txt; the rest wait for it
            if host.robots is None:
                hop = await self._get_following(host.origin + "/robots.txt", loopback)
                host.robots, delay = robots_rules(host.origin, hop.status, hop.body, self.opts.user_agent)
                host.interval = max(host.interval, delay)
                # a Crawl-delay also separates the first page from the robots.txt request
                host.next_start = max(host.next_start, asyncio.get_running_loop().time() + host.interval)
        return host.robots.can_fetch(self.opts.user_agent, url)

    async def _get_following(self, url: str, loopback: bool) -> _Hop:
        """GET with redirects followed by hand (any host: robots.txt may live elsewhere), every hop vetted."""
        for _ in range(self.opts.max_redirects + 1):
            hop = await self._with_retries(url, loopback, check_type=False)
            if hop.location is None:
                return hop
            target = normalize_url(hop.location, url)
            if target is None:
                return _Hop(error="bad_redirect")
            url = target
        return _Hop(error="too_many_redirects")


def robots_rules(
    origin: str, status: int | None, body: bytes | None, agent: str
) -> tuple[RobotFileParser, float]:
    """Rules and the delay between requests for one origin; see the module docstring for each failure."""
    rules = RobotFileParser(origin + "/robots.txt")
    if status is not None and 200 <= status < 300 and body is not None:
        lines = body.decode("utf-8", errors="replace").splitlines()
        rules.parse(lines)
        return rules, _robots_delay(rules, lines, agent)
    if status is not None and status >= 500:
        rules.disallow_all = True
    else:  # 4xx, too large, or no answer at all
        rules.allow_all = True
    return rules, 0.0


def _robots_delay(rules: RobotFileParser, lines: list[str], agent: str) -> float:
    """Seconds between requests asked for by Crawl-delay or Request-rate (0 when neither is set)."""
    delay = crawl_delay(lines, agent) or 0.0
    rate = rules.request_rate(agent)
    if rate and rate.requests:
        delay = max(delay, rate.seconds / rate.requests)
    return delay


def crawl_delay(lines: list[str], agent: str) -> float | None:
    """The ``Crawl-delay`` of the group that applies to ``agent`` (else ``*``), fractions included.

    urllib.robotparser only reads whole numbers, so ``Crawl-delay: 0.5`` would silently mean no delay.
    Groups and agent matching follow robotparser: consecutive User-agent lines open a group, and a
    group applies when its token occurs in the agent's product name.
    """
    groups: list[tuple[list[str], float | None]] = []
    in_agents = False
    for raw in lines:
        key, _, value = raw.split("#", 1)[0].partition(":")
        key, value = key.strip().lower(), value.strip()
        if key == "user-agent":
            if not in_agents:
                groups.append(([], None))
            groups[-1][0].append(value.lower())
            in_agents = True
        elif key and groups:
            in_agents = False
            if key == "crawl-delay":
                groups[-1] = (groups[-1][0], _nonneg_float(value))
    product = agent.split("/")[0].lower()
    for tokens, delay in groups:
        if any(t != "*" and t and t in product for t in tokens):
            return delay
    return next((delay for tokens, delay in groups if "*" in tokens), None)


def _nonneg_float(value: str) -> float | None:
    try:
        f = float(value)
    except ValueError:
        return None
    return f if 0 <= f < float("inf") else None


def _blank(url: str, depth: int, error: str | None) -> Fetch:
    return Fetch(url=url, final_url=url, status=None, content_type="", content=None, fetched_at=time.time(),
                 fetch_s=0.0, depth=depth, nbytes=0, error=error)  # fmt: skip


# ------------------------------------------------------------------------------------- entry point
async def _crawl_async(
    seeds: list[str], opts: CrawlOptions, in_scope: Callable[[str], bool], headers_only_log: bool
) -> list[Fetch]:
    limits = httpx.Limits(max_connections=opts.concurrency + 1, max_keepalive_connections=opts.concurrency)
    async with httpx.AsyncClient(
        headers={"User-Agent": opts.user_agent, "Accept-Encoding": ACCEPT_ENCODING},
        timeout=opts.timeout_s,
        follow_redirects=False,
        max_redirects=opts.max_redirects,
        limits=limits,
    ) as client:
        return await _Crawler(opts, in_scope, client).run(seeds, headers_only_log)


def crawl(
    seeds: list[str], opts: CrawlOptions, in_scope: Callable[[str], bool], *, headers_only_log: bool = False
) -> list[Fetch]:
    """Crawl from ``seeds`` and return the fetch log (kept pages have ``error is None``).

    Synchronous on purpose: stages call it from plain functions and worker threads. When the calling
    thread already runs an event loop, the crawl gets its own loop in a helper thread.
    ``headers_only_log`` drops page text from the returned records (links are still followed), for
    callers that only want the log.
    """
    normalized = []
    for seed in seeds:
        url = normalize_url(seed)
        if url is None:
            raise LineageError(f"crawl seed {seed!r} is not an http(s) URL")
        normalized.append(url)
    coro = _crawl_async(normalized, opts, in_scope, headers_only_log)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


# --------------------------------------------------------------------------- one guarded download
class _Refused(Exception):
    """A guard said no (address, redirect): turned into one LineageError line by :func:`open_url`."""


class ResponseStream(io.RawIOBase):
    """A streaming HTTP body as a read-only file, decoded in bounded steps (see :class:`Inflater`).

    Nothing is held but the current step, so a reader such as warcio's ArchiveIterator walks a
    multi-gigabyte download record by record. The caller counts and caps what it reads.
    """

    def __init__(self, url: str, resp: httpx.Response, client: httpx.Client | None = None) -> None:
        super().__init__()
        self.url, self._resp, self._client = url, resp, client  # the client is closed with us when given
        self._inflater = Inflater(resp.headers.get("content-encoding", ""))
        self._raw = resp.iter_raw(INFLATE_STEP)
        self._pieces: Iterator[bytes] = iter(())
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            piece = self._next_piece()
            if piece is None:
                return 0
            self._buf = memoryview(piece)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def _next_piece(self) -> bytes | None:
        """The next decoded piece; None at a clean end. A cut or broken download is one LineageError."""
        try:
            while True:
                piece = next(self._pieces, None)
                if piece is not None:
                    return piece
                raw = next(self._raw, None)
                if raw is None:
                    if not self._inflater.complete():
                        raise LineageError(f"{self.url}: download cut short inside its Content-Encoding")
                    return None
                self._pieces = self._inflater.feed(raw)
        except httpx.HTTPError as e:  # includes a body shorter than its Content-Length
            raise LineageError(f"{self.url}: download failed: {type(e).__name__}: {e}") from None
        except zlib.error as e:
            raise LineageError(f"{self.url}: bad Content-Encoding: {e}") from None

    def close(self) -> None:
        if not self.closed:
            self._resp.close()
            if self._client is not None:
                self._client.close()
        super().close()


def open_url(
    url: str, *, user_agent: str, timeout_s: float, max_redirects: int, allow_private: bool,
    respect_robots: bool, what: str = "file",
) -> ResponseStream:  # fmt: skip
    """Stream one URL with the crawler's guards: every hop's addresses vetted before it is sent (and
    connected to as vetted), robots.txt, our user agent, redirects followed by hand. One LineageError
    line names the URL when anything refuses or fails."""
    client = httpx.Client(
        headers={"User-Agent": user_agent, "Accept-Encoding": ACCEPT_ENCODING},
        timeout=timeout_s,
        follow_redirects=False,
    )
    try:
        try:
            loopback = all_loopback(resolve_host(*_host_port(url)))
        except (OSError, UnicodeError) as e:
            raise LineageError(f"{url}: cannot fetch {what}: cannot resolve its host ({e})") from None
        guard = (client, loopback, allow_private, max_redirects)
        if respect_robots and not _robots_allow(url, user_agent, guard):
            raise LineageError(f"{url}: cannot fetch {what}: robots.txt disallows it for {user_agent!r}")
        resp = _follow(url, guard)
        if resp.status_code >= 300:
            resp.close()
            raise LineageError(f"{url}: cannot fetch {what}: HTTP {resp.status_code}")
        return ResponseStream(url, resp, client)
    except LineageError:
        client.close()
        raise
    except httpx.HTTPError as e:
        client.close()
        raise LineageError(f"{url}: cannot fetch {what}: {type(e).__name__}: {e}") from None
    except _Refused as e:
        client.close()
        raise LineageError(f"{url}: cannot fetch {what}: {e}") from None


_Guard = tuple[httpx.Client, bool, bool, int]  # client, seed is loopback, allow_private, max_redirects


def _follow(url: str, guard: _Guard) -> httpx.Response:
    """The streaming response at the end of ``url``'s redirects; each hop vetted before it is sent."""
    client, loopback, allow_private, max_redirects = guard
    chain = [url]
    for _ in range(max_redirects + 1):
        try:
            addrs = resolve_host(*_host_port(url))
        except (OSError, UnicodeError):
            addrs = []
        ip, refused = vet_addresses(addrs, loopback, allow_private)
        if refused:
            raise _Refused(f"refused to connect to {url}: {refused} (allow_private: true allows it)")
        request = client.build_request("GET", **pinned_request(url, ip))  # type: ignore[arg-type]
        resp = client.send(request, stream=True)
        if not resp.is_redirect:
            return resp
        resp.close()
        target = normalize_url(resp.headers["location"], url)
        if target is None or target in chain:
            raise _Refused(f"bad or looping redirect to {resp.headers['location']!r}")
        chain.append(target)
        url = target
    raise _Refused(f"more than {max_redirects} redirects")


def _robots_allow(url: str, agent: str, guard: _Guard) -> bool:
    """robots.txt of ``url``'s origin, fetched under the same guards; same failure rules as the crawler."""
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}"
    status, body = None, None
    try:
        resp = _follow(origin + "/robots.txt", guard)
        with ResponseStream(origin + "/robots.txt", resp) as stream:
            status = resp.status_code
            if 200 <= status < 300:
                body = _read_capped(stream, ROBOTS_MAX_BYTES)
    except (httpx.HTTPError, LineageError, _Refused):
        status, body = None, None  # no answer at all (or a refused hop): allow, like the crawler
    rules, _ = robots_rules(origin, status, body, agent)
    return rules.can_fetch(agent, url)


def _read_capped(stream: io.RawIOBase, cap: int) -> bytes | None:
    """At most ``cap`` bytes of ``stream``; None when it holds more."""
    data = bytearray()
    while chunk := stream.read(INFLATE_STEP):
        data += chunk
        if len(data) > cap:
            return None
    return bytes(data)
