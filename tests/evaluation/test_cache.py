"""The per-example prediction cache: round trips, merges, misses, atomic writes."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

from modelsoup.evaluation.cache import PredictionCache

KEY, FP = "a" * 64, "f" * 64


def rows(n: int, *which: int) -> torch.Tensor:
    have = torch.zeros(n, dtype=torch.bool)
    have[list(which)] = True
    return have


def test_round_trip(tmp_path: Path) -> None:
    cache = PredictionCache(tmp_path)
    logits = torch.arange(12, dtype=torch.float32).view(4, 3)
    cache.save(KEY, FP, logits, torch.ones(4, dtype=torch.bool))
    entry = cache.load(KEY, FP, 4)
    assert entry is not None and entry.complete
    assert torch.equal(entry.logits, logits)
    assert cache.path(KEY, FP).parent.name == FP[:32]


def test_misses(tmp_path: Path) -> None:
    cache = PredictionCache(tmp_path)
    cache.save(KEY, FP, torch.zeros(4, 2), torch.ones(4, dtype=torch.bool))
    assert cache.load("b" * 64, FP, 4) is None  # another predictor
    assert cache.load(KEY, "e" * 64, 4) is None  # another task/split
    assert cache.load(KEY, FP, 5) is None  # another number of examples


def test_partial_writes_merge_by_example_index(tmp_path: Path) -> None:
    cache = PredictionCache(tmp_path)
    first = torch.zeros(5, 2)
    first[:2] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    cache.save(KEY, FP, first, rows(5, 0, 1))
    second = torch.zeros(5, 2)
    second[3] = torch.tensor([7.0, 8.0])
    cache.save(KEY, FP, second, rows(5, 3))  # another writer: rows 0 and 1 are kept
    entry = cache.load(KEY, FP, 5)
    assert entry is not None and not entry.complete
    assert entry.have.tolist() == [True, True, False, True, False]
    assert entry.logits[[0, 1, 3]].tolist() == [[1.0, 2.0], [3.0, 4.0], [7.0, 8.0]]


def test_corrupt_or_foreign_files_read_as_a_miss(tmp_path: Path) -> None:
    cache = PredictionCache(tmp_path)
    path = cache.path(KEY, FP)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a safetensors file")
    assert cache.load(KEY, FP, 4) is None
    save_file({"logits": torch.zeros(4, 2), "have": torch.ones(4, dtype=torch.bool)}, str(path))
    assert cache.load(KEY, FP, 4) is None  # no metadata: not ours
    cache.save(KEY, FP, torch.ones(4, 2), torch.ones(4, dtype=torch.bool))  # overwrites it
    entry = cache.load(KEY, FP, 4)
    assert entry is not None and torch.equal(entry.logits, torch.ones(4, 2))


def test_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    cache = PredictionCache(tmp_path)
    for i in range(3):
        cache.save(KEY, FP, torch.full((3, 2), float(i)), torch.ones(3, dtype=torch.bool))
    files = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert files == [cache.path(KEY, FP).name]


def test_an_unwritable_cache_only_warns(tmp_path: Path, caplog) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    with caplog.at_level(logging.WARNING):
        PredictionCache(blocker).save(KEY, FP, torch.zeros(2, 2), torch.ones(2, dtype=torch.bool))
    assert "could not write the prediction cache" in caplog.text
