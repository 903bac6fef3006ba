"""Ingredients: where checkpoints come from, how they are read lazily, checked and written."""

from modelsoup.ingredients.compat import check_compatible
from modelsoup.ingredients.discover import load_ingredient, load_ingredients
from modelsoup.ingredients.ingredient import Ingredient
from modelsoup.ingredients.tensor_info import TensorInfo

__all__ = ["Ingredient", "TensorInfo", "check_compatible", "load_ingredient", "load_ingredients"]
