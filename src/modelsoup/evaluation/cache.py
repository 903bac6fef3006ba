"""The on-disk cache of per-example logits, keyed by predictor, task/split and example index.

One entry per (predictor key, split fingerprint): a safetensors file holding ``logits``
``[N, C]`` (float32) and ``have`` ``[N]`` (bool), where row ``i`` is example ``i`` of the split.
Rows are addressed by example index, never by batch position, so any batch size, any order
and any partial evaluation (early rejection) reads and extends the same entry.

Layout: ``<root>/<fingerprint[:32]>/<sha256(key)[:40]>.safetensors``. Writes go to a temporary
file in the same directory and are renamed into place, so readers never see half a file; a
concurrent writer's rows are merged in before the rename. A corrupt or foreign entry reads
as a miss; an unwritable cache only costs time.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from modelsoup.atomic import atomic_path

log = logging.getLogger(__name__)

FORMAT = "modelsoup-logits-v1"


@dataclass
class CacheEntry:
    """Cached rows of one predictor on one split: ``logits[i]`` is valid where ``have[i]``."""

    logits: torch.Tensor
    have: torch.Tensor

    @property
    def complete(self) -> bool:
        return bool(self.have.all())


class PredictionCache:
    """Per-example logits on disk.

    Example:
        >>> cache = PredictionCache(Path("/tmp/preds"))  # doctest: +SKIP
        >>> cache.save("digest", "fingerprint", torch.zeros(3, 2), torch.ones(3, dtype=torch.bool))  # doctest: +SKIP
        >>> cache.load("digest", "fingerprint", 3).complete  # doctest: +SKIP
        True
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str, fingerprint: str) -> Path:
        name = hashlib.sha256(key.encode()).hexdigest()[:40]
        return self.root / fingerprint[:32] / f"{name}.safetensors"

    def load(self, key: str, fingerprint: str, n: int) -> CacheEntry | None:
        """The entry for ``(key, fingerprint)`` with ``n`` rows, or ``None`` (miss, corrupt, foreign)."""
        path = self.path(key, fingerprint)
        if not path.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if (
                    meta.get("format") != FORMAT
                    or meta.get("key") != key
                    or meta.get("fingerprint") != fingerprint
                ):
                    return None
                logits, have = f.get_tensor("logits"), f.get_tensor("have")
        except Exception as e:  # a torn or foreign file is a miss, not an error
            log.debug("ignoring unreadable cache entry %s (%s)", path, e)
            return None
        if logits.dim() != 2 or logits.shape[0] != n or have.shape != (n,):
            return None
        return CacheEntry(logits, have.bool())

    def save(self, key: str, fingerprint: str, logits: torch.Tensor, have: torch.Tensor) -> None:
        """Store rows where ``have``; rows another writer stored meanwhile are kept."""
        from safetensors.torch import save_file

        logits = logits.detach().float().cpu().contiguous()
        have = have.detach().bool().cpu().contiguous()
        old = self.load(key, fingerprint, logits.shape[0])
        if old is not None and old.logits.shape == logits.shape:
            take = old.have & ~have
            if bool(take.any()):
                logits = logits.clone()
                logits[take] = old.logits[take]
                have = have | old.have
        path = self.path(key, fingerprint)
        meta = {"format": FORMAT, "key": key, "fingerprint": fingerprint}
        try:
            with atomic_path(path, fsync=False) as tmp:  # a cache: no need to sync
                save_file({"logits": logits, "have": have}, str(tmp), metadata=meta)
        except OSError as e:
            log.warning("could not write the prediction cache at %s (%s)", path, e)
