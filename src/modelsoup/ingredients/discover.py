"""Turn user paths (files, sharded indexes, Hugging Face directories, folders, globs) into ingredients."""

from __future__ import annotations

import glob
import json
from collections.abc import Iterable
from pathlib import Path

from modelsoup.errors import IngredientError
from modelsoup.ingredients.ingredient import (
    PICKLE,
    PICKLE_SHARDED,
    SAFETENSORS,
    SHARDED,
    Ingredient,
    read_sidecar,
)

PICKLE_SUFFIXES = (".pt", ".pth", ".bin")
#: Sharded sets: an index (JSON with a ``weight_map``) naming the shard of every tensor.
INDEX_SUFFIXES = {".safetensors.index.json": SHARDED, ".bin.index.json": PICKLE_SHARDED}
HF_WEIGHT_FILES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)


def load_ingredients(paths: Iterable[str | Path]) -> list[Ingredient]:
    """Resolve paths into ingredients, in the order given (folders and globs sorted by name).

    Each path may be a safetensors file, a ``*.safetensors.index.json``, a ``.pt/.pth/.bin``
    file, a ``*.bin.index.json`` (sharded pickles), a Hugging Face model directory, a folder
    holding several of these, or a glob.

    Raises:
        IngredientError: a path is missing, empty, unreadable or of an unknown kind.

    Example:
        >>> ings = load_ingredients(["runs/demo/trials"])  # doctest: +SKIP
        >>> [i.name for i in ings]  # doctest: +SKIP
        ['trial_000', 'trial_001']
    """
    found: list[Ingredient] = []
    for raw in paths:
        text = str(raw)
        path = Path(text)
        if not _exists(path) and glob.has_magic(text):
            matches = sorted(Path(p) for p in glob.glob(text))
            if not matches:
                raise IngredientError(f"{text}: the pattern matches no files")
            for match in matches:
                found.extend(_expand(match))
        else:
            found.extend(_expand(path))
    if not found:
        raise IngredientError("no ingredients given")
    _dedupe_names(found)
    return found


def load_ingredient(path: str | Path) -> Ingredient:
    """One ingredient from a weight file, a sharded index or a Hugging Face directory.

    Example:
        >>> load_ingredient("soups/greedy").format  # doctest: +SKIP
        'safetensors'
    """
    path = Path(path)
    if _is_dir(path):
        weights = _hf_weights(path)
        if weights is None:
            raise IngredientError(f"{path}: no model weights in this directory")
        ing = _from_file(weights)
        ing.hf_dir, ing.source, ing.name = path, path, path.name
        sidecar = path / "modelsoup.json"
        if not ing.metadata and sidecar.is_file():
            ing.metadata = read_sidecar(sidecar.with_suffix(".safetensors"))
        return ing
    return _from_file(path)


def _exists(path: Path) -> bool:
    try:
        path.stat()
        return True
    except (OSError, RuntimeError):
        return False


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, RuntimeError):
        return False


def _expand(path: Path) -> list[Ingredient]:
    if not _exists(path):
        if path.is_symlink():
            raise IngredientError(f"{path}: broken symlink or symlink loop")
        raise IngredientError(f"{path}: no such file or directory")
    if not _is_dir(path):
        return [_from_file(path)]
    if _hf_weights(path) is not None:
        return [load_ingredient(path)]
    return _scan_folder(path)


def _scan_folder(folder: Path) -> list[Ingredient]:
    try:
        children = sorted(folder.iterdir())
    except OSError as e:
        raise IngredientError(f"{folder}: cannot list directory ({e.strerror or e})") from None
    shards: set[Path] = set()
    for child in children:
        if child.name.endswith(tuple(INDEX_SUFFIXES)):
            shards.update(folder / s for s in _index_shards(child).values())
    found: list[Ingredient] = []
    for child in children:
        if child in shards or child.name.startswith("."):
            continue
        if _is_dir(child):
            if _hf_weights(child) is not None:
                found.append(load_ingredient(child))
        elif not _exists(child):
            raise IngredientError(f"{child}: broken symlink or symlink loop")
        elif child.name.endswith((".safetensors", *INDEX_SUFFIXES, *PICKLE_SUFFIXES)):
            found.append(_from_file(child))
    if not found:
        raise IngredientError(
            f"{folder}: empty: no .safetensors, .pt, .pth or .bin files, no sharded index "
            "(*.safetensors.index.json, *.bin.index.json) and no model directories"
        )
    return found


