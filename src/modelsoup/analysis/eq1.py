"""Eq. 1 of the paper: when does a two-model soup beat the two-model ensemble?

For endpoints ``theta_a, theta_b``, ``theta_alpha = (1 - alpha) theta_a + alpha theta_b`` and an
inverse temperature ``beta``, let

* ``L_soup(alpha) = E_x CE(beta f(x; theta_alpha), y)`` (the soup's loss) and
* ``L_ens(alpha) = E_x CE(beta ((1 - alpha) f(x; theta_a) + alpha f(x; theta_b)), y)`` (the
  logit ensemble's loss).

The paper approximates their difference by

    L_soup(alpha) - L_ens(alpha) ~ alpha (1 - alpha) / 2 * ( -L_soup''(alpha)
                                    + beta^2 E_x Var_{Y ~ softmax(beta f(x; theta_alpha))}[Delta f_Y(x)] )

with ``Delta f = f(x; theta_b) - f(x; theta_a)``. Where it comes from: the difference ``D(alpha)``
vanishes at both endpoints, so to second order ``D(alpha) ~ -alpha (1 - alpha) / 2 * D''``;
``D'' = L_soup'' - L_ens''``, and ``L_ens''`` is exactly ``beta^2 E Var[Delta f_Y]`` under the
*ensemble's* softmax, which the approximation replaces by the soup's. The first term favours the
soup where the loss is convex along the path; the second always favours the ensemble.

Here ``L_soup''`` is a central second difference with step ``h`` along the path (soups at
``alpha - h, alpha, alpha + h``; the endpoints are the models themselves), and ``beta`` is the
inverse temperature that minimises the pooled held-out cross-entropy of the two endpoints'
logits (:func:`fit_temperature`): a calibration of the pair that needs no extra evaluation.
Measured and approximated differences use the same ``beta``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from modelsoup.errors import AnalysisError

if TYPE_CHECKING:
    from modelsoup.evaluation.evaluator import Evaluator
    from modelsoup.ingredients import Ingredient

#: The bracket searched for the inverse temperature.
BETA_BOUNDS = (1e-3, 1e3)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, beta: float = 1.0) -> float:
    """Mean cross-entropy of ``softmax(beta * logits)`` against ``labels`` (float64, nats).

    Example:
        >>> round(cross_entropy(torch.zeros(2, 4), torch.tensor([0, 3])), 6)  # log 4
        1.386294
    """
    z = beta * logits.double()
    return float((torch.logsumexp(z, dim=-1) - z.gather(1, labels.view(-1, 1)).squeeze(1)).mean())


def _dloss_dbeta(z: torch.Tensor, labels: torch.Tensor, beta: float) -> float:
    """d/dbeta of the mean CE of ``beta z``: ``E_x (E_{p_beta}[z] - z_y)`` (increasing in beta)."""
    p = torch.softmax(beta * z, dim=-1)
    return float(((p * z).sum(-1) - z.gather(1, labels.view(-1, 1)).squeeze(1)).mean())


def fit_temperature(
    logits: torch.Tensor | Sequence[torch.Tensor],
    labels: torch.Tensor,
    *,
    bounds: tuple[float, float] = BETA_BOUNDS,
    iterations: int = 60,
) -> float:
    """The inverse temperature ``beta > 0`` minimising the mean cross-entropy of ``beta * logits``.

    The loss is convex in ``beta`` and its derivative increases, so the root is found by
    bisection in ``log beta`` within ``bounds``; a minimiser outside the bracket returns the
    nearer bound (e.g. perfectly separated data wants ``beta -> inf``). Several logit tensors
    (e.g. both endpoints of a pair) are pooled, each scored against ``labels``.

    Example:
        >>> z = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
        >>> round(fit_temperature(z, torch.tensor([0, 0, 1, 1])), 4)  # acc 3/4: sigmoid(2b) = 3/4
        0.5493
    """
    parts = [logits] if isinstance(logits, torch.Tensor) else list(logits)
    if not parts:
        raise AnalysisError("fit_temperature: no logits given")
    z = torch.cat([p.detach().double() for p in parts])
    y = labels.view(-1).long().repeat(len(parts))
    if z.shape[0] != y.shape[0]:
        raise AnalysisError(f"fit_temperature: {z.shape[0]} rows of logits for {y.shape[0]} labels")
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    if _dloss_dbeta(z, y, math.exp(lo)) >= 0.0:
        return bounds[0]
    if _dloss_dbeta(z, y, math.exp(hi)) <= 0.0:
        return bounds[1]
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if _dloss_dbeta(z, y, math.exp(mid)) > 0.0:
            hi = mid
        else:
            lo = mid
    return math.exp(0.5 * (lo + hi))


def expected_variance(logits: torch.Tensor, delta: torch.Tensor, beta: float) -> float:
    """``E_x Var_{Y ~ softmax(beta * logits(x))}[delta_Y(x)]``.

    ``beta^2`` times this is the second derivative of the cross-entropy of
    ``beta * (logits + t * delta)`` in ``t`` at ``t = 0`` (for any label).

    Example:
        >>> expected_variance(torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]), 1.0)  # p = (1/2, 1/2)
        1.0
    """
    p = torch.softmax(beta * logits.double(), dim=-1)
    d = delta.double()
    mean = (p * d).sum(-1, keepdim=True)
    return float((p * (d - mean) ** 2).sum(-1).mean())


def second_difference(minus: float, centre: float, plus: float, step: float) -> float:
    """The central second difference ``(f(a - h) - 2 f(a) + f(a + h)) / h^2``.

    Exact for polynomials of degree up to three.

    Example:
        >>> second_difference(0.25, 0.0, 0.25, 0.5)  # x^2 at 0
        2.0
    """
    if step <= 0:
        raise AnalysisError(f"the finite-difference step must be positive, not {step}")
    return (minus - 2.0 * centre + plus) / step**2


def approximation(alpha: float, curvature: float, beta: float, variance: float) -> float:
    """The right-hand side of Eq. 1: ``alpha (1 - alpha) / 2 * (-curvature + beta^2 variance)``.

    Example:
        >>> approximation(0.5, 0.4, 2.0, 0.1)
        0.0
    """
    return alpha * (1.0 - alpha) / 2.0 * (-curvature + beta**2 * variance)


@dataclass
class Eq1Point:
    """One ``(pair, alpha)`` point of the Eq. 1 scatter.

    Attributes:
        a: first endpoint's name (alpha = 0).
        b: second endpoint's name (alpha = 1).
        alpha: position along the path.
        beta: the inverse temperature used.
        step: the finite-difference step.
        soup_loss: ``L_soup(alpha)``.
        ensemble_loss: ``L_ens(alpha)``.
        measured: ``L_soup(alpha) - L_ens(alpha)``.
        curvature: ``L_soup''(alpha)`` (finite differences).
        variance: ``E_x Var_{Y ~ softmax(beta f_alpha)}[Delta f_Y]``.
        approximation: the right-hand side of Eq. 1.
    """

    a: str
    b: str
    alpha: float
    beta: float
    step: float
    soup_loss: float
    ensemble_loss: float
    measured: float
    curvature: float
    variance: float
    approximation: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def eq1_point(
    f_a: torch.Tensor,
    f_b: torch.Tensor,
    soup_logits: Mapping[float, torch.Tensor],
    labels: torch.Tensor,
    alpha: float,
    step: float,
    beta: float,
    *,
    names: tuple[str, str] = ("a", "b"),
) -> Eq1Point:
    """Measured and approximated ``L_soup(alpha) - L_ens(alpha)`` from logits.

    Args:
        f_a: the first endpoint's logits ``[N, C]`` (alpha = 0).
        f_b: the second endpoint's logits (alpha = 1).
        soup_logits: alpha -> the soup's logits, holding ``alpha`` and ``alpha +- step``
            (use ``f_a`` / ``f_b`` for 0 and 1).
        labels: ``[N]``.
        alpha: where to compare, in ``[step, 1 - step]``.
        step: the finite-difference step along the path.
        beta: the inverse temperature.

    Example:
        >>> f0, f1 = torch.zeros(1, 2), torch.tensor([[1.0, -1.0]])
        >>> soups = {a: (1 - a) * f0 + a * f1 for a in (0.25, 0.5, 0.75)}  # logits linear in alpha
        >>> p = eq1_point(f0, f1, soups, torch.tensor([0]), 0.5, 0.25, 1.0)
        >>> p.measured, abs(p.approximation) < 0.01
        (0.0, True)
    """
    needed = [alpha - step, alpha, alpha + step]
    missing = [a for a in needed if _lookup(soup_logits, a) is None]
    if missing:
        raise AnalysisError(
            f"eq1: soup logits are missing at alpha = {', '.join(f'{a:g}' for a in missing)}"
        )
    minus, centre, plus = (_lookup(soup_logits, a) for a in needed)
    losses = [cross_entropy(t, labels, beta) for t in (minus, centre, plus)]
    ensemble = (1.0 - alpha) * f_a.double() + alpha * f_b.double()
    soup_loss = losses[1]
    ens_loss = cross_entropy(ensemble, labels, beta)
    curvature = second_difference(*losses, step)
    variance = expected_variance(centre, f_b.double() - f_a.double(), beta)
    return Eq1Point(
        a=names[0],
        b=names[1],
        alpha=alpha,
        beta=beta,
        step=step,
        soup_loss=soup_loss,
        ensemble_loss=ens_loss,
        measured=soup_loss - ens_loss,
        curvature=curvature,
        variance=variance,
        approximation=approximation(alpha, curvature, beta, variance),
    )


def _lookup(table: Mapping[float, torch.Tensor], alpha: float) -> torch.Tensor | None:
    for key, value in table.items():
        if abs(key - alpha) < 1e-9:
            return value
    return None


def path_alphas(alphas: Sequence[float], step: float) -> list[float]:
    """Every alpha at which soups are needed for Eq. 1 at ``alphas`` with ``step``, sorted.

    Raises:
        AnalysisError: an alpha whose stencil leaves ``[0, 1]``.

    Example:
        >>> path_alphas([0.25, 0.5, 0.75], 0.25)
        [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    out: set[float] = set()
    for a in alphas:
        if a - step < -1e-12 or a + step > 1 + 1e-12:
            raise AnalysisError(f"eq1: alpha {a:g} with step {step:g} needs soups outside [0, 1]")
        out.update(round(x, 12) for x in (a - step, a, a + step))
    return sorted(out)


def analyze_pair(
    evaluator: Evaluator,
    a: Ingredient,
    b: Ingredient,
    *,
    alphas: Sequence[float] = (0.25, 0.5, 0.75),
    step: float = 0.25,
    split: str | None = None,
    beta: float | None = None,
) -> list[Eq1Point]:
    """Eq. 1 for the pair ``(a, b)`` at ``alphas``, on ``split`` (default: the ID test split).

    ``beta`` defaults to :func:`fit_temperature` on both endpoints' held-out logits.

    Example:
        >>> pts = analyze_pair(evaluator, ings[0], ings[1])  # doctest: +SKIP
        >>> [(p.alpha, round(p.measured, 4), round(p.approximation, 4)) for p in pts]  # doctest: +SKIP
    """
    from modelsoup.analysis.sources import path_logits

    task = evaluator.task
    split = split or task.id_test
    labels = task.split(split).labels
    if beta is None:
        heldout = path_logits(evaluator, a, b, [0.0, 1.0], task.heldout)
        beta = fit_temperature([heldout[0.0], heldout[1.0]], task.split(task.heldout).labels)
    soups = path_logits(evaluator, a, b, sorted({0.0, 1.0, *path_alphas(alphas, step)}), split)
    return [
        eq1_point(soups[0.0], soups[1.0], soups, labels, al, step, beta, names=(a.name, b.name))
        for al in alphas
    ]


def plot_eq1(points: Sequence[Eq1Point], path: Path, *, r: float | None = None) -> Path:
    """Scatter of the Eq. 1 approximation (x) against the measured difference (y).

    Example:
        >>> plot_eq1(points, Path("run/analysis/eq1.png"))  # doctest: +SKIP
    """
    from modelsoup.analysis.plotting import diagonal, new_figure, save

    if not points:
        raise AnalysisError("eq1: nothing to plot")
    fig, (ax,) = new_figure()
    alphas = sorted({p.alpha for p in points})
    markers = "osD^v<>"
    for i, al in enumerate(alphas):
        sel = [p for p in points if p.alpha == al]
        ax.scatter(
            [p.approximation for p in sel],
            [p.measured for p in sel],
            marker=markers[i % len(markers)],
            label=f"alpha = {al:g}",
            alpha=0.8,
        )
    diagonal(ax, [p.approximation for p in points], [p.measured for p in points])
    ax.axhline(0.0, color="0.85", lw=0.8, zorder=0)
    ax.axvline(0.0, color="0.85", lw=0.8, zorder=0)
    ax.set_xlabel("Eq. 1 approximation")
    ax.set_ylabel("measured  L_soup - L_ens")
    title = "Soup minus ensemble loss"
    if r is not None:
        title += f" (r = {r:.2f})"
    ax.set_title(title)
    ax.legend(fontsize="small")
    return save(fig, path)
