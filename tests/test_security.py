"""The data front end against hostile input: replaced model files, redirects into the local network,
decompression bombs, and downloads that try to fill memory. Every server here is on 127.0.0.1 and no
test sends a byte anywhere else: transports are spied on to prove refused requests were never sent."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import threading
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

import pipeline.text.netguard as netguard
from pipeline.config import CrawlOptions, QualityConfig, WarcSource
from pipeline.errors import LineageError
from pipeline.text.crawl import crawl
from pipeline.text.netguard import address_allowed, vet_addresses
from pipeline.text.quality import load_classifier, make_classifier, save_classifier
from pipeline.text.sources import read_warc_source
from pipeline.text.web import host_scope
from tests.conftest import junk, prose

MB = 1_000_000


# ------------------------------------------------------------------------------------- test server
@dataclass
class Server:
    """A 127.0.0.1 server whose routes each test sets; it records every request it saw."""

    base: str
    routes: dict[str, Callable[[BaseHTTPRequestHandler], None]] = field(default_factory=dict)
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base + path


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        server: Server = self.server.state  # type: ignore[attr-defined]
        server.seen.append((self.path, dict(self.headers)))
        route = server.routes.get(self.path)
        if route is None:
            reply(self, 404, b"")
        else:
            route(self)


def reply(h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str = "text/html",
          headers: dict[str, str] | None = None) -> None:  # fmt: skip
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body)))
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    with contextlib.suppress(OSError):  # the client stopped reading, as it should past a cap
        h.wfile.write(body)


def redirect(to: str) -> Callable[[BaseHTTPRequestHandler], None]:
    return lambda h: reply(h, 302, b"", headers={"Location": to})


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    host, port = httpd.server_address[:2]
    httpd.state = Server(base=f"http://{host}:{port}")  # type: ignore[attr-defined]
    httpd.state.routes["/robots.txt"] = lambda h: reply(h, 404, b"")  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield httpd.state  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[httpx.Request]:
    """Every request the HTTP stack was asked to send (async crawler and sync downloads alike)."""
    requests: list[httpx.Request] = []
    async_send = httpx.AsyncHTTPTransport.handle_async_request
    sync_send = httpx.HTTPTransport.handle_request

    async def spy_async(self: httpx.AsyncHTTPTransport, request: httpx.Request) -> httpx.Response:
        requests.append(request)
        assert request.url.host == "127.0.0.1", f"a test tried to reach {request.url}"
        return await async_send(self, request)

    def spy_sync(self: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
        requests.append(request)
        assert request.url.host == "127.0.0.1", f"a test tried to reach {request.url}"
        return sync_send(self, request)

    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", spy_async)
    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", spy_sync)
    return requests


def opts(**kw: object) -> CrawlOptions:
    base = dict(max_pages=20, max_depth=2, timeout_s=5.0, retries=0, backoff_s=0.01)
    return CrawlOptions(**{**base, **kw})


def by_url(fetches: list) -> dict:
    return {f.url: f for f in fetches}


def html_links(*hrefs: str) -> bytes:
    return ("<html><body>" + "".join(f'<a href="{h}">x</a>' for h in hrefs) + "</body></html>").encode()


# ------------------------------------------------------------------------------------------- skops
@pytest.fixture
def classifier() -> object:
    rng = random.Random(0)
    cfg = QualityConfig(positives=["ref"], negatives=["web"])
    return make_classifier(cfg, 0).fit([prose(rng, 60) for _ in range(8)] + [junk(rng, 60) for _ in range(8)],
                                       [1] * 8 + [0] * 8)  # fmt: skip


def test_skops_refuses_a_classifier_that_would_call_os_system(
    tmp_path: Path, classifier, monkeypatch
) -> None:
    classifier.steps[0][1].preprocessor = os.system  # scoring would run each document as a shell command
    path = tmp_path / "classifier.skops"
    save_classifier(classifier, path)
    calls: list[object] = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a))
    with pytest.raises(LineageError) as err:
        load_classifier(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: refuses to load untrusted type(s) ['posix.system']") and "\n" not in msg
    assert "dvc repro -f quality" in msg and calls == []


def test_skops_refuses_a_schema_edited_to_name_eval(tmp_path: Path, classifier) -> None:
    good = tmp_path / "good.skops"
    save_classifier(classifier, good)
    load_classifier(good)  # the legitimate file loads: the allowlist covers all it names
    bad = tmp_path / "classifier.skops"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.namelist():
            data = zin.read(item)
            if item == "schema.json":
                schema = json.loads(data)
                schema["__class__"], schema["__module__"] = "eval", "builtins"
                data = json.dumps(schema).encode()
            zout.writestr(item, data)
    with pytest.raises(
        LineageError, match=r"classifier\.skops: refuses to load untrusted type\(s\) \['builtins\.eval'\]"
    ):
        load_classifier(bad)
    (tmp_path / "junk.skops").write_bytes(b"not a zip")
    with pytest.raises(LineageError, match=r"junk\.skops: not a readable skops file"):
        load_classifier(tmp_path / "junk.skops")


# ------------------------------------------------------------------------------- address decision
@pytest.mark.parametrize(
    ("ip", "seed_is_loopback", "allow_private", "reason"),
    [
        ("93.184.216.34", False, False, None),
        ("2606:4700::1111", False, False, None),
        ("127.0.0.1", False, False, "loopback_address"),
        ("127.8.9.10", False, False, "loopback_address"),
        ("::1", False, False, "loopback_address"),
        ("127.0.0.1", True, False, None),  # our own pydoc server / a test server
        ("::1", True, False, None),
        ("169.254.169.254", True, False, "link_local_address"),  # a loopback seed only keeps loopback
        ("fe80::1", False, False, "link_local_address"),
        ("fe80::1%eth0", False, False, "link_local_address"),
        ("::ffff:169.254.169.254", False, False, "link_local_address"),
        ("10.1.2.3", False, False, "private_address"),
        ("172.16.0.1", True, False, "private_address"),
        ("192.168.1.1", False, False, "private_address"),
        ("fc00::1", False, False, "private_address"),
        ("0.0.0.0", False, False, "unspecified_address"),
        ("224.0.0.1", False, False, "multicast_address"),
        ("100.64.0.1", False, False, "non_global_address"),
        ("169.254.169.254", False, True, None),  # allow_private: an intranet crawl
        ("10.1.2.3", False, True, None),
    ],
)
def test_address_allowed(ip: str, seed_is_loopback: bool, allow_private: bool, reason: str | None) -> None:
    assert address_allowed(ip, seed_is_loopback, allow_private) == (reason is None, reason)


def test_every_resolved_address_must_pass() -> None:
    assert vet_addresses(["93.184.216.34", "10.0.0.7"], False, False) == (None, "private_address")
    assert vet_addresses(["93.184.216.34"], False, False) == ("93.184.216.34", None)
    assert vet_addresses([], False, False) == (None, "dns")


# ------------------------------------------------------------------------- crawler: refused hops
def test_redirect_to_metadata_is_refused_before_any_request(server: Server, sent: list) -> None:
    metadata = "http://169.254.169.254/latest/meta-data/"
    server.routes["/"] = redirect(metadata)
    seed = server.url("/")
    [f] = crawl([seed], opts(), lambda url: True)  # as with a wide allow_hosts scope: the rule must stop it
    assert (f.error, f.final_url, f.content) == ("link_local_address", metadata, None)
    assert [r.url.path for r in sent] == ["/robots.txt", "/"]


def test_links_into_the_network_are_refused(server: Server, sent: list) -> None:
    server.routes["/"] = lambda h: reply(h, 200, html_links("http://10.1.2.3/", "http://169.254.169.254/x"))
    seed = server.url("/")
    log = by_url(
        crawl([seed], opts(), lambda url: True)
    )  # scope lets everything through: only the rule stops them
    assert log["http://10.1.2.3/"].error == "private_address"
    assert log["http://169.254.169.254/x"].error == "link_local_address"
    assert {r.url.host for r in sent} == {"127.0.0.1"}


def test_public_seed_may_not_reach_loopback(
    server: Server, sent: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The test server stands in for a public host: its exact address passes, every other address is
    judged as for a seed that is not on loopback."""
    real = netguard.address_allowed

    def as_public(ip: str, seed_is_loopback: bool, allow_private: bool) -> tuple[bool, str | None]:
        return (True, None) if ip == "127.0.0.1" else real(ip, False, allow_private)

    monkeypatch.setattr(netguard, "address_allowed", as_public)
    port = urlsplit(server.base).port
    server.routes["/"] = lambda h: reply(h, 200, html_links(f"http://[::1]:{port}/", "/admin"))
    server.routes["/admin"] = redirect(f"http://127.0.0.2:{port}/admin")
    seed = server.url("/")
    log = by_url(crawl([seed], opts(), lambda url: True))
    assert log[f"http://[::1]:{port}/"].error == "loopback_address"
    assert log[server.url("/admin")].error == "loopback_address"
    assert {r.url.host for r in sent} == {"127.0.0.1"}
    assert {r.url.path for r in sent} == {"/robots.txt", "/", "/admin"}


