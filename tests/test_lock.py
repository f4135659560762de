"""The environment is pinned: `make install` installs requirements.lock (exact versions and hashes,
torch exactly, first), so two fresh clones read the same embedded corpus and run the same code."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def locked() -> dict[str, tuple[str, str | None]]:
    out = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        m = PIN.match(line)
        if m:
            out[canonicalize_name(m.group(1))] = (m.group(2), m.group(3))
    return out


def test_makefile_installs_torch_exactly_then_the_lock_with_hashes():
    make = (ROOT / "Makefile").read_text()
    recipe = make[make.index("$(STAMP):") :]
    torch_at = recipe.index("pip install -q torch==2.13.0")
    lock_at = recipe.index("pip install -q --require-hashes --no-deps -r requirements.lock")
    assert torch_at < lock_at
    assert "requirements.lock" in make.split("$(STAMP):")[1].splitlines()[0]  # a new lock reinstalls


def test_every_locked_package_has_hashes_and_torch_is_not_locked():
    text = (ROOT / "requirements.lock").read_text()
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text)
    pins = [b for b in blocks if PIN.match(b.splitlines()[0])]
    assert len(pins) > 100
    assert all("--hash=sha256:" in b for b in pins)
    assert "torch" not in locked() and not any(n.startswith("nvidia-") for n in locked())


def test_the_installed_environment_is_the_lock():
    wrong = []
    for name, (version, marker) in locked().items():
        if marker and not Marker(marker).evaluate():
            continue
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            wrong.append(f"{name}: locked {version}, not installed")
            continue
        if have != version:
            wrong.append(f"{name}: locked {version}, installed {have}")
    assert wrong == [], "run `make install` (the venv is not requirements.lock): " + "; ".join(wrong[:10])


def test_the_lock_satisfies_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = locked()
    for spec in project["dependencies"] + project["optional-dependencies"]["dev"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        if name == "torch":
            continue
        assert name in lock, f"{req.name} is in pyproject.toml but not in requirements.lock (make lock)"
        assert req.specifier.contains(lock[name][0], prereleases=True), (spec, lock[name][0])
