"""Hostile outputs: an output that is an input, exists, cannot be written, or fills the disk.

Tests run as root, and root ignores permission bits, so "not writable" is made with paths that
no user can create: a path under a regular file (ENOTDIR) and a path under /proc (procfs refuses
new entries). The full disk is simulated with RLIMIT_FSIZE in a subprocess (SIGXFSZ ignored, so
the write fails with EFBIG as it would with ENOSPC).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from factories import toy_state_dicts
from hostile_helpers import assert_refused, run_cli, snapshot
from safetensors.torch import load_file, save_file


def _good(folder: Path, k: int = 2) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, sd in enumerate(toy_state_dicts(k)):
        paths.append(folder / f"m{i}.safetensors")
        save_file(sd, paths[-1])
    return paths


def _hf(folder: Path, k: int = 2) -> list[Path]:
    dirs = []
    for i, sd in enumerate(toy_state_dicts(k)):
        d = folder / f"hf{i}"
        d.mkdir(parents=True)
        save_file(sd, d / "model.safetensors")
        (d / "config.json").write_text('{"model_type": "toy"}')
        dirs.append(d)
    return dirs


@pytest.mark.parametrize("flags", [[], ["--overwrite"]])
def test_output_equal_to_an_input_file(
    flags: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _good(tmp_path / "in")
    assert_refused(
        capsys,
        tmp_path,
        ["cook", "uniform", *good, "-o", good[0], *flags],
        mentions=["refusing to write over the input", "m0.safetensors"],
    )


@pytest.mark.parametrize("flags", [[], ["--overwrite"]])
def test_output_equal_to_an_input_model_directory(
    flags: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dirs = _hf(tmp_path / "in")
    assert_refused(
        capsys,
        tmp_path,
        ["cook", "uniform", *dirs, "-o", dirs[1], *flags],
        mentions=["refusing to write over the input", "hf1"],
    )


def test_output_holding_the_inputs_is_refused_even_with_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``-o`` a folder that contains the inputs would delete them on replace: refused."""
    good = _good(tmp_path / "in")
    assert_refused(
        capsys,
        tmp_path,
        ["cook", "uniform", tmp_path / "in", "-o", tmp_path / "in", "--overwrite"],
        mentions=["refusing to write over the input", "m0.safetensors"],
    )
    assert all(p.exists() for p in good)


def test_output_through_a_symlink_to_an_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dirs = _hf(tmp_path / "in")
    link = tmp_path / "link"
    link.symlink_to(dirs[0])
    assert_refused(
        capsys,
        tmp_path,
        ["cook", "uniform", *dirs, "-o", link, "--overwrite"],
        mentions=["refusing to write over the input"],
    )


def test_existing_output_is_kept_without_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _good(tmp_path / "in")
    out = tmp_path / "soup"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert_refused(
        capsys,
        tmp_path,
        ["cook", "uniform", *good, "-o", out],
        mentions=["already exists", "--overwrite"],
    )


def test_overwrite_replaces_the_output_and_leaves_no_debris(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _good(tmp_path / "in")
    out = tmp_path / "soup"
    out.mkdir()
    (out / "stale.txt").write_text("old soup")
    run = run_cli(capsys, "cook", "uniform", *good, "-o", out, "--overwrite")
    assert run.code == 0, run.err
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "model.safetensors", "soup.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "soup"]


def test_output_under_a_regular_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _good(tmp_path / "in")
    blocker = tmp_path / "not_a_dir.txt"
    blocker.write_text("a file, not a directory")
    out = blocker / "soup"
    assert_refused(
        capsys,
        tmp_path,
        ["cook", "uniform", *good, "-o", out],
        mentions=[str(out), "not_a_dir.txt is not a directory"],
    )


def test_output_deep_under_a_regular_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _good(tmp_path / "in")
    blocker = tmp_path / "not_a_dir.txt"
    blocker.write_text("x")
    out = blocker / "a" / "b" / "soup"
    assert_refused(capsys, tmp_path, ["cook", "uniform", *good, "-o", out], mentions=[str(out)])


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs procfs")
def test_output_under_proc(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _good(tmp_path / "in")
    out = Path("/proc/modelsoup-test-soup")
    assert_refused(capsys, tmp_path, ["cook", "uniform", *good, "-o", out], mentions=[str(out)])
    assert not out.exists()


def test_created_parent_directories_are_removed_on_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refused soup (NaN found while writing) leaves not even the new parent directories."""
    _good(tmp_path / "in")
    sd = toy_state_dicts(3)[2]
    sd["head.weight"][0, 0] = float("nan")
    save_file(sd, tmp_path / "in" / "nan.safetensors")
    out = tmp_path / "new" / "deeper" / "soup"
    assert_refused(
        capsys,
        tmp_path,
        ["cook", "uniform", tmp_path / "in", "-o", out],
        mentions=["nan.safetensors", "head.weight"],
    )
    assert not (tmp_path / "new").exists()


DISK_FULL = textwrap.dedent(
    """
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    from modelsoup.cli.main import main
    sys.exit(main(sys.argv[2:]))
    """
)


def _cook_with_file_size_limit(limit: int, argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", DISK_FULL, str(limit), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


@pytest.mark.parametrize("shard", ["5GB", "3KB"])
def test_disk_fills_during_the_write(shard: str, tmp_path: Path) -> None:
    """Each file stops growing at 6000 bytes; the soup's weights are ~16 kB."""
    good = _good(tmp_path / "in", k=3)
    # With 3 kB shards the first shards fit under the limit; one 8 kB tensor then hits it.
    for p in good:
        sd = load_file(p)
        sd["extra.weight"] = sd["block.weight"].repeat(2, 1)
        save_file(sd, p)
    before = snapshot(tmp_path)
    out = tmp_path / "out" / "soup"
    result = _cook_with_file_size_limit(
        6000, ["cook", "uniform", *map(str, good), "-o", str(out), "--max-shard-size", shard]
    )
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "write failed" in result.stderr and "nothing was written" in result.stderr
    assert "File too large" in result.stderr
    assert str(out) in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "out").exists()


def test_disk_limit_above_the_soup_size_succeeds(tmp_path: Path) -> None:
    """Control for the test above: the same command under a roomy limit writes the soup."""
    good = _good(tmp_path / "in", k=3)
    out = tmp_path / "soup"
    result = _cook_with_file_size_limit(10**6, ["cook", "uniform", *map(str, good), "-o", str(out)])
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "soup.json").read_text())["recipe"] == "uniform"
