"""A complete modelsoup task you can copy: a tiny CNN on generated stripe images.

Four classes of 12x12 grey images (horizontal, vertical and diagonal stripes, and a square blob)
with random phase, position and noise. Splits: ``train``, ``heldout`` (used to choose, never
reported), ``test`` (in distribution) and three distribution shifts: ``noisy`` (twice the
noise), ``faint`` (half the contrast) and ``bright`` (a brightness offset).

Use it with any modelsoup command::

    modelsoup evaluate runs/cnn/trials --task examples/tiny_cnn_task.py:make_task -o runs/cnn

and make ingredients to try it on (fine-tuned from one shared init; under a minute on a CPU)::

    python examples/tiny_cnn_task.py runs/cnn/trials --models 8

To write your own task, keep the shape of :func:`make_task`: build the splits, say which is the
held-out split, which is the ID test set and which are shifts, and give a model builder whose
``state_dict`` keys match your checkpoints.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from torch import nn

from modelsoup.evaluation.task import Split, Task

SIZE = 12
CLASSES = ("horizontal", "vertical", "diagonal", "blob")


class TinyCNN(nn.Module):
    """Two convolutions, BatchNorm (it has integer buffers, as real models do) and a linear head."""

    def __init__(self, classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.max_pool2d(torch.relu(self.norm(self.conv1(x))), 2)
        h = torch.relu(self.conv2(h)).mean(dim=(2, 3))
        return self.head(h)


def make_images(
    n: int,
    *,
    seed: int,
    noise: float = 1.3,
    contrast: float = 1.0,
    brightness: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images ``[n, 1, 12, 12]`` and labels, deterministic for a given seed."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(CLASSES), (n,), generator=g)
    period = (3.0 + 2.0 * torch.rand(n, generator=g)).view(n, 1, 1)
    phase = (2 * math.pi * torch.rand(n, generator=g)).view(n, 1, 1)
    top, left = torch.randint(0, SIZE - 5, (2, n, 1, 1), generator=g)

    def inside(coord: torch.Tensor, start: torch.Tensor) -> torch.Tensor:  # a 5-pixel span
        return (coord >= start) & (coord < start + 5)

    rows = torch.arange(SIZE).view(1, SIZE, 1)
    cols = torch.arange(SIZE).view(1, 1, SIZE)
    patterns = torch.stack(
        [
            torch.sin(2 * math.pi * rows / period + phase).expand(n, SIZE, SIZE),
            torch.sin(2 * math.pi * cols / period + phase).expand(n, SIZE, SIZE),
            torch.sin(2 * math.pi * (rows + cols) / (1.4 * period) + phase),
            torch.where(inside(rows, top) & inside(cols, left), 1.0, -1.0),
        ],
        dim=1,
    )  # [n, class, 12, 12]
    images = patterns[torch.arange(n), labels].unsqueeze(1)
    images = contrast * images + brightness
    images += noise * torch.randn(images.shape, generator=g)
    return images, labels


def make_task(seed: int = 0, n_train: int = 2000, n_eval: int = 500) -> Task:
    """The task factory modelsoup calls (``--task examples/tiny_cnn_task.py:make_task``).

    Example:
        >>> task = make_task(n_train=8, n_eval=8)
        >>> task.heldout, task.id_test, task.shifts
        ('heldout', 'test', ('noisy', 'faint', 'bright'))
    """

    def split(name: str, n: int, offset: int, **kw: float) -> Split:
        x, y = make_images(n, seed=1000 * seed + offset, **kw)
        return Split(name, examples=x, labels=y)

    splits = {
        "train": split("train", n_train, 1),
        "heldout": split("heldout", n_eval, 2),
        "test": split("test", n_eval, 3),
        "noisy": split("noisy", n_eval, 4, noise=2.0),
        "faint": split("faint", n_eval, 5, contrast=0.5),
        "bright": split("bright", n_eval, 6, brightness=0.6),
    }
    return Task(
        name="tiny-cnn",
        build_model=TinyCNN,
        splits=splits,
        heldout="heldout",
        id_test="test",
        shifts=("noisy", "faint", "bright"),
        num_classes=len(CLASSES),
        train="train",
        batch_size=256,
        version="1",
    )


# ------------------------------------------------------------------ making ingredients to try


def train(
    model: nn.Module, split: Split, *, lr: float, epochs: int, seed: int, batch: int = 64
) -> nn.Module:
    """Plain SGD with momentum and cosine decay on the training split."""
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    steps = epochs * math.ceil(len(split) / batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    x, y = split.examples, split.labels
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(split))
        for s in range(0, len(split), batch):
            idx = perm[s : s + batch]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def make_ingredients(
    out: Path, models: int = 8, seed: int = 0, n_train: int = 2000, max_epochs: int = 4
) -> list[Path]:
    """Pre-train a shared init briefly, then fine-tune ``models`` copies with random learning
    rates, epochs and seeds; write ``trial_XXX.safetensors`` plus a ``.json`` sidecar each."""
    from safetensors.torch import save_file

    task = make_task(seed=seed, n_train=n_train, n_eval=1)
    torch.manual_seed(seed)
    init = train(TinyCNN(), task.splits["train"], lr=0.02, epochs=4, seed=seed)
    init_state = {k: v.clone() for k, v in init.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    rng = torch.Generator().manual_seed(seed + 1)
    paths = []
    for i in range(models):
        lr = 10 ** (-1.7 + 0.5 * float(torch.rand((), generator=rng)))
        epochs = int(torch.randint(min(3, max_epochs), max_epochs + 1, (), generator=rng))
        model = TinyCNN()
        model.load_state_dict(init_state)
        train(model, task.splits["train"], lr=lr, epochs=epochs, seed=seed * 100 + i)
        path = out / f"trial_{i:03d}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        hparams = {"lr": lr, "epochs": epochs, "seed": seed * 100 + i}
        path.with_suffix(".json").write_text(json.dumps({"hparams": hparams}, indent=2) + "\n")
        paths.append(path)
        print(f"{path}: lr {lr:.2g}, {epochs} epochs")
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Fine-tune TinyCNN ingredients from one init.")
    parser.add_argument("out", type=Path, help="directory for trial_XXX.safetensors")
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-epochs", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models train faster on one thread
    make_ingredients(args.out, models=args.models, seed=args.seed, max_epochs=args.max_epochs)
