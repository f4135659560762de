#!/usr/bin/env python
"""What the clean stage keeps of a real documentation site, and how much of each page's main text.

The pages are rendered here, each with a known main text, from what this Python has installed:

  api      one page per standard-library module, as a Sphinx API reference renders it: the
           module's docstring, then each public class, method and function with its signature
           and docstring (the text pydoc shows);
  readme   one page per installed package whose README (its metadata's long description) is
           Markdown, rendered with markdown-it;
  index    module index pages: 40 modules a page, each with its docstring's first line.

Around each main text goes a documentation theme's chrome: a header with the project name and a
search form, breadcrumbs, a sidebar table of contents of 40 pages, an "on this page" list,
previous/next links and a footer; three themes (Sphinx classic, Read the Docs, MkDocs Material)
take turns. The gold text of a page is the visible text of its main block.

For every clean setting compared (``clean.focus`` and the Gopher rule variants below) each page goes
through ``clean_doc`` exactly as the clean stage calls it; a page counts as kept well when clean
keeps it *and* the word F1 (bag of lowercased ``\\w+`` tokens with counts, as bench/extraction.py)
of the kept text against the gold is at least 0.93. The same rules run on the article benchmark's
pages (bench/extraction.py's data, when present) so one table says which rule drops what on both
kinds of text. Results: tables on stdout and bench/out/docs_site.json.

    .venv/bin/python bench/docs_site.py
"""

from __future__ import annotations

import argparse
import html as htmllib
import importlib
import importlib.metadata
import inspect
import pkgutil
import statistics
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import machine, table, write_result  # noqa: E402
from bench.extraction import bag_prf, load_pages, tokens  # noqa: E402

F1_BAR = 0.93
SKIP_MODULES = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "lib2to3", "test"}


# ------------------------------------------------------------------------------------- main texts
def esc(s: str) -> str:
    return htmllib.escape(s, quote=False)


def paragraphs(doc: str) -> str:
    """A docstring as HTML: blank-line separated paragraphs, indented blocks as code."""
    out = []
    for block in inspect.cleandoc(doc).split("\n\n"):
        if not block.strip():
            continue
        lines = block.split("\n")
        if all(ln.startswith((" ", ">>>")) for ln in lines if ln.strip()):
            out.append(f'<div class="highlight"><pre>{esc(block)}</pre></div>')
        else:
            out.append(f"<p>{esc(' '.join(ln.strip() for ln in lines))}</p>")
    return "\n".join(out)


def signature(name: str, obj: Any) -> str:
    try:
        return f"{name}{inspect.signature(obj)}"
    except (TypeError, ValueError):
        return f"{name}(...)"


def api_page(mod: Any) -> tuple[str, str] | None:
    """(title, main HTML) of a module's API reference, or None when it documents too little."""
    name = mod.__name__
    parts = [f"<h1>{esc(name)} &#8212; {esc((inspect.getdoc(mod) or '').split(chr(10))[0])}</h1>"]
    parts.append(paragraphs(inspect.getdoc(mod) or ""))
    members = 0
    public = getattr(mod, "__all__", None) or [n for n in dir(mod) if not n.startswith("_")]
    for attr in sorted(public):
        obj = getattr(mod, attr, None)
        if obj is None or getattr(obj, "__module__", None) != name:
            continue
        doc = inspect.getdoc(obj)
        if not doc:
            continue
        if inspect.isclass(obj):
            parts.append(f'<dl class="py class"><dt id="{name}.{attr}"><em class="property">class </em>'
                         f"<span class=\"sig-name\">{esc(signature(attr, obj))}</span></dt><dd>{paragraphs(doc)}")  # fmt: skip
            for meth_name, meth in sorted(vars(obj).items()):
                if meth_name.startswith("_") or not callable(meth) or not inspect.getdoc(meth):
                    continue
                parts.append(f'<dl class="py method"><dt id="{name}.{attr}.{meth_name}">'
                             f"<span class=\"sig-name\">{esc(signature(meth_name, meth))}</span></dt>"
                             f"<dd>{paragraphs(inspect.getdoc(meth) or '')}</dd></dl>")  # fmt: skip
            parts.append("</dd></dl>")
        elif callable(obj):
            parts.append(f'<dl class="py function"><dt id="{name}.{attr}">'
                         f"<span class=\"sig-name\">{esc(signature(attr, obj))}</span></dt><dd>{paragraphs(doc)}</dd></dl>")  # fmt: skip
        else:
            continue
        members += 1
    if members < 2:
        return None
    return name, "\n".join(parts)


