"""Property-based fuzzing of the config loader: any file text (TOML, YAML, JSON, or bytes that
are none of these), any nested value and any flat override (the CLI flags) ends in a valid
:class:`RunConfig` or one of our error classes -- never another exception.

Bounded and deterministic: a fixed number of examples from a derandomized search.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys.config import (
    OVERRIDES,
    DataConfig,
    EvaluationConfig,
    RankingConfig,
    RecommendConfig,
    RunConfig,
    apply_overrides,
    config_from_dict,
    load_config,
)
from recsys.data.prepare import PrepareConfig
from recsys.errors import ConfigError, RecsysError
from recsys.params import FMParams, KNNParams

FUZZ = settings(max_examples=250, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip

_KEYS = {
    "data": [f.name for f in dataclasses.fields(DataConfig)],
    "prepare": [f.name for f in dataclasses.fields(PrepareConfig)],
    "regressor": [f.name for f in dataclasses.fields(FMParams)],
    "classifier": [f.name for f in dataclasses.fields(FMParams)],
    "ranking": list(RankingConfig.OWN_KEYS) + [f.name for f in dataclasses.fields(FMParams)],
    "knn": [f.name for f in dataclasses.fields(KNNParams)],
    "recommend": [f.name for f in dataclasses.fields(RecommendConfig)],
    "evaluation": [f.name for f in dataclasses.fields(EvaluationConfig)],
    "sagemaker": ["bucket", "role", "prefix", "region", "train_instance_type", "keep_endpoint", "tags"],
}

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["torch", "sagemaker", "ranking", "classifier", "tiny", "auto", "softmax", "bpr", "adam",
                     "faiss.Flat", "faiss.IVFFlat", "COSINE", "L2", "random", "leave_last_out", "normal", ""]),  # fmt: skip
    st.sampled_from([0, 1, 2, 5, 64, 100, 0.5, 1e-3, -1, 2**32, 10**20]),
)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                       max_leaves=8)  # fmt: skip


_BASE = RunConfig().to_dict()
_rarely = st.sampled_from([False] * 19 + [True])  # (integers would favour 0)


@st.composite
def raw_configs(draw: st.DrawFn) -> dict:
    """A valid config (the defaults) with one to three values replaced by anything, now and
    then a whole section replaced or an unknown key added: every validator gets reached."""
    raw = copy.deepcopy(_BASE)
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from([None, *_KEYS]))
        if section is None:
            raw[draw(st.sampled_from(list(RunConfig.TOP_KEYS)))] = draw(_values)
        elif draw(_rarely):
            raw[section] = draw(_values)
        elif isinstance(raw[section], dict):
            raw[section][draw(st.sampled_from(_KEYS[section]))] = draw(_values)
    if draw(_rarely):
        raw[draw(st.text(max_size=8))] = draw(_values)
    return raw


def _accepts_or_refuses(make) -> None:
    try:
        cfg = make()
    except RecsysError:
        return
    assert isinstance(cfg, RunConfig)
    cfg.validate()  # what was accepted stays valid


@FUZZ
@given(raw=raw_configs())
def test_nested_values(raw: dict) -> None:
    _accepts_or_refuses(lambda: config_from_dict(raw))


def _toml_literal(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        items = [_toml_literal(v) for v in value]
        return None if None in items else "[" + ", ".join(items) + "]"
    items = [(json.dumps(k), _toml_literal(v)) for k, v in value.items()]
    return None if any(v is None for _, v in items) else "{" + ", ".join(f"{k} = {v}" for k, v in items) + "}"


def _as_toml(raw: dict) -> str:
    lines = []
    for key, value in raw.items():
        if not isinstance(value, dict):
            lit = _toml_literal(value)
            if lit is not None:
                lines.append(f"{json.dumps(key)} = {lit}")
    for key, value in raw.items():
        if isinstance(value, dict):
            lines.append(f"[{json.dumps(key)}]")
            lines += [f"{json.dumps(k)} = {lit}" for k, v in value.items() if (lit := _toml_literal(v)) is not None]
    return "\n".join(lines) + "\n"


@FUZZ
@given(raw=raw_configs(), suffix=st.sampled_from([".toml", ".yaml", ".json"]))
def test_config_files_with_valid_syntax(tmp_path_factory: pytest.TempPathFactory, raw: dict, suffix: str) -> None:
    path = tmp_path_factory.mktemp("cfg") / f"config{suffix}"
    if suffix == ".toml":
        text = _as_toml(raw)
    elif suffix == ".yaml":
        text = yaml.safe_dump(raw, allow_unicode=True)
    else:
        text = json.dumps(raw)  # NaN/Infinity included: Python's JSON reads them
    path.write_text(text, encoding="utf-8")
    _accepts_or_refuses(lambda: load_config(path))


_syntax_bits = st.sampled_from(["[", "]", "{", "}", "=", ":", "-", "\n", "\t", " ", '"', "'", "#", ",", "&a", "*a", "!!python/object:os.system",
                                "seed", "knn", "k", "[knn]", "k = 5", "seed: 1", "data:\n  path: x", "0x10", "1e999", "\x00", "é"])  # fmt: skip


@FUZZ
@given(text=st.one_of(st.text(max_size=200), st.lists(_syntax_bits, max_size=30).map("".join)),
       suffix=st.sampled_from([".toml", ".yaml", ".yml", ".json"]))  # fmt: skip
def test_config_files_with_any_text(tmp_path_factory: pytest.TempPathFactory, text: str, suffix: str) -> None:
    path = tmp_path_factory.mktemp("cfg") / f"config{suffix}"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _accepts_or_refuses(lambda: load_config(path))


@FUZZ
@given(data=st.binary(max_size=200), suffix=st.sampled_from([".toml", ".yaml", ".json"]))
def test_config_files_with_any_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes, suffix: str) -> None:
    path = tmp_path_factory.mktemp("cfg") / f"config{suffix}"
    path.write_bytes(data)
    _accepts_or_refuses(lambda: load_config(path))


@FUZZ
@given(overrides=st.dictionaries(st.one_of(st.sampled_from([*OVERRIDES, "seed", "sagemaker"]), st.text(max_size=8)), _values, max_size=4))
def test_flat_overrides(overrides: dict) -> None:
    _accepts_or_refuses(lambda: apply_overrides(RunConfig(), **overrides))


def test_the_fuzzer_reaches_both_outcomes() -> None:
    """The strategies are not all refused: a config the fuzzer can produce is accepted."""
    assert isinstance(config_from_dict({"seed": 5, "knn": {"k": 5}, "regressor": {"epochs": 2}}), RunConfig)
    with pytest.raises(RecsysError):
        config_from_dict({"knn": {"k": 0}})


def test_non_utf8_and_syntax_errors_do_not_quote_the_file(tmp_path: Path) -> None:
    secret = "hunter2-do-not-print"
    cases = {
        "a.yaml": f"key: {secret}: more\n".encode(),
        "b.toml": f"x = {secret}\n".encode(),
        "c.json": f'{{"x": {secret}}}'.encode(),
        "d.toml": f"# {secret}\n".encode() + b"\xff\xfe\n",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(RecsysError) as info:
            load_config(tmp_path / name)
        assert secret not in str(info.value) and name in str(info.value)
        assert "line " in str(info.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("1: a\nfoo: b\n", "unknown keys 1, 'foo'"),  # keys of mixed types: sorted by their text
        ("knn:\n  k: 5\n  2: x\n  bar: y\n", "unknown keys 2, 'bar' in [knn]"),
        ("regressor:\n  clip_gradient: " + "9" * 400 + "\n", "clip_gradient must be a positive number"),
        ("evaluation:\n  liked_threshold: " + "9" * 400 + "\n", "evaluation.liked_threshold must be a number"),
        ("recommend:\n  sample_customers: true\n", "recommend.sample_customers must be an integer >= 0"),
    ],
)
def test_odd_yaml_values_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    """YAML gives keys that are not strings, integers too large for a float and booleans where a
    count belongs: each is a ConfigError naming the key, never an internal error."""
    path = tmp_path / "odd.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(path)
