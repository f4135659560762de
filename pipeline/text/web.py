"""The web's text, without the network: URL normalisation and scope, link extraction, charset
decoding, text checks, Retry-After, and robots.txt rules with fractional Crawl-delay."""

from __future__ import annotations

import codecs
import email.utils
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC
from urllib.parse import urljoin, urlsplit, urlunsplit
from urllib.robotparser import RobotFileParser

import lxml.etree
import lxml.html

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
