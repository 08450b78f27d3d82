"""The package's shape: one import root, light store, a public front door."""

from __future__ import annotations

import json
import math
import pathlib
import re
import subprocess
import sys

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import embedviz
from embedviz.store import codec

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_store_import_pulls_in_neither_torch_opentsne_nor_bokeh():
    code = ("import sys, embedviz.store, embedviz.cli; "
            "print(sorted(m for m in ('torch', 'openTSNE', 'bokeh') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_nothing_imports_the_bare_monitor_or_server_names():
    pattern = re.compile(r"^\s*(from|import)\s+(monitor|server)\b", re.M)
    offenders = [str(p) for d in ("embedviz", "monitor", "server", "tests", "examples", "benchmarks")
                 for p in (ROOT / d).rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_subpackages_are_mapped_under_embedviz():
    import embedviz.monitor
    import embedviz.server
    assert pathlib.Path(embedviz.monitor.__file__).parent.name == "monitor"
    assert pathlib.Path(embedviz.server.__file__).parent.name == "server"


def test_public_names():
    assert set(embedviz.__all__) >= {"open_store", "Store", "Update", "Summary", "Histogram",
                                     "EmbedvizError", "StoreError"}
    for name in embedviz.__all__:
        assert hasattr(embedviz, name), name
    assert issubclass(embedviz.NotAStoreError, embedviz.StoreError)
    assert issubclass(embedviz.InvalidRecordError, ValueError)


floats = st.floats(allow_nan=True, allow_infinity=True)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | floats | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20)


def _same(a, b):
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b and type(a) is type(b)


@given(json_values)
def test_codec_round_trips_any_json_value_with_nan_and_inf(value):
    text = codec.dumps(value)
    json.loads(text, parse_constant=_not_strict_json)  # strict JSON: no NaN/Infinity literals
    assert _same(codec.loads(text), value)


def _not_strict_json(literal: str) -> None:
    raise AssertionError(f"{literal} written as a bare literal: not strict JSON")


@given(arrays(st.sampled_from([np.float32, np.float64, np.int64]), st.tuples(st.integers(0, 5), st.integers(1, 4))))
def test_codec_round_trips_arrays_bit_for_bit(arr):
    back = codec.loads(codec.dumps({"a": arr}))["a"]
    assert back.dtype == arr.dtype and back.shape == arr.shape
    assert back.tobytes() == arr.tobytes()
