"""Mapping between safetensors dtype names and torch dtypes."""

from __future__ import annotations

import torch

_TO_TORCH: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in [
    ("F8_E4M3", "float8_e4m3fn"),
    ("F8_E5M2", "float8_e5m2"),
    ("U16", "uint16"),
    ("U32", "uint32"),
    ("U64", "uint64"),
]:
    if hasattr(torch, _attr):
        _TO_TORCH[_name] = getattr(torch, _attr)
_FROM_TORCH = {v: k for k, v in _TO_TORCH.items()}


def to_torch(name: str) -> torch.dtype:
    """``"F32"`` -> ``torch.float32``."""
    return _TO_TORCH[name]


def from_torch(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"F32"``."""
    try:
        return _FROM_TORCH[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype} cannot be stored in safetensors") from None
