"""Calibration: expected calibration error (ECE) of every method, and a reliability diagram.

The paper finds that soups do not improve calibration the way ensembles do. The methods are
those of ``modelsoup compare`` (read from ``RUN_DIR/results.json``); their per-example logits
are rebuilt through the evaluator, so they come from its cache when ``compare`` ran with the same
cache: an individual model is the ingredient, a soup is the mixture ``compare`` recorded (its
``info.weights``), an ensemble is the mean of its members' logits. Soups whose weights differ per
tensor (learned by layer) cannot be rebuilt from ``results.json``; for them the ECE that
``compare`` recorded is reported, without a reliability curve.

ECE uses the same 15 equal-width confidence bins as :func:`modelsoup.evaluation.metrics.ece`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from modelsoup.analysis.sources import mixture_logits
from modelsoup.errors import AnalysisError
from modelsoup.evaluation.ensemble import ensemble_logits
from modelsoup.evaluation.metrics import ECE_BINS

if TYPE_CHECKING:
    from modelsoup.evaluation.evaluator import Evaluator
    from modelsoup.ingredients import Ingredient


def reliability(
    logits: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS
) -> dict[str, Any]:
    """Per-bin counts, accuracy and mean confidence, and the ECE they add up to.

    Bin ``b`` holds top-class confidences in ``(b / n_bins, (b + 1) / n_bins]``.

    Example:
        >>> r = reliability(torch.tensor([[0.0, 10.0], [10.0, 0.0]]), torch.tensor([1, 1]))
        >>> r["count"][-1], r["accuracy"][-1], round(r["ece"], 4)
        (2, 0.5, 0.5)
    """
    probs = torch.softmax(logits.double(), dim=-1)
    conf, pred = probs.max(dim=-1)
    hits = (pred == labels).double()
    bins = torch.clamp(torch.ceil(conf * n_bins).long() - 1, 0, n_bins - 1)
    n = len(labels)
    count, acc, mean_conf = [], [], []
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        c = int(mask.sum())
        count.append(c)
        if c == 0:
            acc.append(None)
            mean_conf.append(None)
            continue
        a, m = float(hits[mask].mean()), float(conf[mask].mean())
        acc.append(a)
        mean_conf.append(m)
        ece += c / n * abs(a - m)
    return {
        "edges": [b / n_bins for b in range(n_bins + 1)],
        "count": count,
        "accuracy": acc,
        "confidence": mean_conf,
        "ece": ece,
    }


@dataclass
class MethodCalibration:
    """One method's calibration.

    Attributes:
        name: the method's name (as in ``results.json``).
        title: a readable name.
        kind: ``individual``, ``soup`` or ``ensemble``.
        ece: column (ID split, each shift, ``shift_avg``) -> ECE.
        source: ``"recomputed"`` (from logits) or ``"results.json"``.
        reliability: the ID split's :func:`reliability` (``None`` when not recomputed).
    """

    name: str
    title: str
    kind: str
    ece: dict[str, float] = field(default_factory=dict)
    source: str = "recomputed"
    reliability: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "kind": self.kind,
            "ece": self.ece,
            "source": self.source,
            "reliability": self.reliability,
        }


def _logits_for(
    method: Mapping[str, Any], by_name: Mapping[str, Ingredient], evaluator: Evaluator, split: str
) -> torch.Tensor | None:
    """Rebuild a method's logits on ``split``, or ``None`` when results.json is not enough."""
    kind, info = method.get("kind"), method.get("info") or {}
    used = method.get("ingredients") or []
    if kind == "individual" and len(used) == 1 and used[0] in by_name:
        return evaluator.logits(by_name[used[0]], split)
    if kind == "ensemble" and used and all(n in by_name for n in used):
        return ensemble_logits([evaluator.logits(by_name[n], split) for n in used])
    if kind == "soup":
        weights = info.get("weights")
        if info.get("by_layer") or not isinstance(weights, Mapping) or not weights:
            return None
        if not all(n in by_name for n in weights):
            return None
        ings = [by_name[n] for n in weights]
        return mixture_logits(evaluator, ings, tuple(float(w) for w in weights.values()), split)
    return None


