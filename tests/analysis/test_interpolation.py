"""Interpolation curves: the endpoints are the models' own scores, inner points are the soups."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from modelsoup.analysis.interpolation import interpolate, plot_curves
from modelsoup.analysis.sources import path_weights, source
from modelsoup.errors import AnalysisError
from modelsoup.ingredients import load_ingredient, load_ingredients
from modelsoup.soup import Soup

from .conftest import manual_logits


def scores(state, split) -> tuple[float, float]:
    logits = manual_logits(state, split.examples)
    acc = float((logits.argmax(-1) == split.labels).double().mean())
    return acc, float(F.cross_entropy(logits.double(), split.labels))


def test_endpoints_equal_the_models_own_scores(toy_run: Path, evaluator, toy_task) -> None:
    init = load_ingredient(toy_run / "init.safetensors")
    ft = load_ingredients([toy_run / "trials"])[1]
    curve = interpolate(evaluator, init, ft, alphas=(0.0, 0.5, 1.0))
    assert curve.alphas == [0.0, 0.5, 1.0]
    for i, ing in ((0, init), (-1, ft)):
        for split in (toy_task.heldout, toy_task.id_test, *toy_task.shifts):
            acc, loss = scores(ing.state_dict(), toy_task.split(split))
            assert curve.splits[split]["score"][i] == pytest.approx(acc, abs=1e-12)
            assert curve.splits[split]["loss"][i] == pytest.approx(loss, rel=1e-5)
        want = sum(scores(ing.state_dict(), toy_task.split(s))[0] for s in toy_task.shifts) / 3
        assert curve.score["shift"][i] == pytest.approx(want, abs=1e-12)
    # the midpoint is the average of the two state dicts (float tensors; integer buffers from
    # the first ingredient on the tie)
    mid = {
        k: (v + ft.get(k)) / 2 if v.is_floating_point() else v for k, v in init.state_dict().items()
    }
    acc, loss = scores(mid, toy_task.split("test"))
    assert curve.score["id"][1] == pytest.approx(acc, abs=1e-12)
    assert curve.loss["id"][1] == pytest.approx(loss, rel=1e-5)
    # the WiSE-FT curve climbs from the (random) init to the fine-tuned model
    assert curve.score["id"][0] < 0.6 < curve.score["id"][-1]
    assert curve.best("heldout")[1] >= max(curve.score["heldout"][0], curve.score["heldout"][-1])


def test_curve_points_are_cached_soups(toy_run: Path, evaluator) -> None:
    a, b = load_ingredients([toy_run / "trials"])[:2]
    interpolate(evaluator, a, b, alphas=(0.0, 0.25, 1.0))
    before = evaluator.stats.forward_examples
    assert before > 0
    interpolate(evaluator, a, b, alphas=(0.0, 0.25, 1.0))
    assert evaluator.stats.forward_examples == before  # all from the cache
    assert source([a, b], path_weights(0.0)) is a
    assert source([a, b], path_weights(1.0)) is b
    soup = source([a, b], path_weights(0.25))
    assert isinstance(soup, Soup) and soup.mixture.weights == (0.75, 0.25)


def test_plot_curves_writes_a_png(toy_run: Path, evaluator, tmp_path: Path) -> None:
    a, b = load_ingredients([toy_run / "trials"])[:2]
    curve = interpolate(evaluator, a, b, alphas=(0.0, 0.5, 1.0))
    path = plot_curves([curve], tmp_path / "fig" / "interp.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    with pytest.raises(AnalysisError):
        plot_curves([], tmp_path / "none.png")
    with pytest.raises(AnalysisError):
        interpolate(evaluator, a, b, alphas=())


def test_path_weights_are_exact_at_the_ends() -> None:
    assert path_weights(0.0) == (1.0, 0.0)
    assert path_weights(1.0) == (0.0, 1.0)
    assert path_weights(0.1 + 0.2) == (0.7, 0.3)
    assert torch.tensor(path_weights(0.3)).sum().item() == pytest.approx(1.0)
