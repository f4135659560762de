"""The crawler against a small local site served on 127.0.0.1 (no internet needed)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.config import CrawlOptions
from pipeline.errors import LineageError
from pipeline.text.crawl import Fetch, crawl
from pipeline.text.web import (
    crawl_delay,
    decode_body,
    extract_links,
    host_scope,
    normalize_url,
    retry_after_s,
    text_problem,
)

MAX_BYTES = 4096
BIG_CHUNKS = 4096  # /big.html offers 4 MiB
ROBOTS = "User-agent: *\nDisallow: /private/\n"


def html(body: str) -> bytes:
    return f"<html><head><title>t</title></head><body>{body}</body></html>".encode()


def links(*hrefs: str) -> bytes:
    return html("".join(f'<a href="{h}">{h}</a>' for h in hrefs))


@dataclass
class Site:
    """What the server saw: hits per path, and the most requests it ever had in flight at once."""

    base: str
    hits: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    inflight: int = 0
    max_inflight: int = 0
    robots: str = ROBOTS
    robots_status: int = 200

    def url(self, path: str) -> str:
        return self.base + path


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep pytest output quiet
        pass

    def do_GET(self) -> None:
        site = self.server.site  # type: ignore[attr-defined]
        with site.lock:
            site.hits[self.path] += 1
            site.inflight += 1
            site.max_inflight = max(site.max_inflight, site.inflight)
        self.counted = True
        try:
            self.route(site)
        finally:
            self.done(site)

    def done(self, site: Site) -> None:
        """Leave the in-flight count before the last bytes go out: once the client has the whole
        response it may start its next request before this thread gets to run again."""
        if self.counted:
            self.counted = False
            with site.lock:
                site.inflight -= 1

    def send(self, status: int, body: bytes = b"", ctype: str = "text/html; charset=utf-8",
             length: bool = True, headers: dict[str, str] | None = None) -> None:  # fmt: skip
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if length:
            self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if length:
            self.done(self.server.site)  # type: ignore[attr-defined]
        self.wfile.write(body)

    def redirect(self, to: str, status: int = 302) -> None:
        self.send(status, b"", headers={"Location": to})

    def route(self, site: Site) -> None:
        path = self.path
        if path == "/robots.txt":
            self.send(site.robots_status, site.robots.encode(), "text/plain")
        elif path == "/":
            self.send(200, links(
                "/redirect", "/private/secret.html", "/offsite.html", "/redirect-loop-a", "/404", "/500",
                "/image.png", "/big.html", "/latin1.html", "/meta-latin1.html", "/garbage.html", "/chain/0",
                "/dup-redirect", "/off-redirect", "/redirect-private", "/plain.txt",
                # the same pages spelled differently: must not be fetched again
                "/#top", "./", site.base + "/", site.base.upper() + "/404", "/404#x", "/a/../500",
                "mailto:someone@example.com", "javascript:void(0)",
            ))  # fmt: skip
        elif path == "/page1":
            self.send(200, links("/", "/page2"))
        elif path == "/page2":
            self.send(200, html("<p>page two</p>"))
        elif path.startswith("/private/"):
            self.send(200, html("<p>secret</p>"))
        elif path == "/offsite.html":
            self.send(200, links("http://other.invalid/", "https://OTHER.invalid/x"))
        elif path == "/redirect-loop-a":
            self.redirect("/redirect-loop-b")
        elif path == "/redirect-loop-b":
            self.redirect("/redirect-loop-a")
        elif path == "/redirect":
            self.redirect("/page1", 301)
        elif path == "/dup-redirect":
            self.redirect("/")
        elif path == "/off-redirect":
            self.redirect("http://other.invalid/landing")
        elif path == "/redirect-private":
            self.redirect("/private/target.html")
        elif path.startswith("/hops/"):
            n = int(path.rsplit("/", 1)[1])
            if n < 10:
                self.redirect(f"/hops/{n + 1}")
            else:
                self.send(200, html("<p>end</p>"))
        elif path == "/404":
            self.send(404, html("<p>nope</p>"))
        elif path == "/500":
            self.send(500, html("<p>boom</p>"))
        elif path == "/image.png":
            self.send(200, b"\x89PNG\r\n\x1a\n" + b"\0" * 100, "image/png")
        elif path == "/big.html":  # no Content-Length, sent in pieces: the crawler must stop reading
            self.send(200, b"", length=False)
            try:
                for _ in range(BIG_CHUNKS):
                    self.wfile.write(b"<p>" + b"x" * 1024 + b"</p>\n")
            except OSError:  # the crawler hung up, as it should
                pass
        elif path == "/big-declared.html":
            self.send(200, html("<p>" + "x" * (MAX_BYTES * 5) + "</p>"))
        elif path == "/latin1.html":
            self.send(200, "<html><body><p>café crème</p></body></html>".encode("latin-1"),
                      "text/html; charset=iso-8859-1")  # fmt: skip
        elif path == "/meta-latin1.html":
            body = '<html><head><meta charset="iso-8859-1"></head><body><p>déjà vu</p></body></html>'
            self.send(200, body.encode("latin-1"), "text/html")
        elif path == "/garbage.html":
            self.send(200, b"<html><body>" + bytes(range(128, 256)) * 8 + b"</body></html>")
        elif path == "/plain.txt":
            self.send(200, b"just text", "text/plain")
        elif path.startswith("/chain/"):
            n = int(path.rsplit("/", 1)[1])
            time.sleep(0.01)  # long enough for concurrent requests to overlap
            self.send(200, links(f"/chain/{n + 1}", f"/chain/{n + 2}") if n < 30 else html("<p>end</p>"))
        elif path == "/binary.html":  # an image that claims to be a page
            self.send(200, b"\x89PNG\r\n\x1a\n" + bytes(200))
        elif path == "/empty.html":
            self.send(200, b"")
        elif path == "/busy":  # 503 with Retry-After: 1 the first time, then the page
            self.send(
                *(
                    (503, b"", "text/html", True, {"Retry-After": "1"})
                    if site.hits[path] == 1
                    else (200, html("ok"))
                )
            )
        elif path == "/busy-long":
            self.send(429, b"", headers={"Retry-After": "3600"})
        elif path == "/slow":
            time.sleep(1.0)
            self.send(200, html("<p>late</p>"))
        else:
            self.send(404, html("<p>unknown</p>"))


@pytest.fixture
def site() -> Iterator[Site]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    host, port = server.server_address[:2]
    server.site = Site(base=f"http://{host}:{port}")  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield server.site  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def opts(**kw: object) -> CrawlOptions:
    base = dict(max_pages=100, max_depth=3, max_bytes=MAX_BYTES, timeout_s=5.0, retries=2, backoff_s=0.01,
                concurrency=4, per_host_concurrency=2, rate_limit_s=0.0)  # fmt: skip
    return CrawlOptions(**{**base, **kw})


def run(site: Site, seeds: list[str] | None = None, **kw: object) -> dict[str, Fetch]:
    seeds = seeds or [site.url("/")]
    fetches = crawl(seeds, opts(**kw), host_scope(seeds))
    by_url = {f.url: f for f in fetches}
    assert len(by_url) == len(fetches), "a URL appears twice in the fetch log"
    return by_url


def page_hits(site: Site) -> Counter:
    return Counter({p: n for p, n in site.hits.items() if p != "/robots.txt"})


# ------------------------------------------------------------------------------------- the whole site
@pytest.fixture
def full(site: Site) -> tuple[Site, dict[str, Fetch]]:
    return site, run(site)


def test_index_kept_and_links_followed(full: tuple[Site, dict[str, Fetch]]) -> None:
    site, log = full
    index = log[site.url("/")]
    assert index.error is None and index.status == 200 and index.content_type == "text/html"
    assert log[site.url("/plain.txt")].content == "just text"
    assert all(f.fetched_at > 0 and f.fetch_s >= 0 for f in log.values())


def test_robots_disallow_honoured(full: tuple[Site, dict[str, Fetch]]) -> None:
    site, log = full
    secret = log[site.url("/private/secret.html")]
    assert (secret.error, secret.status, secret.content) == ("robots", None, None)
    assert not any(p.startswith("/private/") for p in site.hits)
    assert site.hits["/robots.txt"] == 1
    via_redirect = log[site.url("/redirect-private")]
    assert via_redirect.error == "robots" and via_redirect.final_url == site.url("/private/target.html")


def test_off_host_links_not_followed(full: tuple[Site, dict[str, Fetch]]) -> None:
    _, log = full
    assert not any("other.invalid" in u for u in log)
    assert all(f.error != "connect" for f in log.values())


def test_redirects(full: tuple[Site, dict[str, Fetch]]) -> None:
    site, log = full
    red = log[site.url("/redirect")]
    assert red.error is None and red.status == 200 and red.final_url == site.url("/page1")
    assert red.depth == 1 and site.url("/page2") in log  # links resolved against the final URL
    assert log[site.url("/page2")].depth == 2
    assert log[site.url("/redirect-loop-a")].error == "redirect_loop"
    assert site.url("/redirect-loop-b") not in log  # only reached as a hop
    assert log[site.url("/dup-redirect")].error == "duplicate"  # its target is the seed
    off = log[site.url("/off-redirect")]
    assert off.error == "out_of_scope_redirect" and off.final_url == "http://other.invalid/landing"


def test_http_errors_and_retries(full: tuple[Site, dict[str, Fetch]]) -> None:
    site, log = full
    assert log[site.url("/404")].error == "http_404" and log[site.url("/404")].status == 404
    assert site.hits["/404"] == 1  # 4xx is not retried
    assert log[site.url("/500")].error == "http_500" and log[site.url("/500")].status == 500
    assert site.hits["/500"] == 1 + 2  # the first try and `retries` more


def test_content_checks(full: tuple[Site, dict[str, Fetch]]) -> None:
    site, log = full
    png = log[site.url("/image.png")]
    assert (png.error, png.content_type, png.content) == ("content_type", "image/png", None)
    big = log[site.url("/big.html")]
    assert big.error == "too_large" and big.content is None and MAX_BYTES < big.nbytes < BIG_CHUNKS * 1024
    assert log[site.url("/latin1.html")].content == "<html><body><p>café crème</p></body></html>"
    assert "déjà vu" in log[site.url("/meta-latin1.html")].content
    garbage = log[site.url("/garbage.html")]
    assert (garbage.error, garbage.content, garbage.status) == ("decode", None, 200)


def test_each_url_fetched_once(full: tuple[Site, dict[str, Fetch]]) -> None:
    site, log = full
    hits = page_hits(site)
    assert hits["/"] == 1 and hits["/404"] == 1
    assert all(n == 1 for p, n in hits.items() if p != "/500"), hits
    assert not any("#" in u for u in log)


def test_depth_bounds_chain(full: tuple[Site, dict[str, Fetch]]) -> None:
    site, log = full  # max_depth=3: '/' is 0, /chain/0 is 1, /chain/1-2 are 2, /chain/3-4 are 3
    assert {u for u in log if "/chain/" in u} == {site.url(f"/chain/{i}") for i in range(5)}
    assert max(f.depth for f in log.values()) == 3


def test_log_in_discovery_order(full: tuple[Site, dict[str, Fetch]]) -> None:
    site, log = full
    urls = list(log)
    assert urls[0] == site.url("/") and urls.index(site.url("/redirect")) < urls.index(site.url("/page2"))


# -------------------------------------------------------------------------------------------- limits
def test_max_pages(site: Site) -> None:
    log = run(site, max_pages=5, max_depth=50)
    responded = [f for f in log.values() if f.status is not None]
    assert len(responded) == 5
    assert len(log) == 6  # and the robots-blocked /private/secret.html, which does not count


def test_max_pages_on_chain_with_concurrency(site: Site) -> None:
    log = run(site, [site.url("/chain/0")], max_pages=7, max_depth=50, concurrency=8, per_host_concurrency=4)
    assert len(log) == 7 and sum(page_hits(site).values()) == 7


def test_max_depth(site: Site) -> None:
    log = run(site, [site.url("/chain/0")], max_depth=2)
    assert set(log) == {site.url(f"/chain/{i}") for i in range(5)}  # 0 at depth 0, 1-2 at 1, 3-4 at 2
    assert {f.depth for f in log.values()} == {0, 1, 2}


def test_exclude_regex(site: Site) -> None:
    log = run(site, exclude=[r"/chain/", r"\.png$"])
    assert not any("/chain/" in p or p.endswith(".png") for p in site.hits)
    assert not any("/chain/" in u for u in log)


def test_per_host_concurrency(site: Site) -> None:
    run(site, [site.url("/chain/0")], max_pages=12, max_depth=50, concurrency=8, per_host_concurrency=1)
    assert site.max_inflight == 1


def test_too_many_redirects(site: Site) -> None:
    log = run(site, [site.url("/hops/0")], max_redirects=3)
    assert log[site.url("/hops/0")].error == "too_many_redirects"
    assert page_hits(site) == Counter({f"/hops/{i}": 1 for i in range(4)})
    ok = run(site, [site.url("/hops/5")], max_redirects=5)[site.url("/hops/5")]
    assert ok.error is None and ok.final_url == site.url("/hops/10")


def test_declared_too_large(site: Site) -> None:
    f = run(site, [site.url("/big-declared.html")])[site.url("/big-declared.html")]
    assert f.error == "too_large" and f.nbytes == 0


def test_oversize_truncate_keeps_the_first_max_bytes(site: Site) -> None:
    seeds = [site.url("/big.html"), site.url("/big-declared.html"), site.url("/page2")]
    log = run(site, seeds, max_depth=0, oversize="truncate")
    for url in seeds[:2]:  # streamed without a length, and declared too large up front
        f = log[url]
        assert f.error is None and f.truncated and f.nbytes == MAX_BYTES, f
        assert len(f.content.encode()) == MAX_BYTES and f.content.startswith("<")
    assert log[site.url("/big.html")].content.startswith("<p>xxxx")
    assert not log[site.url("/page2")].truncated and "page two" in log[site.url("/page2")].content
    skipped = run(site, seeds[:1], max_depth=0)[seeds[0]]  # the default: skip
    assert skipped.error == "too_large" and not skipped.truncated


def test_crawl_stage_counts_truncated_pages(site: Site, tmp_path) -> None:
    from pipeline.config import CommonConfig, DistSplit, HttpSource
    from pipeline.io import read_rows
    from stages.crawl import crawl_one

    src = HttpSource(kind="http", seeds=[site.url("/big.html"), site.url("/page2")], max_depth=0,
                     max_bytes=MAX_BYTES, oversize="truncate", timeout_s=5.0)  # fmt: skip
    counts = crawl_one(("web", src), str(tmp_path), str(tmp_path), CommonConfig(), DistSplit())
    assert counts["truncated"] == 1 and counts["docs"] == 2
    fetch_log = {r["url"]: r["truncated"] for r in read_rows(tmp_path / "fetch_log" / "web.parquet")}
    assert fetch_log == {site.url("/big.html"): True, site.url("/page2"): False}


def test_timeout(site: Site) -> None:
    f = run(site, [site.url("/slow")], timeout_s=0.2, retries=1)[site.url("/slow")]
    assert (f.error, f.status) == ("timeout", None)
    assert site.hits["/slow"] == 2


def test_connect_error_and_unreachable_robots() -> None:
    seed = "http://127.0.0.1:1/"  # nothing listens on port 1
    [f] = crawl([seed], opts(retries=1), host_scope([seed]))
    assert (f.error, f.status) == ("connect", None)


def test_robots_5xx_disallows_all(site: Site) -> None:
    site.robots_status = 503
    log = run(site, retries=1)
    assert [f.error for f in log.values()] == ["robots"] and page_hits(site) == Counter()
    assert site.hits["/robots.txt"] == 2  # retried like a page before giving up


def test_robots_ignored_when_disabled(site: Site) -> None:
    log = run(site, respect_robots=False)
    assert log[site.url("/private/secret.html")].error is None
    assert "/robots.txt" not in site.hits


def test_headers_only_log(site: Site) -> None:
    seeds = [site.url("/")]
    fetches = crawl(seeds, opts(max_depth=1), host_scope(seeds), headers_only_log=True)
    kept = [f for f in fetches if f.error is None]
    assert len(kept) > 3 and all(f.content is None for f in kept)


def test_crawl_inside_running_loop_and_thread(site: Site) -> None:
    seeds = [site.url("/page2")]

    async def inside() -> list[Fetch]:
        return crawl(seeds, opts(), host_scope(seeds))

    assert [f.error for f in asyncio.run(inside())] == [None]
    out: list[list[Fetch]] = []
    t = threading.Thread(target=lambda: out.append(crawl(seeds, opts(), host_scope(seeds))))
    t.start()
    t.join()
    assert [f.error for f in out[0]] == [None]


def test_bad_seed() -> None:
    with pytest.raises(LineageError):
        crawl(["ftp://example.com/"], opts(), lambda u: True)


# ---------------------------------------------------------------------------------------- pure helpers
@pytest.mark.parametrize(
    ("url", "base", "want"),
    [
        ("HTTP://Example.COM:80/a/./b/../c#frag", None, "http://example.com/a/c"),
        ("https://example.com:443", None, "https://example.com/"),
        ("https://example.com:8443/x?b=2&a=1", None, "https://example.com:8443/x?b=2&a=1"),
        ("  http://h.com/p \n", None, "http://h.com/p"),
        ("http://user:pw@h.com/", None, "http://h.com/"),
        ("http://h.com/a/b/..", None, "http://h.com/a/"),
        ("http://h.com/../../x", None, "http://h.com/x"),
        ("http://[::1]:8080/", None, "http://[::1]:8080/"),
        ("../d?q=1#x", "http://h.com/a/b/c", "http://h.com/a/d?q=1"),
        ("//cdn.h.com/x", "https://h.com/", "https://cdn.h.com/x"),
        ("?q=2", "http://h.com/p?q=1", "http://h.com/p?q=2"),
        ("", "http://h.com/p#f", "http://h.com/p"),
        ("mailto:a@b.com", None, None),
        ("javascript:void(0)", "http://h.com/", None),
        ("ftp://h.com/file", None, None),
        ("http://", None, None),
        ("http://h.com:99999/", None, None),
    ],
)
def test_normalize_url(url: str, base: str | None, want: str | None) -> None:
    assert normalize_url(url, base) == want


def test_host_scope() -> None:
    seeds = host_scope(["http://Example.com:8000/start"])
    assert seeds("http://example.com/other") and not seeds("http://sub.example.com/")
    allow = host_scope(["http://example.com/"], ["docs.python.org", "*.example.org"])
    assert allow("https://docs.python.org/3/") and allow("http://a.b.example.org/")
    assert allow("http://example.org/") and not allow("http://example.com/")
    assert not allow("http://evildocs.python.org/") and not allow("not a url")


def test_extract_links_base_href_and_broken_html() -> None:
    doc = '<html><head><base href="/sub/"></head><body><a href="leaf.html">x</a><a href="#top">t</a>'
    assert extract_links(doc, "http://h.com/dir/page") == ["http://h.com/sub/leaf.html", "http://h.com/sub/"]
    assert extract_links("<p><a href='a.html'>unclosed <div><a href=b.html>", "http://h.com/x/") == [
        "http://h.com/x/a.html",
        "http://h.com/x/b.html",
    ]
    assert extract_links("", "http://h.com/") == []
    assert extract_links('<?xml version="1.0" encoding="utf-8"?><a href="/z">z</a>', "http://h.com/") == [
        "http://h.com/z"
    ]


def test_decode_body() -> None:
    assert decode_body("é".encode("cp1252"), "windows-1252") == "é"
    assert decode_body(b"\xef\xbb\xbfhi", None) == "hi"  # BOM dropped
    assert decode_body(b"ok " * 200 + b"\xff", "utf-8") is not None  # one bad byte is tolerated
    assert decode_body(b"\xff\xfe\xfa" * 50, "utf-8") is None
    assert decode_body("ü".encode("latin-1"), "no-such-charset") is None  # falls back to utf-8


# --------------------------------------------------------------------------------- small hostile cases
def test_binary_and_empty_bodies_are_dropped_with_a_reason(site: Site) -> None:
    log = run(site, [site.url("/binary.html"), site.url("/empty.html"), site.url("/page2")])
    assert (log[site.url("/binary.html")].error, log[site.url("/binary.html")].content) == ("binary", None)
    assert (log[site.url("/empty.html")].error, log[site.url("/empty.html")].status) == ("empty", 200)
    assert log[site.url("/page2")].error is None


def test_text_problem() -> None:
    assert text_problem("  \n ") == "empty" and text_problem("a\x00b") == "binary"
    assert text_problem("x" * 50 + "\x01\x02") == "binary" and text_problem("tab\there\r\n") is None


def test_retry_after_is_honoured(site: Site) -> None:
    t0 = time.monotonic()
    f = run(site, [site.url("/busy")], retries=2, backoff_s=0.01)[site.url("/busy")]
    assert f.error is None and site.hits["/busy"] == 2
    assert time.monotonic() - t0 >= 0.95  # waited the second asked for, not the 10 ms backoff


def test_retry_after_longer_than_the_cap_gives_up(site: Site) -> None:
    f = run(site, [site.url("/busy-long")], retries=3, max_retry_after_s=5)[site.url("/busy-long")]
    assert (f.error, site.hits["/busy-long"]) == ("http_429", 1)


def test_retry_after_s_forms() -> None:
    assert retry_after_s("7") == 7.0 and retry_after_s(None) is None and retry_after_s("soon") is None
    now = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT
    assert retry_after_s("Tue, 14 Nov 2023 22:13:50 GMT", now=now) == 30.0
    assert retry_after_s("Tue, 14 Nov 2023 22:00:00 GMT", now=now) == 0.0  # already past


def test_fractional_crawl_delay() -> None:
    lines = ["User-agent: other", "Crawl-delay: 9", "", "User-agent: *", "Crawl-delay: 0.1", "Disallow: /x"]
    assert crawl_delay(lines, "gpt-lineage-crawler/0.1") == 0.1
    assert crawl_delay(lines, "other-bot/2") == 9.0
    assert crawl_delay(["User-agent: *", "Crawl-delay: nan"], "a") is None


def test_fractional_crawl_delay_paces_the_crawl(site: Site) -> None:
    site.robots = "User-agent: *\nCrawl-delay: 0.2\n"
    t0 = time.monotonic()
    log = run(site, [site.url("/chain/0")], max_pages=3, max_depth=50, concurrency=4, per_host_concurrency=4)
    assert len(log) == 3
    assert time.monotonic() - t0 >= 3 * 0.2 - 0.02  # robots -> page 1 -> page 2 -> page 3
