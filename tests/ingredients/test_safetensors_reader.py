"""Safetensors header validation: what the reader accepts is what the safetensors library reads."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from modelsoup.errors import IngredientError
from modelsoup.ingredients.safetensors_format import MAX_HEADER_BYTES, read_header


def _write(path: Path, header: object, data: bytes = b"", n: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if n is None else n) + raw + data)
    return path


def _entry(dtype: str, shape: list, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def test_reads_what_save_file_wrote(tmp_path: Path) -> None:
    sd = {
        "w": torch.zeros(3, 4),
        "h": torch.zeros(2, dtype=torch.float16),
        "b": torch.zeros(2, dtype=torch.bfloat16),
        "n": torch.tensor(7),
        "m": torch.tensor([True, False]),
        "e": torch.zeros(0, 5),
    }
    path = tmp_path / "a.safetensors"
    save_file(sd, path, metadata={"format": "pt", "note": "hi"})
    infos, meta, start = read_header(path)
    assert {k: (i.shape, i.dtype) for k, i in infos.items()} == {
        "w": ((3, 4), "F32"),
        "h": ((2,), "F16"),
        "b": ((2,), "BF16"),
        "n": ((), "I64"),
        "m": ((2,), "BOOL"),
        "e": ((0, 5), "F32"),
    }
    assert meta == {"format": "pt", "note": "hi"}
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert start == 8 + n


ACCEPTED = {
    "empty header, no data": ({}, b""),
    "null metadata": ({"__metadata__": None, "a": _entry("F32", [1], 0, 4)}, b"\0" * 4),
    "zero-size tensors share an offset": (
        {
            "a": _entry("F32", [0], 0, 0),
            "b": _entry("F32", [2, 0], 0, 0),
            "c": _entry("U8", [3], 0, 3),
        },
        b"\0" * 3,
    ),
    "scalar": ({"s": _entry("F64", [], 0, 8)}, b"\0" * 8),
    "offsets out of name order": (
        {"z": _entry("I8", [2], 0, 2), "a": _entry("I8", [2], 2, 4)},
        b"\0" * 4,
    ),
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_accepted_headers_open_in_the_library(case: str, tmp_path: Path) -> None:
    header, data = ACCEPTED[case]
    path = _write(tmp_path / "a.safetensors", header, data)
    infos, _, _ = read_header(path)
    assert sorted(_library_reads(path)) == sorted(infos)


REFUSED = {
    "too short": (b"", b"", 3, "too short"),
    "header length past the file": ({}, b"", 500, "declares 500 header bytes"),
    "absurd header length": ({}, b"", 2**63, "declares 9223372036854775808"),
    "header above the library's limit": ({}, b"", MAX_HEADER_BYTES + 1, "header"),
    "not utf-8": (b"\xff\xfe{}", b"", None, "not JSON"),
    "not json": (b"{oops", b"", None, "not JSON"),
    "a list": ([1, 2], b"", None, "not a JSON object"),
    "deeply nested": (b"[" * 50_000 + b"]" * 50_000, b"", None, "not JSON"),
    "integer too long": (b'{"a": ' + b"9" * 5000 + b"}", b"", None, "not JSON"),
    "metadata not an object": ({"__metadata__": [1]}, b"", None, "__metadata__"),
    "metadata value not a string": ({"__metadata__": {"k": 1}}, b"", None, "__metadata__"),
    "entry not an object": ({"a": 3}, b"", None, "entry is not an object"),
    "unknown dtype": ({"a": _entry("F33", [1], 0, 4)}, b"\0" * 4, None, "unknown dtype 'F33'"),
    "dtype not a string": ({"a": _entry([1], [1], 0, 4)}, b"\0" * 4, None, "unknown dtype [1]"),
    "negative dim": ({"a": _entry("F32", [-1], 0, 4)}, b"\0" * 4, None, "bad shape"),
    "bool dim": ({"a": _entry("F32", [True], 0, 4)}, b"\0" * 4, None, "bad shape"),
    "float dim": ({"a": _entry("F32", [1.0], 0, 4)}, b"\0" * 4, None, "bad shape"),
    "dim of 2**64": ({"a": _entry("F32", [2**64], 0, 4)}, b"\0" * 4, None, "bad shape"),
    "shape product overflows": (
        {"a": _entry("U8", [2**40, 2**40, 0], 0, 0)},
        b"",
        None,
        "too large",
    ),
    "three offsets": (
        {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}},
        b"\0" * 4,
        None,
        "bad data_offsets",
    ),
    "offsets reversed": ({"a": _entry("F32", [1], 4, 0)}, b"\0" * 4, None, "do not match"),
    "offsets disagree with shape": (
        {"a": _entry("F32", [2], 0, 4)},
        b"\0" * 4,
        None,
        "do not match",
    ),
    "offsets past the end": ({"a": _entry("F32", [4], 0, 16)}, b"\0" * 8, None, "past the end"),
    "overlap": (
        {"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [2], 4, 12)},
        b"\0" * 12,
        None,
        "overlap",
    ),
    "gap": (
        {"a": _entry("F32", [1], 0, 4), "b": _entry("F32", [1], 8, 12)},
        b"\0" * 12,
        None,
        "gap",
    ),
    "data does not start at 0": ({"a": _entry("F32", [1], 4, 8)}, b"\0" * 8, None, "gap"),
    "trailing bytes": ({"a": _entry("F32", [1], 0, 4)}, b"\0" * 6, None, "truncated or corrupt"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_headers(case: str, tmp_path: Path) -> None:
    header, data, n, match = REFUSED[case]
    path = tmp_path / "bad.safetensors"
    if header == b"" and n == 3:
        path.write_bytes(b"\1\2\3")
    else:
        _write(path, header, data, n)
    with pytest.raises(IngredientError, match="bad.safetensors") as err:
        read_header(path)
    assert match in str(err.value)
    assert len(str(err.value)) < 400  # short, even for huge hostile values


def _library_reads(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as f:
        names = list(f.keys())  # noqa: SIM118 - safe_open is not a mapping
        for name in names:
            f.get_tensor(name)
    return names


@pytest.mark.parametrize("case", sorted(set(REFUSED) - {"too short"}))
def test_the_library_refuses_them_too(case: str, tmp_path: Path) -> None:
    """Our validation is exactly as strict as the safetensors library's on these cases."""
    header, data, n, _ = REFUSED[case]
    path = _write(tmp_path / "bad.safetensors", header, data, n)
    with pytest.raises(Exception):  # noqa: B017 - the library's own error types
        _library_reads(path)