def stdlib_modules(limit: int) -> list[Any]:
    names = sorted(
        m.name
        for m in pkgutil.iter_modules()
        if m.module_finder is not None
        and "site-packages" not in str(getattr(m.module_finder, "path", ""))
        and not m.name.startswith("_")
        and m.name not in SKIP_MODULES
    )
    mods = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n in names:
            try:
                mods.append(importlib.import_module(n))
            except Exception:  # noqa: BLE001 - a module this platform cannot import is not documented
                continue
            if len(mods) >= limit:
                break
    return mods


def readme_pages(limit: int) -> list[tuple[str, str]]:
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark").enable("table")
    pages, seen = [], set()
    for dist in sorted(importlib.metadata.distributions(), key=lambda d: (d.metadata["Name"] or "").lower()):
        name = dist.metadata["Name"]
        body = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        ctype = dist.metadata.get("Description-Content-Type") or ""
        if not name or name.lower() in seen or "markdown" not in ctype or len(body.split()) < 150:
            continue
        seen.add(name.lower())
        pages.append((name, md.render(body)))
        if len(pages) >= limit:
            break
    return pages


def index_pages(mods: list[Any], per_page: int = 40) -> list[tuple[str, str]]:
    out = []
    for k in range(0, len(mods), per_page):
        rows = "\n".join(
            f'<tr><td><a href="{m.__name__}.html"><code>{esc(m.__name__)}</code></a></td>'
            f"<td><em>{esc((inspect.getdoc(m) or '').split(chr(10))[0])}</em></td></tr>"
            for m in mods[k : k + per_page]
        )
        title = f"Python Module Index ({k // per_page + 1})"
        out.append((title, f'<h1>{title}</h1>\n<table class="indextable modindextable">{rows}</table>'))
    return out


# ------------------------------------------------------------------------------------- site chrome
def toc(titles: list[str], here: int) -> str:
    lo = max(0, here - 20)
    return "\n".join(
        f'<li class="toctree-l1{" current" if i == here else ""}"><a class="reference internal" '
        f'href="{t}.html">{esc(t)}</a></li>'
        for i, t in enumerate(titles[lo : lo + 40], start=lo)
    )


def on_this_page(main: str) -> str:
    import re

    ids = re.findall(r'<dt id="([^"]+)"', main)[:30] or ["overview", "usage", "reference"]
    return "\n".join(f'<li><a href="#{i}">{esc(i.split(".")[-1])}</a></li>' for i in ids)


def page_html(site: str, theme: int, titles: list[str], here: int, title: str, main: str) -> str:
    prev_t, next_t = titles[here - 1], titles[(here + 1) % len(titles)]
    search = '<form class="search" action="search.html" method="get"><input type="text" name="q"><input type="submit" value="Go"></form>'
    head = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)} &#8212; {site} documentation</title>"
            '<link rel="stylesheet" href="_static/pygments.css"><script src="_static/doctools.js"></script></head>')  # fmt: skip
    footer_text = (f"&#169; Copyright 2001-2025, the {site} authors. Last updated on Jan 05, 2026. "
                   'Found a bug? <a href="bugs.html">Report it</a>. Created using <a href="https://www.sphinx-doc.org/">Sphinx</a> 7.2.6.')  # fmt: skip
    if theme == 0:  # Sphinx classic / alabaster-like
        rel = (f'<div class="related" role="navigation" aria-label="related navigation"><h3>Navigation</h3><ul>'
               f'<li class="right"><a href="genindex.html">index</a></li><li class="right"><a href="py-modindex.html">modules</a> |</li>'
               f'<li class="right"><a href="{next_t}.html">next</a> |</li><li class="right"><a href="{prev_t}.html">previous</a> |</li>'
               f'<li><a href="index.html">{site} documentation</a> &#187;</li><li><a href="library.html">The Library Reference</a> &#187;</li></ul></div>')  # fmt: skip
        return (f'{head}<body>{rel}<div class="document"><div class="documentwrapper"><div class="bodywrapper">'
                f'<div class="body" role="main"><section id="main">{main}</section></div></div></div>'
                f'<div class="sphinxsidebar" role="navigation"><div class="sphinxsidebarwrapper"><h3>Table of Contents</h3>'
                f"<ul>{on_this_page(main)}</ul><h4>Previous topic</h4><p><a href=\"{prev_t}.html\">{esc(prev_t)}</a></p>"
                f"<h4>Next topic</h4><p><a href=\"{next_t}.html\">{esc(next_t)}</a></p><h3>This Page</h3><ul><li>"
                f'<a href="_sources/{esc(title)}.rst.txt" rel="nofollow">Show Source</a></li></ul>'
                f'<div id="searchbox" role="search"><h3>Quick search</h3>{search}</div></div></div></div>'
                f'{rel}<div class="footer">{footer_text}</div></body></html>')  # fmt: skip
    if theme == 1:  # Read the Docs
        return (f'{head}<body class="wy-body-for-nav"><div class="wy-grid-for-nav"><nav data-toggle="wy-nav-shift" class="wy-nav-side">'
                f'<div class="wy-side-scroll"><div class="wy-side-nav-search"><a href="index.html" class="icon icon-home">{site}</a>'
                f'<div class="version">3.11</div><div role="search">{search}</div></div>'
                f'<div class="wy-menu wy-menu-vertical" role="navigation"><p class="caption"><span class="caption-text">Contents</span></p>'
                f"<ul>{toc(titles, here)}</ul></div></div></nav>"
                f'<section data-toggle="wy-nav-shift" class="wy-nav-content-wrap"><nav class="wy-nav-top"><a href="index.html">{site}</a></nav>'
                f'<div class="wy-nav-content"><div class="rst-content"><div role="navigation" aria-label="Page navigation">'
                f'<ul class="wy-breadcrumbs"><li><a href="index.html" class="icon icon-home"></a> &#187;</li><li>{esc(title)}</li>'
                f'<li class="wy-breadcrumbs-aside"><a href="_sources/{esc(title)}.rst.txt">View page source</a></li></ul><hr></div>'
                f'<div role="main" class="document" itemscope="itemscope" itemtype="http://schema.org/Article">'
                f'<div itemprop="articleBody">{main}</div></div>'
                f'<footer><div class="rst-footer-buttons" role="navigation" aria-label="Footer">'
                f'<a href="{prev_t}.html" class="btn btn-neutral float-left" rel="prev">Previous</a>'
                f'<a href="{next_t}.html" class="btn btn-neutral float-right" rel="next">Next</a></div><hr>'
                f'<div role="contentinfo"><p>{footer_text}</p></div>Built with Sphinx using a theme provided by Read the Docs.</footer>'
                "</div></div></section></div></body></html>")  # fmt: skip
    # MkDocs Material
    return (f'{head}<body dir="ltr"><header class="md-header" data-md-component="header"><nav class="md-header__inner md-grid" aria-label="Header">'
            f'<a href="index.html" title="{site}" class="md-header__button md-logo">{site}</a><div class="md-header__title">'
            f'<span class="md-ellipsis">{esc(title)}</span></div><div class="md-search" data-md-component="search" role="dialog">{search}</div>'
            f'<div class="md-header__source"><a href="https://github.com/example/{site}" title="Go to repository" class="md-source">example/{site}</a></div></nav></header>'
            f'<div class="md-container" data-md-component="container"><nav class="md-tabs" aria-label="Tabs"><ul class="md-tabs__list">'
            f'<li class="md-tabs__item"><a href="index.html">Home</a></li><li class="md-tabs__item"><a href="guide.html">User guide</a></li>'
            f'<li class="md-tabs__item"><a href="api.html">API reference</a></li><li class="md-tabs__item"><a href="changelog.html">Changelog</a></li></ul></nav>'
            f'<main class="md-main" data-md-component="main"><div class="md-main__inner md-grid">'
            f'<div class="md-sidebar md-sidebar--primary" data-md-component="sidebar" data-md-type="navigation"><nav class="md-nav md-nav--primary" aria-label="Navigation">'
            f'<label class="md-nav__title">{site}</label><ul class="md-nav__list">{toc(titles, here)}</ul></nav></div>'
            f'<div class="md-sidebar md-sidebar--secondary" data-md-component="sidebar" data-md-type="toc"><nav class="md-nav md-nav--secondary" aria-label="On this page">'
            f'<label class="md-nav__title">On this page</label><ul class="md-nav__list">{on_this_page(main)}</ul></nav></div>'
            f'<div class="md-content" data-md-component="content"><article class="md-content__inner md-typeset">{main}</article></div></div></main>'
            f'<footer class="md-footer"><nav class="md-footer__inner md-grid" aria-label="Footer">'
            f'<a href="{prev_t}.html" class="md-footer__link md-footer__link--prev" rel="prev"><span class="md-footer__direction">Previous</span> {esc(prev_t)}</a>'
            f'<a href="{next_t}.html" class="md-footer__link md-footer__link--next" rel="next"><span class="md-footer__direction">Next</span> {esc(next_t)}</a></nav>'
            f'<div class="md-footer-meta md-typeset"><div class="md-copyright">{footer_text} Made with Material for MkDocs</div></div></footer></div></body></html>')  # fmt: skip


