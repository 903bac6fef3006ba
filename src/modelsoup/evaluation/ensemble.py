"""Ensembles: recipes that return a predictor instead of weights.

A logit ensemble averages its members' logits, ``(1/k) sum_i f(x, theta_i)``, and costs k forward
passes per input. Once the members' per-example logits are cached (the evaluator does this),
an ensemble, and the whole greedy-ensemble search, needs no forward pass at all: every candidate
ensemble's logits are the mean of cached member logits.

Example:
    >>> members = [torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]])]
    >>> ensemble_logits(members)
    tensor([[1.0000, 0.5000]])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from modelsoup.errors import ModelSoupError

RULES = (">=", ">")


def ensemble_logits(logits: Iterable[torch.Tensor]) -> torch.Tensor:
    """The mean of member logits (accumulated in float64, in order, returned as float32).

    Members are consumed one at a time, so a generator that reads each member's cached logits
    keeps one member in memory, whatever the ensemble's size.

    Args:
        logits: one ``[N, C]`` tensor per member, on the same examples.

    Example:
        >>> ensemble_logits([torch.ones(2, 3), 3 * torch.ones(2, 3)])[0].tolist()
        [2.0, 2.0, 2.0]
    """
    total: torch.Tensor | None = None
    count = 0
    for t in logits:
        if total is None:
            total = torch.zeros(t.shape, dtype=torch.float64)
        elif tuple(t.shape) != tuple(total.shape):
            raise ModelSoupError(
                f"ensemble members disagree on the logits' shape: "
                f"{list(total.shape)} vs {list(t.shape)}"
            )
        total += t.detach().cpu().to(torch.float64)
        count += 1
    if total is None:
        raise ModelSoupError("an ensemble needs at least one member")
    return (total / count).to(torch.float32)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of logits.

    Example:
        >>> accuracy(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([0, 1]))
        0.5
    """
    return float((logits.argmax(dim=-1).cpu() == torch.as_tensor(labels).cpu()).double().mean())


@dataclass
class GreedyEnsembleResult:
    """What :func:`greedy_ensemble` chose.

    Attributes:
        chosen: member indices in the ensemble, in the order they were added.
        order: the order in which members were tried (by held-out score, best first).
        scores: each member's own held-out score.
        score: the held-out score of the chosen ensemble.
        trajectory: one entry per candidate: ``{"candidate", "score", "accepted"}``, where
            ``score`` is the held-out score of the ensemble with the candidate added.
    """

    chosen: list[int]
    order: list[int]
    scores: list[float]
    score: float
    trajectory: list[dict[str, Any]] = field(default_factory=list)


def greedy_ensemble(
    heldout_logits: Sequence[torch.Tensor],
    labels: torch.Tensor,
    *,
    rule: str = ">=",
    score: Callable[[torch.Tensor, torch.Tensor], float] = accuracy,
    order: Sequence[int] | None = None,
) -> GreedyEnsembleResult:
    """The greedy soup's rule (the paper's Recipe 1) over ensemble members instead of weights.

    Members are tried by their own held-out score, best first (ties keep the given order); the
    first is always taken; each later one is kept if the ensemble with it scores ``>=`` (or, with
    ``rule=">"``, strictly more than) the current ensemble on the held-out split.

    Args:
        heldout_logits: each member's ``[N, C]`` held-out logits (any sequence: a lazy one that
            reads each member from the cache keeps memory at two members' worth).
        labels: the held-out labels.
        rule: ``">="`` (the paper) or ``">"`` (the official code).
        score: ``score(logits, labels) -> float``, higher is better (accuracy by default).
        order: try members in this order instead (e.g. a random permutation).

    Example:
        >>> y = torch.tensor([0, 1])
        >>> a, b = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> greedy_ensemble([a, b], y).chosen  # b alone is right on both; adding a breaks a tie
        [1]
    """
    if rule not in RULES:
        raise ModelSoupError(f"unknown greedy rule {rule!r}; valid rules: {', '.join(RULES)}")
    if len(heldout_logits) == 0:
        raise ModelSoupError("greedy ensemble: no members")
    scores = [score(t, labels) for t in heldout_logits]
    if order is None:
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
    else:
        order = list(order)
        if sorted(order) != list(range(len(scores))):
            raise ModelSoupError(
                f"greedy ensemble: order {order} is not a permutation of the members"
            )
    # A float64 running sum of the accepted members: the candidate's logits are exactly
    # ensemble_logits(chosen + [i]), at the cost of one member per step.
    chosen: list[int] = []
    total: torch.Tensor | None = None
    current = float("-inf")
    trajectory = []
    for i in order:
        member = heldout_logits[i].detach().cpu().to(torch.float64)
        summed = member if total is None else total + member
        candidate = score((summed / (len(chosen) + 1)).to(torch.float32), labels)
        accepted = not chosen or (candidate >= current if rule == ">=" else candidate > current)
        trajectory.append({"candidate": i, "score": candidate, "accepted": accepted})
        if accepted:
            chosen.append(i)
            total, current = summed, candidate
    return GreedyEnsembleResult(chosen, list(order), scores, current, trajectory)


class LogitEnsemble(nn.Module):
    """An ensemble as an ordinary module: the mean of its members' logits.

    Args:
        models: the members (any modules returning logits, or outputs with ``.logits``).
        forward: ``forward(model, batch) -> logits``; by default ``model(*args, **kwargs)``.

    Example:
        >>> ens = LogitEnsemble([nn.Linear(4, 2), nn.Linear(4, 2)])
        >>> ens(torch.randn(3, 4)).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        forward: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if not models:
            raise ModelSoupError("LogitEnsemble needs at least one model")
        self.members = nn.ModuleList(models)
        self._forward = forward

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        total: torch.Tensor | None = None
        for model in self.members:
            if self._forward is not None:
                out = self._forward(model, *args, **kwargs)
            else:
                out = model(*args, **kwargs)
            out = getattr(out, "logits", out)
            total = out.clone() if total is None else total + out
        return total / len(self.members)
