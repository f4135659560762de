import html
import io
import json
import re
from pathlib import Path

import pytest

from pipeline.config import DistSplit, FilesSource, HfSource, PydocSource, PythonDocsSource, WarcSource
from pipeline.errors import LineageError
from pipeline.text.sources import (
    EmbeddedWeb,
    PydocServer,
    dist_side,
    pydoc_excludes,
    read_files_source,
    read_hf_source,
    read_pydoc_source,
    read_python_docs_source,
    read_warc_source,
    web_projects,
)


def write_warc(path: Path) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with path.open("wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        pages = [
            (
                "http://example.org/a",
                "200 OK",
                "text/html; charset=utf-8",
                "<html><body><p>Caf\u00e9 page A</p></body></html>",
            ),
            ("http://example.org/b", "404 Not Found", "text/html", "<html>missing</html>"),
            ("http://example.org/c.png", "200 OK", "image/png", "\x89PNG"),
            ("http://example.org/d", "200 OK", "text/html; charset=iso-8859-1", "<p>na\u00efve latin</p>"),
        ]
        for url, status, ctype, body in pages:
            charset = "iso-8859-1" if "8859" in ctype else "utf-8"
            headers = StatusAndHeaders(status, [("Content-Type", ctype)], protocol="HTTP/1.1")
            rec = writer.create_warc_record(
                url, "response", payload=io.BytesIO(body.encode(charset)), http_headers=headers
            )
            writer.write_record(rec)
        wet = writer.create_warc_record(
            "http://example.org/a", "conversion", payload=io.BytesIO(b"Plain text of page A."),
            warc_content_type="text/plain",
        )  # fmt: skip
        writer.write_record(wet)


def test_warc_reader_keeps_text_responses_and_conversions(tmp_path: Path):
    write_warc(tmp_path / "crawl.warc.gz")
    src = WarcSource(kind="warc", paths=["*.warc.gz"])
    docs = read_warc_source("cc", src, tmp_path)
    by_url = {(d["url"], d["content_type"]): d for d in docs}
    assert set(by_url) == {
        ("http://example.org/a", "text/html"),
        ("http://example.org/d", "text/html"),
        ("http://example.org/a", "text/plain"),
    }
    assert "Caf\u00e9" in by_url["http://example.org/a", "text/html"]["text"]
    assert "na\u00efve" in by_url["http://example.org/d", "text/html"]["text"]  # charset from the HTTP header
    assert by_url["http://example.org/a", "text/plain"]["text"] == "Plain text of page A."
    only_wet = read_warc_source(
        "cc", WarcSource(kind="warc", paths=["crawl.warc.gz"], record_types=["conversion"]), tmp_path
    )
    assert [d["content_type"] for d in only_wet] == ["text/plain"]


