"""Figure 1 of the paper: in-distribution score (x) against the shift-average score (y).

Every ingredient is a grey point (the initialization, if an ingredient is named ``init``, a black
diamond); every method a labelled marker. matplotlib is imported inside the functions only, and
only its Agg canvas is used (no pyplot, no global backend switch), so importing modelsoup never
needs matplotlib (``pip install modelsoup[plots]``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from modelsoup.errors import ModelSoupError

if TYPE_CHECKING:
    from modelsoup.evaluation.compare import ComparisonResult

SHIFT_AVG = "shift_avg"
_SHORT = {
    "best_individual": "best individual",
    "uniform_soup": "uniform soup",
    "greedy_soup": "greedy soup",
    "greedy_soup_random": "greedy soup (random)",
    "learned_soup": "learned soup",
    "learned_soup_by_layer": "learned soup (by layer)",
    "ensemble": "ensemble",
    "greedy_ensemble": "greedy ensemble",
    "oracle": "oracle",
}
_MARKERS = {
    "best_individual": ("s", "tab:blue"),
    "uniform_soup": ("o", "tab:orange"),
    "greedy_soup": ("*", "tab:red"),
    "greedy_soup_random": ("P", "tab:pink"),
    "learned_soup": ("^", "tab:green"),
    "learned_soup_by_layer": ("v", "tab:olive"),
    "ensemble": ("X", "tab:purple"),
    "greedy_ensemble": ("D", "tab:brown"),
    "oracle": ("h", "tab:cyan"),
}


def figure1_png(result: ComparisonResult, *, dpi: int = 150) -> bytes:
    """Render Figure 1 as PNG bytes.

    Raises:
        ModelSoupError: the task has no shift splits (there is no shift average to plot), or
            matplotlib is not installed.

    Example:
        >>> Path("fig1.png").write_bytes(figure1_png(result))  # doctest: +SKIP
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ModelSoupError("Figure 1 needs matplotlib: pip install 'modelsoup[plots]'") from None
    if not result.task["shifts"]:
        raise ModelSoupError(f"task {result.task['name']!r} has no shift splits: no Figure 1")
    id_test = result.task["id_test"]
    metric = result.task["metric"][id_test]
    shift_metrics = {result.task["metric"][s] for s in result.task["shifts"]}
    shift_metric = shift_metrics.pop() if len(shift_metrics) == 1 else "score"

    def xy(metrics: dict) -> tuple[float, float]:
        return 100 * metrics[id_test]["score"], 100 * metrics[SHIFT_AVG]["score"]

    fig = Figure(figsize=(7.5, 6.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    points = [xy(m) for name, m in result.ingredients.items() if name != result.init]
    if points:
        ax.scatter(*zip(*points), s=22, c="0.6", alpha=0.8, label="fine-tuned models", zorder=2)
    if result.init is not None:
        x, y = xy(result.ingredients[result.init])
        ax.scatter([x], [y], s=60, marker="d", c="black", label="initialization", zorder=3)
    labels: dict[tuple[float, float], list[str]] = {}
    for name, row in result.methods.items():
        marker, colour = _MARKERS.get(name, ("o", "black"))
        x, y = xy(row.metrics)
        size = 160 if marker == "*" else 70
        ax.scatter(
            [x],
            [y],
            s=size,
            marker=marker,
            c=colour,
            edgecolors="black",
            linewidths=0.6,
            label=row.title,
            zorder=4,
        )
        labels.setdefault((round(x, 6), round(y, 6)), []).append(_SHORT.get(name, name))
    for (x, y), names in labels.items():  # methods at the same point share one label
        ax.annotate(
            "\n".join(names),
            (x, y),
            xytext=(7, 0),
            textcoords="offset points",
            fontsize=7,
            va="center",
        )
    ax.set_xlabel(f"{id_test} {metric.replace('_', ' ')} (%)")
    ax.set_ylabel(f"shift average {shift_metric.replace('_', ' ')} (%)")
    ax.set_title(f"{result.task['name']}: in distribution vs under distribution shift", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.3, y=0.12)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_figure1(result: ComparisonResult, path: str | Path) -> Path:
    """Write Figure 1 to ``path`` (PNG) atomically and return the path.

    Example:
        >>> save_figure1(result, "runs/toy/fig1.png")  # doctest: +SKIP
    """
    from modelsoup.atomic import atomic_write

    path = Path(path)
    atomic_write(path, figure1_png(result))
    return path
