"""Significance tests and intervals: McNemar equals scipy's exact binomial test, permutation and
bootstrap behave as documented."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from modelsoup.errors import ModelSoupError
from modelsoup.evaluation.metrics import balanced_accuracy
from modelsoup.evaluation.significance import (
    binomial_two_sided,
    bootstrap_interval,
    mcnemar,
    permutation_test,
    score_weights,
    strata_for,
    stratified_score,
    wilson_interval,
)


def table_vectors(
    both: int, only_a: int, only_b: int, neither: int
) -> tuple[np.ndarray, np.ndarray]:
    """Paired correctness vectors realizing a 2x2 table, shuffled."""
    a = np.array([1] * both + [1] * only_a + [0] * only_b + [0] * neither, bool)
    b = np.array([1] * both + [0] * only_a + [1] * only_b + [0] * neither, bool)
    perm = np.random.default_rng(0).permutation(a.size)
    return a[perm], b[perm]


@pytest.mark.parametrize(
    "table",
    [
        (50, 10, 2, 38),
        (100, 25, 9, 66),
        (5, 0, 0, 5),
        (30, 12, 12, 10),
        (0, 1, 0, 0),
        (700, 41, 63, 196),
        (10, 0, 7, 3),
        (3, 150, 120, 9),
    ],
)
def test_mcnemar_equals_scipy_exact_binomial(table: tuple[int, int, int, int]) -> None:
    both, only_a, only_b, neither = table
    a, b = table_vectors(*table)
    r = mcnemar(a, b)
    assert (r.only_a, r.only_b) == (only_a, only_b)
    expected = 1.0 if only_a + only_b == 0 else binomtest(only_a, only_a + only_b, 0.5).pvalue
    assert r.p_value == pytest.approx(expected, rel=1e-12, abs=0)
    assert mcnemar(b, a).p_value == r.p_value  # symmetric


def test_mcnemar_known_values() -> None:
    # 4 discordant pairs, all one way: p = 2 / 2**4
    assert mcnemar([1, 1, 1, 1, 0, 1], [0, 0, 0, 0, 0, 1]).p_value == 0.125
    assert mcnemar([1, 0, 1], [1, 0, 1]).p_value == 1.0  # no discordant pairs
    with pytest.raises(ModelSoupError, match="paired"):
        mcnemar([1, 0], [1, 0, 1])


def test_binomial_all_small_cases_and_large_n_match_scipy() -> None:
    for n in range(0, 41):
        for k in range(n + 1):
            expected = 1.0 if n == 0 else binomtest(k, n, 0.5).pvalue
            assert binomial_two_sided(k, n) == pytest.approx(expected, rel=1e-12), (k, n)
    # beyond the exact-integer limit the tail is summed in log space
    for k, n in [(29_700, 60_000), (30_200, 60_001), (30_000, 60_000)]:
        assert binomial_two_sided(k, n) == pytest.approx(binomtest(k, n, 0.5).pvalue, rel=1e-7)
    with pytest.raises(ModelSoupError):
        binomial_two_sided(5, 3)


@pytest.mark.parametrize("k,n", [(80, 100), (0, 10), (10, 10), (398, 400), (1, 3), (517, 1000)])
def test_wilson_interval_equals_scipy(k: int, n: int) -> None:
    expected = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((expected.low, expected.high), abs=1e-12)


def test_wilson_interval_refuses_no_examples() -> None:
    with pytest.raises(ModelSoupError):
        wilson_interval(3, 0)


def test_strata_scores_equal_balanced_accuracy() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 5, generator=g)
    labels = torch.randint(0, 5, (300,), generator=g)
    labels[labels == 4] = 3  # a class absent from the split does not count
    correct = (logits.argmax(-1) == labels).numpy()
    strata = strata_for(labels, "balanced_accuracy")
    assert stratified_score(correct, strata) == pytest.approx(
        balanced_accuracy(logits, labels), abs=1e-12
    )
    assert stratified_score(correct, strata_for(labels, "accuracy")) == pytest.approx(
        correct.mean()
    )
    assert score_weights(strata).sum() == pytest.approx(1.0)
    with pytest.raises(ModelSoupError, match="metric"):
        strata_for(labels, "f1")


def test_permutation_identical_predictions_give_p_one() -> None:
    rng = np.random.default_rng(1)
    splits = [rng.random(200) < 0.7 for _ in range(3)]
    r = permutation_test(splits, [s.copy() for s in splits], n_permutations=500)
    assert r.p_value == 1.0 and r.difference == 0.0


def test_permutation_large_consistent_difference_is_significant() -> None:
    rng = np.random.default_rng(2)
    a, b = [], []
    for _ in range(3):
        truth = rng.random(300) < 0.6
        better = truth | (rng.random(300) < 0.5)  # a fixes about half of b's errors
        a.append(better)
        b.append(truth)
    r = permutation_test(a, b, n_permutations=2000, seed=3)
    assert r.difference == pytest.approx(np.mean([x.mean() - y.mean() for x, y in zip(a, b)]))
    assert r.p_value == pytest.approx(1 / 2001)  # no sign flip reaches the observed gap
    assert permutation_test(b, a, n_permutations=2000, seed=3).p_value == r.p_value


def test_permutation_matches_exact_enumeration_and_is_seeded() -> None:
    # split 1: 3 examples only a gets right; split 2 (balanced strata): 1 only b gets right
    a = [np.array([1, 1, 1, 0, 0, 1], bool), np.array([0, 1, 1, 1], bool)]
    b = [np.array([0, 0, 0, 0, 0, 1], bool), np.array([1, 1, 1, 1], bool)]
    strata = [None, np.array([0, 0, 1, 1])]
    w1, w2 = np.full(3, 1 / 6) / 2, np.array([1 / 4]) / 2
    d = np.r_[w1, -w2]
    observed = d.sum()
    exact = np.mean(
        [abs(np.dot(s, d)) >= abs(observed) - 1e-12 for s in itertools.product([-1, 1], repeat=4)]
    )
    r = permutation_test(a, b, strata, n_permutations=40_000, seed=0)
    assert r.difference == pytest.approx(observed)
    assert r.p_value == pytest.approx(exact, abs=0.01)
    assert permutation_test(a, b, strata, n_permutations=300, seed=5) == permutation_test(
        a, b, strata, n_permutations=300, seed=5
    )
    with pytest.raises(ModelSoupError):
        permutation_test(a, b[:1])


def test_bootstrap_interval_accuracy_is_close_to_wilson_and_seeded() -> None:
    correct = np.r_[np.ones(320, bool), np.zeros(80, bool)]
    lo, hi = bootstrap_interval([correct], seed=0)
    wlo, whi = wilson_interval(320, 400)
    assert lo < 0.8 < hi
    assert lo == pytest.approx(wlo, abs=0.01) and hi == pytest.approx(whi, abs=0.01)
    assert bootstrap_interval([correct], seed=0) == (lo, hi)


def test_bootstrap_interval_of_an_average_over_splits() -> None:
    splits = [
        np.r_[np.ones(n1, bool), np.zeros(n0, bool)] for n1, n0 in [(90, 10), (50, 50), (180, 20)]
    ]
    mean = np.mean([s.mean() for s in splits])
    lo, hi = bootstrap_interval(splits, n_resamples=5000, seed=1)
    assert lo < mean < hi
    # narrower than the widest single split's interval: averaging shrinks the variance
    one_lo, one_hi = bootstrap_interval([splits[1]], n_resamples=5000, seed=1)
    assert hi - lo < one_hi - one_lo
    # a perfect predictor has a degenerate interval
    assert bootstrap_interval([np.ones(10, bool)], [np.array([0] * 5 + [1] * 5)]) == (1.0, 1.0)
