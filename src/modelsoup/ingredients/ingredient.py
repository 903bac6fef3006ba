"""One checkpoint: its name, files, tensor metadata, lazily read tensors, digest and metadata."""

from __future__ import annotations

import json
import mmap
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelsoup.errors import IngredientError
from modelsoup.ingredients.digest import combine_digests, file_digest
from modelsoup.ingredients.safetensors_format import read_layout
from modelsoup.ingredients.tensor_info import TensorInfo

if TYPE_CHECKING:
    import torch

SAFETENSORS = "safetensors"
SHARDED = "safetensors-sharded"
PICKLE = "pytorch"
PICKLE_SHARDED = "pytorch-sharded"
PICKLE_FORMATS = (PICKLE, PICKLE_SHARDED)


@dataclass(eq=False)
class Ingredient:
    """A checkpoint whose tensors are read one at a time, on demand.

    Attributes:
        name: short unique name (file or directory stem).
        source: the path the user gave (file, index file or model directory).
        format: ``"safetensors"``, ``"safetensors-sharded"``, ``"pytorch"`` or
            ``"pytorch-sharded"`` (``pytorch_model.bin.index.json``).
        files: the weight files, in order.
        shard_of: for sharded sets, tensor name -> file.
        hf_dir: the Hugging Face model directory it came from, if any.
        metadata: hyperparameters, scores etc. from the sidecar JSON (``<stem>.json``).

    Example:
        >>> ing = load_ingredient(Path("ft0.safetensors"))  # doctest: +SKIP
        >>> ing.tensor_infos["fc.weight"].shape, ing.get("fc.weight").sum()  # doctest: +SKIP
    """

    name: str
    source: Path
    format: str
    files: list[Path]
    shard_of: dict[str, Path] = field(default_factory=dict)
    hf_dir: Path | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    _infos: dict[str, TensorInfo] | None = field(default=None, repr=False)
    _offsets: dict[str, int] = field(default_factory=dict, repr=False)
    _pickle: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    _pickle_file: Path | None = field(default=None, repr=False)
    _digest: str | None = field(default=None, repr=False)

    @property
    def tensor_infos(self) -> Mapping[str, TensorInfo]:
        """Names, shapes and dtypes of every tensor, read from headers only where possible."""
        if self._infos is None:
            self._infos = self._read_infos()
        return self._infos

    @property
    def num_parameters(self) -> int:
        return sum(i.numel for i in self.tensor_infos.values())

    @property
    def nbytes(self) -> int:
        return sum(i.nbytes for i in self.tensor_infos.values())

    @property
    def digest(self) -> str:
        """sha256 of the weight files (cached on disk by path, size and mtime)."""
        if self._digest is None:
            self._digest = combine_digests([(p.name, file_digest(p)) for p in self.files])
        return self._digest

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor (memory-mapped for safetensors; never copies the whole file).

        A safetensors tensor is a copy-on-write mapping of its bytes: reading costs no copy,
        writing to it never reaches the file, and the mapping (with its resident pages) goes
        away with the tensor, so streaming through many ingredients keeps memory flat.
        """
        if self.format in PICKLE_FORMATS:
            state = self._load_pickle(self.shard_of.get(name, self.files[0]))
            if name not in state:
                raise IngredientError(f"{self.source}: no tensor named {name!r}")
            return state[name]
        info = self.tensor_infos.get(name)
        if info is None:
            raise IngredientError(f"{self.source}: no tensor named {name!r}")
        return _map_tensor(self.shard_of.get(name, self.files[0]), self._offsets[name], info)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor, by name (loads the whole checkpoint: use :meth:`get` to stream)."""
        return {name: self.get(name) for name in self.tensor_infos}

    def release(self) -> None:
        """Drop cached tensors (safetensors tensors hold no handles beyond their own lifetime)."""
        self._pickle = self._pickle_file = None

    def _read_infos(self) -> dict[str, TensorInfo]:
        infos: dict[str, TensorInfo] = {}
        for path in self.files:
            file_infos = self._file_infos(path)
            for name, info in file_infos.items():
                if name in infos:
                    raise IngredientError(
                        f"{path}: tensor {name!r} also appears in another shard of {self.source}"
                    )
                if self.shard_of and name not in self.shard_of:
                    raise IngredientError(
                        f"{path}: holds tensor {name!r}, which the index {self.source} does not list"
                    )
                if self.shard_of and self.shard_of[name] != path:
                    raise IngredientError(
                        f"{self.source}: index places tensor {name!r} in "
                        f"{self.shard_of[name].name}, but it is in {path}"
                    )
                infos[name] = info
        missing = set(self.shard_of) - set(infos)
        if missing:
            raise IngredientError(
                f"{self.source}: index names tensors absent from the shards: "
                f"{', '.join(sorted(missing)[:5])}"
            )
        if not infos:
            raise IngredientError(f"{self.source}: holds no tensors")
        return infos

    def _file_infos(self, path: Path) -> dict[str, TensorInfo]:
        """The tensors of one weight file: from the header (safetensors) or by loading it."""
        if self.format in PICKLE_FORMATS:
            from modelsoup.ingredients.dtypes import from_torch

            return {
                k: TensorInfo(k, tuple(v.shape), from_torch(v.dtype))
                for k, v in self._load_pickle(path).items()
            }
        file_infos, _, _, offsets = read_layout(path)
        self._offsets.update(offsets)
        return file_infos

    def _load_pickle(self, path: Path) -> dict[str, torch.Tensor]:
        """One pickle file's tensors; only the last file read stays loaded (one shard at a time)."""
        if self._pickle is None or self._pickle_file != path:
            from modelsoup.ingredients.pickle_format import load_state_dict

            self._pickle = None  # free the previous shard before loading the next
            self._pickle = load_state_dict(path)
            self._pickle_file = path
        return self._pickle


