"""Tasks: how to build the model an ingredient loads into, the named splits, and how to score.

A task is plain Python. Users point at a factory with ``--task package.module:make_task`` or
``--task path/to/file.py:make_task``; built-in tasks are registered by name (``modelsoup tasks``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelsoup.errors import TaskError

METRICS = ("accuracy", "balanced_accuracy")


@dataclass
class Split:
    """A named, labelled data split.

    Attributes:
        name: split name (e.g. ``"heldout"``, ``"test"``, ``"amazon"``).
        examples: indexable; ``examples[i]`` is one example of any type the task's ``collate``
            accepts. Caches key outputs by index into this sequence.
        labels: integer class labels, one per example.
        version: anything that changes when the data changes (folded into the fingerprint,
            which otherwise hashes the examples and labels).

    Example:
        >>> Split("test", examples=[[0.0, 1.0], [1.0, 0.0]], labels=[1, 0])  # doctest: +ELLIPSIS
        Split(name='test', ...)
    """

    name: str
    examples: Sequence[Any]
    labels: Sequence[int] | torch.Tensor
    version: str = ""

    def __post_init__(self) -> None:
        self.labels = torch.as_tensor(self.labels, dtype=torch.long)
        if len(self.labels) != len(self.examples):
            raise TaskError(
                f"split {self.name!r}: {len(self.examples)} examples but {len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return len(self.examples)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over the split's name, version, examples and labels."""
        h = hashlib.sha256(f"{self.name}|{self.version}|{len(self)}".encode())
        h.update(self.labels.numpy().tobytes())
        for ex in self.examples:
            _hash_into(h, ex)
        return h.hexdigest()


def _hash_into(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, Mapping):
        h.update(b"{")
        for k in sorted(obj, key=str):
            h.update(str(k).encode() + b":")
            _hash_into(h, obj[k])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for x in obj:
            _hash_into(h, x)
        h.update(b"]")
    else:
        h.update(repr(obj).encode() + b";")


def default_collate(examples: list[Any]) -> Any:
    """Stack tensors / numbers / dicts of them into a batch."""
    first = examples[0]
    if isinstance(first, Mapping):
        return {k: default_collate([e[k] for e in examples]) for k in first}
    if isinstance(first, torch.Tensor):
        return torch.stack(examples)
    return torch.as_tensor(examples)


def default_forward(model: nn.Module, batch: Any) -> torch.Tensor:
    """``model(**batch)`` for dicts (``.logits`` taken when present), else ``model(batch)``."""
    out = model(**batch) if isinstance(batch, Mapping) else model(batch)
    return getattr(out, "logits", out)


@dataclass
class Task:
    """What an evaluation needs: a model builder, named splits and their roles, and the metric.

    Attributes:
        name: the task's name (part of every cache key).
        build_model: returns a fresh model whose ``state_dict`` keys match the ingredients;
            weights are loaded strictly.
        splits: split name -> :class:`Split`.
        heldout: the selection split: used to choose (greedy, learned), never reported as a result.
        id_test: the in-distribution test split.
        shifts: the distribution-shift test splits; their mean is reported as ``shift_avg``.
        num_classes: number of classes; labels must lie in ``[0, num_classes)``.
        train: an optional training split (the sweep trains on it; Fig. 2 plots its loss).
        collate: turns a list of examples into a model input.
        forward: ``forward(model, batch) -> logits``.
        metric: the headline metric per split (``"accuracy"`` by default; e.g.
            ``{"drugs": "balanced_accuracy"}`` for an imbalanced split).
        batch_size: evaluation batch size.
        version: bump when the model or data change in ways the fingerprints cannot see.

    Example:
        >>> task = Task(name="toy", build_model=lambda: nn.Linear(2, 2), splits=splits,
        ...             heldout="val", id_test="test", shifts=("noisy",), num_classes=2)  # doctest: +SKIP
    """

    name: str
    build_model: Callable[[], nn.Module]
    splits: Mapping[str, Split]
    heldout: str
    id_test: str
    shifts: tuple[str, ...]
    num_classes: int
    train: str | None = None
    collate: Callable[[list[Any]], Any] = default_collate
    forward: Callable[[nn.Module, Any], torch.Tensor] = default_forward
    metric: Mapping[str, str] = field(default_factory=dict)
    batch_size: int = 64
    version: str = ""

    def __post_init__(self) -> None:
        self.shifts = tuple(self.shifts)
        problems = []
        for role, name in [
            ("heldout", self.heldout),
            ("id_test", self.id_test),
            *[("shift", s) for s in self.shifts],
            *([("train", self.train)] if self.train else []),
        ]:
            if name not in self.splits:
                problems.append(
                    f"{role} split {name!r} is not among the splits "
                    f"({', '.join(self.splits) or 'none'})"
                )
        for name, split in self.splits.items():
            if len(split) == 0:
                problems.append(f"split {name!r} is empty")
            elif int(split.labels.min()) < 0 or int(split.labels.max()) >= self.num_classes:
                problems.append(f"split {name!r} has labels outside 0..{self.num_classes - 1}")
        for name, metric in self.metric.items():
            if metric not in METRICS:
                problems.append(
                    f"split {name!r}: unknown metric {metric!r} (valid: {', '.join(METRICS)})"
                )
        if problems:
            raise TaskError(f"task {self.name!r} is invalid:\n  " + "\n  ".join(problems))

    @property
    def report_splits(self) -> tuple[str, ...]:
        """The splits reported as results: the ID test, then the shifts (never the held-out)."""
        return (self.id_test, *self.shifts)

    def metric_for(self, split: str) -> str:
        return self.metric.get(split, "accuracy")

    def split(self, name: str) -> Split:
        try:
            return self.splits[name]
        except KeyError:
            raise TaskError(
                f"task {self.name!r} has no split {name!r} (splits: {', '.join(self.splits)})"
            ) from None

    def fingerprint(self, split: str) -> str:
        """Identity of (task, split) for caches."""
        return hashlib.sha256(
            f"{self.name}|{self.version}|{self.split(split).fingerprint}".encode()
        ).hexdigest()


