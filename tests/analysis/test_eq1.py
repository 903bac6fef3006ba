"""Eq. 1: each term against a closed form, exactness where logits are linear in alpha, and the
order of the approximation's error."""

from __future__ import annotations

import math

import pytest
import torch

from modelsoup.analysis.eq1 import (
    approximation,
    cross_entropy,
    eq1_point,
    expected_variance,
    fit_temperature,
    path_alphas,
    second_difference,
)
from modelsoup.errors import AnalysisError

N, C, D = 300, 5, 7


@pytest.fixture
def data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "x": torch.randn(N, D, generator=g, dtype=torch.float64),
        "y": torch.randint(0, C, (N,), generator=g),
        "w0": torch.randn(C, D, generator=g, dtype=torch.float64),
        "w1": torch.randn(C, D, generator=g, dtype=torch.float64),
        "c": torch.randn(N, C, generator=g, dtype=torch.float64),
    }


def test_cross_entropy_closed_form() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1])
    want = (math.log(1 + math.exp(-4.0)) + math.log(2.0)) / 2  # beta = 2
    assert cross_entropy(logits, labels, 2.0) == pytest.approx(want, rel=1e-12)


def test_expected_variance_is_the_ensemble_losses_second_derivative(data) -> None:
    """beta^2 E Var_p[delta_Y] = d^2/dt^2 E CE(beta (f + t delta)) at t = 0, by autograd."""
    f = data["x"] @ data["w0"].T
    delta = data["x"] @ (data["w1"] - data["w0"]).T
    beta = 0.7
    t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(beta * (f + t * delta), data["y"])
    (g,) = torch.autograd.grad(loss, t, create_graph=True)
    (h,) = torch.autograd.grad(g, t)
    assert beta**2 * expected_variance(f, delta, beta) == pytest.approx(float(h), rel=1e-10)


def test_expected_variance_by_hand() -> None:
    # p = softmax([0, log 3]) = (1/4, 3/4); delta = (2, 0): mean 1/2, variance 1/4*9/4 + 3/4*1/4
    logits = torch.tensor([[0.0, math.log(3.0)]])
    assert expected_variance(logits, torch.tensor([[2.0, 0.0]]), 1.0) == pytest.approx(0.75)


def test_second_difference_is_exact_for_cubics() -> None:
    f = lambda a: 3 * a**3 - 2 * a**2 + a - 5  # noqa: E731
    for a, h in [(0.5, 0.25), (0.3, 0.1)]:
        assert second_difference(f(a - h), f(a), f(a + h), h) == pytest.approx(18 * a - 4)
    with pytest.raises(AnalysisError):
        second_difference(0.0, 0.0, 0.0, 0.0)


def test_eq1_is_exact_when_logits_are_linear_in_alpha(data) -> None:
    """A linear model: the soup's logits are the ensemble's, so L_soup = L_ens, and the two
    terms of Eq. 1 cancel (L_soup'' = beta^2 E Var exactly)."""
    x, y, w0, w1 = data["x"], data["y"], data["w0"], data["w1"]
    f = lambda a: x @ ((1 - a) * w0 + a * w1).T  # noqa: E731  the soup of two linear models
    beta = 1.3
    for alpha in (0.25, 0.5, 0.8):
        h = 1e-3
        soups = {a: f(a) for a in (alpha - h, alpha, alpha + h)}
        p = eq1_point(f(0.0), f(1.0), soups, y, alpha, h, beta)
        assert abs(p.measured) < 1e-12
        assert p.curvature == pytest.approx(beta**2 * p.variance, rel=1e-5)
        assert abs(p.approximation) < 1e-6 * alpha * (1 - alpha) * beta**2 * p.variance + 1e-12
        assert p.soup_loss == pytest.approx(cross_entropy(f(alpha), y, beta), rel=1e-12)


def test_eq1_error_is_second_order_in_the_soups_nonlinearity(data) -> None:
    """Soup logits ``g_alpha + eps alpha (1 - alpha) c``: at alpha = 1/2 the measured difference
    is O(eps) and the approximation's error O(eps^2)."""
    x, y, w0, w1 = data["x"], data["y"], data["w0"], data["w1"]
    f0, f1 = x @ w0.T, x @ w1.T
    c = data["c"] - 2.0 * torch.nn.functional.one_hot(y, C)  # the soup loses on the true class
    errors, measured = [], []
    for eps in (0.04, 0.02, 0.01):
        soup = lambda a, e=eps: (1 - a) * f0 + a * f1 + e * a * (1 - a) * c  # noqa: E731
        h = 1e-3
        p = eq1_point(f0, f1, {a: soup(a) for a in (0.5 - h, 0.5, 0.5 + h)}, y, 0.5, h, 1.0)
        measured.append(p.measured)
        errors.append(abs(p.approximation - p.measured))
    assert all(abs(m) > 1e-4 for m in measured)
    assert measured[0] / measured[1] == pytest.approx(2.0, rel=0.15)  # O(eps)
    assert errors[0] / errors[1] == pytest.approx(4.0, rel=0.1)  # O(eps^2)
    assert errors[1] / errors[2] == pytest.approx(4.0, rel=0.1)
    assert errors[-1] < 0.05 * abs(measured[-1])