def _hf_weights(folder: Path) -> Path | None:
    for name in HF_WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def _from_file(path: Path) -> Ingredient:
    name = path.name
    try:
        size = path.stat().st_size
    except (OSError, RuntimeError) as e:
        raise IngredientError(f"{path}: cannot read ({e})") from None
    if size == 0:
        raise IngredientError(f"{path}: empty file (0 bytes)")
    for suffix, fmt in INDEX_SUFFIXES.items():
        if name.endswith(suffix):
            shard_of = {t: path.parent / f for t, f in _index_shards(path).items()}
            stem = name[: -len(suffix)]
            sidecar = path.parent / (stem + suffix.removesuffix(".index.json"))
            return Ingredient(
                stem,
                path,
                fmt,
                sorted(set(shard_of.values())),
                shard_of,
                metadata=read_sidecar(sidecar),
            )
    if name.endswith(".safetensors"):
        return Ingredient(path.stem, path, SAFETENSORS, [path], metadata=read_sidecar(path))
    if name.endswith(PICKLE_SUFFIXES):
        return Ingredient(path.stem, path, PICKLE, [path], metadata=read_sidecar(path))
    raise IngredientError(
        f"{path}: unknown checkpoint format (expected .safetensors, .pt, .pth, .bin or a "
        "sharded index, *.safetensors.index.json or *.bin.index.json)"
    )


def _index_shards(index: Path) -> dict[str, str]:
    """Tensor name -> shard file name, refusing shards outside the index's directory."""
    kind = "safetensors" if index.name.endswith(".safetensors.index.json") else "sharded"
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # bad UTF-8 or JSON, huge ints, nesting
        raise IngredientError(f"{index}: not a valid {kind} index ({e})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise IngredientError(
            f"{index}: not a valid {kind} index (needs a JSON object with a 'weight_map')"
        )
    folder = index.parent.resolve()
    checked: set[str] = set()
    for tensor, shard in weight_map.items():
        if isinstance(shard, str) and shard in checked:
            continue
        if (
            not isinstance(shard, str)
            or shard in ("", ".", "..")
            or any(c in shard for c in "/\\\0")
        ):
            raise IngredientError(
                f"{index}: shard {_short(shard)} for tensor {_short(tensor)} is not a file name "
                "in the index's directory"
            )
        target = index.parent / shard
        try:
            inside = target.resolve().parent == folder
            present = inside and target.is_file()
        except OSError as e:
            raise IngredientError(
                f"{index}: shard {_short(shard)} cannot be read ({e.strerror or e})"
            ) from None
        if not inside:
            raise IngredientError(
                f"{index}: shard {_short(shard)} is outside the index's directory"
            )
        if not present:
            raise IngredientError(f"{index}: shard {_short(shard)} is missing")
        checked.add(shard)
    return weight_map


def _dedupe_names(ingredients: list[Ingredient]) -> None:
    seen: dict[str, int] = {}
    for ing in ingredients:
        seen[ing.name] = seen.get(ing.name, 0) + 1
    for ing in ingredients:
        if seen[ing.name] > 1:
            ing.name = f"{ing.source.parent.name}/{ing.name}"
    names = [i.name for i in ingredients]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise IngredientError(f"the same ingredient is given twice: {', '.join(dupes)}")


def _short(x: object) -> str:
    text = repr(x)
    return text if len(text) <= 80 else text[:77] + "..."
