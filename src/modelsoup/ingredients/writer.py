"""Write a soup safely: streamed safetensors (sharded when large), manifest and soup card.

Everything is written into a hidden temporary directory beside the output, fsynced, and renamed
into place at the end, with the manifest (``soup.json``) written last. The temporary directory
names its process, so the next write of the same output removes what a killed one left. An
output that equals an input, or that already exists (without ``overwrite``), is refused before
any work.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import shutil
import struct
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from modelsoup.atomic import DIR_MODE
from modelsoup.errors import OutputError
from modelsoup.ingredients.digest import combine_digests
from modelsoup.ingredients.dtypes import from_torch
from modelsoup.ingredients.ingredient import Ingredient
from modelsoup.ingredients.tensor_info import TensorInfo
from modelsoup.journal import kill_point, partial_prefix, remove_stale_partials

DEFAULT_MAX_SHARD = 5 * 10**9
#: the background writer syncs to disk every this many bytes, so that the final fsync is short
SYNC_EVERY = 64 * 10**6
WEIGHT_NAMES = re.compile(
    r"(\.safetensors|\.bin|\.pt|\.pth|\.ckpt|\.h5|\.msgpack|\.safetensors\.index\.json"
    r"|\.bin\.index\.json|^soup\.json|^README\.md)$"
)
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(text: str | int) -> int:
    """``"5GB"`` -> 5_000_000_000; ``"512MiB"`` -> 536870912; plain integers are bytes.

    Example:
        >>> parse_size("1.5MB")
        1500000
    """
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise OutputError(f"bad size {text!r} (use e.g. 500MB, 5GB, 2GiB or a number of bytes)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def check_output(out: Path, inputs: Sequence[Ingredient], *, overwrite: bool = False) -> None:
    """Refuse, before any work, an output that is an input or holds one, that exists (unless
    ``overwrite``), or whose directory cannot be created or written.

    Example:
        >>> check_output(Path("soups/uniform"), load_ingredients(["trials/"]))  # doctest: +SKIP
    """
    try:
        target = out.resolve()
    except (OSError, RuntimeError) as e:  # e.g. a symlink loop
        raise OutputError(f"{out}: cannot use this output path ({e})") from None
    for ing in inputs:
        for p in [ing.source, *ing.files, *([ing.hf_dir] if ing.hf_dir else [])]:
            rp = p.resolve()
            if rp == target or target in rp.parents:
                raise OutputError(f"{out}: refusing to write over the input {p}")
    if os.path.lexists(out) and not overwrite:
        raise OutputError(f"{out}: already exists (pass --overwrite to replace it)")
    _check_writable(out, target.parent)


def _check_writable(out: Path, parent: Path) -> None:
    """Probe the nearest existing ancestor by creating (and removing) a directory in it.

    A real probe rather than ``os.access``, which says yes to root on read-only places.
    """
    ancestor = parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{out}: cannot create the output: {ancestor} is not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".modelsoup-probe-", dir=ancestor))
    except OSError as e:
        raise OutputError(
            f"{out}: cannot write in the directory {ancestor} ({e.strerror or e})"
        ) from None


def write_soup(
    out: Path,
    tensors: Iterable[tuple[str, torch.Tensor]],
    infos: Mapping[str, TensorInfo],
    *,
    manifest: dict[str, Any] | Callable[[], dict[str, Any]],
    card: str | Callable[[dict[str, Any]], str],
    copy_from: Path | None = None,
    extra_files: Mapping[str, str] | None = None,
    max_shard_size: int = DEFAULT_MAX_SHARD,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> str:
    """Stream tensors into ``out/`` and return the sha256 digest of the weights.

    Args:
        out: the output directory (created; must not exist unless ``overwrite``).
        tensors: ``(name, tensor)`` pairs in the order of ``infos``; consumed once.
        infos: the names, shapes and dtypes that ``tensors`` will yield (plans the shards).
        manifest: written as ``soup.json`` last, with the digest and files added; or a
            function that returns it, called once the weights are written (so that work it
            waits for, such as hashing the inputs, overlaps with writing).
        card: the soup card, written as ``README.md``; or a function of the manifest.
        copy_from: a Hugging Face directory whose non-weight files (config, tokenizer) to copy.
        extra_files: more text files to write (name -> content), e.g. a trajectory.
        max_shard_size: bytes per shard before splitting into ``model-0000i-of-0000n``.
        progress: called with the byte count of each tensor written.

    Example:
        >>> write_soup(Path("soup"), mix(ings, m), ings[0].tensor_infos, manifest={}, card="")  # doctest: +SKIP
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputError(f"{out}: already exists (pass --overwrite to replace it)")
    created = _missing_dirs(out.parent)  # removed again if the write fails
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(out.parent, out.name)
        tmp = Path(
            tempfile.mkdtemp(prefix=partial_prefix(out.name), suffix=".partial", dir=out.parent)
        )
        os.chmod(tmp, DIR_MODE)  # mkdtemp makes it owner-only
    except OSError as e:
        _remove_dirs(created)
        raise OutputError(
            f"{out}: cannot create the output directory ({e.strerror or e})"
        ) from None
    try:
        digest, files, weight_map = _write_weights(tmp, tensors, infos, max_shard_size, progress)
        if callable(manifest):
            manifest = manifest()
        if callable(card):
            card = card(manifest)
        if copy_from is not None:
            _copy_side_files(copy_from, tmp)
        for name, text in (extra_files or {}).items():
            _write_text(tmp / name, text)
        _write_text(tmp / "README.md", card.replace("{digest}", digest))
        full = {**manifest, "digest": digest, "files": files}
        if weight_map is not None:
            full["sharded"] = True
        _write_text(tmp / "soup.json", json.dumps(full, indent=2, default=str) + "\n")
        _fsync_dir(tmp)
        _replace_dir(tmp, out, overwrite)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_dirs(created)
        raise OutputError(f"{out}: write failed ({e.strerror or e}); nothing was written") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_dirs(created)
        raise
    return digest


