"""Significance tests and confidence intervals for paired classifier results.

Everything here works on *correctness vectors*: one 0/1 entry per example saying whether a
predictor got that example right. Two methods evaluated on the same split give paired vectors.

* :func:`mcnemar`: the exact McNemar test on one split (a two-sided exact binomial test on the
  discordant pairs), as the paper uses to mark entries "not significantly different from the
  best".
* :func:`permutation_test`: a paired sign-flip permutation test for a difference in the *shift
  average* (the mean over shift splits of per-split scores).
* :func:`wilson_interval` (one split's accuracy) and :func:`bootstrap_interval` (balanced
  accuracy, and the shift average): 95% confidence intervals.

A split's score is the mean over *strata* of the per-stratum accuracy: one stratum gives plain
accuracy; the classes as strata give balanced accuracy (see :func:`strata_for`). docs/significance.md
explains the choices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from modelsoup.errors import ModelSoupError

ALPHA = 0.05
_Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal
_EXACT_LIMIT = 50_000  # discordant pairs up to which the binomial tail is summed in integers


def as_bool(values: Sequence[bool] | np.ndarray | torch.Tensor) -> np.ndarray:
    """A correctness vector as a 1-D numpy bool array."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ModelSoupError(f"a correctness vector must be 1-D, got shape {arr.shape}")
    return arr.astype(bool)


