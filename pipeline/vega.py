"""Offline `dvc plots show`: a local HTML template with Vega inlined.

DVC's plot page loads Vega, Vega-Lite and Vega-Embed from a CDN, so it is blank without a network.
``python -m pipeline.vega`` (run by ``make install``) downloads the same three versions DVC asks for
from the npm registry once, checks each tarball's SHA-256, writes ``.dvc/plots/template.html`` with
the scripts inlined, and points this clone's ``.dvc/config.local`` at it (``plots.html_template``).
From then on every ``dvc plots show`` page is self-contained and renders offline. Without a
network at install time nothing changes: DVC keeps its CDN template.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tarfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

REGISTRY = "https://registry.npmjs.org"
# the versions dvc-render's default page loads, with the SHA-256 of each npm tarball
PACKAGES = (
    ("vega", "5.20.2", "build/vega.min.js", "d77deab01d6104b1239228720721f93003e60797d2faced7ffdd759fa70f989d"),
    ("vega-lite", "5.2.0", "build/vega-lite.min.js", "f64ca4745f043447ac86b67dc9e9592ec2b85ac8b8dafc35faf970f142463e4b"),
    ("vega-embed", "6.18.2", "build/vega-embed.min.js", "93aeee312e92077b0252ef026c0fe0ec8fa430c19825aeada6cd3a6804e68e1b"),
)  # fmt: skip
TEMPLATE = "plots/template.html"  # relative to .dvc/, as DVC resolves plots.html_template

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>gpt-lineage plots</title>
%s
    <style>
        body { font-family: sans-serif; }
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def tarball_url(name: str, version: str) -> str:
    return f"{REGISTRY}/{name}/-/{name}-{version}.tgz"


def _download(url: str, timeout: float = 15.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - a fixed https URL
        return resp.read()


def script_from_tarball(data: bytes, member: str, sha256: str, url: str) -> str:
    """The minified script inside an npm tarball, after checking the tarball's digest."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ValueError(f"{url}: SHA-256 {digest[:12]}... does not match the pinned {sha256[:12]}...")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        f = tar.extractfile(f"package/{member}")
        if f is None:
            raise ValueError(f"{url}: no {member} in the tarball")
        return f.read().decode("utf-8")


def render_template(scripts: list[str]) -> str:
    # "</script" inside a script would end the element early; none of the pinned builds has it,
    # but a different build must not silently break the page
    for s in scripts:
        if "</script" in s.lower():
            raise ValueError("a Vega script contains '</script'; it cannot be inlined")
    tags = "\n".join(f'    <script type="text/javascript">\n{s}\n    </script>' for s in scripts)
    return PAGE % tags


def set_local_config(dvc_dir: Path, template: str) -> None:
    """Set ``plots.html_template`` in ``.dvc/config.local`` (this clone only), keeping the rest."""
    import configparser

    path = dvc_dir / "config.local"
    cfg = configparser.ConfigParser()
    if path.exists():
        cfg.read(path)
    if not cfg.has_section("plots"):
        cfg.add_section("plots")
    cfg.set("plots", "html_template", template)
    with path.open("w") as f:
        cfg.write(f)


def install(
    root: Path,
    fetch: Callable[[str], bytes] = _download,
    packages: tuple[tuple[str, str, str, str], ...] = PACKAGES,
) -> Path:
    """Write ``.dvc/plots/template.html`` and point DVC at it; returns the template's path."""
    dvc_dir = root / ".dvc"
    if not dvc_dir.is_dir():
        raise FileNotFoundError(f"{dvc_dir}: not a DVC project")
    scripts = []
    for name, version, member, sha in packages:
        url = tarball_url(name, version)
        scripts.append(script_from_tarball(fetch(url), member, sha, url))
    out = dvc_dir / TEMPLATE
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(render_template(scripts), encoding="utf-8")
    tmp.replace(out)
    set_local_config(dvc_dir, TEMPLATE)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.vega", description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=".", help="project root holding .dvc/ (default: .)")
    args = ap.parse_args(argv)
    root = Path(args.root).resolve()
    if (root / ".dvc" / TEMPLATE).is_file():
        set_local_config(root / ".dvc", TEMPLATE)
        print(f"dvc plots: offline template in place ({root / '.dvc' / TEMPLATE})")
        return 0
    try:
        out = install(root)
    except (OSError, ValueError, tarfile.TarError) as e:
        print(f"dvc plots: kept DVC's CDN template ({e})", file=sys.stderr)
        return 0
    print(f"dvc plots: Vega inlined into {out}; `dvc plots show` renders offline")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