def _missing_dirs(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, outermost first."""
    missing: list[Path] = []
    for p in [path, *path.parents]:
        if os.path.lexists(p):
            break
        missing.append(p)
    return missing[::-1]


def _remove_dirs(dirs: list[Path]) -> None:
    for d in reversed(dirs):
        try:
            d.rmdir()
        except OSError:
            return


def _plan_shards(infos: Mapping[str, TensorInfo], max_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    for name, info in infos.items():
        if shards[-1] and size + info.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += info.nbytes
    return shards


def _header(names: Sequence[str], infos: Mapping[str, TensorInfo], meta: dict[str, str]) -> bytes:
    header: dict[str, Any] = {"__metadata__": meta}
    offset = 0
    for name in names:
        info = infos[name]
        header[name] = {
            "dtype": info.dtype,
            "shape": list(info.shape),
            "data_offsets": [offset, offset + info.nbytes],
        }
        offset += info.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def _write_weights(
    tmp: Path,
    tensors: Iterable[tuple[str, torch.Tensor]],
    infos: Mapping[str, TensorInfo],
    max_shard_size: int,
    progress: Callable[[int], None] | None,
) -> tuple[str, list[str], dict[str, str] | None]:
    shards = _plan_shards(infos, max_shard_size)
    n = len(shards)
    names = (
        ["model.safetensors"]
        if n == 1
        else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    )
    stream: Iterator[tuple[str, torch.Tensor]] = iter(tensors)
    digests: list[tuple[str, str]] = []
    for file_name, shard in zip(names, shards):
        with (tmp / file_name).open("wb") as f, _BackgroundWriter(f) as sink:
            sink.put(_header(shard, infos, {"format": "pt"}))
            for expected in shard:
                name, tensor = next(stream)
                info = infos[expected]
                if (
                    name != expected
                    or tuple(tensor.shape) != info.shape
                    or from_torch(tensor.dtype) != info.dtype
                ):
                    raise OutputError(f"internal error: got tensor {name!r}, expected {expected!r}")
                sink.put(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
                if progress is not None:
                    progress(info.nbytes)
        digests.append((file_name, sink.hexdigest()))
        kill_point("write-weights")
    weight_map = None
    if n > 1:
        weight_map = {name: file for file, shard in zip(names, shards) for name in shard}
        total = sum(i.nbytes for i in infos.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        _write_text(tmp / "model.safetensors.index.json", json.dumps(index, indent=2) + "\n")
        names.append("model.safetensors.index.json")
    return combine_digests(digests), names, weight_map


class _BackgroundWriter:
    """Writes, hashes and syncs one file in a thread, while the caller computes what comes next.

    The queue holds at most one buffer, so at most two tensors beyond the one being computed
    are alive. Each buffer is hashed by a second thread while it is written (``hashlib`` and
    ``write`` release the GIL). Every :data:`SYNC_EVERY` bytes the data is synced, so the disk
    works while the soup is being mixed and the final fsync has little left to do. An error
    in the thread is raised in the caller at its next :meth:`put` or at the end.
    """

    def __init__(self, f: Any) -> None:
        self._f = f
        self._hash = hashlib.sha256()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="modelsoup-writer", daemon=True)
        self._hasher = ThreadPoolExecutor(1, thread_name_prefix="modelsoup-hash")

    def __enter__(self) -> _BackgroundWriter:
        self._thread.start()
        return self

    def put(self, data: Any) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def __exit__(self, kind: type | None, *_: Any) -> None:
        self._queue.put(None)  # the thread drains the queue even after an error
        self._thread.join()
        self._hasher.shutdown()
        if kind is None and self._error is not None:
            raise self._error

    def _run(self) -> None:
        f, pending = self._f, 0
        sync = getattr(os, "fdatasync", os.fsync)
        drained = False
        try:
            while (data := self._queue.get()) is not None:
                hashed = self._hasher.submit(self._hash.update, data)
                try:
                    f.write(data)
                finally:
                    hashed.result()
                pending += len(data)
                if pending >= SYNC_EVERY:
                    f.flush()
                    sync(f.fileno())
                    pending = 0
            drained = True
            f.flush()  # e.g. EFBIG/ENOSPC surfaces here, after the end marker was taken
            os.fsync(f.fileno())
        except BaseException as e:  # re-raised in the caller's thread
            self._error = e
            while not drained and self._queue.get() is not None:
                pass


def _copy_side_files(src: Path, dst: Path) -> None:
    for child in sorted(src.iterdir()):
        if (
            child.is_file()
            and not child.name.startswith(".")
            and not WEIGHT_NAMES.search(child.name)
        ):
            shutil.copy2(child, dst / child.name)


def _write_text(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_dir(tmp: Path, out: Path, overwrite: bool) -> None:
    if out.exists():
        if not overwrite:
            raise OutputError(f"{out}: already exists (pass --overwrite to replace it)")
        trash = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, trash)
        try:
            os.replace(tmp, out)
        except OSError:
            os.replace(trash, out)  # put the old output back
            raise
        if trash.is_dir() and not trash.is_symlink():
            shutil.rmtree(trash, ignore_errors=True)
        else:
            trash.unlink(missing_ok=True)
    else:
        os.replace(tmp, out)
    _fsync_dir(out.parent)
