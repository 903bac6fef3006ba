"""Recipes decide the weights of a soup. One module per recipe, one registry line each."""

from modelsoup.recipes import greedy, learned, uniform, weighted  # noqa: F401  (registers the recipes)
from modelsoup.recipes.base import (
    Decision,
    Recipe,
    RecipeContext,
    RecipeOptions,
    get_recipe,
    list_recipes,
    register,
)
from modelsoup.soup import Soup
from modelsoup.soup import cook_soup as cook

__all__ = [
    "Decision",
    "Recipe",
    "RecipeContext",
    "RecipeOptions",
    "Soup",
    "cook",
    "get_recipe",
    "list_recipes",
    "register",
]
