"""Load PyTorch ``.pt/.pth/.bin`` checkpoints safely (``weights_only=True``, always).

The state dict may sit at the top level or under ``state_dict``, ``model``, ``state_dict_ema``
or ``model_ema``; ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (torch.compile) prefixes
are stripped. Pickles that hold anything beyond tensors and plain containers are refused:
their code never runs.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from modelsoup.errors import IngredientError, UnsafeCheckpointError

STATE_DICT_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")
STRIP_PREFIXES = ("module.", "_orig_mod.")


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a pickle checkpoint's tensors with ``weights_only=True`` (memory-mapped when possible).

    Raises:
        UnsafeCheckpointError: the pickle references code or non-tensor objects.
        IngredientError: the file is corrupt, or holds no tensors.

    Example:
        >>> sd = load_state_dict(Path("model.pt"))  # doctest: +SKIP
    """
    if path.stat().st_size == 0:
        raise IngredientError(f"{path}: empty file (0 bytes)")
    obj = _torch_load(path)
    state = _find_state_dict(path, obj)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise IngredientError(f"{path}: state dict key {key!r} is not a string")
        if not isinstance(value, torch.Tensor):
            raise IngredientError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor"
            )
        out[_strip(key)] = value
    if not out:
        raise IngredientError(f"{path}: holds no tensors")
    return out


def _torch_load(path: Path) -> object:
    mmap = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"{path}: refused: the pickle holds objects beyond tensors and plain containers, "
            f"and loading it would run code ({_first_line(e)}). If you trust this file, convert it "
            "once in a trusted environment: torch.save(model.state_dict(), 'clean.pt') or save it "
            "as safetensors."
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as e:
        raise IngredientError(
            f"{path}: not a readable PyTorch checkpoint ({_first_line(e)})"
        ) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def _find_state_dict(path: Path, obj: object) -> dict:
    if isinstance(obj, dict):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        for key in STATE_DICT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict) and inner:
                return inner
        if obj:
            return obj
    raise IngredientError(
        f"{path}: no state dict found (expected tensors at the top level or under one of "
        f"{', '.join(STATE_DICT_KEYS)}; found {type(obj).__name__})"
    )


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                changed = True
    return key
