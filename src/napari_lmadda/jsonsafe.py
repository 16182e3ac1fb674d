"""JSON without NaN/Inf: what the JSON files the project writes contain."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["json_safe"]


def json_safe(obj: Any) -> Any:
    """Replace non-finite floats by None and tuples by lists, recursively; keys become str."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj
