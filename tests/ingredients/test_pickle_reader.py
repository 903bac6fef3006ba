"""PyTorch pickles: weights_only loading, nested state dicts, prefixes, tied tensors, refusals."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from factories import toy_state_dicts
from safetensors.torch import load_file

from modelsoup.errors import IngredientError, UnsafeCheckpointError
from modelsoup.ingredients import load_ingredient, load_ingredients
from modelsoup.ingredients.pickle_format import load_state_dict
from modelsoup.recipes import cook


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_top_level_state_dict(suffix: str, tmp_path: Path) -> None:
    sd = toy_state_dicts(1)[0]
    torch.save(sd, tmp_path / f"ckpt{suffix}")
    assert _equal(load_state_dict(tmp_path / f"ckpt{suffix}"), sd)


@pytest.mark.parametrize("key", ["state_dict", "model", "state_dict_ema", "model_ema"])
def test_nested_state_dict(key: str, tmp_path: Path) -> None:
    sd = toy_state_dicts(1)[0]
    torch.save({key: sd, "epoch": 7, "optimizer": {"lr": 0.1}, "arch": "toy"}, tmp_path / "c.pt")
    assert _equal(load_state_dict(tmp_path / "c.pt"), sd)


def test_state_dict_key_wins_over_ema(tmp_path: Path) -> None:
    sd, ema = toy_state_dicts(2)
    torch.save({"model_ema": ema, "state_dict": sd}, tmp_path / "c.pt")
    assert _equal(load_state_dict(tmp_path / "c.pt"), sd)


@pytest.mark.parametrize(
    "prefix", ["module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module."]
)
def test_prefixes_are_stripped(prefix: str, tmp_path: Path) -> None:
    sd = toy_state_dicts(1)[0]
    torch.save({"state_dict": {prefix + k: v for k, v in sd.items()}}, tmp_path / "c.pt")
    assert _equal(load_state_dict(tmp_path / "c.pt"), sd)


def test_only_leading_prefixes_are_stripped(tmp_path: Path) -> None:
    torch.save({"encoder.module.weight": torch.ones(2)}, tmp_path / "c.pt")
    assert list(load_state_dict(tmp_path / "c.pt")) == ["encoder.module.weight"]


def test_legacy_non_zip_format(tmp_path: Path) -> None:
    sd = toy_state_dicts(1)[0]
    torch.save(sd, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    assert _equal(load_state_dict(tmp_path / "old.pt"), sd)


def test_parameters_become_plain_tensors(tmp_path: Path) -> None:
    w = torch.nn.Parameter(torch.randn(3, 2))
    torch.save({"w": w}, tmp_path / "c.pt")
    got = load_state_dict(tmp_path / "c.pt")["w"]
    assert type(got) is torch.Tensor and torch.equal(got, w.detach())


def test_all_supported_dtypes(tmp_path: Path) -> None:
    sd = {
        "f64": torch.randn(3, dtype=torch.float64),
        "f32": torch.randn(3),
        "f16": torch.randn(3).half(),
        "bf16": torch.randn(3).bfloat16(),
        "i64": torch.arange(3),
        "i32": torch.arange(3, dtype=torch.int32),
        "i8": torch.arange(3, dtype=torch.int8),
        "u8": torch.arange(3, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(5),
        "empty": torch.zeros(0, 4),
    }
    torch.save(sd, tmp_path / "c.pt")
    ing = load_ingredient(tmp_path / "c.pt")
    assert {n: i.dtype for n, i in ing.tensor_infos.items()} == {
        "f64": "F64",
        "f32": "F32",
        "f16": "F16",
        "bf16": "BF16",
        "i64": "I64",
        "i32": "I32",
        "i8": "I8",
        "u8": "U8",
        "bool": "BOOL",
        "scalar": "I64",
        "empty": "F32",
    }
    assert ing.tensor_infos["scalar"].shape == () and ing.tensor_infos["empty"].shape == (0, 4)
    assert _equal(ing.state_dict(), sd)


def _tied_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """Weights sharing storage, as tied embeddings and views produce."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(6, 4, generator=g)
    big = torch.randn(20, generator=g)
    return {
        "embed.weight": emb,
        "head.weight": emb,  # the same tensor under two names (tied)
        "proj.weight": emb.t(),  # a transposed (non-contiguous) view
        "a.bias": big[:8],  # two slices of one storage
        "b.bias": big[8:],
    }


def test_tied_tensors_are_read(tmp_path: Path) -> None:
    sd = _tied_state_dict(0)
    torch.save(sd, tmp_path / "tied.pt")
    loaded = load_state_dict(tmp_path / "tied.pt")
    assert _equal(loaded, sd)
    assert loaded["proj.weight"].shape == (4, 6)


def test_tied_tensors_are_mixed_and_written_under_every_name(tmp_path: Path) -> None:
    sds = [_tied_state_dict(0), _tied_state_dict(1)]
    for i, sd in enumerate(sds):
        torch.save(sd, tmp_path / f"t{i}.pt")
    soup = cook("uniform", load_ingredients([tmp_path / "t0.pt", tmp_path / "t1.pt"]))
    soup.save(tmp_path / "soup")
    written = load_file(tmp_path / "soup" / "model.safetensors")
    assert set(written) == set(sds[0])
    for name in sds[0]:
        expected = (sds[0][name] + sds[1][name]) / 2
        torch.testing.assert_close(written[name], expected, rtol=0, atol=1e-6)
    assert torch.equal(written["embed.weight"], written["head.weight"])
    assert torch.equal(written["proj.weight"], written["embed.weight"].t())
    # the inputs still hold their own values (the engine never writes into them)
    assert _equal(load_state_dict(tmp_path / "t0.pt"), sds[0])


def test_reduce_payload_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').close()",))

    torch.save({"w": torch.ones(2), "p": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pt: refused.*GLOBAL exec"):
        load_state_dict(tmp_path / "evil.pt")
    assert not marker.exists()
    pickle.loads(pickle.dumps(Payload(), protocol=2))
    assert marker.exists()  # control: a plain unpickler does run it


def test_unsafe_is_an_ingredient_error() -> None:
    assert issubclass(UnsafeCheckpointError, IngredientError)


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ([torch.ones(2)], "no state dict found"),
        ({}, "no state dict found"),
        ({"state_dict": {}}, "not a tensor"),
        ({1: torch.ones(2)}, "key 1 is not a string"),
        ({"w": torch.ones(2), "lr": 0.1}, "entry 'lr' is a float, not a tensor"),
        ({"w": torch.ones(2, dtype=torch.complex64)}, "complex64"),
        ({"w": torch.eye(2).to_sparse()}, "not a dense tensor"),
        ({"module.w": torch.ones(2), "w": torch.ones(2)}, "two entries are named 'w'"),
    ],
)
def test_refusals(obj: object, match: str, tmp_path: Path) -> None:
    torch.save(obj, tmp_path / "c.pt")
    with pytest.raises(IngredientError, match=match):
        load_state_dict(tmp_path / "c.pt")
