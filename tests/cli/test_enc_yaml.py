"""The ENC's YAML writer reads back to the same values (PyYAML here, Puppet's own parser in the e2e
tests), and the quick HTTP client's URL and answer parsing."""

from __future__ import annotations

import math
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from treeherd.cli.enc_yaml import dump, enc_document
from treeherd.transport.quick import QuickError, _parse, split_url

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(
        ["yes", "No", "on", "OFF", "~", "null", "1.5", "0x10", "1:20", "a: b", "- x", "#c", "", " ", "*a"]
    ),
)
_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


def _no_surrogates(value: Any) -> bool:
    if isinstance(value, str):
        return not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, list):
        return all(_no_surrogates(v) for v in value)
    if isinstance(value, dict):
        return all(_no_surrogates(k) and _no_surrogates(v) for k, v in value.items())
    return True


@given(st.dictionaries(st.text(max_size=10), _values, max_size=5).filter(_no_surrogates))
def test_any_json_value_reads_back(document: dict[str, Any]) -> None:
    assert yaml.safe_load(dump(document)) == document


def test_the_enc_document() -> None:
    text = enc_document(
        {
            "classes": {"profile::web": {"workers": 4, "ratio": 1e20}, "base": {}},
            "parameters": {"treeherd_nodes": ["corp.web"], "treeherd_labels": {}, "flag": "yes"},
            "environment": "production",
        }
    )
    assert text == (
        "---\n"
        "classes:\n"
        "  profile::web:\n"
        "    workers: 4\n"
        "    ratio: 1.0e+20\n"
        "  base: {}\n"
        "parameters:\n"
        "  treeherd_nodes:\n"
        "    - corp.web\n"
        "  treeherd_labels: {}\n"
        '  flag: "yes"\n'
        "environment: production\n"
    )
    assert "environment" not in enc_document({"classes": {}, "parameters": {}, "environment": None})


def test_special_floats() -> None:
    loaded = yaml.safe_load(dump({"a": math.inf, "b": -math.inf, "c": math.nan, "d": 1e-7}))
    assert (
        loaded["a"] == math.inf
        and loaded["b"] == -math.inf
        and math.isnan(loaded["c"])
        and loaded["d"] == 1e-7
    )


def test_split_url() -> None:
    assert split_url("http://127.0.0.1:7400") == ("127.0.0.1", 7400, "")
    assert split_url("http://manager/treeherd/") == ("manager", 80, "/treeherd")
    assert split_url("[::1]:9000") == ("::1", 9000, "")
    for bad in ("ftp://x", "http://:80", "http://host:99999", "http://host:x"):
        with pytest.raises(QuickError):
            split_url(bad)


def test_answers() -> None:
    assert _parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", "u") == (200, b"{}")
    assert _parse(b'HTTP/1.1 404 Not Found\r\n\r\n{"a":1}', "u") == (404, b'{"a":1}')
    with pytest.raises(QuickError, match="cut short"):
        _parse(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", "u")
    with pytest.raises(QuickError, match="did not answer in HTTP"):
        _parse(b"garbage", "u")
