"""Uniform soup: the plain average of every ingredient."""

from __future__ import annotations

from collections.abc import Sequence

from modelsoup.engine import Mixture
from modelsoup.ingredients import Ingredient
from modelsoup.recipes.base import Decision, Recipe, RecipeContext, register


@register
class UniformSoup(Recipe):
    """``f(x, (1/k) sum_i theta_i)``: every ingredient with weight 1/k."""

    name = "uniform"
    title = "Uniform soup"
    summary = "average every ingredient with equal weight"

    def decide(self, ingredients: Sequence[Ingredient], context: RecipeContext) -> Decision:
        return Decision(Mixture.uniform(len(ingredients)))
