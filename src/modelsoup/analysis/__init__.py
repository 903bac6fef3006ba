"""The paper's analyses: interpolation, the loss/error plane, angles, soups vs ensembles, Eq. 1,
calibration. :func:`analyze` runs them all on a run directory (``modelsoup analyze``).

Example:
    >>> from modelsoup.analysis import analyze
    >>> doc = analyze("runs/demo", light=True)  # doctest: +SKIP
    >>> sorted(doc["figures"])  # doctest: +SKIP
    ['angle', 'calibration', 'eq1', 'interpolation', 'plane', 'soup_vs_ensemble']
"""

from __future__ import annotations

from modelsoup.analysis.run import AnalysisOptions, analyze, load_run

__all__ = ["AnalysisOptions", "analyze", "load_run"]
