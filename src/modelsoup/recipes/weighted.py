"""Weighted soup: user-given weights, normalized to sum to one unless told otherwise."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import Field

from modelsoup.engine import Mixture
from modelsoup.errors import RecipeError
from modelsoup.ingredients import Ingredient
from modelsoup.recipes.base import Decision, Recipe, RecipeContext, RecipeOptions, register


class WeightedOptions(RecipeOptions):
    weights: tuple[float, ...] = Field(description="One weight per ingredient, in the order given.")
    normalize: bool = Field(True, description="Scale the weights to sum to 1.")


@register
class WeightedSoup(Recipe):
    """``sum_i w_i theta_i`` with the weights you give (normalized by default)."""

    name = "weighted"
    title = "Weighted soup"
    summary = "average with user-given weights (normalized to sum to 1 unless --no-normalize)"
    Options = WeightedOptions

    def decide(self, ingredients: Sequence[Ingredient], context: RecipeContext) -> Decision:
        weights = self.options.weights
        if len(weights) != len(ingredients):
            raise RecipeError(
                f"recipe 'weighted': {len(weights)} weights for {len(ingredients)} ingredients"
            )
        if not all(math.isfinite(w) for w in weights):
            raise RecipeError("recipe 'weighted': weights must be finite numbers")
        if self.options.normalize:
            total = sum(weights)
            if total == 0:
                raise RecipeError("recipe 'weighted': weights sum to zero; cannot normalize")
            weights = tuple(w / total for w in weights)
        return Decision(Mixture(tuple(weights)))
