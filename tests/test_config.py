from pathlib import Path

import pytest
import yaml

from pipeline.config import deep_merge, flatten, load_params, parse_params
from pipeline.errors import LineageError
from tests.conftest import ROOT, files_params, shipped_params


def test_shipped_params_validate():
    params = parse_params(shipped_params())
    assert params.quality.alpha == 9.0
    assert params.quality.n_features == 2**18


@pytest.mark.parametrize("profile", sorted(p.stem for p in (ROOT / "profiles").glob("*.yaml")))
def test_every_profile_validates_over_params(profile: str):
    over = yaml.safe_load((ROOT / "profiles" / f"{profile}.yaml").read_text())
    merged = parse_params(deep_merge(shipped_params(), over))
    for key, value in flatten(over).items():
        section, *rest = key.split(".")
        got = getattr(merged, section).model_dump(mode="json")
        for part in rest:
            got = got[part] if isinstance(got, dict) else got
        assert got == value or str(got) == str(value), key


@pytest.mark.parametrize(
    "override, expected",
    [
        ({"quality": {"alpha": -1}}, "quality.alpha: Input should be greater than 0 (got -1)"),
        ({"quality": {"alfa": 3}}, "quality.alfa: Extra inputs are not permitted"),
        (
            {"common": {"task_runner": "spark"}},
            "common.task_runner: Input should be 'threads', 'processes', 'dask', 'ray' or 'sync'",
        ),
        (
            {"crawl": {"sources": {"web": {"kind": "ftp"}}}},
            "crawl.sources.web: Input tag 'ftp' found using 'kind'",
        ),
        ({"crawl": {"sources": {"web": {"max_pages": 0}}}}, "crawl.sources.web"),
        ({"mix": {"weights": {"ref": 0.5, "web": 0.4}}}, "mix.weights: weights must sum to 1"),
        (
            {"mix": {"weights": {"ref": 0.6, "web": 0.2, "nope": 0.2}}},
            "mix.weights names unknown source(s) ['nope']",
        ),
        ({"dedup": {"bands": 20, "rows": 8}}, "bands*rows = 160 exceeds num_perm = 112"),
        ({"clean": {"min_words": 500, "max_words": 100}}, "clean: min_words must not exceed max_words"),
    ],
)
def test_bad_values_name_their_dotted_key(tmp_path: Path, override, expected):
    with pytest.raises(LineageError) as err:
        parse_params(files_params(tmp_path, override), "params.yaml")
    msg = str(err.value)
    assert expected in msg
    assert "\n" not in msg


def test_unknown_kind_with_all_fields_is_reported_once(tmp_path: Path):
    data = files_params(tmp_path)
    data["crawl"]["sources"]["web"] = {"kind": "gopher", "globs": ["x"]}
    with pytest.raises(LineageError, match=r"crawl\.sources\.web: Input tag 'gopher'"):
        parse_params(data)


def test_missing_and_malformed_files(tmp_path: Path):
    with pytest.raises(LineageError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("common: [unclosed")
    with pytest.raises(LineageError, match="not valid YAML"):
        load_params(bad)


def test_flatten_gives_dvc_set_param_keys():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}
