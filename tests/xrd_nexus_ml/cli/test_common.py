"""The command line's JSON is strict: no NaN or Infinity, which JSON does not have."""

from __future__ import annotations

import json
import math

import numpy as np

from xrd_nexus_ml.cli.common import to_json


def test_non_finite_numbers_become_null_and_numpy_scalars_numbers():
    payload = {"a": math.nan, "b": [1.5, float("inf"), np.float32(2.5), np.float64(np.nan)], "c": (np.int64(3), "x"),
               "d": {"e": -math.inf, "f": np.bool_(True)}}
    text = to_json(payload)
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.5, None, 2.5, None], "c": [3, "x"], "d": {"e": None, "f": True}}
    assert json.loads(to_json({"x": 1}, indent=None)) == {"x": 1} and "\n" not in to_json({"x": 1}, indent=None)