def calibrate_methods(
    evaluator: Evaluator,
    ingredients: Sequence[Ingredient],
    results: Mapping[str, Any] | None,
    *,
    fallback_pool: Sequence[Ingredient] | None = None,
) -> list[MethodCalibration]:
    """ECE of every method of ``compare`` on the ID split and the shifts.

    Args:
        evaluator: rebuilds the logits (from its cache when ``compare`` filled it).
        ingredients: every ingredient of the run (init included), to look names up.
        results: the parsed ``results.json``, or ``None``: then the best individual model (by
            held-out score), the uniform soup and the ensemble of ``fallback_pool`` are scored.
        fallback_pool: the fine-tuned models, used only without ``results``.

    Example:
        >>> cal = calibrate_methods(ev, ings, json.loads(Path("run/results.json").read_text()))  # doctest: +SKIP
        >>> {c.name: round(c.ece["test"], 3) for c in cal}  # doctest: +SKIP
    """
    task = evaluator.task
    by_name = {i.name: i for i in ingredients}
    methods = dict((results or {}).get("methods") or {})
    methods.pop("oracle", None)
    if not methods:
        methods = _fallback_methods(evaluator, list(fallback_pool or ingredients))
    columns = [task.id_test, *task.shifts]
    out = []
    for name, method in methods.items():
        cal = MethodCalibration(name, method.get("title", name), method.get("kind", ""))
        logits = {s: _logits_for(method, by_name, evaluator, s) for s in columns}
        if all(v is not None for v in logits.values()):
            for s in columns:
                cal.ece[s] = evaluator.metrics(logits[s], s)["ece"]
            cal.reliability = reliability(logits[task.id_test], task.split(task.id_test).labels)
        else:
            recorded = method.get("metrics") or {}
            if not all(s in recorded and "ece" in recorded[s] for s in columns):
                continue
            cal.source = "results.json"
            for s in columns:
                cal.ece[s] = float(recorded[s]["ece"])
        if task.shifts:
            cal.ece["shift_avg"] = sum(cal.ece[s] for s in task.shifts) / len(task.shifts)
        out.append(cal)
    if not out:
        raise AnalysisError("calibration: no method could be scored")
    return out


def _fallback_methods(evaluator: Evaluator, pool: list[Ingredient]) -> dict[str, dict[str, Any]]:
    """Without results.json: best individual (held-out), uniform soup, ensemble."""
    task = evaluator.task
    scores = [
        evaluator.metrics(evaluator.logits(i, task.heldout), task.heldout)["score"] for i in pool
    ]
    best = pool[max(range(len(pool)), key=lambda j: scores[j])]
    names = [i.name for i in pool]
    return {
        "best_individual": {"title": "Best individual (held-out)", "kind": "individual",
                            "ingredients": [best.name]},
        "uniform_soup": {"title": "Uniform soup", "kind": "soup", "ingredients": names,
                         "info": {"weights": {n: 1.0 / len(pool) for n in names}}},
        "ensemble": {"title": "Ensemble", "kind": "ensemble", "ingredients": names},
    }  # fmt: skip


def plot_calibration(methods: Sequence[MethodCalibration], path: Path, *, id_split: str) -> Path:
    """Reliability diagram on the ID split (left) and ECE per method, ID and shift (right).

    Example:
        >>> plot_calibration(cal, Path("run/analysis/calibration.png"), id_split="test")  # doctest: +SKIP
    """
    import numpy as np

    from modelsoup.analysis.plotting import new_figure, save

    if not methods:
        raise AnalysisError("calibration: nothing to plot")
    fig, (ax_rel, ax_ece) = new_figure(2)
    ax_rel.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1, label="perfect calibration")
    for i, m in enumerate(methods):
        if m.reliability is None:
            continue
        rel = m.reliability
        pts = [
            (c, a, n)
            for c, a, n in zip(rel["confidence"], rel["accuracy"], rel["count"])
            if c is not None
        ]
        total = sum(p[2] for p in pts)
        color = f"C{i % 10}"
        ax_rel.plot([p[0] for p in pts], [p[1] for p in pts], color=color, lw=1, alpha=0.7,
                    label=f"{m.title} (ECE {100 * rel['ece']:.1f})")  # fmt: skip
        # marker area proportional to the bin's share of the examples
        ax_rel.scatter([p[0] for p in pts], [p[1] for p in pts], s=[4 + 300 * p[2] / total for p in pts],
                       color=color, alpha=0.7)  # fmt: skip
    ax_rel.set_xlabel("confidence (top softmax probability)")
    ax_rel.set_ylabel("accuracy")
    ax_rel.set_title(f"Reliability diagram ({id_split}; marker area = share of examples)")
    ax_rel.legend(fontsize="x-small")
    x = np.arange(len(methods))
    has_shift = all("shift_avg" in m.ece for m in methods)
    width = 0.4 if has_shift else 0.8
    ax_ece.bar(x - (width / 2 if has_shift else 0), [100 * m.ece[id_split] for m in methods],
               width, label="ID")  # fmt: skip
    if has_shift:
        ax_ece.bar(
            x + width / 2, [100 * m.ece["shift_avg"] for m in methods], width, label="shift avg"
        )
    ax_ece.set_xticks(x)
    ax_ece.set_xticklabels([m.title for m in methods], rotation=35, ha="right", fontsize="x-small")
    ax_ece.set_ylabel("ECE (%)")
    ax_ece.set_title("Expected calibration error")
    ax_ece.legend(fontsize="small")
    return save(fig, path)