def test_corrupt_or_missing_warc_is_one_clear_error(tmp_path: Path):
    write_warc(tmp_path / "good.warc.gz")
    data = (tmp_path / "good.warc.gz").read_bytes()
    (tmp_path / "bad.warc.gz").write_bytes(data[: len(data) // 2] + b"\x00garbage" * 50)
    with pytest.raises(LineageError, match=r"bad\.warc\.gz: (corrupt|not a valid|truncated) WARC"):
        read_warc_source("cc", WarcSource(kind="warc", paths=["bad.warc.gz"]), tmp_path)
    (tmp_path / "text.warc").write_text("this is not a warc file\n" * 10)
    with pytest.raises(LineageError, match=r"text\.warc: (corrupt|not a valid) WARC"):
        read_warc_source("cc", WarcSource(kind="warc", paths=["text.warc"]), tmp_path)
    with pytest.raises(LineageError, match=r"crawl\.sources\.cc\.paths: no file matches 'none-\*\.warc'"):
        read_warc_source("cc", WarcSource(kind="warc", paths=["none-*.warc"]), tmp_path)


def test_warc_url_unreachable_is_one_clear_error(tmp_path: Path):
    src = WarcSource(kind="warc", paths=["http://127.0.0.1:9/cc.warc.gz"], timeout_s=2)
    with pytest.raises(LineageError, match=r"http://127\.0\.0\.1:9/cc\.warc\.gz: cannot fetch WARC"):
        read_warc_source("cc", src, tmp_path)


def test_files_source_reads_txt_html_jsonl_parquet(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_text("alpha text")
    (tmp_path / "b.html").write_text("<p>beta</p>")
    (tmp_path / "c.jsonl").write_text(
        json.dumps({"body": "gamma"}) + "\n\n" + json.dumps({"body": "delta"}) + "\n"
    )
    pq.write_table(pa.table({"body": ["epsilon"]}), tmp_path / "d.parquet")
    src = FilesSource(kind="files", globs=["*.txt", "*.html"], role="reference")
    docs = read_files_source("f", src, tmp_path)
    assert [(d["text"], d["content_type"], d["role"]) for d in docs] == [
        ("alpha text", "text/plain", "reference"), ("<p>beta</p>", "text/html", "reference"),
    ]  # fmt: skip
    docs = read_files_source(
        "f", FilesSource(kind="files", globs=["*.jsonl", "*.parquet"], text_field="body"), tmp_path
    )
    assert [d["text"] for d in docs] == ["gamma", "delta", "epsilon"]
    assert len({d["id"] for d in docs}) == 3
    with pytest.raises(LineageError, match=r"c\.jsonl:1: no field 'text'"):
        read_files_source("f", FilesSource(kind="files", globs=["*.jsonl"]), tmp_path)


def test_hf_source_loads_a_local_dataset_and_names_bad_fields(tmp_path: Path):
    import datasets

    ds = datasets.Dataset.from_dict(
        {"content": [f"document number {i}" for i in range(7)], "url": [f"u{i}" for i in range(7)]}
    )
    ds.to_parquet(str(tmp_path / "local_ds" / "train.parquet"))
    src = HfSource(kind="hf", dataset="local_ds", text_field="content", max_docs=5, streaming=True)
    docs = read_hf_source("hub", src, tmp_path)
    assert [d["text"] for d in docs] == [f"document number {i}" for i in range(5)]
    assert docs[0]["url"] == "u0"
    with pytest.raises(
        LineageError, match=r"crawl\.sources\.hub\.text_field: 'local_ds' has no field 'text'"
    ):
        read_hf_source("hub", HfSource(kind="hf", dataset="local_ds"), tmp_path)
    with pytest.raises(
        LineageError, match=r"crawl\.sources\.hub\.dataset: cannot load 'no-such/dataset-xyz'"
    ):
        read_hf_source("hub", HfSource(kind="hf", dataset="no-such/dataset-xyz"), tmp_path)


@pytest.mark.parametrize("part", ["topics", "docstrings", "distributions"])
def test_python_reference_sources(part: str):
    docs = read_python_docs_source(
        "ref", PythonDocsSource(kind="python_docs", part=part, min_chars=500, max_docs=20)
    )
    assert 5 <= len(docs) <= 20
    assert all(len(d["text"]) >= 500 and d["role"] == "reference" for d in docs)
    assert len({d["id"] for d in docs}) == len(docs)


def test_pydoc_server_crawl_is_local_scoped_and_skips_acting_modules():
    src = PydocSource(kind="pydoc", max_pages=12, concurrency=1, per_host_concurrency=1)
    docs, log = read_pydoc_source("pydoc_web", src)
    assert len(log) <= 12 and docs
    assert all(d["url"].startswith("pydoc:/") and d["content_type"] == "text/html" for d in docs)
    import re

    pats = [re.compile(p) for p in pydoc_excludes(src)]
    for bad in [
        "/antigravity.html",
        "/this.html",
        "/idlelib.pyshell.html",
        "/venv.__main__.html",
        "/getfile?key=os",
    ]:
        assert any(p.search("http://127.0.0.1:1" + bad) for p in pats), bad
    assert not any(p.search("http://127.0.0.1:1/json.html") for p in pats)


def test_pydoc_server_stops(tmp_path: Path):
    with PydocServer() as server:
        proc = server.proc
        assert server.url.startswith("http://127.0.0.1:")
    assert proc is not None and proc.poll() is not None


def _warc_bytes(gzip: bool) -> tuple[bytes, list[str]]:
    """A WARC with several text records, and the text of each."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    texts = [f"<html><body><p>page {i} " + "words and more words " * (20 + 15 * i) + "</p></body></html>"
             for i in range(5)]  # fmt: skip
    out = io.BytesIO()
    writer = WARCWriter(out, gzip=gzip)
    for i, text in enumerate(texts):
        headers = StatusAndHeaders(
            "200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1"
        )
        rec = writer.create_warc_record(
            f"http://example.org/{i}", "response", payload=io.BytesIO(text.encode()), http_headers=headers
        )
        writer.write_record(rec)
    return out.getvalue(), texts


@pytest.mark.parametrize("gzip", [True, False], ids=["warc.gz", "warc"])
def test_truncated_warc_never_yields_a_cut_document(tmp_path: Path, gzip: bool):
    data, texts = _warc_bytes(gzip)
    name = "cut.warc.gz" if gzip else "cut.warc"
    whole = read_warc_source("cc", WarcSource(kind="warc", paths=[name]), _write(tmp_path, name, data))
    assert [d["text"] for d in whole] == texts
    outcomes = {"error": 0, "complete": 0}
    for cut in range(1, len(data), 97):
        (tmp_path / name).write_bytes(data[:cut])
        try:
            docs = read_warc_source("cc", WarcSource(kind="warc", paths=[name]), tmp_path)
        except LineageError as e:
            assert name in str(e) and "\n" not in str(e), str(e)
            outcomes["error"] += 1
            continue
        assert [d["text"] for d in docs] == texts[: len(docs)], f"cut at {cut} gave a partial document"
        outcomes["complete"] += 1
    assert outcomes["error"] > 0


def _write(root: Path, name: str, data: bytes) -> Path:
    (root / name).write_bytes(data)
    return root


# ------------------------------------------------------------------------------ the embedded web
def test_embedded_web_serves_api_and_prose_pages_and_the_crawler_reaches_both():
    src = PydocSource(kind="pydoc", max_pages=8, max_depth=2, concurrency=1, per_host_concurrency=1)
    docs, log = read_pydoc_source("pydoc_web", src)
    kinds = {d["url"]: d["page_kind"] for d in docs}
    assert {"api", "prose"} <= set(kinds.values()), kinds
    assert all((k == "prose") == u.startswith("pydoc:/projects/") for u, k in kinds.items())
    prose = next(d for d in docs if d["page_kind"] == "prose")
    # a README wrapped in the site's boilerplate, with links on to other project pages
    assert "<nav>" in prose["text"] and "<footer" in prose["text"] and "Related projects" in prose["text"]
    assert len(re.findall(r'href="/projects/[^"]+\.html"', prose["text"])) >= 3
    api = next(d for d in docs if d["page_kind"] == "api" and d["url"] != "pydoc:/")
    assert 'href="/projects/' in api["text"]  # pydoc's pages link into the project pages


def test_embedded_web_project_pages_render_readmes(monkeypatch):
    monkeypatch.setenv("LINEAGE_TEST_MARKER", "zq9-not-for-pages")
    with EmbeddedWeb(PydocSource(kind="pydoc"), DistSplit()) as web:
        # pydoc shows os.environ: this process's variables must not reach the pages (or the corpus)
        assert "zq9-not-for-pages" not in web.get("/os.html")[2].decode()
        project = web.projects[0]
        status, ctype, body = web.get(project.path)
        assert (status, ctype.split(";")[0]) == (200, "text/html")
        page = body.decode()
        assert f"<h1>{html.escape(project.name)} " in page and "<p>" in page
        assert web.get("/projects/no-such-project.html")[0] == 404
        assert web.get("/")[0] == 200


def test_prose_distributions_are_disjoint_from_the_reference_source():
    split = DistSplit()
    web = {p.name.lower() for p in web_projects(split, 600)}
    ref_docs = read_python_docs_source(
        "dist_docs", PythonDocsSource(kind="python_docs", part="distributions", min_chars=0), split
    )
    ref = {d["url"].removeprefix("python:distributions/").split("/")[0] for d in ref_docs}
    assert len(web) >= 10 and len(ref) >= 10
    assert not web & ref
    # the split is a seeded hash of the name: stable, and the seed reshuffles it
    assert {p.name.lower() for p in web_projects(split, 600)} == web
    assert {p.name.lower() for p in web_projects(DistSplit(seed=1), 600)} != web
    assert not web_projects(DistSplit(web_share=0.0), 0)
    assert all(dist_side(n, DistSplit(web_share=1.0)) == "web" for n in ref)
