"""Figures 3 and 4: pairs of fine-tuned models.

For each pair ``(theta_1, theta_2)`` of ingredients:

* the angle ``phi`` between ``theta_1 - theta_0`` and ``theta_2 - theta_0`` (``theta_0`` the init);
* the interpolation advantage ``Acc(theta_1/2 + theta_2/2) - (Acc(theta_1) + Acc(theta_2)) / 2``
  on the ID test split and on the shift average (Figure 3 plots the ID one against ``phi``);
* the two-model soup's and the two-model (logit) ensemble's scores, ID and shift (Figure 4).

One streaming pass computes the Gram matrix of every ingredient's delta (so every angle), and
each pair costs one soup evaluation per split: the endpoints' logits are cached, and the
ensemble is the mean of cached logits.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelsoup.analysis.geometry import angle_from_gram, delta_gram
from modelsoup.analysis.sources import mixture_logits
from modelsoup.analysis.stats import pearson
from modelsoup.errors import AnalysisError
from modelsoup.evaluation.ensemble import ensemble_logits

if TYPE_CHECKING:
    from modelsoup.evaluation.evaluator import Evaluator
    from modelsoup.ingredients import Ingredient


@dataclass
class PairResult:
    """One pair's numbers (scores are each split's headline metric; ``shift`` = mean over shifts).

    Attributes:
        a: first model's name.
        b: second model's name.
        angle: degrees between the two deltas from the init.
        distance: ``|theta_a - theta_b|``.
        score_a: ``{"id", "shift"}`` score of ``a``.
        score_b: the same for ``b``.
        soup: the same for the midpoint soup ``(a + b) / 2``.
        ensemble: the same for the two-model logit ensemble.
        advantage: ``soup - (score_a + score_b) / 2``, ``{"id", "shift"}``.
    """

    a: str
    b: str
    angle: float
    distance: float
    score_a: dict[str, float]
    score_b: dict[str, float]
    soup: dict[str, float]
    ensemble: dict[str, float]
    advantage: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def all_pairs(k: int) -> list[tuple[int, int]]:
    """Every unordered pair of ``k`` items.

    Example:
        >>> all_pairs(3)
        [(0, 1), (0, 2), (1, 2)]
    """
    return list(itertools.combinations(range(k), 2))


def choose_pairs(k: int, n: int | None, *, seed: int = 0) -> list[tuple[int, int]]:
    """``n`` distinct pairs of ``k`` models (all of them when ``n`` is ``None``), sorted.

    A seeded sample when ``n`` is smaller than the number of pairs, so every model can appear.

    Raises:
        AnalysisError: fewer than two models, or more pairs asked for than exist.

    Example:
        >>> choose_pairs(4, 2, seed=0)
        [(1, 2), (2, 3)]
    """
    if k < 2:
        raise AnalysisError(f"pairs need at least two fine-tuned models, found {k}")
    pairs = all_pairs(k)
    if n is None:
        return pairs
    if n < 1:
        raise AnalysisError(f"the number of pairs must be at least 1, not {n}")
    if n > len(pairs):
        raise AnalysisError(
            f"{n} pairs requested, but {k} fine-tuned models make only {len(pairs)} pairs "
            f"(use --pairs {len(pairs)} or fewer)"
        )
    return sorted(random.Random(seed).sample(pairs, n))


def analyze_pairs(
    evaluator: Evaluator,
    init: Ingredient,
    models: Sequence[Ingredient],
    pairs: Sequence[tuple[int, int]],
    *,
    gram: np.ndarray | None = None,
) -> list[PairResult]:
    """Angles, interpolation advantages, and soup vs ensemble scores for ``pairs`` of ``models``.

    Args:
        evaluator: scores (and caches) the endpoints and the midpoint soups.
        init: theta_0.
        models: the fine-tuned models.
        pairs: index pairs into ``models`` (see :func:`choose_pairs`).
        gram: the deltas' Gram matrix if already computed (:func:`delta_gram`).

    Example:
        >>> res = analyze_pairs(ev, init, ings, choose_pairs(len(ings), 5))  # doctest: +SKIP
        >>> res[0].angle, res[0].advantage["id"]  # doctest: +SKIP
        (38.2, 0.012)
    """
    task = evaluator.task
    if gram is None:
        gram = delta_gram(init, models)
    groups = {"id": [task.id_test], "shift": list(task.shifts)}
    out = []
    for i, j in pairs:
        a, b = models[i], models[j]
        scores: dict[str, dict[str, float]] = {"a": {}, "b": {}, "soup": {}, "ens": {}}
        for group, splits in groups.items():
            if not splits:
                continue
            acc = {key: [] for key in scores}
            for s in splits:
                fa, fb = evaluator.logits(a, s), evaluator.logits(b, s)
                soup = mixture_logits(evaluator, [a, b], (0.5, 0.5), s)
                for key, logits in (
                    ("a", fa),
                    ("b", fb),
                    ("soup", soup),
                    ("ens", ensemble_logits([fa, fb])),
                ):
                    acc[key].append(evaluator.metrics(logits, s)["score"])
            for key in scores:
                scores[key][group] = float(np.mean(acc[key]))
        dist2 = gram[i, i] + gram[j, j] - 2 * gram[i, j]
        out.append(
            PairResult(
                a=a.name,
                b=b.name,
                angle=angle_from_gram(gram, i, j),
                distance=float(np.sqrt(max(0.0, dist2))),
                score_a=scores["a"],
                score_b=scores["b"],
                soup=scores["soup"],
                ensemble=scores["ens"],
                advantage={
                    g: scores["soup"][g] - (scores["a"][g] + scores["b"][g]) / 2
                    for g in scores["soup"]
                },
            )
        )
    return out


def plot_angle_advantage(pairs: Sequence[PairResult], path: Path) -> Path:
    """Figure 3: interpolation advantage (ID) against the angle, with the correlation.

    Example:
        >>> plot_angle_advantage(res, Path("run/analysis/fig3_angle.png"))  # doctest: +SKIP
    """
    from modelsoup.analysis.plotting import new_figure, save

    if not pairs:
        raise AnalysisError("figure 3: no pairs to plot")
    fig, (ax,) = new_figure()
    xs = [p.angle for p in pairs]
    ys = [100 * p.advantage["id"] for p in pairs]
    ax.scatter(xs, ys, alpha=0.8, label="ID")
    if all("shift" in p.advantage for p in pairs):
        ax.scatter(xs, [100 * p.advantage["shift"] for p in pairs], marker="x", alpha=0.8,
                   label="shift avg")  # fmt: skip
    ax.axhline(0.0, color="0.7", lw=0.8, zorder=0)
    r = pearson(xs, ys)
    ax.set_xlabel("angle between theta_1 - theta_0 and theta_2 - theta_0 (degrees)")
    ax.set_ylabel("interpolation advantage (points)")
    ax.set_title(
        "Angle vs interpolation advantage" + (f" (ID r = {r:.2f})" if r is not None else "")
    )
    ax.legend(fontsize="small")
    return save(fig, path)


def plot_soup_vs_ensemble(pairs: Sequence[PairResult], path: Path) -> Path:
    """Figure 4: two-model soup score against two-model ensemble score, ID and shift panels.

    Example:
        >>> plot_soup_vs_ensemble(res, Path("run/analysis/fig4_soup_vs_ensemble.png"))  # doctest: +SKIP
    """
    from modelsoup.analysis.plotting import diagonal, new_figure, save

    if not pairs:
        raise AnalysisError("figure 4: no pairs to plot")
    groups = [g for g in ("id", "shift") if all(g in p.soup for p in pairs)]
    fig, axes = new_figure(len(groups))
    for ax, group in zip(axes, groups):
        xs = [100 * p.ensemble[group] for p in pairs]
        ys = [100 * p.soup[group] for p in pairs]
        ax.scatter(xs, ys, alpha=0.8)
        diagonal(ax, xs, ys)
        r = pearson(xs, ys)
        name = "ID" if group == "id" else "shift avg"
        ax.set_title(f"{name}" + (f" (r = {r:.2f})" if r is not None else ""))
        ax.set_xlabel("two-model ensemble score (%)")
        ax.set_ylabel("two-model soup score (%)")
    return save(fig, path)
