import random

import pytest

from pipeline.config import CleanConfig
from pipeline.text.clean import clean_doc
from pipeline.text.extract import extract_text, fallback_extract, normalize_text
from pipeline.text.filters import detect_language, drop_reason, dup_ngram_char_frac, top_ngram_char_frac
from tests.conftest import prose

CFG = CleanConfig()

ARTICLE = """<html><head><title>T</title><script>var x = 1;</script><style>p{}</style></head><body>
<nav><a href="/">Home</a> | <a href="/about">About</a> | <a href="/shop">Shop</a></nav>
<article><h1>How rivers shape mountains</h1>
<p>Rivers cut into the rock of a mountain over thousands of years, and the valleys they leave behind tell the
history of the climate in which they formed. A steep valley with a narrow floor is the work of a young river.</p>
<p>Older rivers wander across wide plains and carry fine sediment to the sea, where it settles into layers that
geologists read like the pages of a book about the past of the whole region and the people who lived there.</p>
</article><footer>Copyright 2024 Example Media. All rights reserved. Privacy | Terms | Cookies</footer></body></html>"""


def test_extraction_keeps_article_and_drops_boilerplate():
    text, how = extract_text(ARTICLE)
    assert how == "trafilatura"
    assert "Rivers cut into the rock" in text and "geologists read like the pages" in text
    assert "var x" not in text and "Privacy | Terms" not in text


def test_fallback_when_trafilatura_rejects_a_page():
    page = "<html><body><div>Short list</div><ul><li>one item</li><li>two items</li></ul></body></html>"
    text, how = extract_text(page)
    assert how in {"trafilatura", "fallback"}
    assert "one item" in fallback_extract(page) and "two items" in fallback_extract(page)
    assert extract_text("<html><body></body></html>")[1] == "none"


def test_normalize_text_nfkc_controls_and_spaces():
    assert normalize_text("ﬁne\u00a0\u00a0day\x07\r\n\n\n\nnext  line") == "fine day\n\nnext line"
    assert normalize_text("e\u0301", "NFC") == "\u00e9"


def test_good_prose_passes_every_rule():
    assert drop_reason(prose(random.Random(1), 300), CFG) is None


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        ("the river and the mountain with a view", "min_words"),
        (" ".join(["a"] * 60), "min_mean_word_length"),
        (" ".join(["extraordinarilylongword"] * 60), "max_mean_word_length"),
        (" ".join(f"#tag{i} the word" for i in range(40)), "symbol_word_ratio"),
        ("\n".join(f"- item {i} of the list with words" for i in range(30)), "bullet_lines"),
        (
            "\n".join(
                f"and the story goes on about the river and the mountain number {i} ..." for i in range(30)
            ),
            "ellipsis_lines",
        ),
        (" ".join(f"{i} 123456 234567 the of 345678 456789 567890 678901" for i in range(20)), "alpha_words"),
        (" ".join(["river mountain garden window valley"] * 20), "stop_words"),
    ],
)
def test_each_gopher_quality_rule(text: str, reason: str):
    assert drop_reason(text, CFG) == reason


def test_repetition_rules():
    rng = random.Random(2)
    line = "The river flows to the sea and the valley is wide with trees."
    repeated_lines = "\n".join([line] * 10 + [prose(rng, 60)])
    assert drop_reason(repeated_lines, CFG) in {"dup_line_frac", "dup_para_frac", "dup_line_char_frac"}
    spam = prose(rng, 80) + " " + " ".join(["buy the cheap shoes"] * 40)
    assert drop_reason(spam, CFG).startswith(("top_", "dup_"))
    words = ["a", "b", "c", "d", "e", "a", "b", "c", "d", "e", "x", "y"]
    assert dup_ngram_char_frac(words, 5) == pytest.approx(10 / 12)
    assert top_ngram_char_frac(words, 2) == pytest.approx(4 / 12)


def test_language_check():
    assert detect_language(prose(random.Random(3), 100))[0] == "en"
    german = (
        "Der Fluss fliesst durch das Tal und die Berge sind hoch. Wir gehen am Morgen in den Wald und "
        "sehen die Tiere, die dort leben. Die Kinder spielen im Garten und die Eltern arbeiten im Haus. "
        "Im Winter liegt viel Schnee auf den Dächern, und die Strassen sind oft glatt und gefährlich. "
        "Meine Grossmutter erzählt gern Geschichten aus ihrer Jugend, als es noch keine Autos gab."
    )
    no_stop_words = CFG.model_copy(
        update={"min_stop_words": 0, "min_words": 20}
    )  # the English stop-word rule would fire first
    assert drop_reason(german, no_stop_words) == "language"
    assert drop_reason(german, no_stop_words.model_copy(update={"languages": ["en", "de"]})) is None


