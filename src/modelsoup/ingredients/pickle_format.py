"""Load PyTorch ``.pt/.pth/.bin`` checkpoints safely (``weights_only=True``, always).

The state dict may sit at the top level or under ``state_dict``, ``model``, ``state_dict_ema``
or ``model_ema``; ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (torch.compile) prefixes
are stripped. Pickles that hold anything beyond tensors and plain containers are refused:
their code never runs.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path

import torch

from modelsoup.errors import IngredientError, UnsafeCheckpointError
from modelsoup.ingredients.dtypes import from_torch

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
    try:
        empty = path.stat().st_size == 0
    except OSError as e:
        raise IngredientError(f"{path}: cannot read ({e.strerror or e})") from None
    if empty:
        raise IngredientError(f"{path}: empty file (0 bytes)")
    obj = _torch_load(path)
    state = _find_state_dict(path, obj)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise IngredientError(f"{path}: state dict key {_short(key)} is not a string")
        if not isinstance(value, torch.Tensor):
            raise IngredientError(
                f"{path}: entry {_short(key)} is a {type(value).__name__}, not a tensor"
            )
        problem = _unsupported(value)
        if problem:
            raise IngredientError(f"{path}: tensor {_short(key)} is {problem}")
        name = _strip(key)
        if name in out:
            raise IngredientError(
                f"{path}: two entries are named {name!r} once the module./_orig_mod. "
                "prefixes are stripped"
            )
        out[name] = value.detach()  # a plain tensor, also for nn.Parameter (shares storage)
    if not out:
        raise IngredientError(f"{path}: holds no tensors")
    return out


def _unsupported(t: torch.Tensor) -> str | None:
    """Why a loaded tensor cannot be mixed or written to safetensors, or None."""
    if t.layout != torch.strided:
        return f"not a dense tensor (layout {t.layout})"
    if t.is_quantized:
        return f"quantized ({t.dtype})"
    if t.device.type != "cpu":
        return f"on device {t.device}"
    try:
        from_torch(t.dtype)
    except ValueError:
        return f"of dtype {t.dtype}, which safetensors cannot store"
    return None


def _torch_load(path: Path) -> object:
    try:
        mmap = zipfile.is_zipfile(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4"
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"{path}: refused: not a plain weights pickle ({_reason(e)}). Only tensors and plain "
            "containers are loaded (torch.load with weights_only=True); nothing in the file was "
            "run. If you trust this file, convert it once in a trusted environment: "
            "torch.save(model.state_dict(), 'clean.pt') or save it as safetensors."
        ) from None
    except Exception as e:  # hostile bytes make torch.load raise almost anything
        raise IngredientError(
            f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {_reason(e)})"
        ) from None


def _reason(e: BaseException) -> str:
    """The informative line of a (possibly long) torch.load error, without torch's advice."""
    text = str(e)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(boilerplate)]
    reason = (useful or lines or [type(e).__name__])[0]
    return reason.split(" Please use `torch.serialization", 1)[0][:300]


def _short(x: object) -> str:
    text = repr(x)
    return text if len(text) <= 80 else text[:77] + "..."


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
