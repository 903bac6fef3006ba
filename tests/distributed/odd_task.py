"""The toy task with split sizes that do not divide by 2 nor by the batch size, and a split
smaller than one batch (so a rank gets no examples), for the torchrun tests."""

from __future__ import annotations

from modelsoup.evaluation.task import Split, Task
from modelsoup.tasks.toy import ToyMLP, make_data

SIZES = {"train": 384, "heldout": 301, "test": 157, "noisy": 3, "shifted": 129, "scaled": 65}
BATCH_SIZE = 32


def make_task() -> Task:
    kw = {
        "noisy": {"noise": 2.6},
        "shifted": {"noise": 1.8, "shift": 0.6},
        "scaled": {"noise": 1.8, "scale": 1.5},
    }
    splits = {}
    for offset, (name, n) in enumerate(SIZES.items(), 1):
        x, y = make_data(n, seed=700 + offset, **kw.get(name, {"noise": 1.8}))
        splits[name] = Split(name, examples=x, labels=y)
    return Task(
        name="toy-odd",
        build_model=ToyMLP,
        splits=splits,
        heldout="heldout",
        id_test="test",
        shifts=("noisy", "shifted", "scaled"),
        num_classes=4,
        train="train",
        batch_size=BATCH_SIZE,
    )
