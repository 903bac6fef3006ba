"""Check, before any work, that ingredients can be mixed: same tensor names, shapes, dtype kinds."""

from __future__ import annotations

from collections.abc import Sequence

from modelsoup.errors import IncompatibleIngredientsError
from modelsoup.ingredients.ingredient import Ingredient

MAX_LISTED = 20


def check_compatible(ingredients: Sequence[Ingredient]) -> None:
    """Raise one error that lists every difference against the first ingredient.

    Float tensors may differ in float dtype (they are accumulated in fp32 or better); integer and
    bool tensors must match exactly.

    Example:
        >>> check_compatible(load_ingredients(["a.safetensors", "b.safetensors"]))  # doctest: +SKIP
    """
    if len(ingredients) < 2:
        return
    ref = ingredients[0]
    ref_infos = ref.tensor_infos
    problems: list[str] = []
    for ing in ingredients[1:]:
        infos = ing.tensor_infos
        for name in sorted(set(ref_infos) - set(infos)):
            problems.append(f"{ing.source}: tensor {name!r} is missing (present in {ref.source})")
        for name in sorted(set(infos) - set(ref_infos)):
            problems.append(
                f"{ing.source}: tensor {name!r} is unexpected (absent from {ref.source})"
            )
        for name in sorted(set(infos) & set(ref_infos)):
            a, b = ref_infos[name], infos[name]
            if a.shape != b.shape:
                problems.append(
                    f"{ing.source}: tensor {name!r} has shape {list(b.shape)}, "
                    f"{ref.source} has {list(a.shape)}"
                )
            if a.dtype != b.dtype and not (a.is_float and b.is_float):
                problems.append(
                    f"{ing.source}: tensor {name!r} has dtype {b.dtype}, {ref.source} has {a.dtype}"
                )
    if problems:
        shown = problems[:MAX_LISTED]
        more = len(problems) - len(shown)
        tail = f"\n  ... and {more} more" if more else ""
        raise IncompatibleIngredientsError(
            f"ingredients are incompatible ({len(problems)} differences):\n  "
            + "\n  ".join(shown)
            + tail
        )
