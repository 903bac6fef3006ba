"""A tiny run directory: a shared ToyMLP init and a few fine-tuned trials, as the sweep writes it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from modelsoup.tasks.toy import ToyMLP, make_task

#: (learning rate, seed, steps) of each trial: different enough to point different ways.
TRIALS = [(0.05, 1, 40), (0.2, 2, 30), (0.1, 3, 60), (0.02, 4, 80)]


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def make_run(root: Path, trials: list[tuple[float, int, int]] = TRIALS) -> Path:
    """Write ``root/init.safetensors`` and ``root/trials/trial_XXX.safetensors`` (+ sidecars)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add overhead (and fight other jobs)
    try:
        return _make_run(root, trials)
    finally:
        torch.set_num_threads(threads)


def _make_run(root: Path, trials: list[tuple[float, int, int]]) -> Path:
    task = make_task()
    train = task.split("train")
    torch.manual_seed(0)
    init = ToyMLP()
    init_state = _state(init)
    root.mkdir(parents=True, exist_ok=True)
    save_file(init_state, root / "init.safetensors")
    (root / "trials").mkdir(exist_ok=True)
    for i, (lr, seed, steps) in enumerate(trials):
        model = ToyMLP()
        model.load_state_dict(init_state)
        model.train()
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        for _ in range(steps):
            idx = torch.randint(0, len(train), (64,), generator=g)
            loss = torch.nn.functional.cross_entropy(model(train.examples[idx]), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        name = f"trial_{i:03d}"
        save_file(_state(model), root / "trials" / f"{name}.safetensors")
        sidecar = {"hparams": {"lr": lr, "seed": seed, "steps": steps}}
        (root / "trials" / f"{name}.json").write_text(json.dumps(sidecar))
    return root


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only toy run directory shared by the tests (copy it before writing into it)."""
    return make_run(tmp_path_factory.mktemp("toy_run"))


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run faster on one thread (and do not fight other test workers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def run_copy(toy_run: Path, tmp_path: Path) -> Path:
    """A writable copy of the toy run directory."""
    dst = tmp_path / "run"
    shutil.copytree(toy_run, dst)
    return dst


@pytest.fixture
def toy_task():
    return make_task()


@pytest.fixture
def evaluator(toy_task, tmp_path: Path):
    from modelsoup.evaluation.evaluator import Evaluator

    return Evaluator(toy_task, cache_dir=tmp_path / "preds", progress=False)


def manual_logits(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits of a ToyMLP with ``state``, computed without the evaluator."""
    model = ToyMLP()
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        return model(x)
