"""Metrics on hand-made logits: every number is computed by hand in the test."""

from __future__ import annotations

import math

import pytest
import torch

from modelsoup.errors import TaskError
from modelsoup.evaluation.metrics import (
    accuracy,
    balanced_accuracy,
    check_logits,
    compute_metrics,
    ece,
    nll,
    predictions,
)

# Two classes. Predictions: 0, 1, 0, 1; labels 0, 1, 1, 1 -> examples 0, 1, 3 correct.
LOGITS = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])
LABELS = torch.tensor([0, 1, 1, 1])


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_accuracy_and_ties_pick_the_lowest_class() -> None:
    assert accuracy(LOGITS, LABELS) == 0.75
    tied = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]])
    assert predictions(tied).tolist() == [0, 1]


def test_balanced_accuracy_averages_recall_over_present_classes() -> None:
    # class 0: 1/1 correct, class 1: 2/3 correct
    assert balanced_accuracy(LOGITS, LABELS) == pytest.approx((1 + 2 / 3) / 2)
    # a third class in the logits but absent from the labels does not count
    three = torch.cat([LOGITS, torch.full((4, 1), -5.0)], dim=1)
    assert balanced_accuracy(three, LABELS) == pytest.approx((1 + 2 / 3) / 2)
    # imbalance: always predicting the majority class gives 0.5, while accuracy is 0.9
    majority = torch.tensor([[1.0, 0.0]] * 10)
    labels = torch.tensor([0] * 9 + [1])
    assert accuracy(majority, labels) == pytest.approx(0.9)
    assert balanced_accuracy(majority, labels) == pytest.approx(0.5)


def test_nll_by_hand() -> None:
    # -log p(label): softmax over two classes is a sigmoid of the logit difference
    expected = (
        -(
            math.log(sigmoid(1.0))  # [2, 1], label 0
            + math.log(sigmoid(3.0))  # [0, 3], label 1
            + math.log(sigmoid(-1.0))  # [1, 0], label 1
            + math.log(sigmoid(1.0))  # [0, 1], label 1
        )
        / 4
    )
    assert nll(LOGITS, LABELS) == pytest.approx(expected, abs=1e-12)
    assert nll(LOGITS, LABELS) == pytest.approx(0.4970931, abs=1e-6)


def test_ece_with_15_bins_by_hand() -> None:
    # confidences: sigmoid(1) = 0.7311 for examples 0, 2, 3 (bin (10/15, 11/15]),
    # sigmoid(3) = 0.9526 for example 1 (bin (14/15, 1]).
    low, high = sigmoid(1.0), sigmoid(3.0)
    bin_a = 3 / 4 * abs(2 / 3 - low)  # examples 0, 2, 3: two of three correct
    bin_b = 1 / 4 * abs(1.0 - high)  # example 1: correct
    assert ece(LOGITS, LABELS) == pytest.approx(bin_a + bin_b, abs=1e-12)
    assert ece(LOGITS, LABELS) == pytest.approx(0.0601504, abs=1e-6)
    # with a single bin, ECE is |accuracy - mean confidence|
    assert ece(LOGITS, LABELS, n_bins=1) == pytest.approx(
        abs(0.75 - (3 * low + high) / 4), abs=1e-12
    )


def test_ece_is_zero_when_confident_and_right_and_one_when_confident_and_wrong() -> None:
    sure = torch.tensor([[50.0, 0.0], [0.0, 50.0]])
    assert ece(sure, torch.tensor([0, 1])) == pytest.approx(0.0, abs=1e-12)
    assert ece(sure, torch.tensor([1, 0])) == pytest.approx(1.0, abs=1e-12)


def test_compute_metrics_headline_and_counts() -> None:
    m = compute_metrics(LOGITS, LABELS, headline="balanced_accuracy")
    assert m["n"] == 4 and m["correct"] == 3
    assert m["score"] == m["balanced_accuracy"] == pytest.approx(5 / 6)
    assert m["metric"] == "balanced_accuracy"
    assert set(m) >= {"accuracy", "balanced_accuracy", "nll", "ece", "n", "score"}
    with pytest.raises(TaskError, match="unknown metric 'f1'"):
        compute_metrics(LOGITS, LABELS, headline="f1")


def test_check_logits_refuses_bad_inputs() -> None:
    with pytest.raises(TaskError, match="empty"):
        check_logits(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
    with pytest.raises(TaskError, match=r"label 2 is outside the model's 2 classes"):
        check_logits(torch.zeros(2, 2), torch.tensor([0, 2]))
    with pytest.raises(TaskError, match="shape"):
        check_logits(torch.zeros(3, 2), torch.tensor([0, 1]))
