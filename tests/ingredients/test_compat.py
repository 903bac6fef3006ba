"""The compatibility check: every difference, in one error, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from factories import toy_state_dicts
from safetensors.torch import save_file

from modelsoup.errors import IncompatibleIngredientsError
from modelsoup.ingredients import check_compatible, load_ingredients


def _save(sds: list[dict[str, torch.Tensor]], folder: Path) -> list[Path]:
    folder.mkdir(exist_ok=True)
    paths = [folder / f"m{i}.safetensors" for i in range(len(sds))]
    for sd, p in zip(sds, paths):
        save_file(sd, p)
    return paths


def test_compatible_ingredients_pass(tmp_path: Path) -> None:
    check_compatible(load_ingredients(_save(toy_state_dicts(3), tmp_path)))


def test_float_dtypes_may_differ(tmp_path: Path) -> None:
    a, b, c = toy_state_dicts(3)
    b = {k: v.half() if v.is_floating_point() else v for k, v in b.items()}
    c = {k: v.bfloat16() if v.is_floating_point() else v for k, v in c.items()}
    check_compatible(load_ingredients(_save([a, b, c], tmp_path)))


def test_every_difference_is_listed_once(tmp_path: Path) -> None:
    a, b, c = toy_state_dicts(3)
    del b["head.bias"]
    b["extra"] = torch.zeros(1)
    c["embed.weight"] = torch.zeros(2, 2)
    c["norm.num_batches_tracked"] = torch.tensor(1.0)  # integer vs float
    paths = _save([a, b, c], tmp_path)
    with pytest.raises(IncompatibleIngredientsError) as err:
        check_compatible(load_ingredients(paths))
    text = str(err.value)
    assert "4 differences" in text
    assert f"{paths[1]}: tensor 'head.bias' is missing (present in {paths[0]})" in text
    assert f"{paths[1]}: tensor 'extra' is unexpected" in text
    assert f"{paths[2]}: tensor 'embed.weight' has shape [2, 2], {paths[0]} has [32, 16]" in text
    assert (
        f"{paths[2]}: tensor 'norm.num_batches_tracked' has dtype F32, {paths[0]} has I64" in text
    )


def test_integer_width_must_match(tmp_path: Path) -> None:
    a, b = toy_state_dicts(2)
    b["norm.num_batches_tracked"] = b["norm.num_batches_tracked"].int()
    with pytest.raises(IncompatibleIngredientsError, match="has dtype I32.*has I64"):
        check_compatible(load_ingredients(_save([a, b], tmp_path)))


def test_long_lists_are_cut_with_a_count(tmp_path: Path) -> None:
    a = {f"t{i:02d}": torch.zeros(1) for i in range(30)}
    b = {f"u{i:02d}": torch.zeros(1) for i in range(30)}
    with pytest.raises(IncompatibleIngredientsError) as err:
        check_compatible(load_ingredients(_save([a, b], tmp_path)))
    text = str(err.value)
    assert "60 differences" in text and "... and 40 more" in text
