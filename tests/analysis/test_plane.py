"""Figure 2: grid values equal direct evaluations of the plane's points; the figure is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modelsoup.analysis.geometry import Plane, float_tensor_names, gram_schmidt
from modelsoup.analysis.plane import contour_levels, evaluate_plane, grid, plot_plane
from modelsoup.analysis.sources import subsample
from modelsoup.errors import AnalysisError
from modelsoup.ingredients import load_ingredient, load_ingredients

from .conftest import manual_logits


@pytest.fixture
def three(toy_run: Path):
    init = load_ingredient(toy_run / "init.safetensors")
    a, b = load_ingredients([toy_run / "trials"])[2:4]
    return init, a, b


def direct_point(init, a, b, x: float, y: float) -> dict[str, torch.Tensor]:
    """theta_0 + x e1 + y e2, built from flat vectors (integer buffers from the init)."""
    names = float_tensor_names(init)
    flat = lambda ing: torch.cat([ing.get(n).double().reshape(-1) for n in names])  # noqa: E731
    t0 = flat(init)
    e1, e2 = gram_schmidt(flat(a) - t0, flat(b) - t0)
    point = t0 + x * e1 + y * e2
    out, at = {}, 0
    for name, t in init.state_dict().items():
        if name in names:
            out[name] = point[at : at + t.numel()].reshape(t.shape).float()
            at += t.numel()
        else:
            out[name] = t
    return out


def test_grid_values_equal_direct_evaluations(three, evaluator, toy_task) -> None:
    init, a, b = three
    res = evaluate_plane(evaluator, init, a, b, resolution=3, margin=0.2)
    assert len(res.xs) == len(res.ys) == 3
    assert np.array(res.loss).shape == (3, 3)
    train, test = toy_task.split("train"), toy_task.split("test")
    for iy, ix in [(0, 0), (1, 2), (2, 1)]:
        x, y = res.xs[ix], res.ys[iy]
        state = direct_point(init, a, b, x, y)
        # the grid's integer buffers come from the heaviest ingredient; they do not affect
        # an eval-mode forward, so the direct point may take the init's
        loss = float(F.cross_entropy(manual_logits(state, train.examples).double(), train.labels))
        err = float((manual_logits(state, test.examples).argmax(-1) != test.labels).double().mean())
        assert res.loss[iy][ix] == pytest.approx(loss, rel=1e-4, abs=1e-6)
        assert res.error[iy][ix] == pytest.approx(err, abs=1.5 / len(test))  # float32 ties
        assert sum(res.weights[iy][ix]) == pytest.approx(1.0, abs=1e-9)
    # the three models are marked with their own values
    plane = Plane.from_ingredients(init, a, b)
    for ing, (x, y) in zip((init, a, b), plane.model_coords):
        m = res.models[ing.name]
        assert (m["x"], m["y"]) == pytest.approx((x, y))
        own = manual_logits(ing.state_dict(), test.examples)
        assert m["error"] == pytest.approx(float((own.argmax(-1) != test.labels).double().mean()))
    assert res.best["error"] == pytest.approx(np.nanmin(np.array(res.error, dtype=float)))
    assert res.loss_split == "train" and res.error_split == "test"


def test_the_grid_covers_the_models_with_a_margin() -> None:
    plane = Plane(4.0, 2.0, 5.0)  # models at (0, 0), (2, 0), (1, 2)
    xs, ys = grid(plane, resolution=5, margin=0.25)
    assert xs[0] == pytest.approx(-0.5) and xs[-1] == pytest.approx(2.5)
    assert ys[0] == pytest.approx(-0.5) and ys[-1] == pytest.approx(2.5)
    with pytest.raises(AnalysisError, match="resolution"):
        grid(plane, resolution=1)


def test_plane_figure_is_written(three, evaluator, tmp_path: Path) -> None:
    init, a, b = three
    small = subsample(evaluator, 64)
    assert len(small.task.split("test")) == 64
    assert small.task.split("test").fingerprint != evaluator.task.split("test").fingerprint
    res = evaluate_plane(small, init, a, b, resolution=4)
    path = plot_plane(res, tmp_path / "plane.png")
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 20_000


def test_subsample_takes_evenly_spaced_examples(evaluator) -> None:
    small = subsample(evaluator, 5)
    full = evaluator.task.split("test")
    idx = [0, 100, 200, 299, 399]  # round(i * 399 / 4)
    assert torch.equal(small.task.split("test").examples, full.examples[idx])
    assert torch.equal(small.task.split("test").labels, full.labels[idx])
    assert subsample(evaluator, None) is evaluator
    assert subsample(evaluator, 10_000) is evaluator


def test_contour_levels_follow_quantiles() -> None:
    z = np.array([[0.0, 0.1, np.nan], [0.2, 5.0, 100.0]])
    levels = contour_levels(z, n=4)
    assert levels[0] == 0.0 and levels[-1] == 100.0
    assert np.all(np.diff(levels) > 0)
    assert contour_levels(np.array([1.0, 1.0])).tolist() == pytest.approx([1.0, 1.000001])