def test_approximation_formula() -> None:
    assert approximation(0.5, 1.0, 1.0, 0.0) == pytest.approx(-0.125)
    assert approximation(0.25, 0.0, 2.0, 0.5) == pytest.approx(0.25 * 0.75 / 2 * 2.0)
    assert approximation(0.0, 5.0, 1.0, 1.0) == 0.0


def test_fit_temperature_minimises_the_loss(data) -> None:
    logits = 3.0 * (data["x"] @ data["w0"].T)
    labels = (data["x"] @ data["w0"].T + 2.0 * data["c"]).argmax(-1)  # noisy labels: finite beta
    beta = fit_temperature(logits, labels)
    best = cross_entropy(logits, labels, beta)
    for other in (beta * 0.9, beta * 1.1, beta * 0.5, beta * 2):
        assert cross_entropy(logits, labels, other) > best
    # pooled endpoints: the minimiser of the summed loss
    other_logits = 0.5 * logits
    pooled = fit_temperature([logits, other_logits], labels)
    total = lambda b: cross_entropy(logits, labels, b) + cross_entropy(other_logits, labels, b)  # noqa: E731
    assert total(pooled) < min(total(pooled * 0.95), total(pooled * 1.05))


def test_fit_temperature_closed_form_and_bounds() -> None:
    # two classes, margin 2, accuracy 3/4: sigmoid(2 beta) = 3/4 -> beta = log(3) / 2
    z = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    assert fit_temperature(z, torch.tensor([0, 0, 1, 1])) == pytest.approx(
        math.log(3) / 2, rel=1e-9
    )
    # perfectly separated: the loss keeps falling, the upper bound is returned
    assert fit_temperature(z, torch.tensor([0, 0, 1, 0]), bounds=(0.01, 50.0)) == 50.0


def test_path_alphas() -> None:
    assert path_alphas([0.5], 0.5) == [0.0, 0.5, 1.0]
    assert path_alphas([0.25, 0.5], 0.125) == [0.125, 0.25, 0.375, 0.5, 0.625]
    with pytest.raises(AnalysisError, match="outside"):
        path_alphas([0.1], 0.25)


def test_missing_soup_logits_are_named() -> None:
    with pytest.raises(AnalysisError, match="0.75"):
        eq1_point(torch.zeros(1, 2), torch.zeros(1, 2), {0.25: torch.zeros(1, 2),
                  0.5: torch.zeros(1, 2)}, torch.tensor([0]), 0.5, 0.25, 1.0)  # fmt: skip


def test_analyze_pair_on_real_models(toy_run, evaluator, toy_task) -> None:
    """On two toy MLPs: beta is fitted on both endpoints' held-out logits, and the measured
    difference is the soup's loss minus the ensemble's, by hand."""
    from modelsoup.analysis.eq1 import analyze_pair
    from modelsoup.ingredients import load_ingredients

    from .conftest import manual_logits

    a, b = load_ingredients([toy_run / "trials"])[:2]
    points = analyze_pair(evaluator, a, b, alphas=(0.25, 0.5), step=0.25)
    assert [p.alpha for p in points] == [0.25, 0.5]
    heldout = toy_task.split("heldout")
    ha = manual_logits(a.state_dict(), heldout.examples)
    hb = manual_logits(b.state_dict(), heldout.examples)
    beta = fit_temperature([ha, hb], heldout.labels)
    test = toy_task.split("test")
    fa = manual_logits(a.state_dict(), test.examples).double()
    fb = manual_logits(b.state_dict(), test.examples).double()
    for p in points:
        assert p.beta == pytest.approx(beta, rel=1e-4)
        soup = {k: (1 - p.alpha) * v + p.alpha * b.get(k) if v.is_floating_point() else v
                for k, v in a.state_dict().items()}  # fmt: skip
        soup_loss = cross_entropy(manual_logits(soup, test.examples), test.labels, p.beta)
        ens_loss = cross_entropy((1 - p.alpha) * fa + p.alpha * fb, test.labels, p.beta)
        assert p.soup_loss == pytest.approx(soup_loss, rel=1e-5)
        assert p.measured == pytest.approx(soup_loss - ens_loss, abs=1e-5)
        assert p.approximation == pytest.approx(
            approximation(p.alpha, p.curvature, p.beta, p.variance), rel=1e-12
        )
