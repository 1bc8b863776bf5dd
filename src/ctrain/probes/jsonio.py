"""Strict JSON for probe results: full float precision, undefined values (NaN, inf) written as null."""

from __future__ import annotations

import json
import math
from typing import Any


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(item) for item in value]
    return value


def to_strict_json(value: Any) -> str:
    return json.dumps(_clean(value), allow_nan=False)
