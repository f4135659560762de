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
import concurrent.futures
import logging
import re
import time
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit
from urllib.robotparser import RobotFileParser

import httpx

from pipeline.config import CrawlOptions
from pipeline.errors import LineageError
from pipeline.progress import Progress
from pipeline.text import netguard
from pipeline.text.netguard import Inflater, _host_port, all_loopback, pinned_request
from pipeline.text.web import (
    ACCEPT_ENCODING,
    HTML_TYPES,
    _parse_content_type,
    decode_body,
    extract_links,
    normalize_url,
    retry_after_s,
    robots_rules,
    text_problem,
)

log = logging.getLogger(__name__)


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
            return all_loopback(await asyncio.to_thread(netguard.resolve_host, *_host_port(seed)))
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
                addrs = await asyncio.to_thread(netguard.resolve_host, *_host_port(url))
        except (OSError, UnicodeError):
            return None, "dns"
        return netguard.vet_addresses(addrs, loopback, self.opts.allow_private)

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
