"""Tasks: loading by name, module or file, the errors when they do not resolve, and validation.

Also runs the shipped example task (examples/tiny_cnn_task.py) end to end on a small scale.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from modelsoup.errors import TaskError
from modelsoup.evaluation.task import Split, Task, builtin_tasks, load_task

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "tiny_cnn_task.py"

TASK_FILE = """
import torch
from torch import nn
from modelsoup.evaluation.task import Split, Task

def make_task(n=6):
    x = torch.eye(n)
    y = torch.arange(n) % 2
    splits = {s: Split(s, examples=x, labels=y) for s in ("val", "test", "shift")}
    return Task(name="file-task", build_model=lambda: nn.Linear(n, 2), splits=splits,
                heldout="val", id_test="test", shifts=("shift",), num_classes=2)

def not_a_task():
    return 42

def raises():
    raise RuntimeError("no data here")
"""


@pytest.fixture
def task_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_task.py"
    path.write_text(textwrap.dedent(TASK_FILE))
    return path


def test_builtin_names_are_registered() -> None:
    tasks = builtin_tasks()
    assert tasks["toy"][0] == "modelsoup.tasks.toy:make_task"
    toy = load_task("toy")
    assert (toy.heldout, toy.id_test, toy.shifts) == (
        "heldout",
        "test",
        ("noisy", "shifted", "scaled"),
    )


def test_load_from_a_file_and_a_module(task_file: Path, monkeypatch) -> None:
    task = load_task(f"{task_file}:make_task")
    assert task.name == "file-task" and len(task.splits["val"]) == 6
    assert load_task(f"{task_file}:make_task", n=4).splits["val"].labels.tolist() == [0, 1, 0, 1]
    monkeypatch.syspath_prepend(str(task_file.parent))
    assert load_task("my_task:make_task").name == "file-task"
    assert load_task("modelsoup.tasks.toy:make_task").name == "toy"


@pytest.mark.parametrize(
    "ref, message",
    [
        ("nonsense", "not a registered task .*toy.* and not of the form"),
        ("{dir}/missing.py:make_task", "missing.py does not exist"),
        ("{file}:nothing", "has no function 'nothing'"),
        ("{file}:not_a_task", r"not_a_task\(\) returned int, not a Task"),
        ("{file}:raises", r"raises\(\) raised RuntimeError: no data here"),
        ("no_such_package.tasks:make_task", "cannot import module 'no_such_package.tasks'"),
    ],
)
def test_references_that_do_not_resolve_say_what_was_tried(task_file, ref, message) -> None:
    ref = ref.format(dir=task_file.parent, file=task_file)
    with pytest.raises(TaskError, match=message):
        load_task(ref)


def test_a_file_that_fails_to_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad_task.py"
    bad.write_text("import not_a_real_module_xyz\n")
    with pytest.raises(TaskError, match="importing .*bad_task.py raised ModuleNotFoundError"):
        load_task(f"{bad}:make_task")


def test_invalid_tasks_list_every_problem() -> None:
    x = torch.zeros(3, 2)
    splits = {"val": Split("val", x, [0, 1, 5]), "empty": Split("empty", [], [])}
    with pytest.raises(TaskError) as err:
        Task(
            name="bad",
            build_model=lambda: nn.Linear(2, 2),
            splits=splits,
            heldout="val",
            id_test="test",
            shifts=("shift",),
            num_classes=2,
            metric={"val": "f1"},
        )
    message = str(err.value)
    assert "id_test split 'test' is not among the splits" in message
    assert "shift split 'shift' is not among the splits" in message
    assert "split 'empty' is empty" in message
    assert "split 'val' has labels outside 0..1" in message
    assert "unknown metric 'f1'" in message
    with pytest.raises(TaskError, match="3 examples but 2 labels"):
        Split("x", x, [0, 1])


def test_fingerprints_follow_the_data(task_file: Path) -> None:
    a = load_task(f"{task_file}:make_task")
    b = load_task(f"{task_file}:make_task")
    assert a.fingerprint("val") == b.fingerprint("val")
    assert a.fingerprint("val") != a.fingerprint("test")  # split names differ
    c = load_task(f"{task_file}:make_task", n=5)
    assert c.fingerprint("val") != a.fingerprint("val")


def test_the_example_task_end_to_end(tmp_path: Path) -> None:
    """The shipped example: make two ingredients, evaluate them with the CLI, cook greedy."""
    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        import tiny_cnn_task as example
    finally:
        sys.path.remove(str(EXAMPLE.parent))
    small = example.make_task(n_train=8, n_eval=8)
    assert small.shifts == ("noisy", "faint", "bright")
    assert small.splits["faint"].examples.shape == (8, 1, 12, 12)
    paths = example.make_ingredients(tmp_path / "trials", models=2, n_train=64, max_epochs=1)
    assert json.loads(paths[0].with_suffix(".json").read_text())["hparams"]["epochs"] == 1

    from modelsoup.cli.main import main

    ref = f"{EXAMPLE}:make_task"
    run = tmp_path / "run"
    assert main(["-q", "evaluate", str(tmp_path / "trials"), "--task", ref, "-o", str(run)]) == 0
    data = json.loads((run / "evaluation.json").read_text())
    assert [r["name"] for r in data["ingredients"]] == ["trial_000", "trial_001"]
    assert set(data["splits"]) == {"heldout", "test", "noisy", "faint", "bright"}
    for row in data["ingredients"]:
        assert 0.0 <= row["metrics"]["test"]["accuracy"] <= 1.0
        assert row["metrics"]["test"]["n"] == 500
