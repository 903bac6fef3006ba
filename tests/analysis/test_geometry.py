"""Angles, the Gram matrix of deltas, and the plane basis, against direct flat-vector computations."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from modelsoup.analysis.geometry import (
    Plane,
    angle,
    angle_from_gram,
    delta_gram,
    float_tensor_names,
    gram_schmidt,
)
from modelsoup.engine import mix_state_dict
from modelsoup.errors import AnalysisError
from modelsoup.ingredients import load_ingredient, load_ingredients


def flat_delta(ing, init) -> torch.Tensor:
    names = float_tensor_names(init)
    return torch.cat([(ing.get(n).double() - init.get(n).double()).reshape(-1) for n in names])


@pytest.fixture
def run(toy_run: Path):
    init = load_ingredient(toy_run / "init.safetensors")
    trials = load_ingredients([toy_run / "trials"])
    return init, trials


def test_angle_of_known_vectors() -> None:
    assert angle(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 3.0, 0.0])) == 90.0
    assert angle(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 6.0])) == 0.0
    assert angle(torch.tensor([1.0, 2.0]), torch.tensor([-1.0, -2.0])) == 180.0
    assert angle(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])) == pytest.approx(45.0)
    assert angle(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([0.0, 1.0, 0.0, 0.0])) == 90.0


def test_angle_of_a_zero_vector_is_an_error() -> None:
    with pytest.raises(AnalysisError, match="zero length"):
        angle(torch.zeros(3), torch.ones(3))


def test_delta_gram_matches_flattened_vectors(run) -> None:
    init, trials = run
    gram = delta_gram(init, trials)
    flat = torch.stack([flat_delta(t, init) for t in trials])
    assert np.allclose(gram, (flat @ flat.T).numpy(), rtol=1e-12, atol=0)
    assert gram.shape == (4, 4)
    # a budget of a few bytes forces one model per block, re-reading tensors: same answer
    assert np.allclose(delta_gram(init, trials, budget=1), gram, rtol=1e-12, atol=0)
    u, v = flat[0], flat[2]
    expected = math.degrees(math.acos(float(u @ v / (u.norm() * v.norm()))))
    assert angle_from_gram(gram, 0, 2) == pytest.approx(expected, abs=1e-9)
    assert 0.0 < angle_from_gram(gram, 0, 2) < 90.0  # fine-tuned from one init: same basin


def test_delta_gram_leaves_out_integer_buffers(run) -> None:
    init, trials = run
    names = float_tensor_names(init)
    assert "norm.num_batches_tracked" in init.tensor_infos
    assert "norm.num_batches_tracked" not in names
    assert "norm.running_mean" in names


def test_gram_schmidt_is_orthonormal_and_spans_the_vectors() -> None:
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(50, generator=g), torch.randn(50, generator=g)
    e1, e2 = gram_schmidt(u, v)
    basis = torch.stack([e1, e2])
    assert torch.allclose(basis @ basis.T, torch.eye(2, dtype=torch.float64), atol=1e-12)
    for w in (u.double(), v.double()):
        coeffs = basis @ w
        assert torch.allclose(coeffs @ basis, w, atol=1e-10)  # in the span
    with pytest.raises(AnalysisError, match="parallel"):
        gram_schmidt(u, 2 * u)


def test_plane_models_land_on_their_own_coordinates(run) -> None:
    init, trials = run
    a, b = trials[0], trials[1]
    plane = Plane.from_ingredients(init, a, b)
    d1, d2 = flat_delta(a, init), flat_delta(b, init)
    e1, e2 = gram_schmidt(d1, d2)
    direct = [(0.0, 0.0), (float(d1 @ e1), float(d1 @ e2)), (float(d2 @ e1), float(d2 @ e2))]
    for got, want in zip(plane.model_coords, direct):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-9)
    assert plane.model_coords[1][1] == 0.0
    assert plane.weights(*plane.model_coords[0]) == (1.0, 0.0, 0.0)
    assert plane.weights(*plane.model_coords[1]) == (0.0, 1.0, 0.0)
    assert plane.weights(*plane.model_coords[2]) == (0.0, 0.0, 1.0)
    assert plane.angle == pytest.approx(angle(d1, d2), abs=1e-9)


def test_plane_coefficients_and_coords_are_inverse() -> None:
    plane = Plane(4.0, 1.5, 3.0)
    for x, y in [(0.3, -0.7), (2.0, 1.0), (-1.0, 4.0)]:
        c1, c2 = plane.coefficients(x, y)
        assert plane.coords(c1, c2) == pytest.approx((x, y), abs=1e-12)
        assert sum(plane.weights(x, y)) == pytest.approx(1.0, abs=1e-11)


def test_plane_points_as_mixtures_equal_the_direct_computation(run) -> None:
    init, trials = run
    a, b = trials[2], trials[3]
    plane = Plane.from_ingredients(init, a, b)
    names = float_tensor_names(init)
    d1, d2 = flat_delta(a, init), flat_delta(b, init)
    e1, e2 = gram_schmidt(d1, d2)
    theta0 = torch.cat([init.get(n).double().reshape(-1) for n in names])
    for x, y in [(0.5, 0.2), (-0.4, 1.3), (plane.norm1 * 1.2, -0.3 * plane.height)]:
        direct = theta0 + x * e1 + y * e2
        sd = mix_state_dict([init, a, b], plane.mixture(x, y), accumulate=torch.float64)
        mixed = torch.cat([sd[n].double().reshape(-1) for n in names])
        assert torch.allclose(mixed, direct, atol=1e-5), (x, y)  # stored as float32
        # and the mixed point sits at (x, y) in the plane's coordinates
        assert float((mixed - theta0) @ e1) == pytest.approx(x, abs=1e-4)
        assert float((mixed - theta0) @ e2) == pytest.approx(y, abs=1e-4)


def test_a_degenerate_plane_is_refused() -> None:
    with pytest.raises(AnalysisError, match="parallel"):
        Plane(1.0, 2.0, 4.0)  # d2 = 2 d1
    with pytest.raises(AnalysisError, match="identical to the init"):
        Plane(0.0, 0.0, 1.0)