def correctness(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """``argmax(logits) == labels`` per example, as a numpy bool array.

    Example:
        >>> correctness(torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 0]))
        array([ True, False])
    """
    return (logits.argmax(dim=-1).cpu() == torch.as_tensor(labels).cpu()).numpy()


# --------------------------------------------------------------------------------------------
# McNemar


@dataclass(frozen=True)
class McNemarResult:
    """The exact McNemar test of two paired correctness vectors.

    Attributes:
        only_a: examples only ``a`` gets right.
        only_b: examples only ``b`` gets right.
        p_value: two-sided exact binomial p-value on the discordant pairs (1 when there are none).
    """

    only_a: int
    only_b: int
    p_value: float

    @property
    def discordant(self) -> int:
        return self.only_a + self.only_b


def binomial_two_sided(k: int, n: int) -> float:
    """Two-sided exact binomial p-value of ``k`` successes in ``n`` trials with p = 1/2.

    Equal to ``scipy.stats.binomtest(k, n, 0.5).pvalue``: for p = 1/2 the outcomes at least as
    unlikely as ``k`` are the two tails beyond ``min(k, n - k)``, so p = min(1, 2 P(X <= m)).
    Summed exactly in integers (correctly rounded) up to 50,000 trials, in log space beyond.

    Example:
        >>> round(binomial_two_sided(1, 10), 6)
        0.021484
    """
    if n < 0 or not 0 <= k <= n:
        raise ModelSoupError(f"binomial test: need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 1.0
    m = min(k, n - k)
    if 2 * m == n:
        return 1.0
    if n <= _EXACT_LIMIT:
        term, tail = 1, 1
        for i in range(1, m + 1):
            term = term * (n - i + 1) // i
            tail += term
        return min(1.0, (2 * tail) / (1 << n))
    log_terms = np.array(
        [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(m + 1)]
    )
    top = log_terms.max()
    log_tail = top + math.log(float(np.exp(log_terms - top).sum())) - n * math.log(2)
    return min(1.0, 2.0 * math.exp(log_tail))


def mcnemar(
    correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray
) -> McNemarResult:
    """Exact McNemar test: do ``a`` and ``b`` have the same error rate on these paired examples?

    Args:
        correct_a: per-example correctness of method a.
        correct_b: per-example correctness of method b, on the same examples in the same order.

    Example:
        >>> r = mcnemar([1, 1, 1, 1, 0, 1], [0, 0, 0, 0, 0, 1])
        >>> r.only_a, r.only_b, r.p_value
        (4, 0, 0.125)
    """
    a, b = as_bool(correct_a), as_bool(correct_b)
    if a.shape != b.shape:
        raise ModelSoupError(f"McNemar test: {a.size} vs {b.size} examples; they must be paired")
    only_a = int(np.count_nonzero(a & ~b))
    only_b = int(np.count_nonzero(~a & b))
    return McNemarResult(only_a, only_b, binomial_two_sided(only_a, only_a + only_b))


# --------------------------------------------------------------------------------------------
# Scores as means over strata


def strata_for(labels: Sequence[int] | np.ndarray | torch.Tensor, metric: str) -> np.ndarray:
    """The strata over which a split's score averages per-stratum accuracy.

    ``"accuracy"``: one stratum (all zeros). ``"balanced_accuracy"``: the classes (the labels).

    Example:
        >>> strata_for([2, 0, 2], "balanced_accuracy").tolist(), strata_for([2, 0, 2], "accuracy").tolist()
        ([2, 0, 2], [0, 0, 0])
    """
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if metric == "accuracy":
        return np.zeros(len(labels), dtype=np.int64)
    if metric == "balanced_accuracy":
        return labels.astype(np.int64)
    raise ModelSoupError(f"no significance test for metric {metric!r}")


def score_weights(strata: np.ndarray) -> np.ndarray:
    """Per-example weights ``w`` with ``score = w @ correct`` (mean over strata of accuracy).

    Example:
        >>> score_weights(np.array([0, 0, 1])).tolist()
        [0.25, 0.25, 0.5]
    """
    _, inverse, counts = np.unique(strata, return_inverse=True, return_counts=True)
    return 1.0 / (len(counts) * counts[inverse].astype(np.float64))


def stratified_score(correct: np.ndarray, strata: np.ndarray | None = None) -> float:
    """Mean over strata of the per-stratum accuracy (plain accuracy when ``strata`` is None).

    Example:
        >>> stratified_score(np.array([1, 1, 0, 0]), np.array([0, 0, 0, 1]))
        0.3333333333333333
    """
    correct = as_bool(correct)
    if strata is None:
        return float(correct.mean())
    return float(score_weights(strata) @ correct)


# --------------------------------------------------------------------------------------------
# Paired permutation test for the shift average


@dataclass(frozen=True)
class PermutationResult:
    """A paired sign-flip permutation test.

    Attributes:
        difference: observed statistic, ``score(a) - score(b)`` averaged over the splits.
        p_value: two-sided, ``(1 + #{|T*| >= |T|}) / (1 + n_permutations)``.
        n_permutations: random sign flips drawn.
    """

    difference: float
    p_value: float
    n_permutations: int


def permutation_test(
    correct_a: Sequence[np.ndarray],
    correct_b: Sequence[np.ndarray],
    strata: Sequence[np.ndarray | None] | None = None,
    *,
    n_permutations: int = 10_000,
    seed: int = 0,
    chunk: int = 1_000,
) -> PermutationResult:
    """Paired permutation test of the difference in the average over splits of per-split scores.

    Under the null hypothesis the two methods are exchangeable on every example, so each
    example's pair of outcomes is swapped (its difference flips sign) with probability 1/2,
    independently, within its own split. Only discordant examples change the statistic.

    Args:
        correct_a: one correctness vector per split for method a.
        correct_b: the same splits, same order, for method b.
        strata: per split, the strata of its score (see :func:`strata_for`); None for accuracy.
        n_permutations: random sign flips (10,000 by default).
        seed: seeds the flips (results are reproducible).
        chunk: permutations drawn at once (bounds memory).

    Example:
        >>> a = [np.ones(50, bool), np.ones(50, bool)]
        >>> b = [np.zeros(50, bool), np.zeros(50, bool)]
        >>> permutation_test(a, b, n_permutations=999).p_value
        0.001
    """
    if len(correct_a) != len(correct_b) or not correct_a:
        raise ModelSoupError(
            "permutation test: give the same, non-empty list of splits for a and b"
        )
    strata = list(strata) if strata is not None else [None] * len(correct_a)
    weights = []
    for a, b, s in zip(correct_a, correct_b, strata):
        a, b = as_bool(a), as_bool(b)
        if a.shape != b.shape:
            raise ModelSoupError(
                f"permutation test: {a.size} vs {b.size} examples; they must be paired"
            )
        w = score_weights(np.zeros(a.size, np.int64) if s is None else np.asarray(s))
        weights.append((a.astype(np.float64) - b.astype(np.float64)) * w / len(correct_a))
    d = np.concatenate(weights)
    d = d[d != 0]
    observed = float(d.sum())
    if d.size == 0:
        return PermutationResult(observed, 1.0, n_permutations)
    rng = np.random.default_rng(seed)
    threshold = abs(observed) * (1 - 1e-12)
    hits, done = 0, 0
    while done < n_permutations:
        m = min(chunk, n_permutations - done)
        signs = rng.integers(0, 2, size=(m, d.size), dtype=np.int8).astype(np.float64) * 2 - 1
        hits += int(np.count_nonzero(np.abs(signs @ d) >= threshold))
        done += m
    return PermutationResult(observed, (1 + hits) / (1 + n_permutations), n_permutations)


# --------------------------------------------------------------------------------------------
# Confidence intervals


def wilson_interval(correct: int, n: int, *, z: float = _Z95) -> tuple[float, float]:
    """The Wilson score interval for a proportion (95% by default).

    Example:
        >>> tuple(round(x, 4) for x in wilson_interval(80, 100))
        (0.7112, 0.8666)
    """
    if n <= 0 or not 0 <= correct <= n:
        raise ModelSoupError(
            f"Wilson interval: need 0 <= correct <= n and n > 0, got {correct}/{n}"
        )
    p = correct / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    lo = 0.0 if correct == 0 else max(0.0, centre - half)
    hi = 1.0 if correct == n else min(1.0, centre + half)
    return lo, hi


def bootstrap_interval(
    corrects: Sequence[np.ndarray],
    strata: Sequence[np.ndarray | None] | None = None,
    *,
    n_resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the average over splits of per-split scores.

    Examples are resampled with replacement within each split and each stratum (for plain
    accuracy: within each split). The number correct in a resampled stratum of ``n`` examples
    with ``k`` correct is exactly Binomial(n, k/n), so no example-level resampling is needed.

    Args:
        corrects: one correctness vector per split.
        strata: per split, its strata (:func:`strata_for`), or None for accuracy.
        n_resamples: bootstrap resamples.
        seed: seeds the resampling.
        confidence: interval coverage.

    Example:
        >>> lo, hi = bootstrap_interval([np.r_[np.ones(80), np.zeros(20)]])
        >>> 0.7 < lo < 0.8 < hi < 0.9
        True
    """
    if not corrects:
        raise ModelSoupError("bootstrap interval: no splits")
    strata = list(strata) if strata is not None else [None] * len(corrects)
    rng = np.random.default_rng(seed)
    total = np.zeros(n_resamples)
    for correct, s in zip(corrects, strata):
        correct = as_bool(correct)
        groups = np.zeros(correct.size, np.int64) if s is None else np.asarray(s)
        ids, inverse = np.unique(groups, return_inverse=True)
        split_score = np.zeros(n_resamples)
        for g in range(len(ids)):
            member = inverse == g
            n, k = int(member.sum()), int(correct[member].sum())
            split_score += rng.binomial(n, k / n, size=n_resamples) / n
        total += split_score / len(ids)
    total /= len(corrects)
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(total, [tail, 1 - tail])
    return float(lo), float(hi)
