"""Run journals: what a long command has done so far, so that rerunning it after a crash resumes.

A journal is one file, ``state.pt``, in ``$MODELSOUP_CACHE_DIR/journals/<key>/``, where ``key``
hashes the run's identity (the recipe, its options, the ingredients' digests, the held-out
split's fingerprint, the batch size, the device type and the world size). It lives in the cache,
not beside the output, so a failed run writes nothing next to its outputs. Each save goes to a
temporary file, is fsynced and renamed over the previous one, so a crash leaves either the old
state or the new one, never a torn file. A journal that is unreadable or made for another run
is ignored (the run starts over). ``cook`` removes the journal once the soup is written.

The greedy and learned recipes journal their progress (see docs/reliability.md, "Crash-safe
runs"); evaluation needs no journal, as its per-example cache already is one, and the sweep's
finished trials are its own record.

This module also holds :func:`kill_point`, the test hook with which the crash tests SIGKILL a
command at a named point, and the naming of temporary ``.partial`` files and directories, so
that a rerun can remove those a killed process left behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from modelsoup.atomic import atomic_path

log = logging.getLogger(__name__)

FORMAT = "modelsoup-journal-v1"
STATE_FILE = "state.pt"
#: recipe options that change how often progress is saved, not the result: not in the key
NOT_IN_KEY = frozenset({"journal_every"})


class Journal:
    """The saved progress of one run, keyed by the run's identity.

    Under torchrun rank 0 reads and writes the file; :meth:`load` gives every rank rank 0's state.

    Args:
        identity: JSON-serializable description of everything that determines the run's result.
        root: the journals directory (default: ``$MODELSOUP_CACHE_DIR/journals``).

    Example:
        >>> journal = Journal({"recipe": "learned", "ingredients": ["ab12..."]})  # doctest: +SKIP
        >>> journal.save({"step": 3, "alpha": torch.ones(2)})  # doctest: +SKIP
        >>> journal.load()["step"]  # doctest: +SKIP
        3
        >>> journal.remove()  # doctest: +SKIP
    """

    def __init__(self, identity: Mapping[str, Any], root: str | Path | None = None) -> None:
        self.identity = json.dumps(identity, sort_keys=True, default=str)
        self.key = hashlib.sha256(self.identity.encode()).hexdigest()[:40]
        if root is None:
            from modelsoup.ingredients.digest import cache_dir

            root = cache_dir() / "journals"
        self.dir = Path(root) / self.key
        self.path = self.dir / STATE_FILE
        self._warned = False

    def load(self) -> dict[str, Any] | None:
        """The last saved state, or ``None`` (no journal, unreadable, or another run's)."""
        from modelsoup import distributed

        state = self._read() if distributed.is_main() else None
        return distributed.broadcast_object(state)

    def save(self, state: Mapping[str, Any]) -> None:
        """Atomically replace the saved state (rank 0 only; tensors and plain Python values).

        A journal that cannot be written is reported once and otherwise ignored: it only costs
        the work a crash would then redo.
        """
        from modelsoup import distributed

        if not distributed.is_main():
            return
        record = {"format": FORMAT, "identity": self.identity, "state": dict(state)}
        try:
            with atomic_path(self.path) as tmp:
                torch.save(record, tmp)
        except OSError as e:
            if not self._warned:
                log.warning(
                    "could not write the journal %s (%s); a crash will start over", self.path, e
                )
                self._warned = True

    def remove(self) -> None:
        """Delete the journal (once the run's outputs are written)."""
        from modelsoup import distributed

        if distributed.is_main():
            shutil.rmtree(self.dir, ignore_errors=True)

    def _read(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        try:
            record = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # a torn or foreign file: start over rather than fail
            log.warning("ignoring the unreadable journal %s (%s); starting over", self.path, e)
            return None
        if (
            not isinstance(record, dict)
            or record.get("format") != FORMAT
            or record.get("identity") != self.identity
            or not isinstance(record.get("state"), dict)
        ):
            log.warning("ignoring the journal %s: it was written for another run", self.path)
            return None
        return record["state"]


def recipe_journal(recipe: Any, ingredients: Sequence[Any], evaluator: Any) -> Journal:
    """The journal of a recipe run: keyed by recipe, options, ingredient digests and evaluation
    settings (held-out fingerprint, batch size, device type, world size).

    Example:
        >>> journal = recipe_journal(get_recipe("greedy")(), ings, Evaluator(task))  # doctest: +SKIP
    """
    from modelsoup import __version__, distributed

    task = evaluator.task
    heldout = task.heldout if task.heldout in task.splits else None
    identity = {
        "kind": "recipe",
        "modelsoup_version": __version__,
        "recipe": recipe.name,
        "options": recipe.options.model_dump(mode="json", exclude=set(NOT_IN_KEY)),
        "ingredients": [ing.digest for ing in ingredients],
        "task": task.name,
        "heldout": evaluator.fingerprint(heldout) if heldout else None,
        "batch_size": evaluator.batch_size,
        "device": evaluator.device.type,
        "world_size": distributed.world_size(),
    }
    return Journal(identity)


# ------------------------------------------------------------------- temporary files of writers


def partial_prefix(name: str) -> str:
    """Prefix of a temporary file or directory for the output ``name``, naming this process.

    Writers create ``<prefix>XXXXXXXX.partial`` beside the output and rename it into place; the
    process id and host let :func:`remove_stale_partials` tell a killed writer's leftovers
    from a live writer's work.

    Example:
        >>> partial_prefix("soup").startswith(".soup.")
        True
    """
    return f".{name}.{os.getpid()}@{_host()}."


def remove_stale_partials(directory: str | Path, name: str | None = None) -> list[Path]:
    """Remove the ``.partial`` files and directories named by :func:`partial_prefix` (for the
    output ``name``, or for any output) in ``directory`` whose writer, a process on this host,
    no longer runs; return what was removed.

    Example:
        >>> remove_stale_partials(Path("soups"), "uniform")  # doctest: +SKIP
        [PosixPath('soups/.uniform.4242@host.k2j3h4g5.partial')]
    """
    directory = Path(directory)
    named = ".+" if name is None else re.escape(name)
    pattern = re.compile(rf"\.{named}\.(\d+)@([A-Za-z0-9_-]+)\.[^.]+\.partial")
    removed = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = pattern.fullmatch(p.name)
        if m is None or m.group(2) != _host() or _alive(int(m.group(1))):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError:
            continue
        removed.append(p)
    return removed


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


# ------------------------------------------------------------------------------- the test hook

KILL_ENV = "MODELSOUP_TEST_KILL_AFTER"
_seen: dict[str, int] = {}


def kill_point(event: str) -> None:
    """Test hook: SIGKILL this process at the n-th ``event`` when ``$MODELSOUP_TEST_KILL_AFTER``
    is ``<event>:<n>``; otherwise do nothing (one environment lookup).

    The crash tests (tests/reliability/test_crash_resume.py) use it to kill a command at a chosen
    point and check that a rerun resumes to bitwise the same result. Events: ``greedy-step``,
    ``learned-step``, ``learned-fit``, ``write-weights``, ``evaluate-batch``, ``cache-store``,
    ``evaluation-csv``, ``sweep-step``, ``sweep-sidecar``, ``sweep-trial``.

    Example:
        >>> kill_point("learned-step")  # without the variable: nothing happens
    """
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    name, _, count = spec.rpartition(":")
    if name != event or not count.isdigit():
        return
    _seen[event] = _seen.get(event, 0) + 1
    if _seen[event] == int(count):
        os.kill(os.getpid(), signal.SIGKILL)
