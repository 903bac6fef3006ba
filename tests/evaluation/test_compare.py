"""``compare`` on the toy task: every row, numbers equal to the evaluator's, significance, files, CLI."""

from __future__ import annotations

import copy
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import modelsoup
from modelsoup.cli.main import main
from modelsoup.errors import ModelSoupError, OutputError, RecipeError
from modelsoup.evaluation.compare import METHODS, available_methods, compare
from modelsoup.evaluation.ensemble import ensemble_logits, greedy_ensemble
from modelsoup.evaluation.evaluator import Evaluator
from modelsoup.evaluation.report import format_table, write_results, write_soups
from modelsoup.evaluation.significance import mcnemar, permutation_test
from modelsoup.ingredients import load_ingredients
from modelsoup.tasks.toy import ToyMLP, make_task

SPLITS = ["heldout", "test", "noisy", "shifted", "scaled"]
SHIFTS = ["noisy", "shifted", "scaled"]
N_PERM = 2000


def _train(model: ToyMLP, task, lr: float, steps: int, seed: int) -> ToyMLP:
    train = task.split("train")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(train), (32,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(train.examples[idx]), train.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _save(model: ToyMLP, path: Path) -> None:
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, path)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: intra-op threads only cost time here (a lot on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trials(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An init (trained briefly) and four models fine-tuned from it with different lrs/seeds."""
    folder = tmp_path_factory.mktemp("trials")
    task = make_task()
    torch.manual_seed(0)
    init = _train(ToyMLP(), task, lr=0.02, steps=8, seed=99)
    _save(init, folder / "init.safetensors")
    for i, (lr, steps) in enumerate([(0.01, 25), (0.03, 20), (0.1, 15), (0.005, 30)]):
        _save(_train(copy.deepcopy(init), task, lr, steps, seed=i), folder / f"ft{i}.safetensors")
    return folder


@pytest.fixture(scope="module")
def setup(trials: Path, tmp_path_factory: pytest.TempPathFactory):
    """One comparison shared by the tests below (the evaluator's cache is kept per module)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELSOUP_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        ings = load_ingredients([trials])
        ev = Evaluator(make_task(), cache_dir=tmp_path_factory.mktemp("preds"), progress=False)
        result = compare(
            ings, ev, seed=3, learned={"epochs": 0}, n_permutations=N_PERM, n_bootstrap=2000
        )
        yield ings, ev, result


def _pool(ings):
    return [i for i in ings if i.name != "init"]


def _metrics(ev: Evaluator, logits: dict[str, torch.Tensor]) -> dict[str, dict]:
    return {s: ev.metrics(logits[s], s) for s in SPLITS}


def _assert_same(row_metrics: dict, expected: dict) -> None:
    for s in SPLITS:
        for key in ("accuracy", "score", "nll", "ece", "n", "correct"):
            assert row_metrics[s][key] == expected[s][key], (s, key)
    for key in ("accuracy", "score"):
        assert row_metrics["shift_avg"][key] == pytest.approx(
            np.mean([expected[s][key] for s in SHIFTS]), abs=1e-12
        )


def test_every_row_in_order(setup) -> None:
    _, _, result = setup
    expected = [m for m in METHODS if m in available_methods()]
    assert list(result.methods) == expected
    assert {"best_individual", "uniform_soup", "greedy_soup", "greedy_soup_random",
            "ensemble", "greedy_ensemble", "oracle"} <= set(expected)  # fmt: skip
    assert result.columns == [*SPLITS, "shift_avg"]
    assert result.init == "init"
    for row in result.methods.values():
        used = row.ingredients.values() if isinstance(row.ingredients, dict) else row.ingredients
        assert "init" not in used  # the init is plotted, never used


def test_ingredient_and_baseline_numbers_equal_the_evaluator(setup) -> None:
    ings, ev, result = setup
    pool = _pool(ings)
    logits = {i.name: {s: ev.logits(i, s) for s in SPLITS} for i in ings}
    metrics = {name: _metrics(ev, lg) for name, lg in logits.items()}
    for name in metrics:
        _assert_same(result.ingredients[name], metrics[name])

    heldout = [metrics[i.name]["heldout"]["score"] for i in pool]
    best = pool[int(np.argmax(heldout))].name
    row = result.methods["best_individual"]
    assert row.ingredients == [best] and row.cost == 1
    _assert_same(row.metrics, metrics[best])

    row = result.methods["ensemble"]
    assert row.cost == len(pool) and row.ingredients == [i.name for i in pool]
    mean = {s: ensemble_logits([logits[i.name][s] for i in pool]) for s in SPLITS}
    _assert_same(row.metrics, _metrics(ev, mean))
    plain = torch.stack([logits[i.name]["test"] for i in pool]).mean(0)
    assert row.metrics["test"]["correct"] == int(
        (plain.argmax(-1) == ev.task.split("test").labels).sum()
    )

    found = greedy_ensemble(
        [logits[i.name]["heldout"] for i in pool], ev.task.split("heldout").labels
    )
    chosen = [pool[j].name for j in found.chosen]
    row = result.methods["greedy_ensemble"]
    assert row.ingredients == chosen and row.cost == len(chosen)
    _assert_same(
        row.metrics,
        _metrics(ev, {s: ensemble_logits([logits[n][s] for n in chosen]) for s in SPLITS}),
    )

    row = result.methods["oracle"]
    for s in SPLITS:
        top = max(pool, key=lambda i: metrics[i.name][s]["score"])
        assert row.ingredients[s] == top.name
        assert row.metrics[s]["score"] == metrics[top.name][s]["score"]
    assert row.metrics["shift_avg"]["score"] == pytest.approx(
        np.mean([max(metrics[i.name][s]["score"] for i in pool) for s in SHIFTS])
    )


def test_soup_numbers_equal_the_evaluator(setup) -> None:
    ings, ev, result = setup
    pool = _pool(ings)
    uniform = modelsoup.cook("uniform", pool)
    row = result.methods["uniform_soup"]
    assert row.cost == 1 and row.ingredients == [i.name for i in pool]
    _assert_same(row.metrics, ev.evaluate(uniform, SPLITS))

    greedy = modelsoup.cook("greedy", pool, evaluator=ev)
    row = result.methods["greedy_soup"]
    assert row.ingredients == [i.name for i in greedy.used]
    assert row.info["trajectory"] == greedy.info["trajectory"]
    _assert_same(row.metrics, ev.evaluate(greedy, SPLITS))
    # the greedy soup is never worse than the best individual on the held-out split
    assert (
        row.metrics["heldout"]["score"]
        >= result.methods["best_individual"].metrics["heldout"]["score"]
    )

    randomized = modelsoup.cook("greedy", pool, evaluator=ev, order="random", seed=3)
    row = result.methods["greedy_soup_random"]
    assert row.info["options"]["order"] == "random" and row.info["options"]["seed"] == 3
    assert row.ingredients == [i.name for i in randomized.used]
    _assert_same(row.metrics, ev.evaluate(randomized, SPLITS))
    if "learned_soup" in result.methods:
        assert result.methods["learned_soup"].info["options"]["by_layer"] is False
        assert result.methods["learned_soup_by_layer"].info["options"]["by_layer"] is True


def test_write_soups_saves_each_soup_as_the_mean_of_its_members(
    setup, trials: Path, tmp_path: Path
) -> None:
    _, _, result = setup
    written = write_soups(result, tmp_path / "run", ["greedy_soup", "uniform_soup"])
    assert written == {
        "greedy_soup": tmp_path / "run" / "soups" / "greedy_soup",
        "uniform_soup": tmp_path / "run" / "soups" / "uniform_soup",
    }
    for name in written:
        members = result.methods[name].ingredients
        states = [load_ingredients([trials / f"{m}.safetensors"])[0].state_dict() for m in members]
        saved = load_ingredients([written[name]])[0].state_dict()
        for key, value in saved.items():
            if not value.is_floating_point():  # integer buffers are copied, never averaged
                assert torch.equal(value, states[0][key])
                continue
            expected = torch.stack([sd[key].double() for sd in states]).mean(0).float()
            torch.testing.assert_close(value, expected, rtol=0, atol=1e-6)
    assert len(result.methods["uniform_soup"].ingredients) == 4
    manifest = json.loads((written["greedy_soup"] / "soup.json").read_text())
    assert manifest["recipe"] == "greedy"
    assert (written["uniform_soup"] / "README.md").is_file()
    with pytest.raises(OutputError, match="already exists"):
        write_soups(result, tmp_path / "run", ["greedy_soup"])
    with pytest.raises(ModelSoupError, match=r"no soup 'ensemble'.*soups: uniform_soup"):
        write_soups(result, tmp_path / "run", ["ensemble"])


def test_p_values_intervals_and_best_marks(setup) -> None:
    ings, ev, result = setup
    ref = result.methods["best_individual"]
    labels = {s: ev.task.split(s).labels for s in SPLITS}
    for name, row in result.methods.items():
        for c in result.columns:
            m = row.metrics[c]
            assert m["ci_low"] <= m["score"] <= m["ci_high"], (name, c)
            if row is ref:
                assert m["p_value"] is None
                continue
            if c == "shift_avg":
                expected = permutation_test(
                    [row.correct[s] for s in SHIFTS],
                    [ref.correct[s] for s in SHIFTS],
                    n_permutations=N_PERM,
                    seed=3,
                ).p_value
            else:
                expected = mcnemar(row.correct[c], ref.correct[c]).p_value
            assert m["p_value"] == expected, (name, c)
        for s in SPLITS:  # the correctness vectors are the evaluator's
            assert row.correct[s].sum() == row.metrics[s]["correct"]
            assert row.correct[s].size == labels[s].numel()
    for c, best in result.best.items():
        assert best != "oracle"
        top = max(r.metrics[c]["score"] for r in result.methods.values() if r.kind != "oracle")
        assert result.methods[best].metrics[c]["score"] == top
        assert result.methods[best].metrics[c]["tied_with_best"] is True
        for row in result.methods.values():
            p = row.metrics[c]["p_value_vs_best"]
            assert row.metrics[c]["tied_with_best"] == (p is None or p >= 0.05)


def test_write_results_writes_every_file(setup, tmp_path: Path) -> None:
    _, _, result = setup
    run = tmp_path / "run"
    written = write_results(result, run)
    assert sorted(written) == ["fig1.png", "report.md", "results.csv", "results.json"]
    doc = json.loads((run / "results.json").read_text())
    assert set(doc["methods"]) == set(result.methods)
    for name, row in result.methods.items():
        entry = doc["methods"][name]
        assert entry["cost"] == row.cost and entry["ingredients"] == row.ingredients
        for c in [*SPLITS, "shift_avg"]:
            m = entry["metrics"][c]
            assert m["accuracy"] == row.metrics[c]["accuracy"]
            assert m["score"] == row.metrics[c]["score"]
            assert {"ci_low", "ci_high", "p_value"} <= set(m)
    assert doc["ingredients"]["init"]["is_init"] is True
    assert (
        doc["ingredients"]["ft0"]["metrics"]["test"]["accuracy"]
        == result.ingredients["ft0"]["test"]["accuracy"]
    )
    assert doc["task"]["roles"] == {"heldout": "heldout", "test": "id_test", "noisy": "shift",
                                    "shifted": "shift", "scaled": "shift", "shift_avg": "shift_avg"}  # fmt: skip
    assert {"date", "modelsoup_version", "machine"} <= set(doc["metadata"])

    rows = list(csv.DictReader(io.StringIO((run / "results.csv").read_text())))
    assert len(rows) == len(result.methods) * 6
    greedy_test = next(r for r in rows if r["method"] == "greedy_soup" and r["split"] == "test")
    assert (
        float(greedy_test["accuracy"]) == result.methods["greedy_soup"].metrics["test"]["accuracy"]
    )

    report = (run / "report.md").read_text()
    assert "![Figure 1" in report and "fig1.png" in report
    for name in result.methods:
        assert f"`{name}`" in report
    assert (run / "fig1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "fig1.png").stat().st_size > 10_000

    before = (run / "results.json").read_text()
    with pytest.raises(OutputError, match="overwrite"):
        write_results(result, run)
    assert (run / "results.json").read_text() == before
    write_results(result, run, overwrite=True)


def test_terminal_table_shows_the_numbers(setup) -> None:
    _, _, result = setup
    text = format_table(result, ci=True)
    lines = {
        line.split()[0]: line
        for line in text.splitlines()
        if line and line.split()[0] in result.methods
    }
    assert set(lines) == set(result.methods)
    for name, row in result.methods.items():
        for c in result.columns:
            assert f"{100 * row.metrics[c]['score']:.2f}" in lines[name]
    assert "held-out = selection split" in " ".join(text.split())


def test_method_subsets_and_unknown_methods(setup) -> None:
    ings, ev, _ = setup
    forward = ev.stats.forward_examples
    result = compare(
        ings,
        ev,
        methods=["ensemble", "greedy_ensemble", "oracle"],
        n_permutations=200,
        n_bootstrap=200,
    )
    assert list(result.methods) == ["best_individual", "ensemble", "greedy_ensemble", "oracle"]
    assert ev.stats.forward_examples == forward  # members cached: no forward pass at all
    with pytest.raises(ModelSoupError, match="valid methods"):
        compare(ings, ev, methods=["greedy"])


def test_learned_rows_skipped_cleanly_without_the_recipe(
    setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelsoup.recipes import base

    ings, ev, _ = setup
    monkeypatch.delitem(base._REGISTRY, "learned", raising=False)
    assert "learned_soup" not in available_methods()
    result = compare(ings, ev, methods=None, n_permutations=100, n_bootstrap=100)
    assert "learned_soup" not in result.methods and "greedy_soup" in result.methods
    with pytest.raises(RecipeError, match="learned"):
        compare(ings, ev, methods=["learned_soup"])


def test_only_the_init_is_refused(tmp_path: Path, trials: Path) -> None:
    ings = load_ingredients([trials / "init.safetensors"])
    with pytest.raises(ModelSoupError, match="init"):
        compare(ings, Evaluator(make_task(), progress=False))


def test_cli_compare(trials: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    args = ["compare", str(trials), "--task", "toy", "-o", str(run), "--methods",
            "ensemble,greedy_ensemble", "--seed", "1", "--device", "cpu", "--batch-size", "100"]  # fmt: skip
    assert main(["-q", *args]) == 0
    out = capsys.readouterr().out
    assert "greedy_ensemble" in out and "best_individual" in out
    doc = json.loads((run / "results.json").read_text())
    assert list(doc["methods"]) == ["best_individual", "ensemble", "greedy_ensemble"]
    assert doc["settings"]["seed"] == 1 and doc["metadata"]["batch_size"] == 100
    assert all((run / f).is_file() for f in ["results.csv", "report.md", "fig1.png"])
    assert not (run / "soups").exists()  # no greedy soup among these methods: nothing to save

    before = (run / "results.json").read_bytes()
    assert main(["-q", *args]) == 1
    assert "already holds" in capsys.readouterr().err
    assert (run / "results.json").read_bytes() == before
    assert main(["-q", *args, "--overwrite"]) == 0
    assert main(["-q", "compare", str(trials), "--task", "toy", "-o", str(tmp_path / "r2"),
                 "--methods", "nope"]) == 1  # fmt: skip
    assert "valid methods" in capsys.readouterr().err
    assert not (tmp_path / "r2" / "results.json").exists()
    bad_task = [
        "-q",
        "compare",
        str(trials),
        "--task",
        str(tmp_path / "no.py:make_task"),
        "-o",
        str(tmp_path / "r3"),
    ]
    assert main(bad_task) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "r3").exists()


def test_cli_compare_saves_soups(trials: Path, tmp_path: Path) -> None:
    def run(out: str, *extra: str) -> int:
        return main(["-q", "compare", str(trials), "--task", "toy", "-o", str(tmp_path / out),
                     "--methods", "uniform_soup,greedy_soup", *extra])  # fmt: skip

    assert run("default") == 0
    assert sorted(p.name for p in (tmp_path / "default" / "soups").iterdir()) == ["greedy_soup"]
    assert (tmp_path / "default" / "soups" / "greedy_soup" / "model.safetensors").is_file()
    assert run("all", "--save-soups", "all") == 0
    assert sorted(p.name for p in (tmp_path / "all" / "soups").iterdir()) == [
        "greedy_soup",
        "uniform_soup",
    ]
    assert run("none", "--save-soups", "none") == 0
    assert not (tmp_path / "none" / "soups").exists()
    (tmp_path / "taken" / "soups").mkdir(parents=True)
    assert run("taken") == 1  # an existing soups/ is refused before any work
    assert not (tmp_path / "taken" / "results.json").exists()


def test_balanced_accuracy_splits_use_strata(setup) -> None:
    import dataclasses

    from modelsoup.evaluation.metrics import balanced_accuracy
    from modelsoup.evaluation.significance import strata_for

    ings, ev, _ = setup
    task = dataclasses.replace(
        ev.task, metric={"heldout": "balanced_accuracy", "noisy": "balanced_accuracy"}
    )
    ev2 = Evaluator(task, cache_dir=ev.cache.root, progress=False)
    result = compare(ings, ev2, methods=["ensemble", "greedy_ensemble"], n_permutations=500)
    pool = _pool(ings)
    row = result.methods["ensemble"]
    noisy = ensemble_logits([ev2.logits(i, "noisy") for i in pool])
    labels = task.split("noisy").labels
    assert row.metrics["noisy"]["score"] == balanced_accuracy(noisy, labels)
    assert row.metrics["noisy"]["ci_method"] == "bootstrap"
    assert row.metrics["test"]["ci_method"] == "wilson"
    assert row.metrics["shift_avg"]["score"] == pytest.approx(
        np.mean([row.metrics[s]["score"] for s in SHIFTS])
    )
    ref = result.methods["best_individual"]
    strata = [strata_for(task.split(s).labels, task.metric_for(s)) for s in SHIFTS]
    expected = permutation_test(
        [row.correct[s] for s in SHIFTS],
        [ref.correct[s] for s in SHIFTS],
        strata,
        n_permutations=500,
        seed=0,
    )
    assert row.metrics["shift_avg"]["p_value"] == expected.p_value
    assert expected.difference == pytest.approx(
        row.metrics["shift_avg"]["delta_vs_best_individual"]
    )
    found = greedy_ensemble(
        [ev2.logits(i, "heldout") for i in pool],
        task.split("heldout").labels,
        score=balanced_accuracy,
    )
    assert result.methods["greedy_ensemble"].ingredients == [pool[j].name for j in found.chosen]