def gold_text(main: str) -> str:
    """The visible text of the main block: what a reader of the page came for."""
    from pipeline.text.extract import fallback_extract

    return fallback_extract(f"<html><body>{main}</body></html>")


def build_site(n_api: int, n_readme: int) -> list[dict[str, Any]]:
    mods = stdlib_modules(n_api * 2)
    mains: list[tuple[str, str, str]] = []
    for m in mods:
        page = api_page(m)
        if page:
            mains.append(("api", *page))
        if sum(k == "api" for k, *_ in mains) >= n_api:
            break
    mains += [("readme", *p) for p in readme_pages(n_readme)]
    mains += [("index", *p) for p in index_pages(mods)]
    titles = [t for _, t, _ in mains]
    pages = []
    for i, (kind, title, main) in enumerate(mains):
        site = "Python" if kind != "readme" else title
        pages.append({"kind": kind, "title": title, "html": page_html(site, i % 3, titles, i, title, main),
                      "gold": gold_text(main), "theme": ("sphinx", "rtd", "mkdocs")[i % 3]})  # fmt: skip
    return pages


# ------------------------------------------------------------------------------------------ scoring
def settings(base: Any) -> dict[str, Any]:
    """The clean settings compared: the project's params, each focus, and Gopher's n-gram rules."""
    out = {"params.yaml": base}
    for focus in ("recall", "balanced", "precision"):
        out[f"focus={focus}"] = base.model_copy(update={"focus": focus})
    gopher = {"max_top_ngram_char_frac": {2: 0.20, 3: 0.18, 4: 0.16},
              "max_dup_ngram_char_frac": {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}}  # fmt: skip
    out["dup_ngram_unit=document (Gopher)"] = base.model_copy(update={**gopher, "dup_ngram_unit": "document"})
    return out


