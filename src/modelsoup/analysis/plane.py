"""Figure 2: training loss and test error on the plane through the init and two fine-tuned models.

The plane's orthonormal basis comes from Gram-Schmidt on ``theta_1 - theta_0`` and
``theta_2 - theta_0`` (:class:`~modelsoup.analysis.geometry.Plane`); a ``resolution x resolution``
grid covers the three models with a margin. Every grid point is a mixture of the three
checkpoints, evaluated and cached by the evaluator like any soup, so a finer rerun only pays for
the new points. The figure marks the three models and the grid's lowest test error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from modelsoup.analysis.geometry import Plane
from modelsoup.analysis.sources import mixture_logits
from modelsoup.errors import AnalysisError

if TYPE_CHECKING:
    from modelsoup.evaluation.evaluator import Evaluator
    from modelsoup.ingredients import Ingredient

RESOLUTION = 11
MARGIN = 0.3


@dataclass
class PlaneResult:
    """The grid over the plane and what was measured on it.

    Attributes:
        names: the three models ``(theta_0, theta_1, theta_2)``.
        plane: the plane (Gram entries of the deltas).
        xs: grid coordinates along e1.
        ys: grid coordinates along e2.
        loss_split: the split whose mean cross-entropy is plotted ("training loss").
        error_split: the split whose error (1 - score) is plotted ("test error").
        loss: ``[len(ys)][len(xs)]`` mean cross-entropy.
        error: ``[len(ys)][len(xs)]`` error.
        weights: ``[len(ys)][len(xs)]`` mixture weights on the three models.
        models: name -> ``{"x", "y", "loss", "error"}``.
        best: the grid point with the lowest error: ``{"x", "y", "error", "weights", "inside",
            "ties"}`` (``inside``: within the triangle of the three models; of ``ties`` points
            with that error, the one nearest the fine-tuned models' midpoint).
        nonfinite: how many grid values are NaN because the mixed model's outputs are not
            finite (e.g. a BatchNorm running variance mixed with negative weights, far outside
            the triangle); they are left blank in the figure.
    """

    names: tuple[str, str, str]
    plane: Plane
    xs: list[float]
    ys: list[float]
    loss_split: str
    error_split: str
    loss: list[list[float]] = field(default_factory=list)
    error: list[list[float]] = field(default_factory=list)
    weights: list[list[tuple[float, float, float]]] = field(default_factory=list)
    models: dict[str, dict[str, float]] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=dict)
    nonfinite: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "gram": {"g11": self.plane.g11, "g12": self.plane.g12, "g22": self.plane.g22},
            "angle": self.plane.angle,
            "xs": self.xs,
            "ys": self.ys,
            "loss_split": self.loss_split,
            "error_split": self.error_split,
            "loss": self.loss,
            "error": self.error,
            "weights": [[list(w) for w in row] for row in self.weights],
            "models": self.models,
            "best": self.best,
            "nonfinite": self.nonfinite,
        }


def grid(plane: Plane, resolution: int = RESOLUTION, margin: float = MARGIN) -> tuple[list, list]:
    """Coordinates ``(xs, ys)`` of a grid covering the three models with ``margin`` on each side.

    ``margin`` is a fraction of the larger side of the models' bounding box.

    Example:
        >>> xs, ys = grid(Plane(1.0, 0.0, 1.0), resolution=3, margin=0.0)
        >>> xs, ys
        ([0.0, 0.5, 1.0], [0.0, 0.5, 1.0])
    """
    if resolution < 2:
        raise AnalysisError(f"the plane's resolution must be at least 2, not {resolution}")
    px = [c[0] for c in plane.model_coords]
    py = [c[1] for c in plane.model_coords]
    pad = margin * max(max(px) - min(px), max(py) - min(py))
    xs = np.linspace(min(px) - pad, max(px) + pad, resolution)
    ys = np.linspace(min(py) - pad, max(py) + pad, resolution)
    return [float(x) for x in xs], [float(y) for y in ys]


def evaluate_plane(
    evaluator: Evaluator,
    init: Ingredient,
    a: Ingredient,
    b: Ingredient,
    *,
    resolution: int = RESOLUTION,
    margin: float = MARGIN,
    loss_split: str | None = None,
    error_split: str | None = None,
    plane: Plane | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PlaneResult:
    """Training loss and test error on a grid over the plane through ``init``, ``a``, ``b``.

    Args:
        evaluator: scores the grid points (cached by mixture).
        init: theta_0.
        a: theta_1.
        b: theta_2.
        resolution: grid points per axis (``resolution**2`` soups).
        margin: extra room around the models, as a fraction of their extent.
        loss_split: default: the task's training split, else the held-out split.
        error_split: default: the ID test split.
        plane: the plane if its Gram entries are known (else one streaming pass computes them).
        progress: called with ``(done, total)`` after each grid point.

    Example:
        >>> res = evaluate_plane(ev, init, ings[0], ings[1], resolution=5)  # doctest: +SKIP
        >>> res.best["inside"]  # doctest: +SKIP
        True
    """
    task = evaluator.task
    loss_split = loss_split or task.train or task.heldout
    error_split = error_split or task.id_test
    plane = plane or Plane.from_ingredients(init, a, b)
    xs, ys = grid(plane, resolution, margin)
    models = [init, a, b]
    result = PlaneResult((init.name, a.name, b.name), plane, xs, ys, loss_split, error_split)
    total, done = len(xs) * len(ys), 0
    for y in ys:
        loss_row, error_row, weight_row = [], [], []
        for x in xs:
            w = plane.weights(x, y)
            loss_row.append(_loss(evaluator, models, w, loss_split))
            error_row.append(_error(evaluator, models, w, error_split))
            weight_row.append(w)
            done += 1
            if progress:
                progress(done, total)
        result.loss.append(loss_row)
        result.error.append(error_row)
        result.weights.append(weight_row)
    one_hot = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    for model, (x, y), w in zip(models, plane.model_coords, one_hot):
        result.models[model.name] = {
            "x": x,
            "y": y,
            "loss": _loss(evaluator, models, w, loss_split),
            "error": _error(evaluator, models, w, error_split),
        }
    err = np.array(result.error, dtype=float)
    if not np.isfinite(err).any():
        raise AnalysisError("plane: every grid point gives non-finite outputs")
    lowest = np.nanmin(err)
    ties = np.argwhere(err <= lowest + 1e-12)
    (ax_, ay_), (bx_, by_) = plane.model_coords[1], plane.model_coords[2]
    mid = ((ax_ + bx_) / 2, (ay_ + by_) / 2)
    iy, ix = min(ties.tolist(), key=lambda t: (xs[t[1]] - mid[0]) ** 2 + (ys[t[0]] - mid[1]) ** 2)
    bw = result.weights[iy][ix]
    result.best = {
        "x": xs[ix],
        "y": ys[iy],
        "error": float(err[iy, ix]),
        "weights": list(bw),
        "inside": bool(min(bw) >= -1e-9),
        "ties": len(ties),
    }
    result.nonfinite = int((~np.isfinite(err)).sum() + (~np.isfinite(np.array(result.loss))).sum())
    return result


def _loss(evaluator: Evaluator, models: list, w: tuple, split: str) -> float:
    logits = mixture_logits(evaluator, models, w, split)
    if not bool(torch.isfinite(logits).all()):
        return math.nan
    return float(evaluator.metrics(logits, split)["nll"])


def _error(evaluator: Evaluator, models: list, w: tuple, split: str) -> float:
    logits = mixture_logits(evaluator, models, w, split)
    if not bool(torch.isfinite(logits).all()):
        return math.nan
    return 1.0 - float(evaluator.metrics(logits, split)["score"])


def contour_levels(values: np.ndarray, n: int = 12) -> np.ndarray:
    """Contour levels at quantiles of the finite values, so the low-loss basin, where the models
    are, gets as many contours as the steep walls around it.

    Example:
        >>> contour_levels(np.array([0.0, 1.0, 2.0, 3.0, 4.0]), n=4).tolist()
        [0.0, 1.0, 2.0, 3.0, 4.0]
    """
    ok = values[np.isfinite(values)]
    levels = np.unique(np.quantile(ok, np.linspace(0.0, 1.0, n + 1)))
    if len(levels) < 2:
        levels = np.array([levels[0], levels[0] + 1e-6])
    return levels


def plot_plane(result: PlaneResult, path: Path) -> Path:
    """Contours of training loss (left) and test error (right), the three models marked.

    Example:
        >>> plot_plane(res, Path("run/analysis/fig2_plane.png"))  # doctest: +SKIP
    """
    from modelsoup.analysis.plotting import new_figure, save

    fig, axes = new_figure(2, width=5.0, height=4.4)
    X, Y = np.meshgrid(result.xs, result.ys)
    panels = (
        (np.array(result.loss), f"training loss ({result.loss_split})", "loss", "viridis"),
        (np.array(result.error), f"test error ({result.error_split})", "error", "viridis"),
    )
    for ax, (Z, title, key, cmap) in zip(axes, panels):
        levels = contour_levels(Z)
        shown = np.ma.masked_invalid(np.clip(Z, None, levels[-1]))
        cs = ax.contourf(X, Y, shown, levels=levels, cmap=cmap, extend="max")
        ax.contour(X, Y, shown, levels=levels, colors="k", linewidths=0.3)
        fig.colorbar(cs, ax=ax, fraction=0.046, pad=0.04)
        for i, name in enumerate(result.names):
            m = result.models[name]
            ax.scatter([m["x"]], [m["y"]], marker="o" if i == 0 else "^", s=60, c="white",
                       edgecolors="black", zorder=3)  # fmt: skip
            ax.annotate(
                f"{name}\n{m[key]:.3f}", (m["x"], m["y"]), textcoords="offset points",
                xytext=(6, 6), fontsize="x-small", color="white",
                bbox={"boxstyle": "round,pad=0.2", "fc": "black", "alpha": 0.5, "lw": 0},
            )  # fmt: skip
        if key == "error":
            ax.scatter([result.best["x"]], [result.best["y"]], marker="*", s=140, c="cyan",
                       edgecolors="black", zorder=4, clip_on=False, label="lowest error on the grid")  # fmt: skip
            ax.legend(fontsize="x-small", loc="lower right")
        ax.set_title(title)
        ax.set_xlabel("e1 (distance in weight space)")
        ax.set_ylabel("e2")
        ax.set_aspect("equal", adjustable="box")
    return save(fig, path)
