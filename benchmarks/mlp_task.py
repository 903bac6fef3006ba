"""A bigger MLP task for the evaluation and greedy benchmarks (seconds per held-out pass).

Labels come from a fixed "teacher" MLP with label noise, and ingredients are the teacher's
weights plus Gaussian noise of increasing scale, so the greedy soup has something to choose:
soups of the quiet ingredients beat each of them, the loud ones are rejected.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from modelsoup.evaluation.task import Split, Task


class WideMLP(nn.Module):
    def __init__(self, dim: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


SIZES = {
    "full": {"dim": 256, "hidden": 1024, "classes": 10, "n": 8192, "batch": 256},
    "quick": {"dim": 128, "hidden": 512, "classes": 10, "n": 8192, "batch": 256},
}


def teacher(size: str) -> WideMLP:
    s = SIZES[size]
    torch.manual_seed(0)
    return WideMLP(s["dim"], s["hidden"], s["classes"]).eval()


def make_task(size: str = "quick") -> Task:
    """Held-out and test splits labelled by the teacher, 10% of labels flipped at random."""
    s = SIZES[size]
    model = teacher(size)
    splits = {}
    for offset, name in enumerate(("heldout", "test")):
        g = torch.Generator().manual_seed(10 + offset)
        x = torch.randn(s["n"], s["dim"], generator=g)
        with torch.inference_mode():
            y = model(x).argmax(-1)
        flip = torch.rand(s["n"], generator=g) < 0.1
        y = torch.where(flip, torch.randint(0, s["classes"], (s["n"],), generator=g), y)
        splits[name] = Split(name, examples=x, labels=y.clone())
    return Task(
        name=f"bench-mlp-{size}",
        build_model=lambda: WideMLP(s["dim"], s["hidden"], s["classes"]),
        splits=splits,
        heldout="heldout",
        id_test="test",
        shifts=(),
        num_classes=s["classes"],
        batch_size=s["batch"],
    )


def write_ingredients(size: str, k: int, folder: Path) -> list[Path]:
    """``k`` noisy copies of the teacher as safetensors, noise growing with the index."""
    folder.mkdir(parents=True, exist_ok=True)
    base = teacher(size).state_dict()
    paths = []
    for i in range(k):
        g = torch.Generator().manual_seed(100 + i)
        # relative to each tensor's own spread: a quiet majority (their soups beat each of
        # them: independent noise averages out) and a few loud ones (rejected)
        loud = i - (k - 4)
        scale = 0.4 + 0.03 * i if loud < 0 else 3.0 + 2.0 * loud
        sd = {
            n: (t + scale * t.std() * torch.randn(t.shape, generator=g)).contiguous()
            for n, t in base.items()
        }
        path = folder / f"ing_{i:02d}.safetensors"
        save_file(sd, path)
        paths.append(path)
    return paths
