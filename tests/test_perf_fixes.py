"""The performance paths: mapped tensor reads, parallel digests, the background writer, the
one-thread accumulation and the cheap finiteness check (correctness only; never timings)."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from modelsoup.engine import Mixture, mix, mix_state_dict
from modelsoup.errors import IngredientError, NonFiniteError, OutputError
from modelsoup.ingredients import load_ingredient, load_ingredients
from modelsoup.ingredients import writer as writer_module
from modelsoup.ingredients.ingredient import compute_digests, prefetch_digests
from modelsoup.recipes import cook


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(7, 5, generator=g),
        "f16": torch.randn(3, 3, generator=g).half(),
        "bf16": torch.randn(4, generator=g).bfloat16(),
        "f64": torch.randn(2, 2, generator=g).double(),
        "i64": torch.arange(6).reshape(2, 3),
        "flag": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }


def test_get_reads_every_dtype_exactly_and_copy_on_write(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file(_tensors(), path)
    before = path.read_bytes()
    ing = load_ingredient(path)
    expected = load_file(path)
    for name, want in expected.items():
        got = ing.get(name)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert torch.equal(got, want), name
        if got.numel():
            got.fill_(1)  # writes to the private mapping never reach the file
    assert path.read_bytes() == before
    assert torch.equal(ing.get("f32"), expected["f32"])


def test_get_copies_a_misaligned_tensor(tmp_path: Path) -> None:
    """safetensors allows data at any offset; a float32 at an odd offset still reads right."""
    values = torch.tensor([1.5, -2.25, 3.0])
    header = {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}}
    raw = json.dumps(header).encode()
    raw += b" " * (1 - (8 + len(raw)) % 2)  # the data starts at an odd byte
    assert (8 + len(raw)) % 4 != 0
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + values.numpy().tobytes())
    got = load_ingredient(path).get("w")
    assert torch.equal(got, values)
    assert got.data_ptr() % 4 == 0


def test_get_unknown_tensor_and_shrunk_file(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.ones(1000)}, path)
    ing = load_ingredient(path)
    with pytest.raises(IngredientError, match="no tensor named 'nope'"):
        ing.get("nope")
    _ = ing.tensor_infos
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)
    with pytest.raises(IngredientError, match="cannot read tensor 'w'"):
        ing.get("w")


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")
def test_a_read_tensor_unmaps_when_dropped(tmp_path: Path) -> None:
    """Memory stays flat in k because each tensor's mapping dies with the tensor."""
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.ones(1 << 16), "b": torch.zeros(3)}, path)
    ing = load_ingredient(path)

    def mapped() -> int:
        return Path("/proc/self/maps").read_text().count(str(path.resolve()))

    assert mapped() == 0
    t = ing.get("w")
    assert mapped() == 1
    del t
    assert mapped() == 0
    for _ in mix([ing, load_ingredient(path)], Mixture.uniform(2)):
        pass
    assert mapped() == 0


def test_compute_and_prefetch_digests_are_the_files_sha256(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = []
    for i in range(3):
        p = tmp_path / f"m{i}.safetensors"
        save_file({"w": torch.full((100,), float(i))}, p)
        paths.append(p)
    folder = tmp_path / "sharded"
    folder.mkdir()
    save_file({"a": torch.ones(4)}, folder / "s-1.safetensors")
    save_file({"b": torch.zeros(4)}, folder / "s-2.safetensors")
    index = {"weight_map": {"a": "s-1.safetensors", "b": "s-2.safetensors"}}
    (folder / "s.safetensors.index.json").write_text(json.dumps(index))
    ings = load_ingredients([*paths, folder / "s.safetensors.index.json"])
    want = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    shard_lines = b"".join(
        f"{n}\0{hashlib.sha256((folder / n).read_bytes()).hexdigest()}\n".encode()
        for n in ("s-1.safetensors", "s-2.safetensors")
    )
    want.append(hashlib.sha256(shard_lines).hexdigest())
    assert prefetch_digests(ings)() == want
    # a fresh set with a new cache computes the same, in parallel threads
    monkeypatch.setenv("MODELSOUP_CACHE_DIR", str(tmp_path / "other-cache"))
    fresh = load_ingredients([*paths, folder / "s.safetensors.index.json"])
    assert compute_digests(fresh, workers=3) == want
    assert [i.digest for i in fresh] == want


def test_prefetch_digests_reraises_in_the_caller(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.ones(3)}, path)
    ing = load_ingredient(path)
    path.unlink()
    wait = prefetch_digests([ing])
    with pytest.raises(IngredientError, match="m.safetensors: cannot read"):
        wait()


