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

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's limit


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """Parse and validate the header of one safetensors file.

    Returns:
        The tensors by name, the ``__metadata__`` strings, and the byte offset where data starts.

    Raises:
        IngredientError: the file is truncated, corrupt or inconsistent, naming the file.

    Example:
        >>> infos, meta, start = read_header(Path("model.safetensors"))  # doctest: +SKIP
    """
    infos, metadata, start, _ = read_layout(path)
    return infos, metadata, start


def read_layout(
    path: Path,
) -> tuple[dict[str, TensorInfo], dict[str, str], int, dict[str, int]]:
    """:func:`read_header` plus where each tensor's bytes start in the file (absolute offsets).

    Example:
        >>> infos, meta, start, offsets = read_layout(Path("model.safetensors"))  # doctest: +SKIP
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
    except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, huge ints, deep nesting
        raise IngredientError(f"{path}: corrupt safetensors header (not JSON: {e})") from None
    if not isinstance(header, dict):
        raise IngredientError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise IngredientError(
            f"{path}: corrupt safetensors header (__metadata__ must map names to strings)"
        )
    start = 8 + n
    data_size = size - start
    infos: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        info, span = _parse_entry(path, name, entry, data_size)
        infos[name] = info
        spans.append((*span, name))
    spans.sort()
    # As the safetensors library requires: sorted by offset, the tensors tile the data exactly.
    end, prev = 0, None
    for begin, stop, name in spans:
        if begin < end:
            raise IngredientError(
                f"{path}: corrupt safetensors header (tensors {prev!r} and {name!r} overlap)"
            )
        if begin > end:
            raise IngredientError(
                f"{path}: corrupt safetensors header (a gap of {begin - end} bytes before "
                f"tensor {name!r})"
            )
        end, prev = stop, name
    if end != data_size:
        raise IngredientError(
            f"{path}: truncated or corrupt safetensors file "
            f"(tensors end at byte {end} of the data, the file holds {data_size})"
        )
    return infos, dict(metadata), start, {name: start + begin for begin, _, name in spans}


def _parse_entry(
    path: Path, name: str, entry: object, data_size: int
) -> tuple[TensorInfo, tuple[int, int]]:
    def bad(what: str) -> IngredientError:
        return IngredientError(f"{path}: corrupt safetensors header (tensor {name!r}: {what})")

    if not isinstance(entry, dict):
        raise bad("entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise bad(f"unknown dtype {_short(dtype)}")
    if not isinstance(shape, list) or not all(_is_u64(d) for d in shape):
        raise bad(f"bad shape {_short(shape)}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_u64, offsets)):
        raise bad(f"bad data_offsets {_short(offsets)}")
    numel = 1
    for d in shape:  # the library multiplies in 64 bits and refuses an overflow
        numel *= d
        if numel >= 2**64:
            raise bad(f"shape {_short(shape)} is too large")
    begin, end = offsets
    info = TensorInfo(name=name, shape=tuple(shape), dtype=dtype)
    if end < begin or end - begin != info.nbytes:
        raise bad(f"data_offsets {offsets} do not match shape {shape} and dtype {dtype}")
    if end > data_size:
        raise IngredientError(
            f"{path}: truncated or corrupt safetensors file (tensor {name!r}: data_offsets "
            f"{offsets} point past the end of the file's {data_size} data bytes)"
        )
    return info, (begin, end)


def _is_u64(x: object) -> bool:
    return type(x) is int and 0 <= x < 2**64  # bool is not an int here


def _short(x: object) -> str:
    text = repr(x)
    return text if len(text) <= 80 else text[:77] + "..."
