"""Read and validate safetensors headers without importing torch.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping tensor names
to ``{"dtype", "shape", "data_offsets"}``, then the raw bytes. We check every field ourselves so
that a hostile or truncated file gets a clear error instead of a crash or a huge allocation.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from modelsoup.errors import IngredientError
from modelsoup.ingredients.tensor_info import DTYPE_SIZES, TensorInfo

MAX_HEADER_BYTES = 100 * 1024 * 1024


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """Parse and validate the header of one safetensors file.

    Returns:
        The tensors by name, the ``__metadata__`` strings, and the byte offset where data starts.

    Raises:
        IngredientError: the file is truncated, corrupt or inconsistent, naming the file.

    Example:
        >>> infos, meta, start = read_header(Path("model.safetensors"))  # doctest: +SKIP
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise IngredientError(f"{path}: not a safetensors file ({size} bytes, too short)")
            (n,) = struct.unpack("<Q", prefix)
            if n > MAX_HEADER_BYTES or n + 8 > size:
                raise IngredientError(
                    f"{path}: corrupt safetensors header (declares {n} header bytes, file has {size})"
                )
            raw = f.read(n)
    except OSError as e:
        raise IngredientError(f"{path}: cannot read ({e.strerror or e})") from e
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IngredientError(f"{path}: corrupt safetensors header (not JSON: {e})") from e
    if not isinstance(header, dict):
        raise IngredientError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise IngredientError(f"{path}: corrupt safetensors header (__metadata__ is not an object)")
    start = 8 + n
    data_size = size - start
    infos: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        info, span = _parse_entry(path, name, entry, data_size)
        infos[name] = info
        spans.append((*span, name))
    spans.sort()
    for (_, end_a, name_a), (begin_b, _, name_b) in zip(spans, spans[1:]):
        if begin_b < end_a:
            raise IngredientError(
                f"{path}: corrupt safetensors header (tensors {name_a!r} and {name_b!r} overlap)"
            )
    if spans and spans[-1][1] != data_size:
        raise IngredientError(
            f"{path}: truncated or corrupt safetensors file "
            f"(tensors end at byte {spans[-1][1]} of the data, the file holds {data_size})"
        )
    return infos, {str(k): str(v) for k, v in metadata.items()}, start


def _parse_entry(
    path: Path, name: str, entry: object, data_size: int
) -> tuple[TensorInfo, tuple[int, int]]:
    def bad(what: str) -> IngredientError:
        return IngredientError(f"{path}: corrupt safetensors header (tensor {name!r}: {what})")

    if not isinstance(entry, dict):
        raise bad("entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise bad(f"unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise bad(f"bad shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and o >= 0 for o in offsets)
    ):
        raise bad(f"bad data_offsets {offsets!r}")
    begin, end = offsets
    info = TensorInfo(name=name, shape=tuple(shape), dtype=dtype)
    if end < begin or end - begin != info.nbytes:
        raise bad(f"data_offsets {offsets} do not match shape {shape} and dtype {dtype}")
    if end > data_size:
        raise bad(f"data_offsets {offsets} point past the end of the file")
    return info, (begin, end)
