"""Content digests of weight files, cached on disk by (path, size, mtime, inode)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CHUNK = 8 * 1024 * 1024


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
    store = cache_dir() / "digests"
    entry = store / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")
    try:
        cached = json.loads(entry.read_text())
        if cached.get("key") == key:
            return cached["sha256"]
    except (OSError, ValueError):
        pass
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    try:
        store.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "sha256": digest}))
        os.replace(tmp, entry)
    except OSError:
        pass  # a read-only cache only costs time
    return digest


def files_digest(paths: list[Path]) -> str:
    """One digest for a list of files (a single file's own sha256 when there is one)."""
    if len(paths) == 1:
        return file_digest(paths[0])
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0" + file_digest(p).encode() + b"\n")
    return h.hexdigest()
