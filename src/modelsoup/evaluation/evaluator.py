"""The evaluator: run any predictor over a task's splits, batched, cached per example.

A *source* is what gets evaluated:

* an :class:`~modelsoup.ingredients.Ingredient` (cached under its content digest),
* a :class:`~modelsoup.soup.Soup` (cached under ``soup.cache_key``; its
  tensors are only mixed when something is missing from the cache),
* a ``(key, value)`` pair whose value is a state dict, a function returning one (called only on a
  cache miss), or an ``nn.Module`` to run as is (ensembles),
* a bare state dict (never cached).

Logits are cached on disk per (source key, task/split fingerprint, example index), so an
ingredient is evaluated once per split across commands and runs, whatever the batch size.

Under ``torchrun`` every rank evaluates its own batches (whole batches of a single-process pass,
split into contiguous blocks by :func:`modelsoup.distributed.shard_range`); the rows are gathered
so that every rank holds the same logits as a single-process run, and only rank 0 writes the
cache (see docs/distributed.md).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from tqdm.auto import tqdm

from modelsoup import distributed
from modelsoup.atomic import atomic_write
from modelsoup.errors import ModelSoupError, OutputError, TaskError
from modelsoup.evaluation.cache import PredictionCache
from modelsoup.evaluation.metrics import check_logits, compute_metrics
from modelsoup.evaluation.task import Split, Task, default_collate
from modelsoup.ingredients import Ingredient
from modelsoup.journal import kill_point
from modelsoup.soup import Soup

log = logging.getLogger(__name__)

StateDict = Mapping[str, torch.Tensor]
Source = Ingredient | Soup | tuple[str, Any] | StateDict

MAX_LISTED = 10
PRECISIONS = ("fp32", "bf16")


@dataclass
class EvalStats:
    """Work counters, so tests and benchmarks can assert what was (not) computed.

    Attributes:
        forward_examples: examples passed through a model.
        forward_batches: batches passed through a model.
        cached_examples: examples whose logits came from the cache.
        model_loads: state dicts loaded into the model.
    """

    forward_examples: int = 0
    forward_batches: int = 0
    cached_examples: int = 0
    model_loads: int = 0


@dataclass
class _Resolved:
    key: str | None
    name: str
    make: Callable[[], Any]


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` is ``cuda`` (this rank's GPU under torchrun) when available, else ``cpu``;
    refuses an unavailable ``cuda``.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if str(device) == "auto":
        return distributed.resolve_device("auto")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelSoupError(f"device {device!r} requested but CUDA is not available")
    return dev


class Evaluator:
    """Score ingredients, soups and other predictors on a task's splits.

    Args:
        task: the :class:`~modelsoup.evaluation.task.Task`.
        cache_dir: where per-example logits are cached (default:
            ``$MODELSOUP_CACHE_DIR/predictions``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``.
        batch_size: evaluation batch size (default: ``task.batch_size``). It never changes
            cache keys.
        progress: show tqdm progress bars (rank 0 only under torchrun).
        precision: ``"fp32"``, or ``"bf16"`` (GPU only: forward passes under bfloat16 autocast;
            cached apart from fp32 logits).

    Example:
        >>> ev = Evaluator(load_task("toy"))  # doctest: +SKIP
        >>> ev.evaluate(ingredient)["test"]["accuracy"]  # doctest: +SKIP
        0.9125
        >>> ev.stats.forward_examples  # doctest: +SKIP
        2000
    """

    def __init__(
        self,
        task: Task,
        cache_dir: str | Path | None = None,
        device: str | torch.device = "cpu",
        batch_size: int | None = None,
        progress: bool = True,
        precision: str = "fp32",
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise TaskError(f"batch size must be at least 1, got {batch_size}")
        if precision not in PRECISIONS:
            raise ModelSoupError(
                f"unknown precision {precision!r} (valid: {', '.join(PRECISIONS)})"
            )
        if cache_dir is None:
            from modelsoup.ingredients.digest import cache_dir as default_cache_dir

            cache_dir = default_cache_dir() / "predictions"
        self.task = task
        self.device = resolve_device(device)
        if precision == "bf16" and self.device.type != "cuda":
            raise ModelSoupError(
                f"precision bf16 is for GPU evaluation; the device is {self.device} "
                "(use --device cuda, or fp32 on a CPU)"
            )
        self.precision = precision
        self.batch_size = int(batch_size or task.batch_size)
        self.progress = progress
        self.cache = PredictionCache(Path(cache_dir))
        self.stats = EvalStats()
        self._model: nn.Module | None = None
        self._fingerprints: dict[str, str] = {}

    # ----------------------------------------------------------------- public API

    @property
    def default_splits(self) -> tuple[str, ...]:
        """The held-out split, the ID test split, then the shifts (no training split)."""
        return tuple(dict.fromkeys((self.task.heldout, *self.task.report_splits)))

    def fingerprint(self, split: str) -> str:
        """``task.fingerprint(split)`` (folded with the precision unless fp32), computed once."""
        if split not in self._fingerprints:
            fp = self.task.fingerprint(split)
            if self.precision != "fp32":
                fp = hashlib.sha256(f"{fp}|{self.precision}".encode()).hexdigest()
            self._fingerprints[split] = fp
        return self._fingerprints[split]

    def logits(self, source: Source, split: str) -> torch.Tensor:
        """Logits ``[N, C]`` (float32, CPU) of ``source`` on every example of ``split``, in order.

        Only examples missing from the cache are run through the model. Under torchrun the
        missing rows are split between the ranks and gathered: every rank returns the full
        tensor, equal to a single-process run.

        Raises:
            TaskError: unknown or empty split, weights that do not fit the model, labels outside
                the model's classes.

        Example:
            >>> ev.logits(ingredient, "heldout").shape  # doctest: +SKIP
            torch.Size([400, 4])
        """
        res = self._resolve(source)
        sp = self._split(split)
        n = len(sp)
        entry = self._cached(res, split, n)
        logits = None if entry is None else entry.logits.clone()
        have = torch.zeros(n, dtype=torch.bool) if entry is None else entry.have.clone()
        if distributed.active():  # a row is cached only if every rank's cache holds it
            lacking = distributed.all_reduce_sum((~have).to(torch.int32))
            have = lacking == 0
        missing = (~have).nonzero().flatten().tolist()
        self.stats.cached_examples += n - len(missing)
        if missing and distributed.active():
            rows = self._sharded_forward(res, sp, missing)
            logits, have = self._place(res, split, logits, have, missing, rows)
            self._store(res, split, logits, have)
        elif missing:
            model = self._predictor(res)
            with self._bar(len(missing), f"{res.name} · {split}") as bar:
                for start in range(0, len(missing), self.batch_size):
                    idx = missing[start : start + self.batch_size]
                    out = self._forward(model, sp, idx, res.name)
                    logits, have = self._place(res, split, logits, have, idx, out)
                    bar.update(len(idx))
            self._store(res, split, logits, have)
        logits = cast(torch.Tensor, logits)
        check_logits(logits, sp.labels, where=f"{res.name} on split {split!r}")
        return logits

    def metrics(self, logits: torch.Tensor, split: str) -> dict[str, Any]:
        """``accuracy``, ``balanced_accuracy``, ``nll``, ``ece`` (15 bins), ``n``, ``correct``,
        and ``score``: the task's headline metric for ``split``.

        Example:
            >>> ev.metrics(ev.logits(ingredient, "test"), "test")["score"]  # doctest: +SKIP
            0.9125
        """
        sp = self._split(split)
        check_logits(logits, sp.labels, where=f"split {split!r}")
        return compute_metrics(logits, sp.labels, self.task.metric_for(split))

    def evaluate(self, source: Source, splits: Sequence[str] | None = None) -> dict[str, dict]:
        """``{split: metrics}`` for ``splits`` (default: :attr:`default_splits`).

        Example:
            >>> ev.evaluate(soup, ["heldout"])["heldout"]["accuracy"]  # doctest: +SKIP
            0.93
        """
        names = self.default_splits if splits is None else tuple(splits)
        return {s: self.metrics(self.logits(source, s), s) for s in names}

    def count_correct(self, source: Source, split: str, *, need: int) -> tuple[bool, int, int]:
        """Count correct predictions, stopping once ``need`` correct ones are out of reach.

        Batches run in index order; after each, if ``correct + remaining < need`` the count stops.
        Cached rows are read, not recomputed, and new rows are cached. The answer is exact:
        ``reached`` is ``True`` iff the full count is at least ``need``, and then ``correct``
        is the full count.

        Under torchrun each rank scores a batch of its shard per round and the counts are
        summed after every round, so every rank stops at the same round with the same answer
        (``evaluated`` then counts the examples all ranks looked at).

        Returns:
            ``(reached, correct, evaluated)``: ``evaluated`` examples were looked at.

        Example:
            >>> ev.count_correct(("candidate", sd), "heldout", need=350)  # doctest: +SKIP
            (False, 120, 256)
        """
        res = self._resolve(source)
        if distributed.active():
            return self._count_correct_sharded(res, split, need)
        scorer = _BatchScorer(self, res, split)
        n = len(scorer.split)
        correct = evaluated = 0
        with self._bar(n, f"{res.name} · {split}") as bar:
            for start in range(0, n, self.batch_size):
                stop = min(n, start + self.batch_size)
                correct += scorer.hits(start, stop)
                evaluated = stop
                bar.update(stop - start)
                if correct + (n - evaluated) < need:
                    break
        if scorer.fresh:
            self._store(res, split, scorer.logits, scorer.have)
        return correct >= need, correct, evaluated

    def load_model(self, state_dict: StateDict, name: str | None = None) -> nn.Module:
        """Load ``state_dict`` strictly into the task's model (one instance, reused).

        Raises:
            TaskError: listing missing keys, unexpected keys and shape mismatches.

        Example:
            >>> model = ev.load_model(ingredient.state_dict(), name=ingredient.name)  # doctest: +SKIP
        """
        model = self._model if self._model is not None else self._build()
        expected = model.state_dict()
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
        shapes = [
            f"{k}: weights {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
            for k in expected
            if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
        ]
        if missing or unexpected or shapes:
            who = f"{name!r}" if name else "the weights"
            parts = [
                f"{label} ({len(items)}): {_listing(items)}"
                for label, items in [
                    ("missing keys", missing),
                    ("unexpected keys", unexpected),
                    ("shape mismatches", shapes),
                ]
                if items
            ]
            raise TaskError(
                f"{who} do not fit the model of task {self.task.name!r}:\n  " + "\n  ".join(parts)
            )
        try:
            model.load_state_dict(state_dict, strict=True)
        except RuntimeError as e:
            raise TaskError(f"loading {name or 'weights'} into task {self.task.name!r}: {e}") from e
        self.stats.model_loads += 1
        return model.eval()

    # ----------------------------------------------------------------- internals

    def _build(self) -> nn.Module:
        try:
            model = self.task.build_model()
        except Exception as e:
            raise TaskError(
                f"task {self.task.name!r}: build_model() raised {type(e).__name__}: {e}"
            ) from e
        if not isinstance(model, nn.Module):
            raise TaskError(
                f"task {self.task.name!r}: build_model() returned {type(model).__name__}, "
                "not a torch.nn.Module"
            )
        self._model = model.to(self.device).eval()
        return self._model

    def _split(self, split: str) -> Split:
        sp = self.task.split(split)
        if len(sp) == 0:
            raise TaskError(f"task {self.task.name!r}: split {split!r} is empty")
        return sp

    def _resolve(self, source: Source) -> _Resolved:
        if isinstance(source, Ingredient):
            return _Resolved(source.digest, source.name, source.state_dict)
        if isinstance(source, Soup):
            key = source.cache_key
            return _Resolved(key, f"{source.recipe} soup", source.state_dict)
        if isinstance(source, tuple) and len(source) == 2 and isinstance(source[0], str):
            key, value = source
            name = _short(key)
            if callable(value) and not isinstance(value, nn.Module):
                return _Resolved(key, name, value)
            return _Resolved(key, name, lambda: value)
        if isinstance(source, Mapping):
            return _Resolved(None, "state dict", lambda: source)
        raise TaskError(
            f"cannot evaluate a {type(source).__name__}: give an Ingredient, a Soup, "
            "a (key, state_dict) pair or a state dict"
        )

    def _predictor(self, res: _Resolved) -> nn.Module:
        value = res.make()
        if isinstance(value, nn.Module):
            return value.to(self.device).eval()
        if not isinstance(value, Mapping):
            raise TaskError(f"{res.name}: expected a state dict, got {type(value).__name__}")
        return self.load_model(value, name=res.name)

    def _cached(self, res: _Resolved, split: str, n: int):
        if res.key is None:
            return None
        return self.cache.load(res.key, self.fingerprint(split), n)

    def _store(
        self, res: _Resolved, split: str, logits: torch.Tensor | None, have: torch.Tensor
    ) -> None:
        """Cache the rows (rank 0 writes; under torchrun every rank calls this, then waits)."""
        if res.key is not None and logits is not None:
            if distributed.is_main():
                self.cache.save(res.key, self.fingerprint(split), logits, have)
            distributed.barrier()
            kill_point("cache-store")

    def _sharded_forward(self, res: _Resolved, sp: Split, missing: list[int]) -> torch.Tensor:
        """Run this rank's whole batches of ``missing`` and gather every rank's rows, in order."""
        mine = distributed.shard_range(len(missing), block=self.batch_size)
        idx = missing[mine.start : mine.stop]
        outs = []
        if idx:
            model = self._predictor(res)
            with self._bar(len(idx), f"{res.name} · {sp.name}") as bar:
                for start in range(0, len(idx), self.batch_size):
                    batch = idx[start : start + self.batch_size]
                    outs.append(self._forward(model, sp, batch, res.name))
                    bar.update(len(batch))
        width = distributed.all_reduce_max(outs[0].shape[1] if outs else 0)
        local = torch.cat(outs) if outs else torch.zeros(0, width)
        return distributed.gather_rows(local, len(missing), block=self.batch_size)

    def _count_correct_sharded(
        self, res: _Resolved, split: str, need: int
    ) -> tuple[bool, int, int]:
        """:meth:`count_correct` under torchrun: global rounds of one batch per rank."""
        scorer = _BatchScorer(self, res, split)
        n, size = len(scorer.split), self.batch_size
        mine = distributed.shard_range(n, block=size)
        world = distributed.world_size()
        rounds = max(
            -(-len(distributed.shard_range(n, r, world, block=size)) // size) for r in range(world)
        )
        correct = evaluated = 0
        starts = list(range(mine.start, mine.stop, size))
        with self._bar(n, f"{res.name} · {split}") as bar:
            for r in range(rounds):
                counts = torch.zeros(2, dtype=torch.int64)
                if r < len(starts):
                    start, stop = starts[r], min(mine.stop, starts[r] + size)
                    counts[0], counts[1] = scorer.hits(start, stop), stop - start
                distributed.all_reduce_sum(counts)
                correct += int(counts[0])
                evaluated += int(counts[1])
                bar.update(int(counts[1]))
                if correct + (n - evaluated) < need:
                    break
        if res.key is not None and distributed.all_reduce_max(int(scorer.fresh)):
            logits = scorer.logits
            width = distributed.all_reduce_max(0 if logits is None else logits.shape[1])
            if logits is None:
                logits = torch.zeros(n, width)
            full = distributed.gather_rows(logits[mine.start : mine.stop], n, block=size)
            have = scorer.have[mine.start : mine.stop]
            full_have = distributed.gather_rows(have, n, block=size)
            self._store(res, split, full, full_have)
        return correct >= need, correct, evaluated

    def _place(
        self,
        res: _Resolved,
        split: str,
        logits: torch.Tensor | None,
        have: torch.Tensor,
        idx: list[int],
        out: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if logits is None:
            logits = torch.zeros(len(have), out.shape[1], dtype=torch.float32)
        elif logits.shape[1] != out.shape[1]:
            path = self.cache.path(cast(str, res.key), self.fingerprint(split))
            raise TaskError(
                f"{res.name} on split {split!r}: cached logits have {logits.shape[1]} classes but "
                f"the model now outputs {out.shape[1]}; the task changed without a new "
                f"version (bump Task.version) or delete {path}"
            )
        return _place(logits, have, idx, out)

    def _bar(self, total: int, desc: str) -> tqdm:
        quiet = not self.progress or not distributed.is_main()
        return tqdm(total=total, unit="ex", desc=desc, disable=quiet, leave=False)

    def _forward(self, model: nn.Module, split: Split, idx: list[int], name: str) -> torch.Tensor:
        examples = split.examples
        try:
            if self.task.collate is default_collate and isinstance(examples, torch.Tensor):
                contiguous = idx[-1] - idx[0] + 1 == len(idx)
                batch = (
                    examples[idx[0] : idx[-1] + 1] if contiguous else examples[torch.tensor(idx)]
                )
            else:
                batch = self.task.collate([examples[i] for i in idx])
            batch = _to_device(batch, self.device)
            bf16 = self.precision == "bf16"
            with (
                torch.inference_mode(),
                torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16),
            ):
                out = self.task.forward(model, batch)
        except ModelSoupError:
            raise
        except Exception as e:
            raise TaskError(
                f"task {self.task.name!r}: running {name} on split {split.name!r} raised "
                f"{type(e).__name__}: {e}"
            ) from e
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != len(idx):
            shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise TaskError(
                f"task {self.task.name!r}: forward must return logits [batch, classes]; "
                f"got {shape} for a batch of {len(idx)} on split {split.name!r}"
            )
        self.stats.forward_examples += len(idx)
        self.stats.forward_batches += 1
        _check_width(out.shape[1], split, name)
        kill_point("evaluate-batch")
        return out.detach().float().cpu()


def _place(
    logits: torch.Tensor, have: torch.Tensor, idx: list[int], out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Write ``out`` into rows ``idx`` of ``logits`` and mark them present."""
    if idx[-1] - idx[0] + 1 == len(idx):  # contiguous rows: a slice, not a gather
        logits[idx[0] : idx[-1] + 1] = out
        have[idx[0] : idx[-1] + 1] = True
    else:
        logits[idx] = out
        have[idx] = True
    return logits, have


def _check_width(classes: int, split: Split, name: str) -> None:
    top = int(split.labels.max())
    if top >= classes:
        raise TaskError(
            f"{name} on split {split.name!r}: label {top} is outside the model's {classes} "
            f"classes (0..{classes - 1})"
        )


def _to_device(batch: Any, device: torch.device) -> Any:
    if device.type == "cpu":
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _short(key: str) -> str:
    """A display name for a cache key: ``prefix:0123abcd`` for long ``prefix:hash`` keys."""
    if len(key) <= 40:
        return key
    head, _, tail = key.rpartition(":")
    return f"{head[:28]}:{tail[:8]}" if head else key[:12]


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f", ... (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else "")


# --------------------------------------------------------------------- evaluate many ingredients


@dataclass
class EvaluationTable:
    """Every ingredient's metrics on every split (what ``modelsoup evaluate`` prints and writes).

    Attributes:
        task: the task's name.
        splits: the evaluated splits, in order.
        roles: split -> ``"heldout"``, ``"id_test"`` or ``"shift"`` (others: ``"other"``).
        headline: split -> the headline metric's name.
        rows: one dict per ingredient: ``name``, ``source``, ``digest``, ``metrics``
            (split -> metrics) and ``shift_avg`` (mean headline score over the shift splits).
    """

    task: str
    splits: list[str]
    roles: dict[str, str]
    headline: dict[str, str]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "splits": {s: {"role": self.roles[s], "metric": self.headline[s]} for s in self.splits},
            "ingredients": self.rows,
        }

    def to_csv(self) -> str:
        """Long format: one line per (ingredient, split)."""
        buf = io.StringIO()
        cols = ["ingredient", "digest", "split", "role", "metric", "score", "accuracy",
                "balanced_accuracy", "nll", "ece", "n"]  # fmt: skip
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(cols)
        for row in self.rows:
            for s in self.splits:
                m = row["metrics"][s]
                writer.writerow(
                    [row["name"], row["digest"], s, self.roles[s], self.headline[s]]
                    + [m[c] for c in ("score", "accuracy", "balanced_accuracy", "nll", "ece", "n")]
                )
        return buf.getvalue()

    def display(self) -> tuple[list[str], list[list[str]]]:
        """Header and rows for a terminal table: headline metric as a percentage."""
        header = ["ingredient"]
        for s in self.splits:
            tag = {"heldout": " (held-out)", "id_test": " (ID)"}.get(self.roles[s], "")
            metric = "" if self.headline[s] == "accuracy" else f" [{self.headline[s]}]"
            header.append(f"{s}{tag}{metric}")
        has_shifts = any(r == "shift" for r in self.roles.values())
        if has_shifts:
            header.append("shift avg")
        rows = []
        for row in self.rows:
            cells = [row["name"]] + [f"{100 * row['metrics'][s]['score']:.2f}" for s in self.splits]
            if has_shifts:
                avg = row["shift_avg"]
                cells.append("" if avg is None else f"{100 * avg:.2f}")
            rows.append(cells)
        return header, rows

    def write(self, run_dir: str | Path, *, overwrite: bool = False) -> list[Path]:
        """Write ``evaluation.csv`` then ``evaluation.json`` into ``run_dir``, each atomically;
        the JSON, written last, marks a complete evaluation."""
        paths = check_evaluation_output(run_dir, overwrite=overwrite)
        atomic_write(paths[1], self.to_csv())
        kill_point("evaluation-csv")
        atomic_write(paths[0], json.dumps(self.to_json(), indent=2) + "\n")
        return paths


