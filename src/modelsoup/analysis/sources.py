"""Predictors the analyses evaluate: mixtures of ingredients, as evaluator sources.

Every point an analysis visits (a point on an interpolation path, a point of the plane, a
two-model soup) is a :class:`Mixture` over a few ingredients, evaluated through the
:class:`~modelsoup.evaluation.evaluator.Evaluator` as a :class:`Soup`, so its per-example logits
are cached by the mixture's key and a rerun costs nothing. A mixture that puts all its weight on
one ingredient is that ingredient exactly (the engine copies it), so it is evaluated as the
ingredient itself and shares the cache entry of ``modelsoup evaluate`` / ``compare``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from modelsoup.engine import Mixture
from modelsoup.errors import AnalysisError
from modelsoup.ingredients import Ingredient
from modelsoup.soup import Soup

if TYPE_CHECKING:
    from modelsoup.evaluation.evaluator import Evaluator

RECIPE = "analysis"


def source(ingredients: Sequence[Ingredient], weights: Sequence[float]) -> Any:
    """The evaluator source for ``sum_i weights[i] * ingredients[i]``.

    A one-hot mixture is the ingredient itself; anything else is a :class:`Soup`.

    Example:
        >>> source([a, b], (1.0, 0.0)) is a  # doctest: +SKIP
        True
    """
    weights = tuple(float(w) for w in weights)
    nonzero = [i for i, w in enumerate(weights) if w != 0.0]
    if len(nonzero) == 1 and weights[nonzero[0]] == 1.0:
        return ingredients[nonzero[0]]
    return Soup(recipe=RECIPE, ingredients=list(ingredients), mixture=Mixture(weights))


def mixture_logits(
    evaluator: Evaluator, ingredients: Sequence[Ingredient], weights: Sequence[float], split: str
) -> torch.Tensor:
    """Logits ``[N, C]`` of a mixture on a split (cached by the evaluator).

    Example:
        >>> mixture_logits(ev, [a, b], (0.5, 0.5), "test").shape  # doctest: +SKIP
        torch.Size([400, 4])
    """
    return evaluator.logits(source(ingredients, weights), split)


def path_weights(alpha: float) -> tuple[float, float]:
    """Weights of ``(1 - alpha) a + alpha b``, exact at the endpoints.

    Example:
        >>> path_weights(0.25)
        (0.75, 0.25)
    """
    alpha = round(float(alpha), 12)
    return (round(1.0 - alpha, 12), alpha)


def path_logits(
    evaluator: Evaluator, a: Ingredient, b: Ingredient, alphas: Sequence[float], split: str
) -> dict[float, torch.Tensor]:
    """alpha -> logits of ``(1 - alpha) a + alpha b`` on ``split``.

    Example:
        >>> sorted(path_logits(ev, a, b, [0.0, 0.5, 1.0], "test"))  # doctest: +SKIP
        [0.0, 0.5, 1.0]
    """
    return {
        round(float(al), 12): mixture_logits(evaluator, [a, b], path_weights(al), split)
        for al in alphas
    }


def subsample(evaluator: Evaluator, max_examples: int | None) -> Evaluator:
    """An evaluator over the same task with every split cut to ``max_examples`` evenly spaced
    examples (the same cache directory; the cut splits have their own fingerprints).

    Returns ``evaluator`` itself when no split is longer than ``max_examples``.

    Example:
        >>> cheap = subsample(ev, 256)  # doctest: +SKIP
        >>> len(cheap.task.split("test"))  # doctest: +SKIP
        256
    """
    import dataclasses

    from modelsoup.evaluation.evaluator import Evaluator
    from modelsoup.evaluation.task import Split

    task = evaluator.task
    if max_examples is None or all(len(s) <= max_examples for s in task.splits.values()):
        return evaluator
    if max_examples < 1:
        raise AnalysisError(f"max_examples must be at least 1, not {max_examples}")
    splits = {}
    for name, split in task.splits.items():
        n = len(split)
        if n <= max_examples:
            splits[name] = split
            continue
        step = (n - 1) / max(1, max_examples - 1)
        idx = [round(i * step) for i in range(max_examples)]
        examples = split.examples
        if isinstance(examples, torch.Tensor):
            cut = examples[torch.tensor(idx)]
        else:
            cut = [examples[i] for i in idx]
        version = f"{split.version}|evenly {max_examples} of {n}"
        splits[name] = Split(name, cut, split.labels[torch.tensor(idx)], version=version)
    small = dataclasses.replace(task, splits=splits)
    return Evaluator(
        small,
        cache_dir=evaluator.cache.root,
        device=evaluator.device,
        batch_size=evaluator.batch_size,
        progress=evaluator.progress,
    )
