"""Guards for every request that leaves the machine: addresses vetted before a connection (no
loopback, link-local or private ranges unless allowed; connect to the vetted address, so no DNS
rebinding), bodies decompressed in bounded steps, and one guarded streaming download for files.
"""

from __future__ import annotations

import io
import ipaddress
import socket
import zlib
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx

from pipeline.errors import LineageError
from pipeline.text.web import (
    ACCEPT_ENCODING,
    DEFAULT_PORTS,
    INFLATE_STEP,
    ROBOTS_MAX_BYTES,
    normalize_url,
    robots_rules,
)


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
