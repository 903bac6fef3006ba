"""Interpolation curves: accuracy and loss along the straight line between two checkpoints.

``theta(alpha) = (1 - alpha) theta_a + alpha theta_b`` for ``alpha`` on a grid. With ``theta_a``
the init and ``theta_b`` a fine-tuned model this is WiSE-FT's curve (Wortsman et al. 2022b); with
two fine-tuned models it shows whether the straight path between them stays in one low-loss
basin. Scores are reported on the held-out split, the ID test split and the mean over the shift
splits; the score is each split's headline metric (accuracy unless the task says otherwise),
the loss is the mean cross-entropy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelsoup.analysis.sources import path_logits
from modelsoup.errors import AnalysisError

if TYPE_CHECKING:
    from modelsoup.evaluation.evaluator import Evaluator
    from modelsoup.ingredients import Ingredient

#: The default alpha grid (0 and 1 are the models themselves).
ALPHAS = tuple(round(i / 10, 1) for i in range(11))
#: The curves' groups: the held-out split, the ID test split, the mean over the shifts.
GROUPS = ("heldout", "id", "shift")


@dataclass
class Curve:
    """One interpolation curve.

    Attributes:
        a: the name of the model at ``alpha = 0``.
        b: the name of the model at ``alpha = 1``.
        alphas: the grid.
        score: group (``heldout``, ``id``, ``shift``) -> score at each alpha.
        loss: group -> mean cross-entropy at each alpha (the shift group: mean over shifts).
        splits: split name -> ``{"score": [...], "loss": [...]}``.
        label: a short description (e.g. ``"init -> trial_003"``).
    """

    a: str
    b: str
    alphas: list[float]
    score: dict[str, list[float]] = field(default_factory=dict)
    loss: dict[str, list[float]] = field(default_factory=dict)
    splits: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    label: str = ""

    def best(self, group: str = "heldout") -> tuple[float, float]:
        """``(alpha, score)`` of the best score of ``group`` (the first on ties)."""
        scores = self.score[group]
        i = max(range(len(scores)), key=lambda j: scores[j])
        return self.alphas[i], scores[i]

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "label": self.label,
            "alphas": self.alphas,
            "score": self.score,
            "loss": self.loss,
            "splits": self.splits,
        }


def interpolate(
    evaluator: Evaluator,
    a: Ingredient,
    b: Ingredient,
    alphas: Sequence[float] = ALPHAS,
    *,
    label: str | None = None,
) -> Curve:
    """Scores and losses of ``(1 - alpha) a + alpha b`` on the held-out, ID and shift splits.

    Each point is a soup evaluated (and cached) by the evaluator; ``alpha = 0`` and ``1`` are
    ``a`` and ``b`` themselves, so they equal the models' own scores.

    Example:
        >>> curve = interpolate(ev, init, best, alphas=(0.0, 0.5, 1.0))  # doctest: +SKIP
        >>> curve.score["id"]  # doctest: +SKIP
        [0.31, 0.88, 0.86]
    """
    alphas = sorted({round(float(al), 12) for al in alphas})
    if not alphas:
        raise AnalysisError("interpolation: no alphas given")
    task = evaluator.task
    splits = list(dict.fromkeys([task.heldout, task.id_test, *task.shifts]))
    curve = Curve(a.name, b.name, alphas, label=label or f"{a.name} -> {b.name}")
    for split in splits:
        logits = path_logits(evaluator, a, b, alphas, split)
        metrics = [evaluator.metrics(logits[al], split) for al in alphas]
        curve.splits[split] = {
            "score": [m["score"] for m in metrics],
            "loss": [m["nll"] for m in metrics],
        }
    for group, names in (
        ("heldout", [task.heldout]),
        ("id", [task.id_test]),
        ("shift", list(task.shifts)),
    ):
        if not names:
            continue
        for kind, target in (("score", curve.score), ("loss", curve.loss)):
            target[group] = [
                sum(curve.splits[s][kind][i] for s in names) / len(names)
                for i in range(len(alphas))
            ]
    return curve


def plot_curves(curves: Sequence[Curve], path: Path) -> Path:
    """Score (left) and loss (right) against alpha: one colour per curve, one line style per group.

    Example:
        >>> plot_curves([curve], Path("run/analysis/interpolation.png"))  # doctest: +SKIP
    """
    from modelsoup.analysis.plotting import new_figure, save

    if not curves:
        raise AnalysisError("interpolation: nothing to plot")
    fig, (ax_score, ax_loss) = new_figure(2)
    styles = {"heldout": ":", "id": "-", "shift": "--"}
    names = {"heldout": "held-out", "id": "ID", "shift": "shift avg"}
    for ci, curve in enumerate(curves):
        color = f"C{ci % 10}"
        for group in GROUPS:
            if group not in curve.score:
                continue
            kw = {"color": color, "ls": styles[group], "marker": "o", "ms": 3}
            ax_score.plot(
                curve.alphas, curve.score[group], label=f"{curve.label}: {names[group]}", **kw
            )
            ax_loss.plot(curve.alphas, curve.loss[group], **kw)
    ax_score.set_xlabel("alpha  (0 = first model, 1 = second)")
    ax_score.set_ylabel("score")
    ax_score.set_title("Interpolation: score")
    ax_loss.set_xlabel("alpha")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.set_title("Interpolation: loss")
    ax_score.legend(fontsize="x-small")
    return save(fig, path)
