"""The streaming engine: soups equal the hand-computed weighted means, in every format and dtype."""

from __future__ import annotations

import collections
import json
import weakref
from pathlib import Path

import pytest
import torch
from factories import toy_state_dicts
from safetensors.torch import save_file

from modelsoup.engine import Mixture, mix, mix_state_dict
from modelsoup.errors import ModelSoupError, NonFiniteError
from modelsoup.ingredients import Ingredient, load_ingredients
from modelsoup.recipes import cook

FP32 = {"rtol": 1e-6, "atol": 1e-6}


def _expected(sds: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """The weighted sum in fp64, by hand; integer tensors from the largest weight (first on ties)."""
    top = max(range(len(weights)), key=lambda i: (weights[i], -i))
    out = {}
    for name, ref in sds[0].items():
        if ref.is_floating_point():
            out[name] = sum(w * sd[name].double() for w, sd in zip(weights, sds))
        else:
            out[name] = sds[top][name]
    return out


def _assert_soup(soup: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], dtypes) -> None:
    assert set(soup) == set(expected)
    for name, t in soup.items():
        assert t.dtype == dtypes[name], name
        if t.is_floating_point():
            torch.testing.assert_close(t.double(), expected[name].double(), **FP32)
        else:
            assert torch.equal(t, expected[name]), name  # exact, never averaged


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "sharded", "hf"])
def test_uniform_soup_is_the_mean_for_every_format(fmt: str, write_checkpoints) -> None:
    sds = toy_state_dicts(3)
    soup = cook("uniform", load_ingredients(write_checkpoints(sds, fmt)))
    assert soup.mixture.weights == pytest.approx((1 / 3,) * 3)
    state = soup.state_dict()
    _assert_soup(state, _expected(sds, [1 / 3] * 3), {k: v.dtype for k, v in sds[0].items()})
    assert state["norm.num_batches_tracked"].item() == 10  # the first ingredient's, not 20


def test_uniform_soup_over_mixed_formats(write_checkpoints, tmp_path: Path) -> None:
    sds = toy_state_dicts(4, seed=1)
    paths = [
        write_checkpoints([sd], fmt, folder=tmp_path / fmt)[0]
        for sd, fmt in zip(sds, ["safetensors", "pt", "sharded", "hf"])
    ]
    soup = cook("uniform", load_ingredients(paths)).state_dict()
    _assert_soup(soup, _expected(sds, [0.25] * 4), {k: v.dtype for k, v in sds[0].items()})


def test_the_mean_by_hand_on_tiny_numbers(tmp_path: Path) -> None:
    """A case small enough to check on paper."""
    for i, vals in enumerate([[1.0, 2.0], [3.0, 6.0], [5.0, 1.0]]):
        save_file({"w": torch.tensor(vals)}, tmp_path / f"m{i}.safetensors")
    ings = load_ingredients([tmp_path])
    assert cook("uniform", ings).state_dict()["w"].tolist() == [3.0, 3.0]
    weighted = cook("weighted", ings, weights=(2, 1, 1)).state_dict()["w"]
    assert weighted.tolist() == [2.5, 2.75]  # (2*1+3+5)/4, (2*2+6+1)/4


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "sharded", "hf"])
def test_weighted_soup_normalizes_the_weights(fmt: str, write_checkpoints) -> None:
    sds = toy_state_dicts(3)
    soup = cook("weighted", load_ingredients(write_checkpoints(sds, fmt)), weights=(1, 2, 3))
    assert soup.mixture.weights == pytest.approx((1 / 6, 2 / 6, 3 / 6))
    state = soup.state_dict()
    _assert_soup(
        state, _expected(sds, [1 / 6, 2 / 6, 3 / 6]), {k: v.dtype for k, v in sds[0].items()}
    )
    assert state["norm.num_batches_tracked"].item() == 30  # from the heaviest ingredient


def test_weighted_soup_without_normalizing(write_checkpoints) -> None:
    sds = toy_state_dicts(3)
    ings = load_ingredients(write_checkpoints(sds, "safetensors"))
    soup = cook("weighted", ings, weights=(1.0, 1.0, -1.0), normalize=False)
    assert soup.mixture.weights == (1.0, 1.0, -1.0)
    _assert_soup(
        soup.state_dict(), _expected(sds, [1.0, 1.0, -1.0]), {k: v.dtype for k, v in sds[0].items()}
    )


