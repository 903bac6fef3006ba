"""Calibration: the reliability bins add up to the evaluator's ECE, and compare's methods are
rebuilt from results.json with the same ECE, from the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from modelsoup.analysis.calibration import calibrate_methods, plot_calibration, reliability
from modelsoup.evaluation.metrics import ece
from modelsoup.ingredients import load_ingredient, load_ingredients


def test_reliability_matches_the_metrics_ece() -> None:
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(500, 4, generator=g)
    labels = torch.randint(0, 4, (500,), generator=g)
    r = reliability(logits, labels)
    assert r["ece"] == pytest.approx(ece(logits, labels), abs=1e-12)
    assert sum(r["count"]) == 500 and len(r["edges"]) == 16
    for c, a, m, lo, hi in zip(
        r["count"], r["accuracy"], r["confidence"], r["edges"], r["edges"][1:]
    ):
        if c:
            assert lo < m <= hi and 0.0 <= a <= 1.0
        else:
            assert a is None and m is None


def test_reliability_by_hand() -> None:
    # confidences 0.5 (bin 7 of 15), 0.9 and 0.9 (bin 13): accuracies 1, 1/2
    p = torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.9, 0.1]])
    r = reliability(p.log(), torch.tensor([0, 0, 1]))
    assert r["count"][7] == 1 and r["count"][13] == 2
    assert r["accuracy"][13] == 0.5 and r["confidence"][13] == pytest.approx(0.9)
    assert r["ece"] == pytest.approx(1 / 3 * 0.5 + 2 / 3 * 0.4)


def test_methods_from_results_json_match_compare(toy_run: Path, evaluator, tmp_path: Path) -> None:
    from modelsoup.evaluation.compare import compare
    from modelsoup.evaluation.report import write_results

    init = load_ingredient(toy_run / "init.safetensors")
    models = load_ingredients([toy_run / "trials"])
    result = compare(
        [init, *models], evaluator, n_permutations=200, n_bootstrap=200,
        methods=["uniform_soup", "greedy_soup", "ensemble", "greedy_ensemble", "oracle"],
    )  # fmt: skip
    write_results(result, tmp_path / "run", metadata={"task_ref": "toy"})
    doc = json.loads((tmp_path / "run" / "results.json").read_text())
    before = evaluator.stats.forward_examples
    cal = calibrate_methods(evaluator, [init, *models], doc)
    assert evaluator.stats.forward_examples == before  # every method came from the cache
    names = [c.name for c in cal]
    assert names == [
        "best_individual",
        "uniform_soup",
        "greedy_soup",
        "ensemble",
        "greedy_ensemble",
    ]
    for c in cal:
        assert c.source == "recomputed" and c.reliability is not None
        for split in ("test", "noisy", "shifted", "scaled"):
            assert c.ece[split] == pytest.approx(
                doc["methods"][c.name]["metrics"][split]["ece"], abs=1e-9
            )
        assert c.ece["shift_avg"] == pytest.approx(
            doc["methods"][c.name]["metrics"]["shift_avg"]["ece"]
        )
    # a soup whose weights differ per tensor cannot be rebuilt: its recorded ECE is used
    doc["methods"]["uniform_soup"]["info"]["by_layer"] = True
    cal = {c.name: c for c in calibrate_methods(evaluator, [init, *models], doc)}
    assert cal["uniform_soup"].source == "results.json" and cal["uniform_soup"].reliability is None
    assert (
        cal["uniform_soup"].ece["test"] == doc["methods"]["uniform_soup"]["metrics"]["test"]["ece"]
    )
    path = plot_calibration(list(cal.values()), tmp_path / "cal.png", id_split="test")
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 10_000


def test_without_results_json_three_methods_are_scored(toy_run: Path, evaluator) -> None:
    init = load_ingredient(toy_run / "init.safetensors")
    models = load_ingredients([toy_run / "trials"])
    cal = calibrate_methods(evaluator, [init, *models], None, fallback_pool=models)
    assert [c.name for c in cal] == ["best_individual", "uniform_soup", "ensemble"]
    test = evaluator.task.split("test")
    ens = sum(evaluator.logits(m, "test") for m in models) / len(models)
    assert cal[2].ece["test"] == pytest.approx(ece(ens, test.labels), abs=1e-6)