EVALUATION_FILES = ("evaluation.json", "evaluation.csv")


def check_evaluation_output(run_dir: str | Path, *, overwrite: bool = False) -> list[Path]:
    """The output paths in ``run_dir``; refuses existing ones unless ``overwrite``.

    ``evaluation.json`` is written last: an ``evaluation.csv`` without it is what an interrupted
    run left, and is replaced.

    Example:
        >>> check_evaluation_output("runs/new")  # doctest: +SKIP
        [PosixPath('runs/new/evaluation.json'), PosixPath('runs/new/evaluation.csv')]
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputError(f"{run_dir}: exists and is not a directory")
    paths = [run_dir / f for f in EVALUATION_FILES]
    existing = [str(p) for p in paths if p.exists()] if paths[0].exists() else []
    if existing and not overwrite:
        raise OutputError(f"{', '.join(existing)}: already exists (pass --overwrite to replace)")
    return paths


def evaluate_ingredients(
    ingredients: Sequence[Ingredient],
    evaluator: Evaluator,
    splits: Sequence[str] | None = None,
    log_fn: Callable[[str], None] | None = None,
) -> EvaluationTable:
    """Evaluate every ingredient on every split (default: :attr:`Evaluator.default_splits`).

    Example:
        >>> table = evaluate_ingredients(load_ingredients(["trials/"]), Evaluator(task))  # doctest: +SKIP
        >>> table.write("runs/demo")  # doctest: +SKIP
    """
    task = evaluator.task
    names = list(evaluator.default_splits if splits is None else splits)
    for s in names:
        evaluator._split(s)  # unknown or empty splits fail before any work
    roles = {s: _role(task, s) for s in names}
    table = EvaluationTable(
        task=task.name,
        splits=names,
        roles=roles,
        headline={s: task.metric_for(s) for s in names},
    )
    shifts = [s for s in names if roles[s] == "shift"]
    for ing in ingredients:
        metrics = evaluator.evaluate(ing, names)
        avg = sum(metrics[s]["score"] for s in shifts) / len(shifts) if shifts else None
        table.rows.append(
            {
                "name": ing.name,
                "source": str(ing.source),
                "digest": ing.digest,
                "metrics": metrics,
                "shift_avg": avg,
            }
        )
        if log_fn:
            best = metrics[names[0]]["score"]
            log_fn(f"{ing.name}: {names[0]} {100 * best:.2f}%")
        ing.release()
    return table


def _role(task: Task, split: str) -> str:
    if split == task.heldout:
        return "heldout"
    if split == task.id_test:
        return "id_test"
    if split in task.shifts:
        return "shift"
    return "other"


class _BatchScorer:
    """Counts the correct predictions of one predictor on index ranges of one split, reading
    cached rows and computing (and keeping) the missing ones."""

    def __init__(self, evaluator: Evaluator, res: _Resolved, split: str) -> None:
        self.evaluator, self.res, self.split_name = evaluator, res, split
        self.split = evaluator._split(split)
        n = len(self.split)
        entry = evaluator._cached(res, split, n)
        self.logits = None if entry is None else entry.logits.clone()
        self.have = torch.zeros(n, dtype=torch.bool) if entry is None else entry.have.clone()
        self.model: nn.Module | None = None
        self.fresh = False

    def hits(self, start: int, stop: int) -> int:
        ev, sp = self.evaluator, self.split
        miss = ((~self.have[start:stop]).nonzero().flatten() + start).tolist()
        ev.stats.cached_examples += stop - start - len(miss)
        if miss:
            if self.model is None:
                self.model = ev._predictor(self.res)
            out = ev._forward(self.model, sp, miss, self.res.name)
            self.logits, self.have = ev._place(
                self.res, self.split_name, self.logits, self.have, miss, out
            )
            self.fresh = True
        rows = cast(torch.Tensor, self.logits)[start:stop]
        if not miss:
            _check_width(rows.shape[1], sp, self.res.name)
        return int((rows.argmax(dim=-1) == sp.labels[start:stop]).sum())