_BUILTIN: dict[str, tuple[str, str]] = {}


def register_task(name: str, target: str, summary: str) -> None:
    """Register a built-in task: ``name`` -> ``"package.module:factory"``.

    Example:
        >>> register_task("toy", "modelsoup.tasks.toy:make_task", "a 4-class MLP")  # doctest: +SKIP
    """
    if name in _BUILTIN:
        raise TaskError(f"a task named {name!r} is already registered")
    _BUILTIN[name] = (target, summary)


def builtin_tasks() -> dict[str, tuple[str, str]]:
    """Registered task names -> (target, one-line summary).

    Example:
        >>> sorted(builtin_tasks())
        ['demo', 'toy']
    """
    _load_builtins()
    return dict(_BUILTIN)


def _load_builtins() -> None:
    importlib.import_module("modelsoup.tasks")


def load_task(ref: str, **kwargs: Any) -> Task:
    """Build a task from a registered name, ``package.module:factory`` or ``file.py:factory``.

    Raises:
        TaskError: saying what was tried when the reference does not resolve, or when the
            factory raises or returns something that is not a :class:`Task`.

    Example:
        >>> task = load_task("examples/toy_task.py:make_task")  # doctest: +SKIP
    """
    _load_builtins()
    if ref in _BUILTIN:
        ref = _BUILTIN[ref][0]
    if ":" not in ref:
        raise TaskError(
            f"task {ref!r}: not a registered task ({', '.join(sorted(_BUILTIN)) or 'none'}) "
            "and not of the form 'package.module:function' or 'path/to/file.py:function'"
        )
    module_ref, func_name = ref.rsplit(":", 1)
    module = _import(module_ref, ref)
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise TaskError(f"task {ref!r}: {module_ref} has no function {func_name!r}")
    try:
        task = factory(**kwargs)
    except TaskError:
        raise
    except Exception as e:
        raise TaskError(f"task {ref!r}: {func_name}() raised {type(e).__name__}: {e}") from e
    if not isinstance(task, Task):
        raise TaskError(f"task {ref!r}: {func_name}() returned {type(task).__name__}, not a Task")
    return task


def _import(module_ref: str, ref: str) -> Any:
    if module_ref.endswith(".py") or "/" in module_ref:
        path = Path(module_ref)
        if not path.is_file():
            raise TaskError(f"task {ref!r}: file {path} does not exist")
        name = f"modelsoup_task_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        except Exception as e:
            sys.modules.pop(name, None)
            raise TaskError(f"task {ref!r}: importing {path} raised {type(e).__name__}: {e}") from e
        return module
    try:
        return importlib.import_module(module_ref)
    except ImportError as e:
        raise TaskError(f"task {ref!r}: cannot import module {module_ref!r} ({e})") from e
    except Exception as e:
        raise TaskError(
            f"task {ref!r}: importing {module_ref} raised {type(e).__name__}: {e}"
        ) from e
