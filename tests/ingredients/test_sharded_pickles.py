"""Sharded PyTorch checkpoints (``pytorch_model.bin.index.json``), as older Hugging Face
models ship them: read one shard at a time, mixed like any other ingredient."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from factories import toy_state_dicts

import modelsoup
from modelsoup.errors import IngredientError, UnsafeCheckpointError
from modelsoup.ingredients import load_ingredient, load_ingredients
from modelsoup.ingredients.ingredient import PICKLE_SHARDED


def _write_sharded_hf(folder: Path, sd: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    folder.mkdir(parents=True)
    keys = list(sd)
    shards = {
        "pytorch_model-00001-of-00002.bin": keys[:4],
        "pytorch_model-00002-of-00002.bin": keys[4:],
    }
    for file, ks in shards.items():
        torch.save({k: sd[k] for k in ks}, folder / file)
    index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text('{"model_type": "toy"}')
    return shards


def test_hf_directory_with_sharded_bin_reads_every_tensor(tmp_path: Path) -> None:
    sd = toy_state_dicts(1)[0]
    shards = _write_sharded_hf(tmp_path / "old-big", sd)
    ing = load_ingredient(tmp_path / "old-big")
    assert ing.format == PICKLE_SHARDED and ing.name == "old-big"
    assert ing.hf_dir == tmp_path / "old-big"
    assert [f.name for f in ing.files] == sorted(shards)
    assert set(ing.tensor_infos) == set(sd)
    for name, t in sd.items():
        assert ing.tensor_infos[name].shape == tuple(t.shape)
        assert torch.equal(ing.get(name), t), name


def test_only_one_shard_is_held_at_a_time(tmp_path: Path, monkeypatch) -> None:
    sd = toy_state_dicts(1)[0]
    _write_sharded_hf(tmp_path / "m", sd)
    from modelsoup.ingredients import pickle_format

    loads: list[str] = []
    real = pickle_format.load_state_dict

    def spy(path: Path) -> dict[str, torch.Tensor]:
        loads.append(path.name)
        return real(path)

    monkeypatch.setattr(pickle_format, "load_state_dict", spy)
    ing = load_ingredient(tmp_path / "m")
    keys = list(sd)
    ing.get(keys[0])
    ing.get(keys[1])  # same shard: no new load
    ing.get(keys[-1])
    assert loads == ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    assert set(ing._pickle or {}) == set(keys[4:])  # the first shard was dropped


def test_uniform_soup_of_sharded_bin_directories_is_the_mean(tmp_path: Path) -> None:
    sds = toy_state_dicts(3)
    for i, sd in enumerate(sds):
        _write_sharded_hf(tmp_path / "runs" / f"ft{i}", sd)
    ings = load_ingredients([tmp_path / "runs"])
    assert [i.name for i in ings] == ["ft0", "ft1", "ft2"]
    soup = modelsoup.cook("uniform", ings)
    out = tmp_path / "soup"
    soup.save(out)
    saved = load_ingredient(out)
    for name, value in saved.state_dict().items():
        if not value.is_floating_point():  # integer buffers are copied, never averaged
            assert torch.equal(value, sds[0][name])
            continue
        expected = torch.stack([sd[name].double() for sd in sds]).mean(0).to(value.dtype)
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-6)
    assert (out / "config.json").read_text() == '{"model_type": "toy"}'
    assert not (out / "pytorch_model.bin.index.json").exists()


def test_a_folder_lists_the_sharded_set_once(tmp_path: Path) -> None:
    sd = toy_state_dicts(1)[0]
    folder = tmp_path / "ckpts"
    folder.mkdir()
    keys = list(sd)
    shards = {"run-a.1.bin": keys[:4], "run-a.2.bin": keys[4:]}
    for file, ks in shards.items():
        torch.save({k: sd[k] for k in ks}, folder / file)
    weight_map = {k: f for f, ks in shards.items() for k in ks}
    (folder / "run-a.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    torch.save(toy_state_dicts(2)[1], folder / "run-b.pt")
    ings = load_ingredients([folder])
    assert [(i.name, i.format) for i in ings] == [("run-a", PICKLE_SHARDED), ("run-b", "pytorch")]
    assert torch.equal(ings[0].get(keys[-1]), sd[keys[-1]])


def test_bad_sharded_bin_sets_are_refused_by_name(tmp_path: Path) -> None:
    sd = toy_state_dicts(1)[0]
    shards = _write_sharded_hf(tmp_path / "missing", sd)
    (tmp_path / "missing" / sorted(shards)[1]).unlink()
    with pytest.raises(IngredientError, match=r"pytorch_model.bin.index.json: shard .* is missing"):
        load_ingredient(tmp_path / "missing")

    _write_sharded_hf(tmp_path / "short", sd)
    first = tmp_path / "short" / "pytorch_model-00001-of-00002.bin"
    torch.save({k: sd[k] for k in list(sd)[:3]}, first)  # one tensor the index lists is gone
    with pytest.raises(IngredientError, match="index names tensors absent from the shards"):
        _ = load_ingredient(tmp_path / "short").tensor_infos

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    _write_sharded_hf(tmp_path / "evil", sd)
    torch.save({"x": Evil()}, tmp_path / "evil" / "pytorch_model-00002-of-00002.bin")
    with pytest.raises(UnsafeCheckpointError, match="00002-of-00002.bin: refused"):
        _ = load_ingredient(tmp_path / "evil").tensor_infos
