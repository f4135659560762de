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
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit, urlunsplit
from urllib.robotparser import RobotFileParser

import httpx
import lxml.etree
import lxml.html

from pipeline.config import CrawlOptions
from pipeline.errors import LineageError

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"http": 80, "https": 443}
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
MAX_BAD_CHAR_FRACTION = 0.01  # more U+FFFD than this after decoding: the page is not text we trust
_CHARSET_RE = re.compile(r"charset\s*=\s*[\"']?\s*([\w.:-]+)", re.IGNORECASE)
_META_CHARSET_RE = re.compile(rb"<meta[^>]*?charset\s*=\s*[\"']?\s*([\w.:-]+)", re.IGNORECASE)


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
    return hop.error in ("timeout", "connect") or hop.status == 429 or (hop.status or 0) >= 500


class _Crawler:
    def __init__(self, opts: CrawlOptions, in_scope: Callable[[str], bool], client: httpx.AsyncClient):
        self.opts, self.in_scope, self.client = opts, in_scope, client
        self.exclude = [re.compile(p) for p in opts.exclude]
        self.content_types = {t.lower() for t in opts.content_types}
        self.hosts: dict[str, _Host] = {}
        self.order: dict[str, int] = {}  # every URL ever queued or redirected to -> discovery number
        self.log: list[Fetch] = []
        self.queue: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        self.global_sem = asyncio.Semaphore(opts.concurrency)
        self.budget = asyncio.Condition()
        self.responses = 0  # fetches that got an HTTP response: what max_pages counts
        self.pending = 0  # fetches started but not finished

    async def run(self, seeds: list[str], headers_only_log: bool) -> list[Fetch]:
        self.headers_only_log = headers_only_log
        for seed in seeds:
            self._enqueue(seed, 0)
        # more workers than request slots, so one slow or paced host does not idle the whole crawl
        workers = [asyncio.create_task(self._worker()) for _ in range(2 * self.opts.concurrency)]
        try:
            await self.queue.join()
        finally:
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

    def _enqueue(self, url: str, depth: int) -> None:
        if self._claim(url):
            self.queue.put_nowait((url, depth))

    def _excluded(self, url: str) -> bool:
        return any(p.search(url) for p in self.exclude)

    async def _worker(self) -> None:
        while True:
            url, depth = await self.queue.get()
            try:
                await self._visit(url, depth)
            except Exception as e:  # a bug must not hang queue.join(); keep it visible in the log
                log.exception("crawl of %s failed", url)
                self.log.append(_blank(url, depth, f"internal_{type(e).__name__}"))
            finally:
                self.queue.task_done()

    async def _visit(self, url: str, depth: int) -> None:
        if self.responses >= self.opts.max_pages:
            return  # the crawl is over: what is still queued is dropped unattempted and unlogged
        if not await self._allowed(url):
            self.log.append(_blank(url, depth, "robots"))
            return
        if not await self._reserve():
            return
        try:
            rec = await self._fetch(url, depth)
        except BaseException:
            await self._release(got_response=False)
            raise
        await self._release(got_response=rec.status is not None)
        self.log.append(rec)
        if rec.error is None and rec.content_type in HTML_TYPES and depth < self.opts.max_depth:
            for link in extract_links(rec.content or "", rec.final_url):
                if self.responses < self.opts.max_pages and self.in_scope(link) and not self._excluded(link):
                    self._enqueue(link, depth + 1)
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
    async def _fetch(self, url: str, depth: int) -> Fetch:
        """Fetch ``url``, following redirects by hand so each hop is checked for loops, scope and robots."""
        rec = _blank(url, depth, None)
        t0 = time.monotonic()
        chain, current = [url], url
        for _ in range(self.opts.max_redirects + 1):
            hop = await self._with_retries(current)
            rec.final_url, rec.status, rec.content_type = current, hop.status, hop.content_type
            rec.nbytes = hop.nbytes
            if hop.location is None:
                rec.error = hop.error
                if hop.error is None:
                    rec.content = decode_body(hop.body or b"", hop.charset)
                    rec.error = None if rec.content is not None else "decode"
                break
            target, rec.error = await self._check_redirect(hop.location, current, chain)
            if rec.error:
                rec.final_url = target or current
                break
            chain.append(target)
            current = target
        else:
            rec.error = "too_many_redirects"
        rec.fetch_s = time.monotonic() - t0
        return rec

    async def _check_redirect(self, location: str, current: str, chain: list[str]) -> _Verdict:
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
        if not await self._allowed(target):
            return target, "robots"
        return target, None

    async def _with_retries(self, url: str, *, follow: bool = False, check_type: bool = True) -> _Hop:
        """One request, repeated with exponential backoff on timeouts, network errors, 5xx and 429."""
        hop = _Hop()
        for attempt in range(self.opts.retries + 1):
            if attempt:
                await asyncio.sleep(self.opts.backoff_s * 2 ** (attempt - 1))
            try:
                hop = await self._request(url, follow=follow, check_type=check_type)
            except (httpx.TimeoutException, TimeoutError):
                hop = _Hop(error="timeout")
            except httpx.RequestError:  # refused, reset, protocol errors, bad content-encoding
                hop = _Hop(error="connect")
            if not _retryable(hop):
                break
        return hop

    async def _request(self, url: str, *, follow: bool, check_type: bool) -> _Hop:
        async with (
            self._slot(self._host(url)),
            asyncio.timeout(self.opts.timeout_s),  # a whole-request limit: httpx's is per read
            self.client.stream("GET", url, follow_redirects=follow) as resp,
        ):
            return await self._read(resp, check_type)

    async def _read(self, resp: httpx.Response, check_type: bool) -> _Hop:
        """Look at status and headers first; stream the body only for a wanted page, up to max_bytes."""
        media, charset = _parse_content_type(resp.headers.get("content-type", ""))
        hop = _Hop(status=resp.status_code, content_type=media, charset=charset)
        if resp.is_redirect:  # 301/302/303/307/308 with a Location (never true once httpx followed them)
            hop.location = resp.headers["location"]
            return hop
        if resp.status_code >= 300:
            hop.error = f"http_{resp.status_code}"
            return hop
        if check_type and media not in self.content_types:
            hop.error = "content_type"
            return hop
        declared = resp.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.opts.max_bytes:
            hop.error = "too_large"
            return hop
        body = bytearray()
        async for chunk in resp.aiter_bytes():
            body += chunk
            hop.nbytes = len(body)
            if len(body) > self.opts.max_bytes:
                hop.error = "too_large"
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

    async def _allowed(self, url: str) -> bool:
        if not self.opts.respect_robots:
            return True
        host = self._host(url)
        async with host.robots_lock:  # the first URL of a host loads robots.txt; the rest wait for it
            if host.robots is None:
                host.robots = await self._load_robots(host.origin)
                host.interval = max(host.interval, _robots_delay(host.robots, self.opts.user_agent))
                # a Crawl-delay also separates the first page from the robots.txt request
                host.next_start = max(host.next_start, asyncio.get_running_loop().time() + host.interval)
        return host.robots.can_fetch(self.opts.user_agent, url)

    async def _load_robots(self, origin: str) -> RobotFileParser:
        """Rules for one origin; see the module docstring for what each failure means."""
        rules = RobotFileParser(origin + "/robots.txt")
        hop = await self._with_retries(origin + "/robots.txt", follow=True, check_type=False)
        if hop.status is not None and 200 <= hop.status < 300 and hop.body is not None:
            rules.parse(hop.body.decode("utf-8", errors="replace").splitlines())
        elif hop.status is not None and hop.status >= 500:
            rules.disallow_all = True
        else:  # 4xx, too large, or no answer at all
            rules.allow_all = True
        return rules


def _robots_delay(rules: RobotFileParser, agent: str) -> float:
    """Seconds between requests asked for by Crawl-delay or Request-rate (0 when neither is set)."""
    delay = float(rules.crawl_delay(agent) or 0)
    rate = rules.request_rate(agent)
    if rate and rate.requests:
        delay = max(delay, rate.seconds / rate.requests)
    return delay


def _blank(url: str, depth: int, error: str | None) -> Fetch:
    return Fetch(url=url, final_url=url, status=None, content_type="", content=None, fetched_at=time.time(),
                 fetch_s=0.0, depth=depth, nbytes=0, error=error)  # fmt: skip


# ------------------------------------------------------------------------------------- entry point
async def _crawl_async(
    seeds: list[str], opts: CrawlOptions, in_scope: Callable[[str], bool], headers_only_log: bool
) -> list[Fetch]:
    limits = httpx.Limits(max_connections=opts.concurrency + 1, max_keepalive_connections=opts.concurrency)
    async with httpx.AsyncClient(
        headers={"User-Agent": opts.user_agent},
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
