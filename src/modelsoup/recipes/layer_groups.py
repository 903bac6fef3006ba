"""Layer groups for learned soups "by layer": which tensors share one set of mixing weights.

The automatic grouping needs nothing but tensor names, so it works for any model:

* a tensor whose name has a numeric component belongs to the *block* named by the prefix up to
  and including the first numeric component (``encoder.layer.3.attention.q.weight`` ->
  ``encoder.layer.3``);
* any other tensor belongs to the shortest module prefix that holds no block
  (``bert.embeddings.word_embeddings.weight`` -> ``bert.embeddings``, because ``bert`` holds
  the blocks; ``classifier.weight`` -> ``classifier``); a tensor with no such prefix is a group
  of its own (``visual.class_embedding``).

This gives the paper's "embeddings, each block, head". Users may give module-name prefixes
instead (each tensor joins its longest matching prefix; unmatched tensors form one ``(rest)``
group), or ``tensor`` for one group per tensor, as the official by-layer code does.
"""

from __future__ import annotations

from collections.abc import Sequence

from modelsoup.errors import RecipeError

#: ``groups`` value meaning one group per tensor.
PER_TENSOR = "tensor"
#: The group of tensors that match none of the user's prefixes.
REST = "(rest)"


def auto_groups(names: Sequence[str]) -> dict[str, list[str]]:
    """Group tensor names into embeddings, blocks and head (see the module docstring).

    Example:
        >>> auto_groups(["emb.weight", "enc.layer.0.w", "enc.layer.0.b", "enc.layer.1.w",
        ...              "enc.norm.weight", "head.weight"])  # doctest: +NORMALIZE_WHITESPACE
        {'emb': ['emb.weight'], 'enc.layer.0': ['enc.layer.0.w', 'enc.layer.0.b'],
         'enc.layer.1': ['enc.layer.1.w'], 'enc.norm': ['enc.norm.weight'],
         'head': ['head.weight']}
    """
    blocks: dict[str, str] = {}
    for name in names:
        block = _block_of(name)
        if block is not None:
            blocks[name] = block
    # every proper prefix (in dotted components) of a block: these hold blocks
    holders = set()
    for block in set(blocks.values()):
        parts = block.split(".")
        holders.update(".".join(parts[:j]) for j in range(1, len(parts)))
    groups: dict[str, list[str]] = {}
    for name in names:
        key = blocks.get(name)
        if key is None:
            parts = name.split(".")
            key = name
            for j in range(1, len(parts)):
                prefix = ".".join(parts[:j])
                if prefix not in holders:
                    key = prefix
                    break
        groups.setdefault(key, []).append(name)
    return groups


def prefix_groups(names: Sequence[str], prefixes: Sequence[str]) -> dict[str, list[str]]:
    """Group tensor names by the longest matching module-name prefix (on dotted boundaries).

    Tensors matching no prefix form the group ``(rest)``. A prefix matching no tensor is refused
    (it is almost always a typo).

    Example:
        >>> prefix_groups(["a.0.w", "a.1.w", "b.w", "c"], ["a", "a.1"])
        {'a': ['a.0.w'], 'a.1': ['a.1.w'], '(rest)': ['b.w', 'c']}
    """
    cleaned = [p.strip().rstrip(".") for p in prefixes if p.strip().rstrip(".")]
    if not cleaned:
        raise RecipeError("recipe 'learned': --groups is empty")
    groups: dict[str, list[str]] = {p: [] for p in cleaned}
    rest: list[str] = []
    for name in names:
        matches = [p for p in cleaned if name == p or name.startswith(p + ".")]
        if matches:
            groups[max(matches, key=len)].append(name)
        else:
            rest.append(name)
    unused = [p for p, members in groups.items() if not members]
    if unused:
        raise RecipeError(
            f"recipe 'learned': group prefixes match no tensor: {', '.join(unused)} "
            f"(tensor names look like {', '.join(list(names)[:3])})"
        )
    if rest:
        groups[REST] = rest
    return groups


def make_groups(
    names: Sequence[str], by_layer: bool, prefixes: Sequence[str] = ()
) -> dict[str, list[str]]:
    """The groups a learned soup fits: one group ``all`` unless ``by_layer``.

    Args:
        names: tensor names, in checkpoint order.
        by_layer: one set of weights per layer group instead of one overall.
        prefixes: module-name prefixes (empty: :func:`auto_groups`; ``["tensor"]``: one group
            per tensor).

    Example:
        >>> list(make_groups(["a.w", "b.w"], by_layer=False))
        ['all']
        >>> list(make_groups(["a.w", "b.w"], by_layer=True, prefixes=["tensor"]))
        ['a.w', 'b.w']
    """
    if not by_layer:
        if prefixes:
            raise RecipeError("recipe 'learned': --groups only applies with --by-layer")
        return {"all": list(names)}
    if list(prefixes) == [PER_TENSOR]:
        return {name: [name] for name in names}
    if prefixes:
        return prefix_groups(names, prefixes)
    return auto_groups(names)


def _block_of(name: str) -> str | None:
    parts = name.split(".")
    for j, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[: j + 1])
    return None
