"""Strict-JSON encoding of records that keeps NaN, Inf and arrays exact.

Plain JSON has no NaN or Infinity, and a list of floats for a vocabulary's vectors is large.
So a non-finite float becomes ``{"$float": "NaN" | "Infinity" | "-Infinity"}`` and an ndarray
becomes ``{"$array": {"dtype": "float32", "shape": [n, d], "data": "<base64, little-endian>"}}``.
Both read back bit for bit; the output passes any strict JSON parser.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import numpy as np

_FLOAT_NAMES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def to_jsonable(obj: Any) -> Any:
    """``obj`` with floats, numpy scalars and arrays replaced by strict-JSON values."""
    if isinstance(obj, float) or isinstance(obj, np.floating):
        value = float(obj)
        if math.isfinite(value):
            return value
        return {"$float": "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")}
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        if arr.dtype.kind not in "biuf":
            return to_jsonable(arr.tolist())
        little = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        return {"$array": {"dtype": arr.dtype.name, "shape": list(arr.shape),
                           "data": base64.b64encode(little.tobytes()).decode("ascii")}}
    if hasattr(obj, "to_dict"):
        return to_jsonable(obj.to_dict())
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return to_jsonable(obj.item())
    raise TypeError(f"cannot store a {type(obj).__name__} as JSON: convert it to numbers, "
                    "strings, lists or dicts first")


def _hook(d: dict) -> Any:
    if len(d) == 1:
        if "$float" in d and d["$float"] in _FLOAT_NAMES:
            return _FLOAT_NAMES[d["$float"]]
        if "$array" in d and isinstance(d["$array"], dict):
            spec = d["$array"]
            dtype = np.dtype(spec["dtype"]).newbyteorder("<")
            raw = base64.b64decode(spec["data"], validate=True)
            arr = np.frombuffer(raw, dtype=dtype).reshape(spec["shape"])
            return arr.astype(arr.dtype.newbyteorder("="))
    return d


def dumps(obj: Any) -> str:
    """One line of strict JSON."""
    return json.dumps(to_jsonable(obj), allow_nan=False, ensure_ascii=False,
                      separators=(",", ":"))


def loads(text: str | bytes) -> Any:
    """Inverse of :func:`dumps`; raises ValueError (json.JSONDecodeError, KeyError...) if bad."""
    return json.loads(text, object_hook=_hook)