def test_hostnames_are_resolved_checked_and_pinned(server: Server, sent: list, monkeypatch) -> None:
    fake_dns = {"metadata.test": ["169.254.169.254"], "mixed.test": ["93.184.216.34", "10.0.0.7"],
                "site.test": ["127.0.0.1"]}  # fmt: skip
    real = netguard.resolve_host
    monkeypatch.setattr(netguard, "resolve_host", lambda host, port: fake_dns.get(host) or real(host, port))
    port = urlsplit(server.base).port
    server.routes["/"] = lambda h: reply(h, 200, html_links("http://mixed.test/"))
    server.routes["/go"] = redirect("http://metadata.test/latest/")
    seeds = [f"http://site.test:{port}/", f"http://site.test:{port}/go"]
    log = by_url(crawl(seeds, opts(), lambda url: True))
    assert log[seeds[0]].error is None
    assert log["http://mixed.test/"].error == "private_address"
    assert log[seeds[1]].error == "link_local_address"
    # connected to the vetted address, asking for the name: no second lookup to rebind
    assert {(r.url.host, r.headers["host"]) for r in sent} == {("127.0.0.1", f"site.test:{port}")}


# ----------------------------------------------------------------------- crawler: gzip bomb page
def gzip_zeros(n: int) -> bytes:
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(MB)
    return b"".join(comp.compress(block) for _ in range(n // MB)) + comp.flush()


def test_gzip_bomb_page_is_cut_at_max_bytes_with_small_memory(server: Server) -> None:
    bomb = gzip_zeros(50 * MB)
    assert len(bomb) < 100_000
    server.routes["/bomb.html"] = lambda h: reply(h, 200, bomb, headers={"Content-Encoding": "gzip"})
    seed = server.url("/bomb.html")
    tracemalloc.start()
    try:
        [f] = crawl([seed], opts(max_bytes=2 * MB), host_scope([seed]))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (f.error, f.content) == ("too_large", None)
    assert 2 * MB < f.nbytes <= 2 * MB + netguard.INFLATE_STEP
    assert peak < 30 * MB, f"peak {peak / MB:.1f} MB"


def test_gzip_page_within_cap_is_decoded(server: Server) -> None:
    page = b"<html><body><p>" + b"compressed words " * 1000 + b"</p></body></html>"
    server.routes["/z.html"] = lambda h: reply(h, 200, zlib_gzip(page), headers={"Content-Encoding": "gzip"})
    server.routes["/cut.html"] = lambda h: reply(
        h, 200, zlib_gzip(page)[:-6], headers={"Content-Encoding": "gzip"}
    )
    seeds = [server.url("/z.html"), server.url("/cut.html")]
    log = by_url(crawl(seeds, opts(), host_scope(seeds)))
    assert log[seeds[0]].content == page.decode() and log[seeds[0]].nbytes == len(page)
    assert log[seeds[1]].error == "truncated"


def zlib_gzip(data: bytes) -> bytes:
    comp = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return comp.compress(data) + comp.flush()


# -------------------------------------------------------------------------------- WARC over HTTP
def warc_file(records: list[tuple[str, str, bytes]], gzip: bool) -> bytes:
    """(url, status line, payload) response records as WARC bytes."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    out = io.BytesIO()
    writer = WARCWriter(out, gzip=gzip)
    for url, status, payload in records:
        headers = StatusAndHeaders(
            status, [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1"
        )
        writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(payload),
                                                      http_headers=headers))  # fmt: skip
    return out.getvalue()


def warc(**kw: object) -> WarcSource:
    return WarcSource(kind="warc", **{"timeout_s": 5.0, **kw})


GOOD = b"<html><body><p>the one page worth keeping</p></body></html>"


def test_warc_url_is_streamed_politely(server: Server, sent: list) -> None:
    filler = [(f"http://example.org/{i}", "404 Not Found", bytes(random.Random(i).randbytes(MB)))
              for i in range(30)]  # fmt: skip
    data = warc_file([*filler, ("http://example.org/good", "200 OK", GOOD)], gzip=False)
    server.routes["/cc.warc"] = lambda h: reply(h, 200, data, "application/warc")
    tracemalloc.start()
    try:
        docs = read_warc_source("cc", warc(paths=[server.url("/cc.warc")]), Path("."))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [d["text"] for d in docs] == [GOOD.decode()]
    assert peak < 20 * MB, f"peak {peak / MB:.1f} MB for a {len(data) / MB:.0f} MB file"
    assert [p for p, _ in server.seen] == ["/robots.txt", "/cc.warc"]
    assert {h["User-Agent"] for _, h in server.seen} == {"gpt-lineage-crawler/0.1"}


def test_warc_url_obeys_robots_and_refuses_private_redirects(server: Server, sent: list) -> None:
    server.routes["/cc.warc"] = lambda h: reply(
        h, 200, warc_file([("http://example.org/", "200 OK", GOOD)], gzip=False)
    )
    server.routes["/robots.txt"] = lambda h: reply(
        h, 200, b"User-agent: *\nDisallow: /private/\n", "text/plain"
    )
    server.routes["/private/cc.warc"] = server.routes["/cc.warc"]
    server.routes["/moved.warc"] = redirect("http://169.254.169.254/latest/meta-data/")
    with pytest.raises(LineageError, match=r"/private/cc\.warc: cannot fetch WARC: robots\.txt disallows it"):
        read_warc_source("cc", warc(paths=[server.url("/private/cc.warc")]), Path("."))
    with pytest.raises(LineageError, match=r"/moved\.warc: cannot fetch WARC: refused to connect to "
                       r"http://169\.254\.169\.254/latest/meta-data/: link_local_address"):  # fmt: skip
        read_warc_source("cc", warc(paths=[server.url("/moved.warc")]), Path("."))
    assert {r.url.host for r in sent} == {"127.0.0.1"}
    assert "/private/cc.warc" not in [p for p, _ in server.seen]
    docs = read_warc_source("cc", warc(paths=[server.url("/cc.warc")]), Path("."))
    assert [d["text"] for d in docs] == [GOOD.decode()]


def test_warc_url_with_content_encoding_and_size_cap(server: Server) -> None:
    data = warc_file([("http://example.org/", "200 OK", GOOD)], gzip=False)
    server.routes["/enc.warc"] = lambda h: reply(
        h, 200, zlib_gzip(data), headers={"Content-Encoding": "gzip"}
    )
    server.routes["/big.warc"] = lambda h: reply(
        h, 200, warc_file([("http://example.org/", "200 OK", bytes(200_000))], gzip=False)
    )
    docs = read_warc_source("cc", warc(paths=[server.url("/enc.warc")]), Path("."))
    assert [d["text"] for d in docs] == [GOOD.decode()]
    with pytest.raises(
        LineageError, match=r"big\.warc: refused WARC/WET file: larger than crawl\.sources\.cc\.max_bytes"
    ):
        read_warc_source("cc", warc(paths=[server.url("/big.warc")], max_bytes=100_000), Path("."))


def warc_bomb(payload_bytes: int) -> bytes:
    """One gzip member: a WARC response record whose payload is ``payload_bytes`` zeros."""
    http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n"
    head = (f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:1>\r\n"
            "WARC-Target-URI: http://x/\r\n"
            f"Content-Type: application/http; msgtype=response\r\nContent-Length: {len(http) + payload_bytes}"
            "\r\n\r\n").encode()  # fmt: skip
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [comp.compress(head + http)]
    parts += [comp.compress(bytes(MB)) for _ in range(payload_bytes // MB)]
    return b"".join(parts) + comp.compress(b"\r\n\r\n") + comp.flush()


def test_warc_gzip_bomb_stops_at_the_caps(tmp_path: Path) -> None:
    (tmp_path / "bomb.warc.gz").write_bytes(warc_bomb(200 * MB))
    assert (tmp_path / "bomb.warc.gz").stat().st_size < 300_000
    tracemalloc.start()
    try:
        with pytest.raises(
            LineageError, match=r"bomb\.warc\.gz: refused WARC/WET file: a gzip member .*max_record_bytes"
        ):
            read_warc_source("cc", warc(paths=["bomb.warc.gz"], max_record_bytes=4 * MB), tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 30 * MB, f"peak {peak / MB:.1f} MB"
    (tmp_path / "many.warc.gz").write_bytes(warc_bomb(3 * MB) * 4)
    with pytest.raises(
        LineageError,
        match=r"many\.warc\.gz: refused WARC/WET file: decompresses past .*max_decompressed_bytes",
    ):
        read_warc_source("cc", warc(paths=["many.warc.gz"], max_decompressed_bytes=10 * MB), tmp_path)