def test_integer_and_bool_buffers_are_exact_and_keep_their_dtype(tmp_path: Path) -> None:
    sds = []
    for i in range(3):
        sds.append(
            {
                "w": torch.full((4,), float(i)),
                "steps": torch.tensor(1000 + i, dtype=torch.int64),
                "ids": torch.arange(5, dtype=torch.int32) * (i + 1),
                "small": torch.tensor([i, 100 + i], dtype=torch.int8),
                "bytes": torch.tensor([250 + i], dtype=torch.uint8),
                "mask": torch.tensor([i % 2 == 0, True]),
            }
        )
        save_file(sds[-1], tmp_path / f"m{i}.safetensors")
    ings = load_ingredients([tmp_path])
    for weights, top in [((1, 1, 1), 0), ((1, 5, 2), 1), ((0, 1, 3), 2)]:
        soup = cook("weighted", ings, weights=weights).state_dict()
        for name in ["steps", "ids", "small", "bytes", "mask"]:
            assert soup[name].dtype == sds[top][name].dtype, name
            assert torch.equal(soup[name], sds[top][name]), (name, weights)
    # an averaged "steps" would be 1001.0; the soup keeps a real step count
    assert cook("uniform", ings).state_dict()["steps"].item() == 1000


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.float32])
def test_dtype_is_preserved(dtype: torch.dtype, tmp_path: Path) -> None:
    sds = [
        {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
        for sd in toy_state_dicts(2)
    ]
    for i, sd in enumerate(sds):
        save_file(sd, tmp_path / f"m{i}.safetensors")
    soup = cook("uniform", load_ingredients([tmp_path])).state_dict()
    for name, t in soup.items():
        assert t.dtype == sds[0][name].dtype, name
    exp = (sds[0]["embed.weight"].double() + sds[1]["embed.weight"].double()) / 2
    torch.testing.assert_close(soup["embed.weight"], exp.to(dtype))


def test_mixed_float_dtypes_take_the_first_ingredients_dtype(tmp_path: Path) -> None:
    a, b = toy_state_dicts(2)
    save_file(
        {k: v.half() if v.is_floating_point() else v for k, v in a.items()},
        tmp_path / "a.safetensors",
    )
    save_file(b, tmp_path / "b.safetensors")
    soup = cook("uniform", load_ingredients([tmp_path])).state_dict()
    assert soup["embed.weight"].dtype == torch.float16
    exp = (a["embed.weight"].half().double() + b["embed.weight"].double()) / 2
    torch.testing.assert_close(soup["embed.weight"], exp.half())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_accumulated_in_fp32(dtype: torch.dtype, tmp_path: Path) -> None:
    """16 fp16/bf16 ingredients: the soup is the fp64 mean rounded once; naive fp16 sums drift."""
    k, n = 16, 10_000
    g = torch.Generator().manual_seed(0)
    xs = [(1 + 0.01 * torch.randn(n, generator=g)).to(dtype) for _ in range(k)]
    for i, x in enumerate(xs):
        save_file({"w": x}, tmp_path / f"m{i:02d}.safetensors")
    soup = cook("uniform", load_ingredients([tmp_path])).state_dict()["w"]
    reference = torch.stack([x.double() for x in xs]).mean(0).to(dtype)
    naive = xs[0] * (1 / k)
    for x in xs[1:]:
        naive = naive + x * (1 / k)  # accumulating in the ingredients' own precision
    assert soup.dtype == dtype
    assert (soup != reference).sum().item() <= n // 1000  # the fp64 mean, rounded once
    assert (naive != reference).sum().item() > n // 5  # what fp32 accumulation avoids


def test_fp64_accumulation_on_request(tmp_path: Path) -> None:
    k, n = 64, 10_000
    g = torch.Generator().manual_seed(1)
    xs = [1e4 + torch.randn(n, generator=g) for _ in range(k)]
    for i, x in enumerate(xs):
        save_file({"w": x}, tmp_path / f"m{i:02d}.safetensors")
    ings = load_ingredients([tmp_path])
    reference = torch.stack([x.double() for x in xs]).mean(0).float()
    fp32 = cook("uniform", ings).state_dict()["w"]
    fp64 = cook("uniform", ings, accumulate=torch.float64).state_dict()["w"]
    assert fp64.dtype == fp32.dtype == torch.float32
    assert (fp64 != reference).sum().item() <= n // 1000
    assert (fp32 != reference).sum().item() > n // 10
    torch.testing.assert_close(fp32, reference, rtol=1e-6, atol=0)  # still within fp32 tolerance


def test_fp64_ingredients_are_never_accumulated_below_fp64(tmp_path: Path) -> None:
    xs = [torch.tensor([1.0 + 1e-12 * (i + 1)], dtype=torch.float64) for i in range(4)]
    for i, x in enumerate(xs):
        save_file({"w": x}, tmp_path / f"m{i}.safetensors")
    soup = cook("uniform", load_ingredients([tmp_path])).state_dict()["w"]  # fp32 requested
    assert soup.dtype == torch.float64
    assert soup.item() == pytest.approx(1.0 + 2.5e-12, rel=0, abs=1e-15)


def test_per_tensor_mixture(write_checkpoints) -> None:
    sds = toy_state_dicts(3)
    ings = load_ingredients(write_checkpoints(sds, "safetensors"))
    mixture = Mixture(
        (1 / 3, 1 / 3, 1 / 3),
        {
            "head.weight": (1.0, 0.0, 0.0),
            "block.bias": (0.0, 0.5, 0.5),
            "norm.num_batches_tracked": (0, 0, 1),
        },
    )
    soup = mix_state_dict(ings, mixture)
    assert torch.equal(soup["head.weight"], sds[0]["head.weight"])
    torch.testing.assert_close(
        soup["block.bias"], (sds[1]["block.bias"] + sds[2]["block.bias"]) / 2
    )
    torch.testing.assert_close(
        soup["embed.weight"].double(),
        sum(sd["embed.weight"].double() for sd in sds) / 3,
        **FP32,
    )
    assert soup["norm.num_batches_tracked"].item() == 30


@pytest.mark.parametrize(
    ("mixture", "match"),
    [
        (Mixture((0.5, 0.5)), "2 weights for 3 ingredients"),
        (Mixture((1, 1, 1), {"head.weight": (1.0, 0.0)}), "2 weights for tensor 'head.weight'"),
        (Mixture((1, 1, 1), {"nope": (1.0, 0.0, 0.0)}), "lack: nope"),
    ],
)
def test_bad_mixtures_are_refused(mixture: Mixture, match: str, write_checkpoints) -> None:
    ings = load_ingredients(write_checkpoints(toy_state_dicts(3), "safetensors"))
    with pytest.raises(ModelSoupError, match=match):
        mix_state_dict(ings, mixture)


def test_accumulator_must_be_fp32_or_fp64(write_checkpoints) -> None:
    ings = load_ingredients(write_checkpoints(toy_state_dicts(2), "safetensors"))
    with pytest.raises(ModelSoupError, match="float32 or float64"):
        mix_state_dict(ings, Mixture.uniform(2), accumulate=torch.float16)


def test_zero_weight_ingredients_are_never_read(write_checkpoints, monkeypatch) -> None:
    ings = load_ingredients(write_checkpoints(toy_state_dicts(3), "safetensors"))
    reads: list[str] = []
    real_get = Ingredient.get

    def spy(self: Ingredient, name: str) -> torch.Tensor:
        reads.append(self.name)
        return real_get(self, name)

    monkeypatch.setattr(Ingredient, "get", spy)
    mix_state_dict(ings, Mixture((0.5, 0.0, 0.5)))
    assert "m1" not in reads and {"m0", "m2"} <= set(reads)


@pytest.mark.parametrize("k", [2, 8])
def test_at_most_two_input_tensors_are_alive_at_once(
    k: int, write_checkpoints, monkeypatch
) -> None:
    """Streaming: the engine holds the accumulator and one input tensor, whatever k is."""
    ings = load_ingredients(write_checkpoints(toy_state_dicts(k), "safetensors"))
    alive: list[weakref.ref] = []
    peak = 0
    real_get = Ingredient.get

    def spy(self: Ingredient, name: str) -> torch.Tensor:
        nonlocal peak
        t = real_get(self, name)
        alive.append(weakref.ref(t))
        peak = max(peak, sum(r() is not None for r in alive))
        return t

    monkeypatch.setattr(Ingredient, "get", spy)
    collections.deque(mix(ings, Mixture.uniform(k)), maxlen=0)  # consume, keeping nothing
    assert peak <= 2


def test_nonfinite_is_refused_naming_file_and_tensor(write_checkpoints) -> None:
    sds = toy_state_dicts(2)
    sds[1]["block.bias"][3] = float("inf")
    paths = write_checkpoints(sds, "safetensors")
    ings = load_ingredients(paths)
    with pytest.raises(NonFiniteError, match=rf"{paths[1]}: tensor 'block.bias' holds NaN or Inf"):
        mix_state_dict(ings, Mixture.uniform(2))
    soup = mix_state_dict(ings, Mixture.uniform(2), allow_nonfinite=True)
    assert torch.isinf(soup["block.bias"][3])


def test_overflow_of_the_sum_is_reported(tmp_path: Path) -> None:
    for i in range(2):
        save_file({"w": torch.tensor([3e38])}, tmp_path / f"m{i}.safetensors")
    ings = load_ingredients([tmp_path])
    with pytest.raises(NonFiniteError, match="overflows"):
        mix_state_dict(ings, Mixture((1.0, 1.0)))


def test_soup_manifest_and_used(write_checkpoints) -> None:
    ings = load_ingredients(write_checkpoints(toy_state_dicts(3), "safetensors"))
    soup = cook("weighted", ings, weights=(1, 0, 1))
    assert [i.name for i in soup.used] == ["m0", "m2"]
    manifest = soup.manifest()
    assert manifest["recipe"] == "weighted"
    assert manifest["options"] == {"weights": [1.0, 0.0, 1.0], "normalize": True}
    assert [i["weight"] for i in manifest["ingredients"]] == [0.5, 0.0, 0.5]
    assert [i["digest"] for i in manifest["ingredients"]] == [i.digest for i in ings]
    json.dumps(manifest)  # JSON-able


def test_mixture_key_identifies_the_soup(write_checkpoints) -> None:
    ings = load_ingredients(write_checkpoints(toy_state_dicts(2), "safetensors"))
    a = Mixture((0.5, 0.5)).key(ings)
    assert a == Mixture.uniform(2).key(ings)
    assert a != Mixture((0.4, 0.6)).key(ings)
    assert a != Mixture((0.5, 0.5), {"head.weight": (1.0, 0.0)}).key(ings)
    assert a != Mixture((0.5, 0.5)).key(ings[::-1])
