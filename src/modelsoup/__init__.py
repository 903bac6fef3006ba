"""modelsoup: averaging the weights of fine-tuned models, as in Wortsman et al. (ICML 2022).

The public API mirrors the command line::

    import modelsoup
    ingredients = modelsoup.load_ingredients(["runs/demo/trials"])
    soup = modelsoup.cook("uniform", ingredients)
    soup.save("soups/uniform")

Names are imported lazily so that ``modelsoup --help`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Ingredient": "modelsoup.ingredients",
    "load_ingredients": "modelsoup.ingredients",
    "load_ingredient": "modelsoup.ingredients",
    "check_compatible": "modelsoup.ingredients",
    "Mixture": "modelsoup.engine",
    "mix": "modelsoup.engine",
    "mix_state_dict": "modelsoup.engine",
    "Soup": "modelsoup.recipes",
    "cook": "modelsoup.recipes",
    "get_recipe": "modelsoup.recipes",
    "list_recipes": "modelsoup.recipes",
    "ModelSoupError": "modelsoup.errors",
    "Task": "modelsoup.evaluation.task",
    "Split": "modelsoup.evaluation.task",
    "load_task": "modelsoup.evaluation.task",
    "Evaluator": "modelsoup.evaluation.evaluator",
    "compare": "modelsoup.evaluation.compare",
    "analyze": "modelsoup.analysis",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'modelsoup' has no attribute {name!r}")