def test_clean_doc_records_reason_and_extractor():
    raw = {
        "id": "s/1",
        "source": "s",
        "role": "web",
        "url": "u",
        "text": ARTICLE,
        "content_type": "text/html",
    }
    doc, reason = clean_doc(raw, CFG.model_copy(update={"min_words": 20}))
    assert reason is None and doc["extractor"] == "trafilatura" and doc["words"] > 50
    doc, reason = clean_doc({**raw, "text": "tiny page", "content_type": "text/plain"}, CFG)
    assert reason == "min_words" and doc["extractor"] == "plain"


MIN_RULES = {"min_words", "min_mean_word_length", "alpha_words", "stop_words", "language"}


@pytest.mark.parametrize(
    "text",
    [
        "the river and the mountain with a view",
        " ".join(f"#tag{i} the word" for i in range(40)),
        " ".join(["river mountain garden window valley"] * 20),
        prose(random.Random(2), 80) + " " + " ".join(["buy the cheap shoes"] * 40),
    ],
)
def test_a_drop_carries_the_measured_value_and_the_threshold_it_crossed(text: str):
    import pickle

    drop = drop_reason(text, CFG)
    assert drop is not None and drop.value is not None and drop.threshold is not None
    assert drop.value < drop.threshold if drop in MIN_RULES else drop.value > drop.threshold
    again = pickle.loads(pickle.dumps(drop))  # process-based task runners ship it between workers
    assert (again, again.value, again.threshold) == (drop, drop.value, drop.threshold)


def test_clean_stage_writes_dropped_samples_per_reason(project):
    import json

    from pipeline.config import parse_params
    from pipeline.io import read_rows
    from pipeline.stage import run_stage
    from stages import clean, crawl
    from tests.conftest import files_params

    root, _ = project
    rng = random.Random(5)
    with (root / "corpus" / "web" / "pages.jsonl").open("a") as fh:
        for i in range(6):  # short pages (min_words) and repeated lines (dup_line_frac)
            fh.write(json.dumps({"text": f"Buy now {i}. Cheap shoes for the river."}) + "\n")
            fh.write(
                json.dumps({"text": "\n".join(["Home | Shop | Cart of the day"] * 12 + [prose(rng, 40)])})
                + "\n"
            )
    params = parse_params(files_params(root, {"clean": {"dropped_samples": 3}}))
    run_stage("crawl", crawl.body, root, params)
    metrics = run_stage("clean", clean.body, root, params)
    samples = json.loads((root / "data" / "clean" / "dropped_samples.json").read_text())
    assert {"min_words", "dup_line_frac"} <= set(samples) and set(samples) == set(metrics["drops"])
    for reason, entry in samples.items():
        assert entry["documents"] == metrics["drops"][reason] and entry["threshold"] is not None
        assert 1 <= len(entry["samples"]) <= 3
        for s in entry["samples"]:
            assert s["value"] < s["threshold"] if reason in MIN_RULES else s["value"] > s["threshold"]
            assert s["text"] and s["source"] == "web" and s["id"].startswith("web/")
    assert len(samples["min_words"]["samples"]) == 3 and samples["min_words"]["threshold"] == 20
    dropped = [
        r for p in sorted((root / "data" / "clean" / "dropped").glob("*.parquet")) for r in read_rows(p)
    ]
    assert all(r["reason"] and r["value"] is not None for r in dropped if r["reason"] != "extraction")


