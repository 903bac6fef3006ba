"""Small statistics shared by the analyses: correlation, and sentences about it."""

from __future__ import annotations

import math
from collections.abc import Sequence


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson's correlation of two sequences, or ``None`` when it is undefined.

    Undefined means fewer than two finite pairs, or a constant sequence.

    Example:
        >>> pearson([1, 2, 3], [2, 4, 7])
        0.9933992677987828
        >>> pearson([1, 1, 1], [1, 2, 3]) is None
        True
    """
    pairs = [
        (float(x), float(y))
        for x, y in zip(xs, ys)
        if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)
    ]
    if len(pairs) < 2:
        return None
    n = len(pairs)
    mx = sum(p[0] for p in pairs) / n
    my = sum(p[1] for p in pairs) / n
    sxx = sum((p[0] - mx) ** 2 for p in pairs)
    syy = sum((p[1] - my) ** 2 for p in pairs)
    sxy = sum((p[0] - mx) * (p[1] - my) for p in pairs)
    if sxx <= 0.0 or syy <= 0.0:
        return None
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def describe_correlation(r: float | None, n: int) -> str:
    """A phrase for a correlation: its sign, size and how many points it rests on.

    Example:
        >>> describe_correlation(0.62, 10)
        'a moderate positive correlation (r = 0.62, 10 points)'
        >>> describe_correlation(None, 1)
        'no defined correlation (1 point)'
    """
    pts = f"{n} point{'s' if n != 1 else ''}"
    if r is None:
        return f"no defined correlation ({pts})"
    size = abs(r)
    if size < 0.1:
        word = "no meaningful"
    elif size < 0.3:
        word = "a weak"
    elif size < 0.7:
        word = "a moderate"
    else:
        word = "a strong"
    sign = "" if size < 0.1 else (" positive" if r > 0 else " negative")
    return f"{word}{sign} correlation (r = {r:.2f}, {pts})"