def score(pages: list[dict[str, Any]], cfg: Any) -> dict[str, Any]:
    from pipeline.text.clean import clean_doc

    per_page, reasons = [], Counter()
    reasons_by_kind: dict[str, Counter[str]] = {}
    t0 = time.perf_counter()
    for k, p in enumerate(pages):
        doc = {"id": str(k), "source": "docs", "role": "web", "url": p["title"], "text": p["html"],
               "content_type": "text/html", "page_kind": p["kind"]}  # fmt: skip
        cleaned, reason = clean_doc(doc, cfg)
        f1 = bag_prf(tokens(cleaned["text"]), tokens(p["gold"]))[2]
        kept = reason is None
        reasons[str(reason) if reason else "kept"] += 1
        reasons_by_kind.setdefault(p["kind"], Counter())[str(reason) if reason else "kept"] += 1
        per_page.append({"kind": p["kind"], "kept": kept, "f1": f1, "good": kept and f1 >= F1_BAR})
    n = len(per_page)
    by_kind = {}
    for kind in sorted({r["kind"] for r in per_page}):
        rows = [r for r in per_page if r["kind"] == kind]
        by_kind[kind] = {"pages": len(rows), "kept": sum(r["kept"] for r in rows),
                         "good": sum(r["good"] for r in rows), "mean_f1": statistics.fmean(r["f1"] for r in rows),
                         "reasons": dict(reasons_by_kind[kind])}  # fmt: skip
    return {
        "pages": n,
        "kept": sum(r["kept"] for r in per_page) / n,
        "kept_at_f1": sum(r["good"] for r in per_page) / n,
        "mean_f1_kept": statistics.fmean([r["f1"] for r in per_page if r["kept"]] or [0.0]),
        "mean_f1_all": statistics.fmean(r["f1"] for r in per_page),
        "reasons": dict(reasons),
        "by_kind": by_kind,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def article_rules(folder: Path, cfg: Any) -> dict[str, Any] | None:
    """On the article benchmark: word F1 of clean's extraction, and which rule drops which page
    (on the extracted text, and on the gold article text itself)."""
    if not (folder / "ground-truth.json").is_file():
        return None
    from pipeline.text.extract import extract_text, normalize_text
    from pipeline.text.filters import drop_reason

    f1s, on_extracted, on_gold = [], Counter(), Counter()
    for _key, html, gold in load_pages(folder, None):
        text, _ = extract_text(html, focus=cfg.focus, include_tables=cfg.include_tables)
        f1s.append(bag_prf(tokens(text), tokens(gold))[2])
        on_extracted[str(drop_reason(normalize_text(text, cfg.normalization), cfg) or "kept")] += 1
        on_gold[str(drop_reason(normalize_text(gold, cfg.normalization), cfg) or "kept")] += 1
    return {"pages": len(f1s), "f1": statistics.fmean(f1s), "reasons_extracted": dict(on_extracted),
            "reasons_gold": dict(on_gold)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--api", type=int, default=120, help="stdlib API reference pages")
    ap.add_argument("--readme", type=int, default=60, help="package README pages")
    ap.add_argument(
        "--articles", type=Path, default=ROOT.parent / "shared" / "data" / "article_extraction_benchmark"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "docs_site.json")
    args = ap.parse_args(argv)
    from pipeline.config import load_params

    base = load_params(ROOT / "params.yaml").clean
    pages = build_site(args.api, args.readme)
    kinds = Counter(p["kind"] for p in pages)
    print(f"{len(pages)} pages: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())), file=sys.stderr)
    results = {}
    for name, cfg in settings(base).items():
        results[name] = score(pages, cfg)
        print(f"[{name}: {results[name]['seconds']}s]", file=sys.stderr, flush=True)
    rows = [[name, f"{r['kept']:.3f}", f"{r['kept_at_f1']:.3f}", f"{r['mean_f1_kept']:.4f}",
             *(f"{r['by_kind'][k]['good']}/{r['by_kind'][k]['pages']}" for k in sorted(kinds))]
            for name, r in results.items()]  # fmt: skip
    print(f"\n{len(pages)} documentation pages ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}); "
          f"good = kept with word F1 >= {F1_BAR}\n")  # fmt: skip
    print(table(["clean setting", "kept", f"kept, F1>={F1_BAR}", "mean F1 (kept)",
                 *(f"good {k}" for k in sorted(kinds))], rows))  # fmt: skip
    rule_rows = []
    for name in ("params.yaml", "dup_ngram_unit=document (Gopher)"):
        for rule, n in sorted(results[name]["reasons"].items(), key=lambda kv: -kv[1]):
            rule_rows.append(
                [name, rule, n, *(results[name]["by_kind"][k]["reasons"].get(rule, 0) for k in sorted(kinds))]
            )
    print("\nWhich rule drops what, documentation pages\n")
    print(table(["setting", "rule", "pages", *sorted(kinds)], rule_rows))
    articles = {name: article_rules(args.articles, cfg) for name, cfg in settings(base).items()
                if name in ("params.yaml", "dup_ngram_unit=document (Gopher)")}  # fmt: skip
    if all(articles.values()):
        a = articles["params.yaml"]
        print(
            f"\nArticle benchmark ({a['pages']} pages), params.yaml: word F1 {a['f1']:.4f}; which rule drops what\n"
        )
        keys = sorted(
            {k for r in articles.values() for side in ("reasons_extracted", "reasons_gold") for k in r[side]}
        )
        print(table(["rule", *(f"{n}: {side.split('_')[1]} text" for n in articles for side in ("reasons_extracted", "reasons_gold"))],
                    [[k, *(r[side].get(k, 0) for r in articles.values() for side in ("reasons_extracted", "reasons_gold"))]
                     for k in keys]))  # fmt: skip
    else:
        articles = {}
    write_result(args.out, {"machine": machine(), "pages": dict(kinds), "f1_bar": F1_BAR, "results": results,
                            "articles": articles})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
