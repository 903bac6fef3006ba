"""The evaluator: logits equal a direct forward, per-example caching, strict loading, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import modelsoup
from modelsoup.engine import mix_state_dict
from modelsoup.errors import TaskError
from modelsoup.evaluation.evaluator import Evaluator, evaluate_ingredients
from modelsoup.evaluation.metrics import compute_metrics
from modelsoup.evaluation.task import Split, Task
from modelsoup.ingredients import load_ingredients
from modelsoup.soup import Soup
from modelsoup.tasks.toy import ToyMLP, make_task

N = 64


def toy_weights(k: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``k`` ToyMLP state dicts with random parameters and valid BatchNorm statistics."""
    out = []
    for i in range(k):
        torch.manual_seed(seed * 100 + i)
        model = ToyMLP()
        sd = {n: t.detach().clone() for n, t in model.state_dict().items()}
        sd["norm.running_mean"] = 0.1 * torch.randn(32)
        sd["norm.running_var"] = 1.0 + torch.rand(32)
        sd["norm.num_batches_tracked"] = torch.tensor(i + 1)
        out.append(sd)
    return out


def save(folder: Path, sds: list[dict[str, torch.Tensor]]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, sd in enumerate(sds):
        path = folder / f"m{i}.safetensors"
        save_file(sd, str(path))
        paths.append(path)
    return paths


def direct_logits(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    model = ToyMLP()
    model.load_state_dict(sd)
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture
def task() -> Task:
    return make_task(n_train=8, n_eval=N)


@pytest.fixture
def sds() -> list[dict[str, torch.Tensor]]:
    return toy_weights(3)


@pytest.fixture
def ings(tmp_path: Path, sds):
    return load_ingredients(save(tmp_path / "ckpts", sds))


def evaluator(task: Task, cache: Path, **kw) -> Evaluator:
    return Evaluator(task, cache_dir=cache, progress=False, **kw)


def test_logits_equal_a_direct_forward(task, sds, ings, tmp_path) -> None:
    ev = evaluator(task, tmp_path / "cache")
    logits = ev.logits(ings[0], "test")
    assert logits.shape == (N, 4) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, direct_logits(sds[0], task.splits["test"].examples))
    assert ev.stats.forward_examples == N
    assert ev.stats.forward_batches == 1  # toy batch size 128 > 64 examples


def test_second_evaluator_reads_the_cache_with_zero_forwards(task, ings, tmp_path) -> None:
    first = evaluator(task, tmp_path / "cache")
    expected = first.logits(ings[0], "heldout")
    again = evaluator(task, tmp_path / "cache")
    got = again.logits(ings[0], "heldout")
    assert torch.equal(got, expected)
    assert again.stats.forward_examples == 0
    assert again.stats.model_loads == 0
    assert again.stats.cached_examples == N


def test_default_cache_dir_is_under_modelsoup_cache_dir(task, ings, _isolated_cache) -> None:
    ev = Evaluator(task, progress=False)
    ev.logits(ings[0], "test")
    assert ev.cache.root == _isolated_cache / "predictions"
    assert list((_isolated_cache / "predictions").rglob("*.safetensors"))
    assert Evaluator(task, progress=False).logits(ings[0], "test") is not None


def test_cache_misses_on_another_split_or_other_weights(task, sds, ings, tmp_path) -> None:
    evaluator(task, tmp_path / "cache").logits(ings[0], "test")
    ev = evaluator(task, tmp_path / "cache")
    ev.logits(ings[0], "noisy")
    assert ev.stats.forward_examples == N  # another split: miss
    ev.logits(ings[1], "test")
    assert ev.stats.forward_examples == 2 * N  # other weights: miss
    # the same bytes under another name and folder: keyed by content digest, so a hit
    copy = tmp_path / "elsewhere" / "renamed.safetensors"
    copy.parent.mkdir()
    shutil.copy(ings[0].files[0], copy)
    ev.logits(modelsoup.load_ingredient(copy), "test")
    assert ev.stats.forward_examples == 2 * N


def test_cache_misses_when_the_data_change(sds, ings, tmp_path) -> None:
    evaluator(make_task(n_train=8, n_eval=N, seed=0), tmp_path / "c").logits(ings[0], "test")
    ev = evaluator(make_task(n_train=8, n_eval=N, seed=1), tmp_path / "c")
    logits = ev.logits(ings[0], "test")
    assert ev.stats.forward_examples == N
    x = make_task(n_train=8, n_eval=N, seed=1).splits["test"].examples
    torch.testing.assert_close(logits, direct_logits(sds[0], x))


def test_cache_is_keyed_by_example_not_batch(task, ings, tmp_path) -> None:
    small = evaluator(task, tmp_path / "a", batch_size=7)
    by7 = small.logits(ings[0], "test")
    assert small.stats.forward_batches == 10  # ceil(64 / 7)
    by64 = evaluator(task, tmp_path / "b", batch_size=64).logits(ings[0], "test")
    torch.testing.assert_close(by7, by64)
    reread = evaluator(task, tmp_path / "a", batch_size=5)
    assert torch.equal(reread.logits(ings[0], "test"), by7)
    assert reread.stats.forward_examples == 0


def test_partial_entries_only_compute_the_missing_rows(task, ings, tmp_path) -> None:
    ev = evaluator(task, tmp_path / "cache", batch_size=16)
    reached, correct, evaluated = ev.count_correct(ings[0], "test", need=N + 1)
    assert (reached, evaluated) == (False, 16)  # hopeless from the first batch
    assert ev.stats.forward_examples == 16
    rest = evaluator(task, tmp_path / "cache", batch_size=16)
    logits = rest.logits(ings[0], "test")
    assert rest.stats.forward_examples == N - 16
    assert rest.stats.cached_examples == 16
    fresh = evaluator(task, tmp_path / "fresh", batch_size=16).logits(ings[0], "test")
    assert torch.equal(logits, fresh)


@pytest.mark.parametrize("batch_size", [1, 10, 64])
def test_count_correct_is_exact(task, ings, tmp_path, batch_size) -> None:
    labels = task.splits["heldout"].labels
    full = evaluator(task, tmp_path / "full").logits(ings[1], "heldout")
    hits = (full.argmax(1) == labels).long()
    total = int(hits.sum())
    for need in [0, 1, total - 1, total, total + 1, N // 2, N]:
        ev = evaluator(task, tmp_path / f"c{batch_size}-{need}", batch_size=batch_size)
        reached, correct, evaluated = ev.count_correct(ings[1], "heldout", need=need)
        assert reached == (total >= need)
        if reached:
            assert (correct, evaluated) == (total, N)
        # the same rule by hand: stop after the first batch where correct + remaining < need
        seen = got = 0
        for start in range(0, N, batch_size):
            stop = min(N, start + batch_size)
            got += int(hits[start:stop].sum())
            seen = stop
            if got + (N - seen) < need:
                break
        assert (correct, evaluated) == (got, seen)
        assert ev.stats.forward_examples == evaluated


def test_count_correct_from_the_cache_does_no_forward(task, ings, tmp_path) -> None:
    evaluator(task, tmp_path / "cache").logits(ings[2], "heldout")
    ev = evaluator(task, tmp_path / "cache")
    reached, correct, evaluated = ev.count_correct(ings[2], "heldout", need=0)
    assert reached and evaluated == N
    assert ev.stats.forward_examples == 0


def test_soups_are_cached_by_mixture_key_without_mixing(task, ings, tmp_path, monkeypatch) -> None:
    soup = modelsoup.cook("weighted", ings, weights=(1.0, 2.0, 1.0))
    ev = evaluator(task, tmp_path / "cache")
    logits = ev.logits(soup, "test")
    sd = mix_state_dict(ings, soup.mixture)
    torch.testing.assert_close(logits, direct_logits(sd, task.splits["test"].examples))

    def refuse(self):
        raise AssertionError("a cached soup must not be mixed again")

    monkeypatch.setattr(Soup, "state_dict", refuse)
    again = evaluator(task, tmp_path / "cache")
    assert torch.equal(again.logits(soup, "test"), logits)
    assert again.stats.forward_examples == 0
    other = modelsoup.cook("weighted", ings, weights=(2.0, 1.0, 1.0))
    with pytest.raises(AssertionError, match="must not be mixed"):
        again.logits(other, "test")  # another mixture is another key: a miss


def test_pair_sources_call_their_factory_only_on_a_miss(task, sds, tmp_path) -> None:
    calls = []

    def factory():
        calls.append(1)
        return sds[0]

    ev = evaluator(task, tmp_path / "cache")
    first = ev.logits(("my-candidate", factory), "test")
    second = ev.logits(("my-candidate", factory), "test")
    assert calls == [1] and torch.equal(first, second)
    torch.testing.assert_close(
        ev.logits(("plain", sds[0]), "test"), first
    )  # a plain (key, state_dict) pair works too


def test_modules_and_bare_state_dicts(task, sds, tmp_path) -> None:
    ev = evaluator(task, tmp_path / "cache")
    model = ToyMLP()
    model.load_state_dict(sds[1])
    by_module = ev.logits(("module", model), "test")
    torch.testing.assert_close(by_module, direct_logits(sds[1], task.splits["test"].examples))
    ev.logits(sds[1], "test")
    ev.logits(sds[1], "test")
    assert ev.stats.forward_examples == 3 * N  # a bare state dict has no key: never cached
    with pytest.raises(TaskError, match="cannot evaluate a int"):
        ev.logits(3, "test")  # type: ignore[arg-type]


def test_one_model_instance_is_reused(task, sds, tmp_path) -> None:
    ev = evaluator(task, tmp_path / "cache")
    a = ev.load_model(sds[0])
    b = ev.load_model(sds[1])
    assert a is b and not a.training
    assert ev.stats.model_loads == 2
    torch.testing.assert_close(b.head.weight, sds[1]["head.weight"])


def test_strict_loading_lists_missing_unexpected_and_shapes(task, sds, tmp_path) -> None:
    bad = dict(sds[0])
    del bad["block.bias"]
    bad["extra.weight"] = torch.zeros(2)
    bad["head.weight"] = torch.zeros(3, 32)
    ing = load_ingredients(save(tmp_path / "bad", [bad]))[0]
    ev = evaluator(task, tmp_path / "cache")
    with pytest.raises(TaskError) as err:
        ev.logits(ing, "test")
    message = str(err.value)
    assert "'m0'" in message and "task 'toy'" in message
    assert "missing keys (1): block.bias" in message
    assert "unexpected keys (1): extra.weight" in message
    assert "head.weight: weights (3, 32) vs model (4, 32)" in message
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # nothing cached


def test_labels_outside_the_model_classes(tmp_path) -> None:
    base = make_task(n_train=8, n_eval=N)
    task = Task(
        name="toy3",
        build_model=lambda: ToyMLP(classes=3),
        splits=base.splits,
        heldout="heldout",
        id_test="test",
        shifts=(),
        num_classes=4,
    )
    sd = ToyMLP(classes=3).state_dict()
    ev = evaluator(task, tmp_path / "cache")
    with pytest.raises(TaskError, match="label 3 is outside the model's 3 classes"):
        ev.logits(("three", sd), "test")


def test_unknown_and_empty_splits(task, ings, tmp_path) -> None:
    ev = evaluator(task, tmp_path / "cache")
    with pytest.raises(TaskError, match="has no split 'valid'"):
        ev.logits(ings[0], "valid")
    task.splits["empty"] = Split("empty", examples=[], labels=[])  # type: ignore[index]
    with pytest.raises(TaskError, match="split 'empty' is empty"):
        ev.logits(ings[0], "empty")
    with pytest.raises(TaskError, match="batch size"):
        Evaluator(task, batch_size=0)


def test_forward_errors_name_the_task_and_split(task, ings, tmp_path) -> None:
    def broken(model, batch):
        raise ValueError("boom")

    task.forward = broken
    with pytest.raises(TaskError, match=r"running m0 on split 'test' raised ValueError: boom"):
        evaluator(task, tmp_path / "cache").logits(ings[0], "test")
    task.forward = lambda model, batch: model(batch)[:, :1].squeeze(1)
    with pytest.raises(TaskError, match=r"logits \[batch, classes\]"):
        evaluator(task, tmp_path / "cache").logits(ings[0], "test")


def test_custom_collate_and_list_examples(tmp_path) -> None:
    base = make_task(n_train=8, n_eval=N)
    splits = {
        name: Split(name, examples=[{"x": row} for row in s.examples], labels=s.labels)
        for name, s in base.splits.items()
    }
    task = Task(
        name="dict-toy",
        build_model=ToyMLP,
        splits=splits,
        heldout="heldout",
        id_test="test",
        shifts=("noisy",),
        num_classes=4,
        forward=lambda model, batch: model(batch["x"]),
        batch_size=9,
    )
    sd = toy_weights(1, seed=5)[0]
    logits = evaluator(task, tmp_path / "cache").logits(("dicts", sd), "noisy")
    torch.testing.assert_close(logits, direct_logits(sd, base.splits["noisy"].examples))


def test_evaluate_and_metrics(task, sds, ings, tmp_path) -> None:
    ev = evaluator(task, tmp_path / "cache")
    result = ev.evaluate(ings[0])
    assert list(result) == ["heldout", "test", "noisy", "shifted", "scaled"]
    x, y = task.splits["scaled"].examples, task.splits["scaled"].labels
    expected = compute_metrics(direct_logits(sds[0], x), y)
    for name in ("accuracy", "balanced_accuracy", "nll", "ece", "n", "correct"):
        assert result["scaled"][name] == pytest.approx(expected[name], abs=1e-6)
    assert result["scaled"]["score"] == result["scaled"]["accuracy"]
    task.metric = {"noisy": "balanced_accuracy"}
    only = ev.evaluate(ings[0], ["noisy"])
    assert list(only) == ["noisy"]
    assert only["noisy"]["score"] == only["noisy"]["balanced_accuracy"]


def test_evaluate_ingredients_table(task, ings, tmp_path) -> None:
    ev = evaluator(task, tmp_path / "cache")
    table = evaluate_ingredients(ings, ev)
    assert [r["name"] for r in table.rows] == ["m0", "m1", "m2"]
    row = table.rows[1]
    shifts = [row["metrics"][s]["score"] for s in ("noisy", "shifted", "scaled")]
    assert row["shift_avg"] == pytest.approx(sum(shifts) / 3)
    header, rows = table.display()
    assert header[:3] == ["ingredient", "heldout (held-out)", "test (ID)"]
    assert header[-1] == "shift avg"
    assert rows[1][2] == f"{100 * row['metrics']['test']['accuracy']:.2f}"
    written = table.write(tmp_path / "run")
    data = json.loads(written[0].read_text())
    assert data["splits"]["noisy"] == {"role": "shift", "metric": "accuracy"}
    assert (
        data["ingredients"][1]["metrics"]["test"]["accuracy"] == row["metrics"]["test"]["accuracy"]
    )
    lines = written[1].read_text().splitlines()
    assert len(lines) == 1 + 3 * 5
    assert lines[0].startswith("ingredient,digest,split,role,metric,score,accuracy")


# ------------------------------------------------------------------ the command line


def test_evaluate_command(ings, tmp_path, capsys) -> None:
    from modelsoup.cli.main import main

    run = tmp_path / "run"
    argv = ["-q", "evaluate", *(str(i.source) for i in ings), "--task", "toy", "-o", str(run)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    data = json.loads((run / "evaluation.json").read_text())
    assert [r["name"] for r in data["ingredients"]] == ["m0", "m1", "m2"]
    assert list(data["splits"]) == ["heldout", "test", "noisy", "shifted", "scaled"]
    m1 = data["ingredients"][1]
    line = next(li for li in out.splitlines() if li.startswith("m1 "))
    cells = line.split()
    assert cells[1] == f"{100 * m1['metrics']['heldout']['accuracy']:.2f}"
    assert cells[-1] == f"{100 * m1['shift_avg']:.2f}"
    csv_before = (run / "evaluation.csv").read_text()

    assert main(argv) == 1  # refuses to overwrite, before any work
    assert "already exists (pass --overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--batch-size", "7"]) == 0
    assert (run / "evaluation.csv").read_text() == csv_before  # same numbers at any batch size


def test_evaluate_command_bad_inputs_write_nothing(ings, tmp_path, capsys) -> None:
    from modelsoup.cli.main import main

    run = tmp_path / "run"
    paths = [str(i.source) for i in ings]
    assert main(["-q", "evaluate", *paths, "--task", "nope.py:make_task", "-o", str(run)]) == 1
    assert "nope.py does not exist" in capsys.readouterr().err
    bad = dict(toy_weights(1)[0])
    bad["head.weight"] = torch.zeros(5, 32)
    bad_path = save(tmp_path / "bad", [bad])[0]
    assert main(["-q", "evaluate", *paths, str(bad_path), "--task", "toy", "-o", str(run)]) == 1
    assert "head.weight: weights (5, 32) vs model (4, 32)" in capsys.readouterr().err
    assert not run.exists()


def test_tasks_command(capsys) -> None:
    from modelsoup.cli.main import main

    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "toy" in out and "modelsoup.tasks.toy:make_task" in out


def test_a_model_change_without_a_version_bump_is_caught(tmp_path) -> None:
    base = make_task(n_train=8, n_eval=N)

    def task(classes: int) -> Task:
        return Task(name="toy", build_model=lambda: ToyMLP(classes=classes), splits=base.splits,
                    heldout="heldout", id_test="test", shifts=(), num_classes=4, batch_size=16)  # fmt: skip

    four = ToyMLP(classes=4).state_dict()
    five = ToyMLP(classes=5).state_dict()
    ev = evaluator(task(4), tmp_path / "cache")
    ev.count_correct(("same-key", four), "test", need=N + 1)  # caches the first 16 rows
    with pytest.raises(TaskError, match=r"cached logits have 4 classes .*bump Task.version"):
        evaluator(task(5), tmp_path / "cache").logits(("same-key", five), "test")
