"""Atomic file writes: a temporary file beside the target, flushed to disk, then renamed.

Readers never see half a file, a crash leaves the old file (or none) in place, and a failed
write removes its temporary file. Files get the usual permissions (``0o666`` minus the umask),
not the owner-only mode of :func:`tempfile.mkstemp` (:data:`DIR_MODE` does the same for
directories made with :func:`tempfile.mkdtemp`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_UMASK = os.umask(0o022)
os.umask(_UMASK)
#: Modes of new files and directories: the usual ones, minus the umask read at import.
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK


@contextmanager
def atomic_path(
    path: str | Path, *, prefix: str | None = None, suffix: str = ".tmp", fsync: bool = True
) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; once the block succeeds, rename it to ``path``.

    Args:
        path: the file to write.
        prefix: the temporary file's name prefix (default ``.<name>.``).
        suffix: the temporary file's name suffix.
        fsync: flush the file to disk before the rename (off for caches, which may be lost).

    Example:
        >>> with atomic_path(Path("run/soup.safetensors")) as tmp:  # doctest: +SKIP
        ...     save_file(tensors, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=prefix or f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, FILE_MODE)
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(
    path: str | Path, data: str | bytes, *, prefix: str | None = None, suffix: str = ".tmp"
) -> None:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically.

    Example:
        >>> atomic_write(Path("run/results.json"), "{}")  # doctest: +SKIP
    """
    raw = data.encode() if isinstance(data, str) else data
    with atomic_path(path, prefix=prefix, suffix=suffix) as tmp:
        tmp.write_bytes(raw)
