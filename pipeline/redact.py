"""Credentials out of everything logged: a URL's password (``user:PASS@host``) and query values
named like a secret (``access_token=``, ``X-Amz-Signature=``, ``sig=`` of an Azure SAS, ``key=``)
become ``***`` before params reach MLflow or Prefect. The URL stays readable: scheme, host, path,
user name and the other query values are kept."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

MASK = "***"
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_SECRET_KEY = re.compile(
    r"(token|secret|passw|pwd|apikey|api_key|api-key|credential|signature|^sig$|^key$|^auth|^code$|^sas)",
    re.I,
)


def _redact_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    # authority: up to the first / ? or #
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    if "@" in authority:
        userinfo, host = authority.rsplit("@", 1)
        if ":" in userinfo:
            authority = f"{userinfo.split(':', 1)[0]}:{MASK}@{host}"
    path, qmark, query = tail.partition("?")
    if qmark:
        query, hash_, fragment = query.partition("#")
        items = []
        for item in query.split("&"):
            key, eq, value = item.partition("=")
            items.append(f"{key}={MASK}" if eq and value and _SECRET_KEY.search(unquote(key)) else item)
        tail = path + "?" + "&".join(items) + hash_ + fragment
    return scheme + sep + authority + tail


def redact(text: str) -> str:
    """``text`` with the credentials of every URL in it masked."""
    return _URL.sub(lambda m: _redact_url(m.group()), text) if "://" in text else text


def redact_value(value: Any) -> Any:
    """:func:`redact` through strings, lists and dicts (a params value of any shape)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v) for v in value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    return value