# ----------------------------------------------------------------------- documentation sites
ENTRIES = [
    ("isfinite(x, /)", "Return True if x is neither an infinity nor a NaN, and False otherwise."),
    ("isinf(x, /)", "Return True if x is a positive or negative infinity, and False otherwise."),
    ("isnan(x, /)", "Return True if x is a NaN (not a number), and False otherwise."),
    ("isclose(a, b, *, rel_tol=1e-09, abs_tol=0.0)", "Return True if the values a and b are close to each "
     "other and False otherwise. Whether or not two values are considered close is determined according to "
     "given absolute and relative tolerances."),
    ("floor(x, /)", "Return the floor of x as an Integral. This is the largest integer less than or equal to x."),
    ("ceil(x, /)", "Return the ceiling of x as an Integral. This is the smallest integer greater than or equal to x."),
    ("trunc(x, /)", "Truncates the Real x to the nearest Integral toward 0. Uses the __trunc__ magic method."),
    ("copysign(x, y, /)", "Return a float with the magnitude (absolute value) of x but the sign of y. On "
     "platforms that support signed zeros, copysign(1.0, -0.0) returns -1.0."),
    ("fabs(x, /)", "Return the absolute value of the float x."),
    ("fmod(x, y, /)", "Return fmod(x, y), according to platform C. x % y may differ."),
    ("gcd(*integers)", "Greatest Common Divisor. Return the greatest common divisor of the specified integer "
     "arguments. If any of the arguments is nonzero, then the returned value is the largest positive integer "
     "that is a divisor of all arguments."),
    ("lcm(*integers)", "Least Common Multiple. Return the least common multiple of the specified integer "
     "arguments. If any of the arguments is zero, then the returned value is 0."),
]  # fmt: skip


def api_reference_page() -> str:
    """A Sphinx API reference page: a definition list entry per function (signature, then a
    description whose phrases recur from entry to entry, as real references do), a summary table,
    and the theme's navigation around it."""
    entries = "\n".join(
        f'<dl class="py function"><dt id="math.{sig.split("(")[0]}"><span class="sig-name">{sig}</span></dt>'
        f"<dd><p>{desc}</p></dd></dl>"
        for sig, desc in ENTRIES
    )
    rows = "".join(f"<tr><td><code>{sig.split('(')[0]}</code></td><td>{desc.split('.')[0]}</td></tr>"
                   for sig, desc in ENTRIES)  # fmt: skip
    nav = "".join(f'<li><a href="{m}.html">{m}</a></li>' for m in ("cmath", "decimal", "fractions", "random"))
    return (
        '<html><head><title>math</title></head><body><div class="related"><ul>' + nav + "</ul></div>"
        '<div class="body" role="main"><h1>math - Mathematical functions</h1>'
        "<p>This module provides access to the mathematical functions defined by the C standard. These functions "
        "cannot be used with complex numbers; use the functions of the same name from the cmath module if you "
        "require support for complex numbers.</p><h2>Number-theoretic and representation functions</h2>"
        f"<table>{rows}</table>{entries}</div>"
        '<div class="sphinxsidebar"><h3>Navigation</h3><ul>' + nav + "</ul></div>"
        '<div class="footer">Copyright 2001-2025, Python Software Foundation. Created using Sphinx.</div></body></html>'
    )


def test_an_api_reference_page_is_kept_with_its_main_text():
    doc = {"id": "p", "source": "docs", "role": "web", "url": "math.html", "text": api_reference_page(),
           "content_type": "text/html"}  # fmt: skip
    cleaned, reason = clean_doc(doc, CFG)
    assert reason is None, f"dropped by {reason} ({reason.value} > {reason.threshold})"
    for sig, desc in ENTRIES:
        assert sig.split("(")[0] in cleaned["text"] and desc.split(".")[0] in cleaned["text"]
    assert "Created using Sphinx" not in cleaned["text"]
    # as Gopher measured repeated n-grams (over the whole document), the shared phrasing drops it
    gopher = CFG.model_copy(update={"dup_ngram_unit": "document"})
    assert str(clean_doc(doc, gopher)[1]).startswith("dup_")


def test_repeated_n_grams_inside_a_block_are_still_dropped():
    rng = random.Random(5)
    stuffed = (
        prose(rng, 120)
        + "\n"
        + " ".join(
            f"best cheap {w} shoes for sale online today"
            for w in ("red", "blue", "green", "black", "white", "brown")
        )
    )
    reason = drop_reason(stuffed, CFG)
    assert reason is not None and reason.startswith(("dup_", "top_"))


def test_extract_text_defaults_are_the_clean_sections():
    import inspect

    import yaml

    from tests.conftest import ROOT

    params = yaml.safe_load((ROOT / "params.yaml").read_text())["clean"]
    page = api_reference_page()
    for key in ("focus", "include_tables", "fallback"):
        assert params[key] == CleanConfig.model_fields[key].default, key
        assert inspect.signature(extract_text).parameters[key].default is None  # None: the config's default
    assert extract_text(page) == extract_text(page, focus=CFG.focus, include_tables=CFG.include_tables)
