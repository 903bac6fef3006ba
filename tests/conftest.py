"""Shared fixtures: an isolated cache, and tiny real checkpoints written in every format."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from factories import toy_state_dicts  # noqa: F401  (re-exported for old imports)
from safetensors.torch import save_file


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Every test gets its own MODELSOUP_CACHE_DIR, so nothing leaks between tests."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("MODELSOUP_CACHE_DIR", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture
def write_checkpoints(tmp_path: Path) -> Callable[..., list[Path]]:
    """Write state dicts as ``fmt`` (safetensors | pt | sharded | hf) and return their paths."""

    def write(
        state_dicts: list[dict[str, torch.Tensor]],
        fmt: str = "safetensors",
        folder: Path | None = None,
    ) -> list[Path]:
        folder = folder or tmp_path / f"ckpts_{fmt}"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, sd in enumerate(state_dicts):
            name = f"m{i}"
            if fmt == "safetensors":
                p = folder / f"{name}.safetensors"
                save_file(sd, p)
            elif fmt == "pt":
                p = folder / f"{name}.pt"
                torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, p)
            elif fmt == "sharded":
                keys = list(sd)
                half = len(keys) // 2
                shards = {
                    f"{name}-00001-of-00002.safetensors": keys[:half],
                    f"{name}-00002-of-00002.safetensors": keys[half:],
                }
                for file, ks in shards.items():
                    save_file({k: sd[k] for k in ks}, folder / file)
                p = folder / f"{name}.safetensors.index.json"
                import json

                p.write_text(
                    json.dumps(
                        {
                            "metadata": {},
                            "weight_map": {k: f for f, ks in shards.items() for k in ks},
                        }
                    )
                )
            elif fmt == "hf":
                p = folder / name
                p.mkdir()
                save_file(sd, p / "model.safetensors")
                (p / "config.json").write_text('{"model_type": "toy"}')
                (p / "tokenizer.json").write_text("{}")
            else:
                raise ValueError(fmt)
            paths.append(p)
        return paths

    return write
