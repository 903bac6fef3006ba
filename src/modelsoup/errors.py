"""Errors raised by modelsoup. Every one carries a message a user can act on.

The CLI turns any :class:`ModelSoupError` into a short message and a non-zero exit;
anything else is a bug.
"""

from __future__ import annotations


class ModelSoupError(Exception):
    """Base class of every error modelsoup raises on purpose."""


class IngredientError(ModelSoupError):
    """A checkpoint cannot be found, read or trusted."""


class UnsafeCheckpointError(IngredientError):
    """A pickle checkpoint holds objects beyond tensors and plain containers."""


class IncompatibleIngredientsError(ModelSoupError):
    """Ingredients differ in tensor names, shapes or dtypes."""


class NonFiniteError(ModelSoupError):
    """A tensor holds NaN or Inf values."""


class OutputError(ModelSoupError):
    """An output path is unsafe (an input, existing, unwritable) or a write failed."""


class RecipeError(ModelSoupError):
    """A recipe is unknown, misconfigured or given too few ingredients."""


class TaskError(ModelSoupError):
    """A task cannot be loaded, or its model, splits or labels are unusable."""


class RunDirError(ModelSoupError):
    """A run directory lacks what a command needs."""


class AnalysisError(ModelSoupError):
    """An analysis cannot be computed (e.g. models identical to the init, too few pairs)."""
