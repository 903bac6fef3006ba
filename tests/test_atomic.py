"""Atomic writes: replace in one rename, never leave temporary files, usual permissions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelsoup.atomic import atomic_path, atomic_write


def test_atomic_write_replaces_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "run" / "evaluation.json"
    atomic_write(target, "one")
    atomic_write(target, b"two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["evaluation.json"]


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "report.md"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk on fire")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_files_get_the_umask_permissions_not_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "results.csv", "a,b\n")
    finally:
        os.umask(old)
    assert (tmp_path / "results.csv").stat().st_mode & 0o777 == 0o666 & ~0o022


def test_prefix_and_suffix_name_the_temporary_file(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "trial.json", prefix=".trial.json.7@h.", suffix=".partial") as tmp:
        assert tmp.name.startswith(".trial.json.7@h.") and tmp.name.endswith(".partial")
        tmp.write_text("{}")
    assert (tmp_path / "trial.json").read_text() == "{}"
