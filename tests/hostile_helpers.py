"""Helpers for the hostile-input suite: run the CLI, snapshot a tree, assert a clean refusal.

Plain functions rather than fixtures, imported by the tests in tests/reliability (a fixture
imported into a test module trips ruff's F811 when a test names it as a parameter).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelsoup.cli.main import main


@dataclass
class Run:
    """What one ``main(argv)`` call did."""

    code: int
    out: str
    err: str


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` (not following symlinks): kind, content hash, mode, mtime."""
    state: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in sorted(dirs + files):
            p = Path(folder) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if p.is_symlink():
                state[rel] = ("link", os.readlink(p))
            elif p.is_file():
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
                state[rel] = ("file", digest, st.st_mode, st.st_mtime_ns, st.st_size)
            else:
                state[rel] = ("dir", st.st_mode)
    return state


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> Run:
    """Call ``modelsoup`` in-process; returns exit code, stdout and stderr."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


def assert_refused(
    capsys: pytest.CaptureFixture[str],
    root: Path,
    args: Sequence[str | Path],
    *,
    mentions: Sequence[str],
) -> Run:
    """Run a command that must fail cleanly, and check that it wrote and changed nothing.

    Exit code 1, an ``error:`` message naming everything in ``mentions``, no traceback, and the
    tree under ``root`` (which holds the inputs and the output's parent) byte-for-byte unchanged.
    """
    args = [str(a) for a in args]
    out = Path(args[args.index("-o") + 1]) if "-o" in args else None
    out_existed = out is not None and os.path.lexists(out)
    before = snapshot(root)
    run = run_cli(capsys, *args)
    assert run.code == 1, (run.code, run.out, run.err)
    assert "error: " in run.err, run.err
    assert "Traceback" not in run.err
    message = run.err.replace(str(root), "<root>")  # the tmp path holds the test's name
    for text in mentions:
        text = str(text).replace(str(root), "<root>")
        assert text in message, f"{text!r} not in: {message}"
    assert snapshot(root) == before, "an input changed or something was written"
    if out is not None:
        assert os.path.lexists(out) == out_existed, f"{out} was created"
    return run
