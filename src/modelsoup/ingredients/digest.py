"""Content digests of weight files, cached on disk by (path, size, mtime, inode)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

CHUNK = 1024 * 1024
_locks: dict[str, threading.Lock] = {}  # one per file version: a file is hashed once at a time
_locks_guard = threading.Lock()


def cache_dir() -> Path:
    """Where modelsoup caches digests and predictions (``$MODELSOUP_CACHE_DIR``).

    Example:
        >>> isinstance(cache_dir(), Path)
        True
    """
    env = os.environ.get("MODELSOUP_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "modelsoup"


def file_digest(path: Path) -> str:
    """sha256 of one file, hex; cached by path, size, mtime and inode.

    Example:
        >>> len(file_digest(Path(__file__)))
        64
    """
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    with _locks_guard:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:  # a thread asking while another hashes the same file waits, then hits the cache
        return _cached_digest(path, key)


def _cached_digest(path: Path, key: str) -> str:
    store = cache_dir() / "digests"
    entry = store / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")
    try:
        cached = json.loads(entry.read_text())
        if cached.get("key") == key:
            return cached["sha256"]
    except (OSError, ValueError):
        pass
    digest = _sha256(path)
    try:
        store.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "sha256": digest}))
        os.replace(tmp, entry)
    except OSError:
        pass  # a read-only cache only costs time
    return digest


def _sha256(path: Path) -> str:
    # One reused buffer (no fresh allocation per chunk); hashlib releases the GIL while it
    # hashes, so several files can be hashed at once in threads (see compute_digests).
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def files_digest(paths: list[Path]) -> str:
    """One digest for a list of files (a single file's own sha256 when there is one).

    Example:
        >>> files_digest([Path(__file__)]) == file_digest(Path(__file__))
        True
    """
    return combine_digests([(p.name, file_digest(p)) for p in paths])


def combine_digests(named: list[tuple[str, str]]) -> str:
    """The digest of a set of files from ``(file name, sha256 hex)`` pairs, in order.

    One file: its own sha256 (what ``sha256sum`` prints). Several (shards): the sha256 of the
    lines ``<name>\\0<sha256 hex>\\n``, one per file in order.

    Example:
        >>> combine_digests([("model.safetensors", "ab" * 32)]) == "ab" * 32
        True
    """
    if len(named) == 1:
        return named[0][1]
    h = hashlib.sha256()
    for name, digest in named:
        h.update(name.encode() + b"\0" + digest.encode() + b"\n")
    return h.hexdigest()
