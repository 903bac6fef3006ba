"""A cooked soup: ingredients plus the mixture a recipe decided, ready to stream or save."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from modelsoup.engine import Mixture, mix
from modelsoup.ingredients import Ingredient
from modelsoup.ingredients.ingredient import prefetch_digests
from modelsoup.ingredients.writer import DEFAULT_MAX_SHARD, check_output, write_soup

if TYPE_CHECKING:
    from modelsoup.journal import Journal


@dataclass
class Soup:
    """The result of :func:`modelsoup.cook`.

    Example:
        >>> soup = cook("uniform", load_ingredients(["trials/"]))  # doctest: +SKIP
        >>> model.load_state_dict(soup.state_dict())  # doctest: +SKIP
        >>> soup.save("soups/uniform")  # doctest: +SKIP
    """

    recipe: str
    ingredients: list[Ingredient]
    mixture: Mixture
    options: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    accumulate: torch.dtype = torch.float32
    allow_nonfinite: bool = False
    #: the recipe's journal, removed once the soup is saved (see :func:`cook_soup`)
    journal: Journal | None = field(default=None, repr=False, compare=False)

    @property
    def used(self) -> list[Ingredient]:
        """Ingredients with a non-zero weight somewhere."""
        keep = [
            any(w != 0 for w in ws)
            for ws in zip(self.mixture.weights, *self.mixture.per_tensor.values())
        ]
        return [ing for ing, k in zip(self.ingredients, keep) if k]

    @property
    def cache_key(self) -> str:
        """Identity of this soup's weights (mixture, ingredient digests, accumulator precision)."""
        key = self.mixture.key(self.ingredients)
        return key if self.accumulate == torch.float32 else f"{key}-{self.accumulate}"

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Stream ``(name, tensor)`` pairs (memory: one tensor at a time)."""
        return mix(
            self.ingredients,
            self.mixture,
            accumulate=self.accumulate,
            allow_nonfinite=self.allow_nonfinite,
            check=False,
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The whole soup in memory."""
        return dict(self.tensors())

    def manifest(self) -> dict[str, Any]:
        """Provenance: recipe, options, ingredients with digests and weights, version, time."""
        from modelsoup import __version__

        return {
            "modelsoup_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "recipe": self.recipe,
            "options": self.options,
            "accumulate": str(self.accumulate).replace("torch.", ""),
            "ingredients": [
                {
                    "name": ing.name,
                    "source": str(ing.source),
                    "format": ing.format,
                    "digest": ing.digest,
                    "weight": w,
                }
                for ing, w in zip(self.ingredients, self.mixture.weights)
            ],
            "mixture": self.mixture.to_json(),
            "info": self.info,
        }

    def save(
        self,
        out: str | Path,
        *,
        overwrite: bool = False,
        max_shard_size: int = DEFAULT_MAX_SHARD,
        progress: Callable[[int], None] | None = None,
    ) -> str:
        """Write ``out/model.safetensors`` (or shards), ``soup.json`` and ``README.md``.

        Returns the sha256 digest of the weights. Refuses to overwrite inputs or outputs.
        Once the soup is written, the recipe's journal (if any) is removed.
        """
        out = Path(out)
        check_output(out, self.ingredients, overwrite=overwrite)
        hf = self.ingredients[0].hf_dir
        extra = {}
        if "trajectory" in self.info:
            extra["trajectory.json"] = json.dumps(self.info["trajectory"], indent=2) + "\n"
        # The manifest records the inputs' digests: hash them in the background while the soup
        # is mixed and written (no work when they are known or cached on disk).
        digests = prefetch_digests(self.ingredients)

        def manifest() -> dict[str, Any]:
            digests()
            return self.manifest()

        digest = write_soup(
            out,
            self.tensors(),
            self.ingredients[0].tensor_infos,
            manifest=manifest,
            card=render_card,
            copy_from=hf,
            extra_files=extra,
            max_shard_size=max_shard_size,
            overwrite=overwrite,
            progress=progress,
        )
        if self.journal is not None:
            self.journal.remove()
        return digest


def render_card(manifest: dict[str, Any]) -> str:
    """The soup card (README.md) from a manifest; ``{digest}`` is filled in by the writer."""
    rows = "\n".join(
        f"| {i['name']} | {i['weight']:.4g} | `{i['digest'][:12]}` | {i['source']} |"
        for i in manifest["ingredients"]
    )
    used = sum(1 for i in manifest["ingredients"] if i["weight"] != 0)
    per_tensor = manifest["mixture"]["per_tensor"]
    note = (
        f"\nPer-tensor weights are set for {len(per_tensor)} tensors (see soup.json).\n"
        if per_tensor
        else ""
    )
    return f"""---
tags: [model-soup, modelsoup]
---
# Model soup: {manifest["recipe"]}

Made with [modelsoup](https://arxiv.org/abs/2203.05482) {manifest["modelsoup_version"]} on
{manifest["created"]}: the weights of {used} of {len(manifest["ingredients"])} fine-tuned models,
averaged ({manifest["accumulate"]} accumulation). Inference costs the same as one model.

sha256 of the weights: `{{digest}}`

| ingredient | weight | digest | source |
| --- | --- | --- | --- |
{rows}
{note}
Options: `{json.dumps(manifest["options"], default=str)}`

Reference: Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models
improves accuracy without increasing inference time", ICML 2022.
"""


def cook_soup(
    recipe_name: str,
    ingredients: Sequence[Ingredient],
    *,
    evaluator: Any = None,
    log: Callable[[str], None] | None = None,
    accumulate: torch.dtype = torch.float32,
    allow_nonfinite: bool = False,
    journal: bool = False,
    **options: Any,
) -> Soup:
    """Decide a mixture with the named recipe and return the :class:`Soup`.

    Args:
        recipe_name: a registered recipe (``modelsoup recipes`` lists them).
        ingredients: from :func:`modelsoup.load_ingredients`.
        evaluator: an :class:`~modelsoup.evaluation.Evaluator`, for recipes that choose on
            held-out data (greedy, learned).
        accumulate: ``torch.float32`` or ``torch.float64``.
        allow_nonfinite: accept NaN/Inf in ingredients.
        journal: let a recipe that chooses on held-out data (greedy, learned) save its progress
            in a journal (:mod:`modelsoup.journal`), resume from it when the same call was
            interrupted, and remove it when :meth:`Soup.save` has written the soup.
        **options: the recipe's options (e.g. ``weights=(1, 2)`` for ``weighted``).

    Example:
        >>> soup = cook("weighted", ings, weights=(1, 3))  # doctest: +SKIP
        >>> soup.mixture.weights  # doctest: +SKIP
        (0.25, 0.75)
    """
    from modelsoup.ingredients import check_compatible
    from modelsoup.recipes.base import RecipeContext, get_recipe

    recipe = get_recipe(recipe_name)(**options)
    context = RecipeContext(evaluator=evaluator, log=log or (lambda m: None))
    ingredients = list(ingredients)
    recipe.check(ingredients, context)
    check_compatible(ingredients)
    if journal and recipe.needs_task:
        from modelsoup.journal import recipe_journal

        context.journal = recipe_journal(recipe, ingredients, evaluator)
    decision = recipe.decide(ingredients, context)
    return Soup(
        recipe_name,
        ingredients,
        decision.mixture,
        options=recipe.options.model_dump(mode="json"),
        info=decision.info,
        accumulate=accumulate,
        allow_nonfinite=allow_nonfinite,
        journal=context.journal,
    )
