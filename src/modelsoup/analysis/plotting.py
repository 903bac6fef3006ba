"""Shared plotting helpers: figures drawn off-screen with the Agg canvas, written as PNG.

Matplotlib is imported inside the functions only (it is an optional extra, ``modelsoup[plots]``)
and pyplot is never used, so no global backend state is touched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelsoup.errors import AnalysisError

DPI = 130


def new_figure(ncols: int = 1, *, width: float = 5.2, height: float = 4.2) -> tuple[Any, list]:
    """A figure with ``ncols`` side-by-side axes, on an Agg canvas.

    Example:
        >>> fig, axes = new_figure(2)  # doctest: +SKIP
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise AnalysisError("figures need matplotlib: pip install 'modelsoup[plots]'") from None
    fig = Figure(figsize=(width * ncols, height), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def save(fig: Any, path: Path) -> Path:
    """Write ``fig`` as PNG to ``path`` (parents created) and return the path.

    Example:
        >>> save(fig, Path("run/analysis/fig.png"))  # doctest: +SKIP
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def finite(values: Sequence[float]) -> list[float]:
    """The finite values of a sequence.

    Example:
        >>> finite([1.0, float("nan"), None, 2.0])
        [1.0, 2.0]
    """
    return [v for v in values if v is not None and math.isfinite(v)]


def diagonal(ax: Any, xs: Sequence[float], ys: Sequence[float]) -> None:
    """Draw ``y = x`` across the range of the data.

    Example:
        >>> diagonal(ax, [0.8, 0.9], [0.82, 0.88])  # doctest: +SKIP
    """
    vals = finite([*xs, *ys])
    if not vals:
        return
    lo, hi = min(vals), max(vals)
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.6", lw=1, ls="--", zorder=0)
