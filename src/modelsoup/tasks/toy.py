"""A tiny built-in task: an MLP on generated Gaussian clusters, with shifted test sets.

It runs in seconds on a CPU and needs no files, so tests, examples and benchmarks use it.
Splits: ``train``, ``heldout`` (selection), ``test`` (in distribution) and three shifts:
``noisy`` (more noise), ``shifted`` (a translated input distribution) and ``scaled``.
"""

from __future__ import annotations

import torch
from torch import nn

from modelsoup.evaluation.task import Split, Task


class ToyMLP(nn.Module):
    """A two-layer MLP classifier with a BatchNorm layer (so it has integer buffers)."""

    def __init__(self, dim: int = 16, hidden: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(dim, hidden)
        self.norm = nn.BatchNorm1d(hidden)
        self.block = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm(self.embed(x)))
        h = torch.relu(self.block(h)) + h
        return self.head(h)


def make_data(
    n: int,
    *,
    seed: int,
    dim: int = 16,
    classes: int = 4,
    noise: float = 1.0,
    shift: float = 0.0,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points around fixed class centres (the centres depend only on ``dim``/``classes``)."""
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(1234)) * 1.2
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = centres[y] + noise * torch.randn(n, dim, generator=g)
    return (x + shift) * scale, y


def make_task(n_train: int = 512, n_eval: int = 400, seed: int = 0) -> Task:
    """The toy task.

    Example:
        >>> task = make_task()
        >>> task.heldout, task.id_test, task.shifts
        ('heldout', 'test', ('noisy', 'shifted', 'scaled'))
    """

    def split(name: str, n: int, offset: int, **kw: float) -> Split:
        x, y = make_data(n, seed=seed * 100 + offset, **kw)
        return Split(name, examples=x, labels=y)

    splits = {
        "train": split("train", n_train, 1),
        "heldout": split("heldout", n_eval, 2),
        "test": split("test", n_eval, 3),
        "noisy": split("noisy", n_eval, 4, noise=1.8),
        "shifted": split("shifted", n_eval, 5, shift=0.6),
        "scaled": split("scaled", n_eval, 6, scale=1.5),
    }
    return Task(
        name="toy",
        build_model=ToyMLP,
        splits=splits,
        heldout="heldout",
        id_test="test",
        shifts=("noisy", "shifted", "scaled"),
        num_classes=4,
        train="train",
        batch_size=128,
    )
