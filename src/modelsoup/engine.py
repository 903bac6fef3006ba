"""The streaming engine: turn a mixture of ingredients into tensors, one tensor at a time.

For every tensor name, ``sum_i w_i * theta_i`` is accumulated in fp32 (or fp64 on request; fp64
tensors always in fp64) and cast back to the ingredients' dtype. Only one accumulator and one
input tensor are alive at a time, so peak memory does not grow with the number of ingredients.

Integer and bool tensors (e.g. BatchNorm's ``num_batches_tracked``) are never averaged as floats:
the soup takes them, unchanged and in their own dtype, from the ingredient with the largest weight
(the first one on ties).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from modelsoup.errors import ModelSoupError, NonFiniteError
from modelsoup.ingredients import Ingredient, check_compatible
from modelsoup.ingredients.dtypes import to_torch


@dataclass(frozen=True)
class Mixture:
    """Weights of a soup: one per ingredient, optionally overridden per tensor.

    Attributes:
        weights: one weight per ingredient.
        per_tensor: tensor name -> one weight per ingredient (learned soups "by layer").

    Example:
        >>> Mixture.uniform(4).weights
        (0.25, 0.25, 0.25, 0.25)
        >>> Mixture((0.5, 0.5), {"head.weight": (1.0, 0.0)}).weights_for("head.weight")
        (1.0, 0.0)
    """

    weights: tuple[float, ...]
    per_tensor: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    @classmethod
    def uniform(cls, k: int) -> Mixture:
        return cls(tuple([1.0 / k] * k))

    @classmethod
    def subset(cls, k: int, chosen: Sequence[int]) -> Mixture:
        """Uniform over ``chosen`` indices, zero elsewhere.

        Example:
            >>> Mixture.subset(3, [0, 2]).weights
            (0.5, 0.0, 0.5)
        """
        chosen = set(chosen)
        return cls(tuple(1.0 / len(chosen) if i in chosen else 0.0 for i in range(k)))

    def weights_for(self, name: str) -> tuple[float, ...]:
        return tuple(self.per_tensor.get(name, self.weights))

    def key(self, ingredients: Sequence[Ingredient]) -> str:
        """A stable identity of this soup (ingredient digests and weights), for caching."""
        payload = {
            "digests": [i.digest for i in ingredients],
            "weights": [float(w) for w in self.weights],
            "per_tensor": {k: [float(x) for x in v] for k, v in sorted(self.per_tensor.items())},
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def to_json(self) -> dict:
        return {
            "weights": list(self.weights),
            "per_tensor": {k: list(v) for k, v in self.per_tensor.items()},
        }


def mix(
    ingredients: Sequence[Ingredient],
    mixture: Mixture,
    *,
    accumulate: torch.dtype = torch.float32,
    allow_nonfinite: bool = False,
    check: bool = True,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` of the soup, tensor by tensor, in the first ingredient's order.

    Args:
        ingredients: the checkpoints, all compatible.
        mixture: the weights.
        accumulate: ``torch.float32`` (default) or ``torch.float64``.
        allow_nonfinite: let NaN/Inf through instead of raising :class:`NonFiniteError`.
        check: run :func:`check_compatible` first.

    Example:
        >>> for name, t in mix(ingredients, Mixture.uniform(len(ingredients))):  # doctest: +SKIP
        ...     print(name, t.shape)
    """
    if accumulate not in (torch.float32, torch.float64):
        raise ModelSoupError(f"accumulate must be float32 or float64, not {accumulate}")
    if len(mixture.weights) != len(ingredients):
        raise ModelSoupError(
            f"the mixture has {len(mixture.weights)} weights for {len(ingredients)} ingredients"
        )
    if check:
        check_compatible(ingredients)
    infos = ingredients[0].tensor_infos
    _check_per_tensor(mixture, infos, len(ingredients))
    for name, info in infos.items():
        weights = mixture.weights_for(name)
        if info.is_float:
            # fp64 tensors keep an fp64 accumulator: never accumulate below the inputs' precision
            acc_dtype = torch.float64 if info.dtype == "F64" else accumulate
            with _one_thread():
                tensor = _weighted_sum(ingredients, name, weights, acc_dtype)
                finite = allow_nonfinite or _all_finite(tensor)
            if not finite:
                raise NonFiniteError(_nonfinite_message(ingredients, name))
            yield name, tensor.to(to_torch(info.dtype))
        else:
            top = max(range(len(weights)), key=lambda i: (weights[i], -i))
            yield name, ingredients[top].get(name)


def mix_state_dict(
    ingredients: Sequence[Ingredient], mixture: Mixture, **kwargs
) -> dict[str, torch.Tensor]:
    """The whole soup as a state dict (see :func:`mix` for the arguments).

    Example:
        >>> sd = mix_state_dict(ingredients, Mixture.uniform(len(ingredients)))  # doctest: +SKIP
        >>> model.load_state_dict(sd)  # doctest: +SKIP
    """
    return dict(mix(ingredients, mixture, **kwargs))


def _check_per_tensor(mixture: Mixture, infos: Mapping[str, object], k: int) -> None:
    unknown = sorted(set(mixture.per_tensor) - set(infos))
    if unknown:
        raise ModelSoupError(
            f"the mixture sets weights for tensors the ingredients lack: {', '.join(unknown[:5])}"
        )
    for name, weights in mixture.per_tensor.items():
        if len(weights) != k:
            raise ModelSoupError(
                f"the mixture has {len(weights)} weights for tensor {name!r}, "
                f"and there are {k} ingredients"
            )


@contextmanager
def _one_thread() -> Iterator[None]:
    """Accumulate on one intra-op thread (restored before the tensor is yielded).

    Summing is memory-bound: one core streams it about as fast as two, and leaves the other to
    the writer (hashing, disk) and digest threads. Under load it is also far faster, since a
    two-thread op waits for whichever of its threads the scheduler has preempted (measured in
    docs/benchmarks.md).
    """
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_PROMOTED = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})


def _weighted_sum(
    ingredients: Sequence[Ingredient], name: str, weights: Sequence[float], dtype: torch.dtype
) -> torch.Tensor:
    acc: torch.Tensor | None = None
    for ing, w in zip(ingredients, weights):
        if w == 0.0:
            continue
        t = ing.get(name)
        if acc is None:
            acc = torch.mul(t, w) if t.dtype == dtype else t.to(dtype).mul_(w)
        elif t.dtype in _PROMOTED:
            acc.add_(t, alpha=w)  # computed in the accumulator's dtype, without a converted copy
        else:
            acc.add_(t.to(dtype), alpha=w)  # e.g. float8, which torch does not promote
    if acc is None:
        info = ingredients[0].tensor_infos[name]
        acc = torch.zeros(info.shape, dtype=dtype)
    return acc


def _all_finite(t: torch.Tensor) -> bool:
    # One reduction instead of a full-size mask: any NaN/Inf makes the sum NaN/Inf, and a
    # finite tensor whose sum merely overflows gets the exact check.
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def _nonfinite_message(ingredients: Sequence[Ingredient], name: str) -> str:
    for ing in ingredients:
        t = ing.get(name)
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return (
                f"{ing.source}: tensor {name!r} holds NaN or Inf values "
                "(use --allow-nonfinite to mix it anyway)"
            )
    return f"tensor {name!r}: the weighted sum overflows to Inf (weights too large?)"