def read_sidecar(weights_path: Path) -> dict[str, Any]:
    """Metadata from ``<stem>.json`` beside a weight file, or ``{}``.

    Example:
        >>> read_sidecar(Path("runs/trial_003.safetensors"))  # doctest: +SKIP
        {'hparams': {'lr': 3e-05}, 'heldout_accuracy': 0.81}
    """
    sidecar = weights_path.with_suffix(".json")
    if weights_path.name.endswith(".index.json") or not sidecar.is_file():
        return {}
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, ValueError, RecursionError) as e:  # bad UTF-8/JSON, huge ints, nesting
        raise IngredientError(f"{sidecar}: sidecar metadata is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise IngredientError(f"{sidecar}: sidecar metadata must be a JSON object")
    return data


def compute_digests(ingredients: Sequence[Ingredient], workers: int | None = None) -> list[str]:
    """The digests of many ingredients, hashing their files in parallel threads.

    ``hashlib`` releases the GIL while hashing, so on n cores n files hash at once. Digests are
    stored on the ingredients (and cached on disk), so later ``ing.digest`` calls are free.

    Example:
        >>> compute_digests(load_ingredients(["trials/"]))  # doctest: +SKIP
        ['53aa5117...', ...]
    """
    todo = sorted({p for ing in ingredients if ing._digest is None for p in ing.files})
    if todo:
        workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
        with ThreadPoolExecutor(workers, thread_name_prefix="modelsoup-digest") as pool:
            done = dict(zip(todo, pool.map(_file_digest, todo)))
        for ing in ingredients:
            if ing._digest is None:
                ing._digest = combine_digests([(p.name, done[p]) for p in ing.files])
    return [ing.digest for ing in ingredients]


def prefetch_digests(ingredients: Sequence[Ingredient]) -> Callable[[], list[str]]:
    """Start :func:`compute_digests` in a background thread; return a function that waits.

    Hashing needs neither torch nor the GIL, so it overlaps with importing torch and mixing.
    A daemon thread: an early exit (an error elsewhere) does not wait for it.

    Example:
        >>> wait = prefetch_digests(ingredients)  # doctest: +SKIP
        >>> digests = wait()  # doctest: +SKIP
    """
    done = threading.Event()
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["digests"] = compute_digests(ingredients)
        except BaseException as e:  # re-raised by wait()
            result["error"] = e
        finally:
            done.set()

    threading.Thread(target=work, name="modelsoup-digests", daemon=True).start()

    def wait() -> list[str]:
        done.wait()
        if "error" in result:
            raise result["error"]
        return result["digests"]

    return wait


def _file_digest(path: Path) -> str:
    try:
        return file_digest(path)
    except OSError as e:
        raise IngredientError(f"{path}: cannot read ({e.strerror or e})") from None


def _map_tensor(path: Path, offset: int, info: TensorInfo) -> torch.Tensor:
    """One tensor backed by a private copy-on-write mapping of its bytes in ``path``."""
    import torch

    from modelsoup.ingredients.dtypes import to_torch

    dtype = to_torch(info.dtype)
    if info.nbytes == 0:
        return torch.empty(info.shape, dtype=dtype)
    base = offset - offset % mmap.ALLOCATIONGRANULARITY
    try:
        with path.open("rb") as f:
            view = mmap.mmap(
                f.fileno(), offset + info.nbytes - base, access=mmap.ACCESS_COPY, offset=base
            )
    except (OSError, ValueError) as e:  # e.g. the file shrank since its header was read
        raise IngredientError(f"{path}: cannot read tensor {info.name!r} ({e})") from None
    tensor = torch.frombuffer(view, dtype=dtype, count=info.numel, offset=offset - base)
    tensor = tensor.view(info.shape)
    if (offset - base) % tensor.element_size():
        tensor = tensor.clone()  # a misaligned tensor (legal in safetensors): an aligned copy
    return tensor
