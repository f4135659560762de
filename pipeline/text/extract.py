"""HTML -> main text, and Unicode normalisation.

trafilatura finds the main content of a page and drops navigation and boilerplate. On pages it
rejects (too short, no main block found) a plain lxml walk over block elements keeps the visible
text, so the heuristic filters downstream decide, not the extractor, and every drop has a reason.
"""

from __future__ import annotations

import re
import threading
import unicodedata

CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200d\ufeff]")
SPACE_RE = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
BLANKS_RE = re.compile(r"\n{3,}")
BLOCK_TAGS = {
    "p", "div", "br", "li", "ul", "ol", "dl", "dt", "dd", "tr", "table", "h1", "h2", "h3", "h4", "h5", "h6",
    "pre", "blockquote", "section", "article", "header", "footer", "hr", "td", "th",
}  # fmt: skip
# trafilatura keeps compiled lxml XPath objects at module level, and lxml's XPath evaluators are not
# thread-safe (concurrent use crashes the interpreter): one extraction at a time per process. The GIL
# already serialises this CPU-bound work; parallelism comes from process-based runners (Dask, Ray).
_LXML_LOCK = threading.Lock()
DROP_TAGS = ["script", "style", "noscript", "template", "svg", "head", "iframe", "form", "nav"]


def normalize_text(text: str, form: str = "NFKC") -> str:
    """Unicode normal form, no control characters, single spaces, at most one blank line."""
    text = unicodedata.normalize(form, text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = CONTROL_RE.sub("", text)
    lines = [SPACE_RE.sub(" ", line).strip() for line in text.split("\n")]
    return BLANKS_RE.sub("\n\n", "\n".join(lines)).strip()


def fallback_extract(html: str) -> str:
    """Visible text of a page, one line per block element."""
    import lxml.html
    from lxml import etree

    try:
        root = lxml.html.document_fromstring(html)
    except (etree.ParserError, ValueError):
        return ""
    for el in root.iter(*DROP_TAGS):
        el.drop_tree() if el.getparent() is not None else None
    parts: list[str] = []

    def walk(el: etree._Element) -> None:
        tag = el.tag if isinstance(el.tag, str) else ""
        if tag in BLOCK_TAGS:
            parts.append("\n")
        if el.text and tag:
            parts.append(el.text)
        for child in el:
            walk(child)
        if tag in BLOCK_TAGS:
            parts.append("\n")
        if el.tail:
            parts.append(el.tail)

    walk(root)
    return "".join(parts)


FOCUS = ("recall", "balanced", "precision")  # trafilatura's favor_recall / neither / favor_precision
DEFINITION_TAG_RE = re.compile(r"<(/?)(dl|dt|dd)(?=[\s>/])", re.IGNORECASE)
_AS_BLOCK = {"dl": "div", "dt": "p", "dd": "div"}


def definition_lists_as_blocks(html: str) -> str:
    """``<dl>``/``<dt>``/``<dd>`` as ``<div>``/``<p>``/``<div>``: a browser shows a definition list
    (every entry of an API reference: signature, then description) as plain blocks, while
    trafilatura writes each entry as a bulleted list item, which turns a reference page into
    "- " lines that Gopher's bullet-line rule then drops."""
    return DEFINITION_TAG_RE.sub(lambda m: f"<{m.group(1)}{_AS_BLOCK[m.group(2).lower()]}", html)


def extract_text(
    html: str,
    use_trafilatura: bool = True,
    fallback: bool | None = None,
    focus: str | None = None,
    include_tables: bool | None = None,
) -> tuple[str, str]:
    """Main text of ``html`` and which extractor produced it ('trafilatura', 'fallback' or 'none').

    ``focus`` picks trafilatura's trade-off between keeping borderline blocks (recall) and dropping
    them (precision); bench/extraction.py measures each against gold article bodies. An option not
    given is the clean section's default (:class:`pipeline.config.CleanConfig`, its one home).
    """
    from pipeline.config import CleanConfig

    defaults = CleanConfig.model_fields
    fallback = defaults["fallback"].default if fallback is None else fallback
    focus = defaults["focus"].default if focus is None else focus
    include_tables = defaults["include_tables"].default if include_tables is None else include_tables
    if focus not in FOCUS:
        raise ValueError(f"focus must be one of {FOCUS}, not {focus!r}")
    if use_trafilatura:
        import trafilatura

        try:
            with _LXML_LOCK:
                text = trafilatura.extract(
                    definition_lists_as_blocks(html), include_comments=False, include_tables=include_tables,
                    favor_recall=focus == "recall", favor_precision=focus == "precision", deduplicate=False,
                )  # fmt: skip
        except (ValueError, TypeError, RecursionError):
            text = None
        if text:
            return text, "trafilatura"
    if fallback:
        with _LXML_LOCK:
            text = fallback_extract(html)
        if text.strip():
            return text, "fallback"
    return "", "none"
