"""Determinism: the same inputs give bitwise identical soups and digests, run after run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from factories import toy_state_dicts
from safetensors.torch import save_file

from modelsoup.cli.main import main
from modelsoup.ingredients import load_ingredients
from modelsoup.recipes import cook


def _weights(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if "safetensors" in p.name}


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "sharded", "hf"])
@pytest.mark.parametrize(
    ("recipe", "options"),
    [("uniform", {}), ("weighted", {"weights": (0.1, 0.7, 0.2)})],
)
@pytest.mark.parametrize("accumulate", [torch.float32, torch.float64])
def test_same_inputs_same_bytes(
    fmt: str, recipe: str, options: dict, accumulate: torch.dtype, write_checkpoints, tmp_path: Path
) -> None:
    paths = write_checkpoints(toy_state_dicts(3), fmt)
    digests = []
    for run in range(2):
        ings = load_ingredients(paths)  # fresh objects: nothing carried over between runs
        soup = cook(recipe, ings, accumulate=accumulate, **options)
        digests.append(soup.save(tmp_path / f"out{run}", max_shard_size=3000))
    assert digests[0] == digests[1]
    assert _weights(tmp_path / "out0") == _weights(tmp_path / "out1")
    manifests = [json.loads((tmp_path / f"out{r}" / "soup.json").read_text()) for r in range(2)]
    for m in manifests:
        m.pop("created")  # the only field that may differ: a timestamp
    assert manifests[0] == manifests[1]


def test_state_dict_is_bitwise_stable(write_checkpoints) -> None:
    paths = write_checkpoints(toy_state_dicts(4), "pt")
    a = cook("uniform", load_ingredients(paths)).state_dict()
    b = cook("uniform", load_ingredients(paths)).state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype
        assert (
            a[name].view(-1).view(torch.uint8).tolist()
            == b[name].view(-1).view(torch.uint8).tolist()
        )


def test_folder_order_does_not_depend_on_creation_order(tmp_path: Path) -> None:
    sds = toy_state_dicts(4)
    names = ["b", "d", "a", "c"]
    for folder, order in [("x", [0, 1, 2, 3]), ("y", [3, 1, 0, 2])]:
        (tmp_path / folder).mkdir()
        for i in order:
            save_file(sds[i], tmp_path / folder / f"{names[i]}.safetensors")
    x = cook("uniform", load_ingredients([tmp_path / "x"])).save(tmp_path / "sx")
    y = cook("uniform", load_ingredients([tmp_path / "y"])).save(tmp_path / "sy")
    assert x == y
    assert _weights(tmp_path / "sx") == _weights(tmp_path / "sy")


def test_cold_and_warm_digest_cache_agree(write_checkpoints, tmp_path: Path, monkeypatch) -> None:
    paths = write_checkpoints(toy_state_dicts(2), "sharded")
    cold = [i.digest for i in load_ingredients(paths)]
    warm = [i.digest for i in load_ingredients(paths)]
    monkeypatch.setenv("MODELSOUP_CACHE_DIR", str(tmp_path / "another_cache"))
    fresh = [i.digest for i in load_ingredients(paths)]
    assert cold == warm == fresh


CHILD = """
import sys, torch
torch.set_num_threads(1)
from modelsoup.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_another_process_with_other_threads_and_hash_seed_gives_the_same_soup(
    write_checkpoints, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Big enough tensors that torch may split the elementwise work across threads.
    sds = [
        {"w": torch.randn(512, 512, generator=torch.Generator().manual_seed(i))} for i in range(3)
    ]
    paths = [str(p) for p in write_checkpoints(sds, "safetensors")]
    args = ["cook", "weighted", *paths, "--weights", "0.3,0.3,0.4", "--accumulate", "fp32"]
    assert main(["-q", *args, "-o", str(tmp_path / "here")]) == 0
    here = capsys.readouterr().out
    env = {
        **os.environ,
        "PYTHONHASHSEED": "12345",
        "OMP_NUM_THREADS": "1",
        "MODELSOUP_CACHE_DIR": str(tmp_path / "child_cache"),
    }
    child = subprocess.run(
        [sys.executable, "-c", CHILD, "-q", *args, "-o", str(tmp_path / "there")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    digest_here = [line for line in here.splitlines() if line.startswith("sha256 ")]
    digest_there = [line for line in child.stdout.splitlines() if line.startswith("sha256 ")]
    assert digest_here == digest_there and len(digest_here) == 1
    assert _weights(tmp_path / "here") == _weights(tmp_path / "there")