def test_background_writer_syncs_often_and_digests_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = []
    for i in range(2):
        p = tmp_path / f"m{i}.safetensors"
        save_file({f"w{j}": torch.randn(300) for j in range(10)}, p)  # 1200 bytes each
        paths.append(p)
    syncs = []
    real = getattr(os, "fdatasync", os.fsync)
    monkeypatch.setattr(writer_module, "SYNC_EVERY", 1000)
    monkeypatch.setattr(os, "fdatasync" if hasattr(os, "fdatasync") else "fsync",
                        lambda fd: (syncs.append(fd), real(fd))[1])  # fmt: skip
    soup = cook("uniform", load_ingredients(paths))
    digest = soup.save(tmp_path / "out")
    data = (tmp_path / "out" / "model.safetensors").read_bytes()
    assert digest == hashlib.sha256(data).hexdigest()
    assert len(syncs) == 10  # every tensor crosses the 1000-byte mark
    manifest = json.loads((tmp_path / "out" / "soup.json").read_text())
    assert [i["digest"] for i in manifest["ingredients"]] == [
        hashlib.sha256(p.read_bytes()).hexdigest() for p in paths
    ]
    sd = load_file(tmp_path / "out" / "model.safetensors")
    want = (load_file(paths[0])["w7"] + load_file(paths[1])["w7"]) / 2
    torch.testing.assert_close(sd["w7"], want, rtol=0, atol=1e-6)


def test_a_failing_sync_in_the_writer_thread_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "m.safetensors"
    save_file({"w": torch.randn(100)}, p)

    def boom(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    if hasattr(os, "fdatasync"):
        monkeypatch.setattr(os, "fdatasync", boom)
    soup = cook("uniform", load_ingredients([p]))
    with pytest.raises(OutputError, match="No space left on device"):
        soup.save(tmp_path / "out")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.safetensors"]


def test_an_error_while_mixing_stops_the_writer_thread(tmp_path: Path) -> None:
    paths = []
    for i, bad in enumerate((False, True)):
        p = tmp_path / f"m{i}.safetensors"
        w = torch.randn(50)
        if bad:
            w[3] = float("nan")
        save_file({"a": torch.randn(10), "w": w}, p)
        paths.append(p)
    soup = cook("uniform", load_ingredients(paths))
    with pytest.raises(NonFiniteError, match="m1.safetensors"):
        soup.save(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m0.safetensors", "m1.safetensors"]


def test_accumulation_restores_the_thread_count_between_tensors(tmp_path: Path) -> None:
    paths = []
    for i in range(2):
        p = tmp_path / f"m{i}.safetensors"
        save_file({"a": torch.randn(10), "b": torch.randn(10)}, p)
        paths.append(p)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = [torch.get_num_threads() for _ in mix(load_ingredients(paths), Mixture.uniform(2))]
        assert seen == [2, 2]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_finite_soup_whose_sum_overflows_is_not_refused(tmp_path: Path) -> None:
    paths = []
    for i in range(2):
        p = tmp_path / f"m{i}.safetensors"
        save_file({"w": torch.full((4,), 3e38)}, p)  # the elements' sum is inf in float32
        paths.append(p)
    sd = mix_state_dict(load_ingredients(paths), Mixture.uniform(2))
    assert torch.equal(sd["w"], torch.full((4,), 3e38))
    save_file({"w": torch.tensor([3e38, float("inf"), 1.0, 2.0])}, paths[1])
    with pytest.raises(NonFiniteError, match="m1.safetensors"):
        mix_state_dict(load_ingredients(paths), Mixture.uniform(2))


def test_mixed_precision_inputs_accumulate_in_fp32(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    sds = [{"w": torch.randn(64, generator=g).bfloat16()} for _ in range(3)]
    paths = []
    for i, sd in enumerate(sds):
        p = tmp_path / f"m{i}.safetensors"
        save_file(sd, p)
        paths.append(p)
    got = mix_state_dict(load_ingredients(paths), Mixture((0.2, 0.3, 0.5)))["w"]
    want = sum(w * sd["w"].float() for w, sd in zip((0.2, 0.3, 0.5), sds)).bfloat16()
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=2**-7, atol=0)  # one bf16 ulp
