"""Weight-space geometry: deltas from the init, angles, and the plane through three models.

Every quantity here is computed from the *deltas* ``theta_i - theta_0`` flattened over all
floating-point tensors of the checkpoints (weights and float buffers such as BatchNorm running
statistics; integer buffers are left out, as the engine never averages them). Tensors are read
one name at a time with :meth:`Ingredient.get` and reduced to inner products in float64, so a
whole model is never flattened into memory.

A point ``theta_0 + x e1 + y e2`` of the plane through ``theta_0, theta_1, theta_2`` (with
``e1, e2`` the Gram-Schmidt basis of ``d1 = theta_1 - theta_0``, ``d2 = theta_2 - theta_0``) is
the mixture ``(1 - c1 - c2) theta_0 + c1 theta_1 + c2 theta_2`` with ``(c1, c2)`` from
:meth:`Plane.coefficients`, so the engine builds it and the evaluator caches its outputs by the
mixture's key like any other soup.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from modelsoup.engine import Mixture
from modelsoup.errors import AnalysisError
from modelsoup.ingredients import Ingredient, check_compatible

#: Bytes of deltas held in memory at once while computing a Gram matrix.
GRAM_BUDGET = 256 * 2**20


def angle(u: torch.Tensor, v: torch.Tensor) -> float:
    """The angle in degrees between two tensors seen as flat vectors.

    Raises:
        AnalysisError: one of the vectors is zero (the angle is undefined).

    Example:
        >>> angle(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]))
        90.0
    """
    u = u.detach().reshape(-1).double()
    v = v.detach().reshape(-1).double()
    return angle_from_gram(
        np.array([[float(u @ u), float(u @ v)], [float(u @ v), float(v @ v)]]), 0, 1
    )


def angle_from_gram(gram: np.ndarray, i: int, j: int) -> float:
    """The angle in degrees between vectors ``i`` and ``j`` of a Gram matrix.

    Example:
        >>> angle_from_gram(np.array([[1.0, 1.0], [1.0, 2.0]]), 0, 1)
        45.0
    """
    nii, njj = float(gram[i, i]), float(gram[j, j])
    if nii <= 0.0 or njj <= 0.0:
        raise AnalysisError(
            f"the angle is undefined: vector {i if nii <= 0 else j} has zero length "
            "(a model identical to the init?)"
        )
    cos = float(gram[i, j]) / math.sqrt(nii * njj)
    return round(math.degrees(math.acos(min(1.0, max(-1.0, cos)))), 10)


def float_tensor_names(ingredient: Ingredient) -> list[str]:
    """Names of the floating-point tensors (the coordinates every delta is measured in).

    Example:
        >>> "norm.num_batches_tracked" in float_tensor_names(init)  # doctest: +SKIP
        False
    """
    return [name for name, info in ingredient.tensor_infos.items() if info.is_float]


def delta_gram(
    init: Ingredient, models: Sequence[Ingredient], *, budget: int = GRAM_BUDGET
) -> np.ndarray:
    """``G[i, j] = <theta_i - theta_0, theta_j - theta_0>`` over all floating-point tensors.

    Streams one tensor name at a time; when the deltas of one tensor for every model would
    exceed ``budget`` bytes, the models are processed in blocks (reading tensors again).

    Raises:
        IncompatibleIngredientsError: the checkpoints differ in names, shapes or dtypes.

    Example:
        >>> g = delta_gram(init, [ft0, ft1])  # doctest: +SKIP
        >>> angle_from_gram(g, 0, 1)  # doctest: +SKIP
        71.3
    """
    models = list(models)
    check_compatible([init, *models])
    k = len(models)
    gram = np.zeros((k, k), dtype=np.float64)
    for name in float_tensor_names(init):
        base = init.get(name).reshape(-1).double()
        per_model = max(1, base.numel() * 8)
        block = max(1, min(k, budget // (2 * per_model)))
        starts = list(range(0, k, block))
        for bi, a in enumerate(starts):
            rows = _deltas(models[a : a + block], name, base)
            gram[a : a + len(rows), a : a + len(rows)] += (rows @ rows.T).numpy()
            for b in starts[bi + 1 :]:
                cols = _deltas(models[b : b + block], name, base)
                prod = (rows @ cols.T).numpy()
                gram[a : a + len(rows), b : b + len(cols)] += prod
                gram[b : b + len(cols), a : a + len(rows)] += prod.T
    return gram


def _deltas(models: Sequence[Ingredient], name: str, base: torch.Tensor) -> torch.Tensor:
    return torch.stack([m.get(name).reshape(-1).double() - base for m in models])


@dataclass(frozen=True)
class Plane:
    """The plane through ``theta_0, theta_1, theta_2``, described by the deltas' Gram matrix.

    With ``d1 = theta_1 - theta_0`` and ``d2 = theta_2 - theta_0``, the orthonormal basis is
    ``e1 = d1 / |d1|`` and ``e2 = (d2 - <d2, e1> e1) / |d2 - <d2, e1> e1|`` (Gram-Schmidt).
    Coordinates ``(x, y)`` name the point ``theta_0 + x e1 + y e2``; they are distances in
    weight space.

    Attributes:
        g11: ``<d1, d1>``.
        g12: ``<d1, d2>``.
        g22: ``<d2, d2>``.

    Example:
        >>> plane = Plane(4.0, 0.0, 9.0)
        >>> plane.model_coords
        ((0.0, 0.0), (2.0, 0.0), (0.0, 3.0))
        >>> plane.weights(2.0, 0.0)
        (0.0, 1.0, 0.0)
    """

    g11: float
    g12: float
    g22: float

    def __post_init__(self) -> None:
        if self.g11 <= 0.0 or self.g22 <= 0.0:
            raise AnalysisError(
                "the plane is undefined: a model is identical to the init (zero delta)"
            )
        if self.height <= 1e-9 * math.sqrt(self.g22):
            raise AnalysisError(
                "the plane is undefined: the two models' deltas from the init are parallel"
            )

    @classmethod
    def from_ingredients(cls, init: Ingredient, a: Ingredient, b: Ingredient) -> Plane:
        """The plane through ``init``, ``a`` and ``b`` (one streaming pass).

        Example:
            >>> Plane.from_ingredients(init, ft0, ft1).model_coords  # doctest: +SKIP
        """
        g = delta_gram(init, [a, b])
        return cls(float(g[0, 0]), float(g[0, 1]), float(g[1, 1]))

    @property
    def norm1(self) -> float:
        """``|d1|``: the distance from the init to theta_1."""
        return math.sqrt(self.g11)

    @property
    def projection(self) -> float:
        """``<d2, e1>``: theta_2's coordinate along e1."""
        return self.g12 / self.norm1

    @property
    def height(self) -> float:
        """``<d2, e2>``: theta_2's distance from the line through theta_0 and theta_1."""
        return math.sqrt(max(0.0, self.g22 - self.projection**2))

    @property
    def angle(self) -> float:
        """The angle between d1 and d2, in degrees."""
        return angle_from_gram(np.array([[self.g11, self.g12], [self.g12, self.g22]]), 0, 1)

    @property
    def model_coords(self) -> tuple[tuple[float, float], ...]:
        """Coordinates of theta_0, theta_1 and theta_2 in the plane."""
        return ((0.0, 0.0), (self.norm1, 0.0), (self.projection, self.height))

    def coefficients(self, x: float, y: float) -> tuple[float, float]:
        """``(c1, c2)`` with ``theta_0 + x e1 + y e2 = theta_0 + c1 d1 + c2 d2``.

        Example:
            >>> Plane(1.0, 1.0, 2.0).coefficients(1.0, 1.0)
            (0.0, 1.0)
        """
        c2 = y / self.height
        c1 = x / self.norm1 - c2 * self.projection / self.norm1
        return (c1, c2)

    def coords(self, c1: float, c2: float) -> tuple[float, float]:
        """The inverse of :meth:`coefficients`: plane coordinates of ``theta_0 + c1 d1 + c2 d2``.

        Example:
            >>> Plane(1.0, 1.0, 2.0).coords(0.0, 1.0)
            (1.0, 1.0)
        """
        return (c1 * self.norm1 + c2 * self.projection, c2 * self.height)

    def weights(self, x: float, y: float) -> tuple[float, float, float]:
        """Mixture weights on ``(theta_0, theta_1, theta_2)`` of the point ``(x, y)``; they sum to 1.

        Points outside the triangle of the three models have negative weights.

        Example:
            >>> Plane(1.0, 0.0, 1.0).weights(0.5, 0.25)
            (0.25, 0.5, 0.25)
        """
        c1, c2 = self.coefficients(x, y)
        return (_clean(1.0 - c1 - c2), _clean(c1), _clean(c2))

    def mixture(self, x: float, y: float) -> Mixture:
        """The :class:`Mixture` over ``[init, theta_1, theta_2]`` of the point ``(x, y)``.

        Example:
            >>> Plane(1.0, 0.0, 1.0).mixture(0.0, 1.0).weights
            (0.0, 0.0, 1.0)
        """
        return Mixture(self.weights(x, y))


def _clean(w: float) -> float:
    """Round away float noise so that exact points (the models) get exact weights."""
    r = round(w, 12)
    return 0.0 if r == 0.0 else r


def gram_schmidt(u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The orthonormal basis ``(e1, e2)`` of span(u, v), computed directly on flat vectors.

    The reference implementation of :class:`Plane` (for small models and tests).

    Example:
        >>> e1, e2 = gram_schmidt(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]))
        >>> e1.tolist(), e2.tolist()
        ([1.0, 0.0], [0.0, 1.0])
    """
    u = u.reshape(-1).double()
    v = v.reshape(-1).double()
    e1 = u / u.norm()
    w = v - (v @ e1) * e1
    if float(w.norm()) <= 1e-12 * float(v.norm()):
        raise AnalysisError("the vectors are parallel: they span no plane")
    return e1, w / w.norm()
