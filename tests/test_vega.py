"""`dvc plots show` offline: Vega inlined into a local template that DVC uses for this clone."""

import hashlib
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from pipeline import vega


def _tarball(member: str, text: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = text.encode()
        info = tarfile.TarInfo(f"package/{member}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _fake_registry():
    blobs = {
        vega.tarball_url(name, "1.0.0"): _tarball(member, f"window.{name.replace('-', '_')} = 1;")
        for name, _, member, _ in vega.PACKAGES
    }
    packages = tuple(
        (name, "1.0.0", member, hashlib.sha256(blobs[vega.tarball_url(name, "1.0.0")]).hexdigest())
        for name, _, member, _ in vega.PACKAGES
    )
    return blobs, packages


def test_plots_page_inlines_vega_and_loads_nothing_from_a_cdn(tmp_path: Path):
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "dvc"), "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    blobs, packages = _fake_registry()
    out = vega.install(tmp_path, fetch=blobs.__getitem__, packages=packages)
    assert out == tmp_path / ".dvc" / "plots" / "template.html"
    assert "html_template = plots/template.html" in (tmp_path / ".dvc" / "config.local").read_text()
    (tmp_path / "loss.csv").write_text("step,loss\n1,3.0\n2,2.5\n")
    subprocess.run(
        [str(bin_dir / "dvc"), "plots", "show", "loss.csv", "-o", "page"], cwd=tmp_path, check=True,
        capture_output=True,
    )  # fmt: skip
    page = (tmp_path / "page" / "index.html").read_text()
    assert "window.vega_lite = 1;" in page and "window.vega_embed = 1;" in page
    assert "vegaEmbed(" in page and "cdn." not in page and "<script src=" not in page


def test_a_tarball_that_does_not_match_its_pinned_digest_is_refused(tmp_path: Path):
    (tmp_path / ".dvc").mkdir()
    blobs, packages = _fake_registry()
    bad = ((packages[0][0], "1.0.0", packages[0][2], "0" * 64),) + packages[1:]
    with pytest.raises(ValueError, match=r"registry\.npmjs\.org/vega/-/vega-1\.0\.0\.tgz: SHA-256"):
        vega.install(tmp_path, fetch=blobs.__getitem__, packages=bad)
    assert not (tmp_path / ".dvc" / "plots").exists() and not (tmp_path / ".dvc" / "config.local").exists()


def test_without_a_network_install_keeps_dvcs_template_and_succeeds(tmp_path: Path, monkeypatch, capsys):
    (tmp_path / ".dvc").mkdir()

    def offline(url: str) -> bytes:
        raise OSError(f"{url}: unreachable")

    monkeypatch.setattr(vega, "_download", offline)
    monkeypatch.setattr(vega.install, "__defaults__", (offline, vega.PACKAGES))
    assert vega.main(["--root", str(tmp_path)]) == 0
    assert "kept DVC's CDN template" in capsys.readouterr().err
    assert not (tmp_path / ".dvc" / "config.local").exists()
