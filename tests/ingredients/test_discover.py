"""Turning paths into ingredients: every format, folders, globs, HF directories, sidecars."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from factories import toy_state_dicts
from safetensors.torch import save_file

from modelsoup.errors import IngredientError
from modelsoup.ingredients import load_ingredient, load_ingredients
from modelsoup.ingredients.ingredient import PICKLE, SAFETENSORS, SHARDED

FORMATS = {"safetensors": SAFETENSORS, "pt": PICKLE, "sharded": SHARDED, "hf": SAFETENSORS}


def _assert_same(ing, sd: dict[str, torch.Tensor]) -> None:
    assert set(ing.tensor_infos) == set(sd)
    for name, t in sd.items():
        info = ing.tensor_infos[name]
        assert info.shape == tuple(t.shape), name
        got = ing.get(name)
        assert got.dtype == t.dtype, name
        assert torch.equal(got, t), name


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_reads_back_exactly(fmt: str, write_checkpoints) -> None:
    sds = toy_state_dicts(2)
    paths = write_checkpoints(sds, fmt)
    ings = load_ingredients(paths)
    assert [i.name for i in ings] == ["m0", "m1"]
    for ing, sd in zip(ings, sds):
        assert ing.format == FORMATS[fmt]
        _assert_same(ing, sd)
        assert ing.num_parameters == sum(t.numel() for t in sd.values())
        assert ing.nbytes == sum(t.numel() * t.element_size() for t in sd.values())
        assert len(ing.digest) == 64


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_a_folder_of_each_format(fmt: str, write_checkpoints, tmp_path: Path) -> None:
    sds = toy_state_dicts(3)
    write_checkpoints(sds, fmt, folder=tmp_path / "trials")
    ings = load_ingredients([tmp_path / "trials"])
    # shards are not ingredients of their own; HF directories are one ingredient each
    assert [i.name for i in ings] == ["m0", "m1", "m2"]
    for ing, sd in zip(ings, sds):
        _assert_same(ing, sd)


def test_a_folder_mixing_formats_is_sorted_by_name(write_checkpoints, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    sds = toy_state_dicts(4)
    folder.mkdir()
    save_file(sds[0], folder / "c.safetensors")
    torch.save(sds[1], folder / "a.pth")
    torch.save({"model": sds[2]}, folder / "b.bin")
    hf = folder / "d_model"
    hf.mkdir()
    save_file(sds[3], hf / "model.safetensors")
    (folder / "notes.txt").write_text("ignored")
    (folder / ".hidden.safetensors").write_bytes(b"ignored, even though it is not valid")
    (folder / "no_weights").mkdir()
    ings = load_ingredients([folder])
    assert [i.name for i in ings] == ["a", "b", "c", "d_model"]
    for ing, sd in zip(ings, [sds[1], sds[2], sds[0], sds[3]]):
        _assert_same(ing, sd)


def test_glob(write_checkpoints, tmp_path: Path) -> None:
    paths = write_checkpoints(toy_state_dicts(3), "safetensors")
    (paths[0].parent / "other.pt").write_bytes(b"not matched by the glob")
    ings = load_ingredients([str(paths[0].parent / "m*.safetensors")])
    assert [i.source for i in ings] == paths


def test_paths_keep_the_order_given(write_checkpoints) -> None:
    paths = write_checkpoints(toy_state_dicts(3), "safetensors")
    assert [i.name for i in load_ingredients(paths[::-1])] == ["m2", "m1", "m0"]


def test_same_stem_in_two_folders_is_disambiguated(tmp_path: Path) -> None:
    sds = toy_state_dicts(2)
    for i, run in enumerate(["run_a", "run_b"]):
        (tmp_path / run).mkdir()
        save_file(sds[i], tmp_path / run / "final.safetensors")
    ings = load_ingredients([tmp_path / "run_a", tmp_path / "run_b"])
    assert [i.name for i in ings] == ["run_a/final", "run_b/final"]


def test_hf_directory_prefers_safetensors_over_bin(tmp_path: Path) -> None:
    sd_st, sd_bin = toy_state_dicts(2)
    hf = tmp_path / "bert-ft"
    hf.mkdir()
    save_file(sd_st, hf / "model.safetensors")
    torch.save(sd_bin, hf / "pytorch_model.bin")
    (hf / "config.json").write_text("{}")
    ing = load_ingredient(hf)
    assert ing.name == "bert-ft" and ing.hf_dir == hf and ing.source == hf
    assert ing.files == [hf / "model.safetensors"]
    _assert_same(ing, sd_st)


def test_hf_directory_with_only_bin(tmp_path: Path) -> None:
    sd = toy_state_dicts(1)[0]
    hf = tmp_path / "old-model"
    hf.mkdir()
    torch.save(sd, hf / "pytorch_model.bin")
    ing = load_ingredient(hf)
    assert ing.format == PICKLE and ing.hf_dir == hf
    _assert_same(ing, sd)


def test_hf_directory_sharded(tmp_path: Path) -> None:
    sd = toy_state_dicts(1)[0]
    hf = tmp_path / "big-model"
    hf.mkdir()
    keys = list(sd)
    shards = {
        "model-00001-of-00002.safetensors": keys[:4],
        "model-00002-of-00002.safetensors": keys[4:],
    }
    for file, ks in shards.items():
        save_file({k: sd[k] for k in ks}, hf / file)
    index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (hf / "model.safetensors.index.json").write_text(json.dumps(index))
    # a stale single file next to the index is ignored: the index wins
    save_file(toy_state_dicts(2)[1], hf / "model.safetensors")
    ing = load_ingredient(hf)
    assert ing.format == SHARDED and ing.name == "big-model"
    assert [f.name for f in ing.files] == sorted(shards)
    _assert_same(ing, sd)


def test_sharded_reads_only_the_shard_it_needs(tmp_path: Path, monkeypatch) -> None:
    sd = toy_state_dicts(1)[0]
    folder = tmp_path / "sharded"
    folder.mkdir()
    keys = list(sd)
    shards = {"s-1.safetensors": keys[:4], "s-2.safetensors": keys[4:]}
    for file, ks in shards.items():
        save_file({k: sd[k] for k in ks}, folder / file)
    index = {"weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (folder / "s.safetensors.index.json").write_text(json.dumps(index))

    from modelsoup.ingredients import ingredient as ingredient_module

    opened: list[str] = []
    real = ingredient_module._map_tensor

    def spy(path: Path, *args, **kwargs):
        opened.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ingredient_module, "_map_tensor", spy)
    ing = load_ingredient(folder / "s.safetensors.index.json")
    assert set(ing.tensor_infos) == set(sd)  # headers only: no tensor mapped
    assert opened == []
    assert torch.equal(ing.get(keys[-1]), sd[keys[-1]])
    assert opened == ["s-2.safetensors"]


def test_tensor_infos_read_the_header_only(tmp_path: Path, monkeypatch) -> None:
    """Shapes and dtypes come from the JSON header; the weights are not touched."""
    path = tmp_path / "big.safetensors"
    save_file({"w": torch.zeros(1024, 1024), "b": torch.zeros(3, dtype=torch.int64)}, path)
    read_sizes: list[int] = []
    real_open = Path.open

    def spy_open(self, mode="r", *args, **kwargs):
        f = real_open(self, mode, *args, **kwargs)
        if self == path:
            real_read = f.read

            def read(n=-1):
                data = real_read(n)
                read_sizes.append(len(data))
                return data

            f.read = read
        return f

    monkeypatch.setattr(Path, "open", spy_open)
    ing = load_ingredient(path)
    infos = ing.tensor_infos
    assert infos["w"].shape == (1024, 1024) and infos["w"].dtype == "F32"
    assert infos["b"].shape == (3,) and infos["b"].dtype == "I64"
    assert 0 < sum(read_sizes) < 1000  # of a 4 MB file


def test_sidecar_metadata_for_each_kind(write_checkpoints, tmp_path: Path) -> None:
    meta = {"hparams": {"lr": 3e-5, "epochs": 4}, "heldout_accuracy": 0.81}
    st = write_checkpoints(toy_state_dicts(1), "safetensors")[0]
    (st.parent / "m0.json").write_text(json.dumps(meta))
    pt = write_checkpoints(toy_state_dicts(1), "pt")[0]
    (pt.parent / "m0.json").write_text(json.dumps({**meta, "kind": "pt"}))
    sharded = write_checkpoints(toy_state_dicts(1), "sharded")[0]
    (sharded.parent / "m0.json").write_text(json.dumps({**meta, "kind": "sharded"}))
    hf = write_checkpoints(toy_state_dicts(1), "hf")[0]
    (hf / "modelsoup.json").write_text(json.dumps({**meta, "kind": "hf"}))
    ings = load_ingredients([st, pt, sharded, hf])
    assert ings[0].metadata == meta
    assert ings[1].metadata["kind"] == "pt"
    assert ings[2].metadata["kind"] == "sharded"
    assert ings[3].metadata["kind"] == "hf"
    # a folder scan does not mistake the sidecars for ingredients
    assert [i.name for i in load_ingredients([st.parent])] == ["m0"]


def test_no_sidecar_means_empty_metadata(write_checkpoints) -> None:
    (ing,) = load_ingredients(write_checkpoints(toy_state_dicts(1), "safetensors"))
    assert ing.metadata == {}


def test_sidecar_must_be_an_object(write_checkpoints) -> None:
    st = write_checkpoints(toy_state_dicts(1), "safetensors")[0]
    (st.parent / "m0.json").write_text("[1, 2]")
    with pytest.raises(IngredientError, match="m0.json: sidecar metadata must be a JSON object"):
        load_ingredients([st])


def test_a_directory_symlinked_into_itself_does_not_hang(write_checkpoints, tmp_path: Path) -> None:
    paths = write_checkpoints(toy_state_dicts(2), "safetensors", folder=tmp_path / "trials")
    (tmp_path / "trials" / "again").symlink_to(tmp_path / "trials")
    assert [i.source for i in load_ingredients([tmp_path / "trials"])] == paths


def test_digest_is_the_file_sha256_and_cached(write_checkpoints, monkeypatch) -> None:
    import hashlib

    from modelsoup.ingredients import digest as digest_mod

    path = write_checkpoints(toy_state_dicts(1), "safetensors")[0]
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_ingredient(path).digest == expected
    # the second ingredient object hits the on-disk cache instead of hashing again
    monkeypatch.setattr(digest_mod, "CHUNK", None)  # hashing would now fail
    assert load_ingredient(path).digest == expected


def test_digest_cache_notices_a_changed_file(write_checkpoints) -> None:
    import hashlib

    path = write_checkpoints(toy_state_dicts(1), "safetensors")[0]
    first = load_ingredient(path).digest
    save_file(toy_state_dicts(2)[1], path)
    second = load_ingredient(path).digest
    assert second != first
    assert second == hashlib.sha256(path.read_bytes()).hexdigest()
