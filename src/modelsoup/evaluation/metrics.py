"""Metrics over per-example logits: accuracy, balanced accuracy, NLL and ECE.

Every function takes ``logits`` of shape ``[N, C]`` and integer ``labels`` of shape ``[N]``.
Predictions are ``argmax`` over classes; on ties the lowest class index wins (``torch.argmax``),
everywhere in modelsoup, so early rejection and full evaluation always agree.
"""

from __future__ import annotations

from typing import Any

import torch

from modelsoup.errors import TaskError

ECE_BINS = 15


def predictions(logits: torch.Tensor) -> torch.Tensor:
    """Predicted classes (``argmax``, lowest index on ties).

    Example:
        >>> predictions(torch.tensor([[1.0, 1.0], [0.0, 2.0]])).tolist()
        [0, 1]
    """
    return logits.argmax(dim=-1)


def correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Boolean ``[N]``: whether each example is classified correctly.

    Example:
        >>> correct(torch.tensor([[2.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 1])).tolist()
        [True, False]
    """
    return predictions(logits) == labels


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in ``[0, 1]``.

    Example:
        >>> accuracy(torch.tensor([[2.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 1]))
        0.5
    """
    return float(correct(logits, labels).double().mean())


def balanced_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean per-class recall over the classes present in ``labels``.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
        >>> balanced_accuracy(logits, torch.tensor([0, 0, 0, 1]))
        1.0
    """
    hits = correct(logits, labels).double()
    classes = labels.unique()
    recalls = [hits[labels == c].mean() for c in classes]
    return float(torch.stack(recalls).mean())


def nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of the labels under ``softmax(logits)`` (in nats).

    Example:
        >>> round(nll(torch.zeros(3, 2), torch.tensor([0, 1, 0])), 6)  # log(2)
        0.693147
    """
    logp = torch.log_softmax(logits.double(), dim=-1)
    return float(-logp.gather(1, labels.view(-1, 1)).mean())


def ece(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error with ``n_bins`` equal-width confidence bins (Guo et al. 2017).

    Confidence is the top softmax probability; bin ``b`` holds confidences in
    ``(b/n_bins, (b+1)/n_bins]``. ECE is ``sum_b |B_b|/N * |acc(B_b) - conf(B_b)|``.

    Example:
        >>> round(ece(torch.tensor([[0.0, 10.0]]), torch.tensor([1])), 4)
        0.0
    """
    probs = torch.softmax(logits.double(), dim=-1)
    conf, pred = probs.max(dim=-1)
    hits = (pred == labels).double()
    bins = torch.clamp(torch.ceil(conf * n_bins).long() - 1, 0, n_bins - 1)
    total = torch.zeros((), dtype=torch.float64)
    for b in bins.unique():
        mask = bins == b
        total += mask.double().mean() * (hits[mask].mean() - conf[mask].mean()).abs()
    return float(total)


METRIC_FUNCTIONS = {"accuracy": accuracy, "balanced_accuracy": balanced_accuracy}


def compute_metrics(
    logits: torch.Tensor, labels: torch.Tensor, headline: str = "accuracy"
) -> dict[str, Any]:
    """Every metric at once, plus ``score`` (the ``headline`` metric) and ``correct`` (a count).

    Raises:
        TaskError: no examples, a shape mismatch, or labels outside ``[0, C)``.

    Example:
        >>> m = compute_metrics(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0]))
        >>> m["accuracy"], m["score"], m["n"], m["correct"]
        (0.5, 0.5, 2, 1)
    """
    check_logits(logits, labels)
    if headline not in METRIC_FUNCTIONS:
        raise TaskError(
            f"unknown metric {headline!r} (valid: {', '.join(sorted(METRIC_FUNCTIONS))})"
        )
    logits = logits.float()
    out: dict[str, Any] = {
        "accuracy": accuracy(logits, labels),
        "balanced_accuracy": balanced_accuracy(logits, labels),
        "nll": nll(logits, labels),
        "ece": ece(logits, labels),
        "n": int(labels.numel()),
        "correct": int(correct(logits, labels).sum()),
        "metric": headline,
    }
    out["score"] = out[headline]
    return out


def check_logits(logits: torch.Tensor, labels: torch.Tensor, where: str = "") -> None:
    """Refuse empty inputs, mismatched lengths and labels the logits cannot express.

    Example:
        >>> check_logits(torch.zeros(2, 3), torch.tensor([0, 2]))
    """
    prefix = f"{where}: " if where else ""
    if labels.numel() == 0:
        raise TaskError(f"{prefix}no examples to score (the split is empty)")
    if logits.dim() != 2 or logits.shape[0] != labels.shape[0]:
        raise TaskError(
            f"{prefix}expected logits of shape [{labels.shape[0]}, classes], "
            f"got {list(logits.shape)}"
        )
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= logits.shape[1]:
        bad = lo if lo < 0 else hi
        raise TaskError(
            f"{prefix}label {bad} is outside the model's {logits.shape[1]} classes "
            f"(0..{logits.shape[1] - 1})"
        )
