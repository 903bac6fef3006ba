"""The recipe interface: a recipe *decides weights*; the engine does the averaging.

To add a recipe: write one module with a :class:`Recipe` subclass decorated by
:func:`register`, import it in ``recipes/__init__.py`` (one line), add one test file.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from modelsoup.engine import Mixture
from modelsoup.errors import RecipeError
from modelsoup.ingredients import Ingredient

if TYPE_CHECKING:
    from modelsoup.evaluation.evaluator import Evaluator
    from modelsoup.journal import Journal

PAPER_URL = "https://arxiv.org/abs/2203.05482"


class RecipeOptions(BaseModel):
    """Options of a recipe; subclasses add typed fields. Unknown options are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class RecipeContext:
    """What a recipe may use besides the ingredients: the evaluator (and its task) for recipes
    that choose on held-out data, a logger, and a journal in which a long recipe saves its
    progress so that a rerun after a crash resumes (see :mod:`modelsoup.journal`)."""

    evaluator: Evaluator | None = None
    log: Callable[[str], None] = lambda message: None
    journal: Journal | None = None


@dataclass
class Decision:
    """A recipe's answer: the mixture, plus what it learned on the way (trajectory, alphas)."""

    mixture: Mixture
    info: dict[str, Any] = field(default_factory=dict)


class Recipe(ABC):
    """Base class of recipes.

    Class attributes: ``name`` (registry key), ``title`` (pretty name), ``summary`` (one line),
    ``paper_url``, ``min_ingredients``, ``needs_task`` and ``Options`` (a :class:`RecipeOptions`).
    """

    name: ClassVar[str]
    title: ClassVar[str]
    summary: ClassVar[str]
    paper_url: ClassVar[str] = PAPER_URL
    min_ingredients: ClassVar[int] = 1
    needs_task: ClassVar[bool] = False
    Options: ClassVar[type[RecipeOptions]] = RecipeOptions

    def __init__(self, **options: Any) -> None:
        try:
            self.options = self.Options(**options)
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'options'}: {err['msg']}"
                for err in e.errors()
            )
            raise RecipeError(f"recipe {self.name!r}: bad options: {problems}") from None

    def check(self, ingredients: Sequence[Ingredient], context: RecipeContext) -> None:
        """Refuse too few ingredients or a missing task before any work."""
        if len(ingredients) < self.min_ingredients:
            raise RecipeError(
                f"recipe {self.name!r} needs at least {self.min_ingredients} ingredients, "
                f"got {len(ingredients)}"
            )
        if self.needs_task and context.evaluator is None:
            raise RecipeError(f"recipe {self.name!r} chooses on held-out data: give it a task")

    @abstractmethod
    def decide(self, ingredients: Sequence[Ingredient], context: RecipeContext) -> Decision:
        """Return the mixture for these ingredients."""


_REGISTRY: dict[str, type[Recipe]] = {}


def register(cls: type[Recipe]) -> type[Recipe]:
    """Class decorator adding a recipe to the registry; a duplicate name is refused.

    Example:
        >>> @register  # doctest: +SKIP
        ... class Mine(Recipe):
        ...     name = "mine"
    """
    if cls.name in _REGISTRY:
        raise RecipeError(
            f"a recipe named {cls.name!r} is already registered ({_REGISTRY[cls.name].__module__})"
        )
    _REGISTRY[cls.name] = cls
    return cls


def get_recipe(name: str) -> type[Recipe]:
    """The recipe class registered under ``name``; the error lists the valid names.

    Example:
        >>> get_recipe("uniform").title
        'Uniform soup'
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise RecipeError(
            f"unknown recipe {name!r}; valid recipes: {', '.join(sorted(_REGISTRY))}"
        ) from None


def list_recipes() -> list[type[Recipe]]:
    """Every registered recipe class, by name.

    Example:
        >>> [r.name for r in list_recipes()]  # doctest: +SKIP
        ['greedy', 'learned', 'uniform', 'weighted']
    """
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]
