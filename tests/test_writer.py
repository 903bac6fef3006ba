"""The writer: round trips, shards, HF side files, atomicity, overwrite rules, digests."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from factories import toy_state_dicts
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from modelsoup.cli.main import main
from modelsoup.errors import OutputError
from modelsoup.ingredients import load_ingredient, load_ingredients
from modelsoup.ingredients import writer as writer_mod
from modelsoup.ingredients.writer import parse_size, write_soup
from modelsoup.recipes import cook
from modelsoup.tasks.toy import ToyMLP


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def soup(write_checkpoints):
    return cook("uniform", load_ingredients(write_checkpoints(toy_state_dicts(3), "safetensors")))


def test_round_trip_with_safetensors_and_the_model(soup, tmp_path: Path) -> None:
    digest = soup.save(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "README.md",
        "model.safetensors",
        "soup.json",
    ]
    written = load_file(tmp_path / "out" / "model.safetensors")
    expected = soup.state_dict()
    assert written.keys() == expected.keys()
    for name, t in expected.items():
        assert written[name].dtype == t.dtype and torch.equal(written[name], t), name
    model = ToyMLP()
    model.load_state_dict(written, strict=True)
    with safe_open(str(tmp_path / "out" / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}  # what transformers expects
    assert digest == _sha256(tmp_path / "out" / "model.safetensors")


def test_the_soup_directory_and_files_get_the_usual_permissions(soup, tmp_path: Path) -> None:
    from modelsoup.atomic import DIR_MODE, FILE_MODE

    soup.save(tmp_path / "out")
    assert (tmp_path / "out").stat().st_mode & 0o777 == DIR_MODE  # not mkdtemp's 0o700
    for f in (tmp_path / "out").iterdir():
        assert f.stat().st_mode & 0o777 == FILE_MODE, f.name


def test_the_header_is_8_byte_aligned(soup, tmp_path: Path) -> None:
    soup.save(tmp_path / "out")
    raw = (tmp_path / "out" / "model.safetensors").read_bytes()
    assert int.from_bytes(raw[:8], "little") % 8 == 0


def test_manifest_and_card(soup, tmp_path: Path) -> None:
    digest = soup.save(tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "soup.json").read_text())
    from modelsoup import __version__

    assert manifest["modelsoup_version"] == __version__
    assert manifest["recipe"] == "uniform"
    assert manifest["digest"] == digest
    assert manifest["files"] == ["model.safetensors"]
    assert [i["name"] for i in manifest["ingredients"]] == ["m0", "m1", "m2"]
    assert [i["digest"] for i in manifest["ingredients"]] == [i.digest for i in soup.ingredients]
    assert [i["weight"] for i in manifest["ingredients"]] == pytest.approx([1 / 3] * 3)
    assert manifest["accumulate"] == "float32"
    card = (tmp_path / "out" / "README.md").read_text()
    assert digest in card and "{digest}" not in card
    assert "| m1 |" in card and "2203.05482" in card


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("5GB", 5 * 10**9),
        ("500MB", 5 * 10**8),
        ("1.5MB", 1_500_000),
        ("2GiB", 2 * 2**30),
        ("512kib", 512 * 1024),
        ("123", 123),
        (" 7 kb ", 7000),
        (4096, 4096),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GB", "5XB", "-1MB", "1e9", "five"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(OutputError, match="bad size"):
        parse_size(text)


def test_sharded_output_loads_back_as_an_ingredient(soup, tmp_path: Path) -> None:
    out = tmp_path / "out"
    digest = soup.save(out, max_shard_size=2000)
    shards = sorted(out.glob("model-*.safetensors"))
    n = len(shards)
    assert n > 2
    assert [s.name for s in shards] == [
        f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)
    ]
    assert not (out / "model.safetensors").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    expected = soup.state_dict()
    assert set(index["weight_map"]) == set(expected)
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in expected.values()
    )
    for shard in shards:
        names = [k for k, f in index["weight_map"].items() if f == shard.name]
        data_bytes = sum(expected[k].numel() * expected[k].element_size() for k in names)
        assert data_bytes <= 2000 or len(names) == 1  # one tensor larger than the limit
    back = load_ingredient(out)
    assert back.format == "safetensors-sharded"
    for name, t in expected.items():
        assert torch.equal(back.get(name), t), name
    # the printed digest is the digest of the output as an ingredient, as documented
    assert digest == back.digest
    lines = "".join(f"{s.name}\0{_sha256(s)}\n" for s in shards)
    assert digest == hashlib.sha256(lines.encode()).hexdigest()
    manifest = json.loads((out / "soup.json").read_text())
    assert manifest["files"] == [s.name for s in shards] + ["model.safetensors.index.json"]
    assert manifest["sharded"] is True


def test_cli_shard_size_flag_and_printed_digest(
    write_checkpoints, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = write_checkpoints(toy_state_dicts(2), "safetensors")
    out = tmp_path / "out"
    code = main(
        ["-q", "cook", "uniform", *map(str, paths), "-o", str(out), "--max-shard-size", "3KB"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert f"sha256 {load_ingredient(out).digest}" in printed
    assert len(list(out.glob("model-*.safetensors"))) >= 2


def test_single_file_output_digest_is_sha256sum(
    write_checkpoints, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = write_checkpoints(toy_state_dicts(2), "safetensors")
    assert main(["-q", "cook", "uniform", *map(str, paths), "-o", str(tmp_path / "out")]) == 0
    expected = _sha256(tmp_path / "out" / "model.safetensors")
    assert f"sha256 {expected}" in capsys.readouterr().out
    assert load_ingredient(tmp_path / "out").digest == expected


def _hf_inputs(tmp_path: Path) -> list[Path]:
    dirs = []
    for i, sd in enumerate(toy_state_dicts(2)):
        d = tmp_path / f"hf{i}"
        d.mkdir()
        save_file(sd, d / "model.safetensors")
        (d / "config.json").write_text(json.dumps({"model_type": "toy", "from": i}))
        (d / "tokenizer.json").write_text(json.dumps({"tok": i}))
        (d / "tokenizer_config.json").write_text("{}")
        (d / "special_tokens_map.json").write_text("{}")
        (d / "vocab.txt").write_text("[PAD]\n[UNK]\n")
        (d / "generation_config.json").write_text("{}")
        torch.save(sd, d / "pytorch_model.bin")
        torch.save({"lr": 1}, d / "training_args.bin")
        (d / "soup.json").write_text('{"an": "old manifest"}')
        (d / ".cache").write_text("hidden")
        (d / "logs").mkdir()
        (d / "logs" / "events.txt").write_text("a subdirectory")
        dirs.append(d)
    return dirs


def test_hf_side_files_are_copied_but_not_weights(tmp_path: Path) -> None:
    dirs = _hf_inputs(tmp_path)
    out = tmp_path / "soup"
    cook("uniform", load_ingredients(dirs)).save(out)
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "soup.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    ]
    assert json.loads((out / "config.json").read_text())["from"] == 0  # the first ingredient's
    assert json.loads((out / "soup.json").read_text())["recipe"] == "uniform"  # ours, not theirs


def test_transformers_loads_the_soup(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    models = []
    for i in range(2):
        torch.manual_seed(i)
        model = transformers.BertModel(config)
        model.save_pretrained(tmp_path / f"ft{i}")
        models.append(model)
    out = tmp_path / "soup"
    cook("uniform", load_ingredients([tmp_path / "ft0", tmp_path / "ft1"])).save(out)
    loaded = transformers.AutoModel.from_pretrained(out)
    assert type(loaded).__name__ == "BertModel"
    got = loaded.state_dict()
    for name, t in models[0].state_dict().items():
        if t.is_floating_point():
            expected = (t + models[1].state_dict()[name]) / 2
            torch.testing.assert_close(got[name], expected, rtol=1e-6, atol=1e-6)


# --- atomicity ----------------------------------------------------------------------------


def _failing_stream(soup, after: int, exc: BaseException):
    for i, item in enumerate(soup.tensors()):
        if i == after:
            raise exc
        yield item


@pytest.mark.parametrize(
    "exc", [RuntimeError("boom"), KeyboardInterrupt(), OSError(28, "No space left on device")]
)
@pytest.mark.parametrize("shard", [10**9, 2000])
def test_a_failure_mid_write_leaves_nothing(
    soup, exc: BaseException, shard: int, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    out = dest / "parent" / "out"
    infos = soup.ingredients[0].tensor_infos
    expected = OutputError if isinstance(exc, OSError) else type(exc)
    with pytest.raises(expected) as err:
        write_soup(
            out, _failing_stream(soup, 5, exc), infos, manifest={}, card="", max_shard_size=shard
        )
    if isinstance(exc, OSError):
        assert "No space left on device" in str(err.value) and "nothing was written" in str(
            err.value
        )
    assert list(dest.iterdir()) == []  # no output, no .partial, not even the parent


def test_the_manifest_is_written_last_and_renamed_into_place(
    soup, tmp_path: Path, monkeypatch
) -> None:
    events: list[str] = []
    real_write_text, real_replace = writer_mod._write_text, os.replace

    def write_text(path: Path, text: str) -> None:
        events.append(f"write {path.name}")
        real_write_text(path, text)

    def replace(src, dst) -> None:
        events.append(f"replace {Path(src).suffix} -> {Path(dst).name}")
        real_replace(src, dst)

    monkeypatch.setattr(writer_mod, "_write_text", write_text)
    monkeypatch.setattr(writer_mod.os, "replace", replace)
    soup.save(tmp_path / "out")
    assert events[-2:] == ["write soup.json", "replace .partial -> out"]


def test_existing_output_is_refused_then_replaced_with_overwrite(soup, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = soup.save(out)
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(OutputError, match="already exists"):
        soup.save(out)
    assert (out / "model.safetensors").read_bytes() == before
    (out / "extra.txt").write_text("from an older soup")
    assert soup.save(out, overwrite=True) == first
    assert not (out / "extra.txt").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["ckpts_safetensors", "out"]  # no debris


def test_failed_final_rename_keeps_the_old_output(soup, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    soup.save(out)
    before = (out / "model.safetensors").read_bytes()
    real_replace = os.replace

    def replace(src, dst) -> None:
        if str(src).endswith(".partial"):
            raise OSError(5, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(writer_mod.os, "replace", replace)
    with pytest.raises(OutputError, match="Input/output error"):
        soup.save(out, overwrite=True)
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["ckpts_safetensors", "out"]


def test_overwrite_never_touches_an_input(soup, tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="refusing to write over the input"):
        soup.save(soup.ingredients[0].source, overwrite=True)
    with pytest.raises(OutputError, match="refusing to write over the input"):
        soup.save(soup.ingredients[0].source.parent, overwrite=True)


def test_overwrite_replaces_an_output_that_is_a_file(soup, tmp_path: Path) -> None:
    out = tmp_path / "dest" / "soup"
    out.parent.mkdir()
    out.write_text("a file where the soup should go")
    with pytest.raises(OutputError, match="already exists"):
        soup.save(out)
    soup.save(out, overwrite=True)
    assert (out / "model.safetensors").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["soup"]  # no stray .old file
