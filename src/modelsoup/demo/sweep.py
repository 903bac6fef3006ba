"""The paper's first step: fine-tune one pretrained model many times with random hyperparameters.

:func:`run_sweep` works for any :class:`~modelsoup.evaluation.task.Task` with a ``train`` split:

1. **Shared initialization** (``RUN_DIR/init.safetensors`` + ``init.json``): ``task.build_model()``
   (for text tasks: the pretrained encoder) whose classification head is then fitted by a
   *linear probe* on frozen features of the training split, the L2 strength chosen on the
   held-out split. This is the text analogue of the paper's LP initialization: every run starts
   from the same, already sensible, model, so the runs stay in one basin.
2. **Trials** (``RUN_DIR/trials/trial_XXX.safetensors`` + ``trial_XXX.json``): each run starts
   from the init with hyperparameters drawn at random from :class:`SweepOptions` (learning rate
   log-uniform, weight decay log-uniform, epochs uniform, label smoothing (zero for half the
   runs), augmentation: none, input/token dropout or mixup, and a data-order seed). AdamW over
   every trainable parameter, linear warm-up then linear decay to zero, gradient clipping.

Trial ``i``'s hyperparameters depend only on ``(seed, i)`` and it seeds torch from them, so a
rerun makes bitwise the same trials, and ``--trials`` can grow a finished sweep. Every file is
written to a temporary name and renamed into place (the sidecar first, the weights last), so a
killed sweep never leaves a trial that looks finished; a rerun skips finished trials, retrains
the others (bitwise the same) and removes the temporary files a killed run left.

Under ``torchrun`` (``run_dir`` on a file system every rank sees) rank 0 writes ``sweep.json``
and the init, the unfinished trials are dealt round-robin to the ranks, each rank writes the
trials it trained, and every rank returns once all are on disk (see docs/distributed.md).

The model-specific parts stay generic: the head is the last ``nn.Linear`` whose output size is
the number of classes (or ``head=``); mixup mixes the output of ``model.get_input_embeddings()``
when the model has one (token models) and the inputs themselves when they are float tensors;
token dropout clears random positions of the ``attention_mask`` (dict batches) or zeroes input
features (tensor batches). ``freeze`` takes regular expressions of parameter names to keep fixed
(e.g. ``word_embeddings`` skips the largest, slowest-to-update matrix of a small BERT).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import nn
from torch.nn import functional as F

from modelsoup import distributed
from modelsoup.atomic import atomic_write
from modelsoup.errors import ModelSoupError, RunDirError, TaskError
from modelsoup.evaluation.task import Task
from modelsoup.journal import kill_point, partial_prefix, remove_stale_partials

logger = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"
INIT_NAME = "init"
TRIALS_DIR = "trials"
AUGMENTATIONS = ("none", "token_dropout", "mixup")
LOG_EVERY = 10
FORMAT_VERSION = 1


class SweepError(ModelSoupError):
    """A sweep cannot run: a bad option, a task without training data, a diverged run."""


class SweepOptions(BaseModel):
    """The sweep's settings and the documented ranges its hyperparameters are drawn from.

    The defaults are the demo's (MiniLM on review snippets, batch 32): in a pilot, learning
    rates below about 3e-5 with fewer than 200 steps left runs at the majority class, and
    such runs ruin a uniform soup, so the range starts at 3e-5.

    Example:
        >>> SweepOptions(trials=4, lr=(1e-4, 1e-3)).lr
        (0.0001, 0.001)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    trials: int = Field(8, ge=0, description="Number of fine-tuning runs.")
    seed: int = Field(0, description="Seed of the init's head, every draw and every run.")
    batch_size: int = Field(32, ge=1, description="Training batch size.")
    lr: tuple[float, ...] = Field((3e-5, 2.5e-4), description="Learning-rate range (log-uniform).")
    weight_decay: tuple[float, ...] = Field(
        (1e-4, 0.1), description="AdamW weight-decay range (log-uniform; matrices only)."
    )
    epochs: tuple[float, ...] = Field(
        (1.0, 2.0), description="Epochs range (uniform; fractions of an epoch allowed)."
    )
    label_smoothing: float = Field(
        0.1, ge=0, lt=1, description="Largest label smoothing (zero for half the runs)."
    )
    token_dropout: tuple[float, ...] = Field(
        (0.05, 0.15), description="Token/input dropout probability range (when drawn)."
    )
    mixup_alpha: tuple[float, ...] = Field(
        (0.1, 0.4), description="Mixup Beta(alpha, alpha) range (when drawn)."
    )
    warmup: float = Field(0.1, ge=0, lt=1, description="Fraction of steps of linear warm-up.")
    grad_clip: float = Field(1.0, gt=0, description="Gradient-norm clipping.")
    max_steps: int | None = Field(
        None, ge=1, description="Cap on the optimizer steps of every run (default: no cap)."
    )
    freeze: tuple[str, ...] = Field(
        (), description="Regular expressions of parameter names kept frozen."
    )
    linear_probe: bool = Field(
        True, description="Fit the init's head by a linear probe on frozen features."
    )
    probe_examples: int = Field(
        2000, ge=1, description="Training examples the linear probe is fitted on."
    )
    head: str | None = Field(
        None, description="The head module (default: the last Linear with one output per class)."
    )

    @field_validator("lr", "weight_decay", "epochs", "token_dropout", "mixup_alpha")
    @classmethod
    def _range(cls, value: tuple[float, ...], info: Any) -> tuple[float, ...]:
        if len(value) == 1:
            value = (value[0], value[0])
        if len(value) != 2 or value[0] > value[1]:
            raise ValueError(f"{info.field_name}: give LOW,HIGH with LOW <= HIGH, got {value}")
        if info.field_name in ("lr", "weight_decay", "mixup_alpha") and value[0] <= 0:
            raise ValueError(f"{info.field_name}: the range must be positive, got {value}")
        if info.field_name == "token_dropout" and not (value[0] >= 0 and value[1] < 1):
            raise ValueError(f"token_dropout: probabilities must lie in [0, 1), got {value}")
        if info.field_name == "epochs" and value[0] <= 0:
            raise ValueError(f"epochs: must be positive, got {value}")
        return tuple(float(v) for v in value)

    @classmethod
    def parse(cls, **values: Any) -> SweepOptions:
        """Validate ``values``, reporting every problem at once as a :class:`SweepError`.

        Example:
            >>> SweepOptions.parse(trials=-1, lr=(1e-3, 1e-4))  # doctest: +IGNORE_EXCEPTION_DETAIL
            Traceback (most recent call last):
            SweepError: invalid sweep options: ...
        """
        try:
            return cls(**values)
        except ValidationError as e:
            problems = [
                f"{'.'.join(map(str, err['loc'])) or 'options'}: {err['msg']}" for err in e.errors()
            ]
            raise SweepError("invalid sweep options:\n  " + "\n  ".join(problems)) from None

    def identity(self) -> dict[str, Any]:
        """Everything that shapes the init and the trials (all but ``trials``)."""
        return self.model_dump(mode="json", exclude={"trials"})


QUICK = {"epochs": (0.5, 1.0), "probe_examples": 1000}
"""``--quick``: half-length runs and a smaller linear probe, for a fast look."""


@dataclass
class SweepResult:
    """What :func:`run_sweep` made or found.

    Attributes:
        run_dir: the run directory.
        init: the init ingredient's weights.
        trials: every trial's weights, in order.
        trained: indices of the trials trained by this call (the others were reused).
        wall_time: seconds this call took.
    """

    run_dir: Path
    init: Path
    trials: list[Path]
    trained: list[int] = field(default_factory=list)
    wall_time: float = 0.0


def sample_hparams(options: SweepOptions, index: int) -> dict[str, Any]:
    """Trial ``index``'s hyperparameters: a pure function of ``(options, index)``.

    Example:
        >>> hp = sample_hparams(SweepOptions(), 0)
        >>> 3e-5 <= hp["lr"] <= 2.5e-4 and hp["augmentation"] in AUGMENTATIONS
        True
    """
    rng = random.Random(f"modelsoup-sweep:{options.seed}:{index}")

    def log_uniform(lo: float, hi: float) -> float:
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))

    hp: dict[str, Any] = {
        "lr": log_uniform(*options.lr),
        "weight_decay": log_uniform(*options.weight_decay),
        "epochs": rng.uniform(*options.epochs),
        "label_smoothing": 0.0 if rng.random() < 0.5 else rng.uniform(0, options.label_smoothing),
        "augmentation": rng.choice(AUGMENTATIONS),
        "data_seed": rng.randrange(2**31),
        "torch_seed": rng.randrange(2**31),
    }
    strength = rng.random()  # drawn always, so the draws above never depend on the choice
    if hp["augmentation"] == "token_dropout":
        lo, hi = options.token_dropout
        hp["token_dropout"] = lo + strength * (hi - lo)
    elif hp["augmentation"] == "mixup":
        lo, hi = options.mixup_alpha
        hp["mixup_alpha"] = lo + strength * (hi - lo)
    return hp


def run_sweep(
    task: Task,
    run_dir: str | Path,
    options: SweepOptions | None = None,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    device: str | torch.device = "cpu",
) -> SweepResult:
    """Make (or complete) the shared init and ``options.trials`` fine-tuning runs in ``run_dir``.

    Finished trials are reused; a run directory made with different settings is refused.
    Trials train on ``device`` (the linear probe of the init runs on the CPU).

    Raises:
        SweepError: the task has no training split, an option does not fit the model, or a
            run diverges.
        RunDirError: ``run_dir`` holds a sweep made with different settings.

    Example:
        >>> result = run_sweep(load_task("toy"), "runs/toy", SweepOptions(trials=4))  # doctest: +SKIP
        >>> [p.name for p in result.trials]  # doctest: +SKIP
        ['trial_000.safetensors', 'trial_001.safetensors', ...]
    """
    options = options or SweepOptions()
    say = log or logger.info
    started = time.perf_counter()
    run_dir = Path(run_dir)
    if task.train is None:
        raise SweepError(f"task {task.name!r} has no training split, so it cannot be swept")
    train = task.split(task.train)
    identity = _identity(task, options)
    if distributed.is_main():
        _claim_run_dir(run_dir, identity)
    distributed.barrier()

    init_path = run_dir / f"{INIT_NAME}.safetensors"
    if distributed.broadcast_object(_finished(init_path, identity["key"])):
        say(f"reusing the init {init_path}")
        init_state = _load_state(init_path)
    else:
        if distributed.is_main():
            say(
                f"fitting the shared init ({'linear probe' if options.linear_probe else 'as built'})"
            )
            init_state, info = make_init(task, options)
            _save(init_path, init_state, {"kind": "init", **info}, identity["key"])
        distributed.barrier()  # the other ranks start from the init rank 0 wrote
        if not distributed.is_main():
            init_state = _load_state(init_path)
    init_digest = _sidecar(init_path)["sha256"]

    trial_paths = [
        run_dir / TRIALS_DIR / f"trial_{i:03d}.safetensors" for i in range(options.trials)
    ]
    todo = [i for i, p in enumerate(trial_paths) if not _finished(p, identity["key"])]
    todo = distributed.broadcast_object(todo)  # rank 0's view, before any rank writes a trial
    if len(todo) < len(trial_paths):
        say(f"reusing {len(trial_paths) - len(todo)} finished trial(s)")
    mine = todo[distributed.rank() :: distributed.world_size()]
    plans = {i: plan_trial(options, i, len(train)) for i in mine}
    total = sum(p["steps"] for p in plans.values())
    if todo:
        say(f"training {len(mine)} trial(s), {total} steps in all")
    with _progress_bar(total, progress) as bar:
        for n, i in enumerate(mine, 1):
            bar.set_description(f"trial {i} ({n}/{len(mine)})")
            state, record = train_trial(task, init_state, options, plans[i], bar=bar, device=device)
            record.update({"kind": "trial", "trial": i, "init_sha256": init_digest})
            _save(trial_paths[i], state, record, identity["key"])
            kill_point("sweep-trial")
            say(
                f"trial {i}: lr {record['hparams']['lr']:.2e}, {record['steps']} steps, "
                f"final loss {record['final_loss']:.3f}, {record['wall_time_s']:.0f}s"
            )
    distributed.barrier()  # every rank's trials are on disk
    return SweepResult(run_dir, init_path, trial_paths, todo, time.perf_counter() - started)


# ------------------------------------------------------------------------------------- init


def make_init(task: Task, options: SweepOptions) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``task.build_model()`` (seeded) with its head fitted by a linear probe.

    Returns the state dict and what to record (probe L2 strength and held-out accuracy).

    Example:
        >>> state, info = make_init(load_task("toy"), SweepOptions())  # doctest: +SKIP
        >>> info["linear_probe"]["heldout_accuracy"]  # doctest: +SKIP
        0.87
    """
    torch.manual_seed(options.seed)
    model = _build(task)
    info: dict[str, Any] = {"linear_probe": None}
    if options.linear_probe:
        info["linear_probe"] = fit_linear_probe(task, model, options)
    return _state_of(model), info


def find_head(model: nn.Module, num_classes: int, name: str | None = None) -> tuple[str, nn.Linear]:
    """The classification head: ``name``, or the last ``nn.Linear`` with ``num_classes`` outputs.

    Example:
        >>> find_head(ToyMLP(), 4)[0]  # doctest: +SKIP
        'head'
    """
    if name is not None:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise SweepError(f"the model has no module {name!r} to use as the head") from None
        if not isinstance(module, nn.Linear):
            raise SweepError(f"the head {name!r} is a {type(module).__name__}, not an nn.Linear")
        return name, module
    found = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and m.out_features == num_classes
    ]
    if not found:
        raise SweepError(
            f"no nn.Linear with {num_classes} outputs to fit as the head; pass head= "
            "or disable the linear probe"
        )
    return found[-1]


def fit_linear_probe(task: Task, model: nn.Module, options: SweepOptions) -> dict[str, Any]:
    """Fit ``model``'s head on frozen features: multinomial logistic regression (L-BFGS).

    Features are the head's inputs on up to ``options.probe_examples`` training examples; the
    L2 strength is chosen from a small grid by held-out accuracy. The head is set in place.

    Example:
        >>> fit_linear_probe(task, model, SweepOptions())["l2"]  # doctest: +SKIP
        0.001
    """
    name, head = find_head(model, task.num_classes, options.head)
    train = task.split(task.train or "")
    n = min(len(train), options.probe_examples)
    pick = sorted(random.Random(f"probe:{options.seed}").sample(range(len(train)), n))
    x_train = _head_inputs(task, model, head, train.examples, pick)
    y_train = train.labels[pick]
    held = task.split(task.heldout)
    x_held = _head_inputs(task, model, head, held.examples, range(len(held)))
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    zs_train, zs_held = (x_train - mean) / std, (x_held - mean) / std
    best: tuple[float, float, torch.Tensor, torch.Tensor] | None = None
    for l2 in (1e-4, 1e-3, 1e-2, 1e-1):
        w, b = _logistic_regression(zs_train, y_train, task.num_classes, l2)
        acc = float(((zs_held @ w.T + b).argmax(1) == held.labels).float().mean())
        if best is None or acc > best[0]:
            best = (acc, l2, w, b)
    acc, l2, w, b = best  # type: ignore[misc]
    with torch.no_grad():
        head.weight.copy_(w / std)
        head.bias.copy_(b - (w / std) @ mean)
    return {"head": name, "l2": l2, "heldout_accuracy": acc, "examples": n}


def _logistic_regression(
    x: torch.Tensor, y: torch.Tensor, classes: int, l2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = x.double(), y.long()
    w = torch.zeros(classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1, max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().float(), b.detach().float()


def _head_inputs(
    task: Task, model: nn.Module, head: nn.Module, examples: Sequence[Any], indices: Sequence[int]
) -> torch.Tensor:
    captured: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda m, inp, out: captured.append(inp[0].detach()))
    model.eval()
    try:
        with torch.inference_mode():
            idx = list(indices)
            for start in range(0, len(idx), task.batch_size):
                batch = task.collate([examples[i] for i in idx[start : start + task.batch_size]])
                task.forward(model, batch)
    finally:
        handle.remove()
    return torch.cat(captured).float().clone()


# ----------------------------------------------------------------------------------- trials


def train_trial(
    task: Task,
    init_state: Mapping[str, torch.Tensor],
    options: SweepOptions,
    plan: Mapping[str, Any],
    *,
    bar: Any = None,
    device: str | torch.device = "cpu",
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Fine-tune from ``init_state`` with the hyperparameters of ``plan`` (see :func:`_plan`).

    Returns the trained state dict and the sidecar record (hyperparameters, loss curve, time).

    Raises:
        SweepError: the loss becomes NaN/Inf, or an augmentation does not fit the batches.

    Example:
        >>> state, record = train_trial(task, init, SweepOptions(), plan_trial(SweepOptions(), 0, 512))  # doctest: +SKIP
    """
    hp = plan["hparams"]
    started = time.perf_counter()
    torch.manual_seed(hp["torch_seed"])
    aug_rng = random.Random(hp["torch_seed"])
    gen = torch.Generator().manual_seed(hp["torch_seed"])
    model = _build(task)
    model.load_state_dict(init_state, strict=True)
    model.to(device)
    frozen = _freeze(model, options.freeze)
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": hp["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=hp["lr"],
    )
    steps = plan["steps"]
    warm = max(1, round(options.warmup * steps)) if options.warmup > 0 else 0
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / max(1, steps - warm)),
    )
    train = task.split(task.train or "")
    curve: list[dict[str, float]] = []
    window: list[float] = []
    model.train()
    for step, idx in enumerate(
        batch_indices(train.examples, options.batch_size, steps, hp["data_seed"])
    ):
        batch = _to_device(task.collate([train.examples[i] for i in idx]), device)
        labels = train.labels[idx].to(device)
        with _augmented(model, batch, labels, hp, gen, aug_rng) as (batch, targets):
            logits = task.forward(model, batch)
            loss = sum(
                weight * F.cross_entropy(logits, y, label_smoothing=hp["label_smoothing"])
                for weight, y in targets
            )
        if not torch.isfinite(loss):
            raise SweepError(
                f"trial with lr {hp['lr']:.2e} diverged (loss {loss.item()} at step {step}); "
                "lower the learning-rate range"
            )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decay + no_decay, options.grad_clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(loss.item())
        if len(window) == LOG_EVERY or step == steps - 1:
            curve.append({"step": step + 1, "loss": sum(window) / len(window)})
            window = []
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{curve[-1]['loss']:.3f}" if curve else "-", refresh=False)
        kill_point("sweep-step")
    record = {
        "hparams": hp,
        "steps": steps,
        "epochs_run": steps * options.batch_size / len(train),
        "batch_size": options.batch_size,
        "frozen_parameters": frozen,
        "curve": curve,
        "final_loss": curve[-1]["loss"] if curve else float("nan"),
        "wall_time_s": time.perf_counter() - started,
    }
    return _state_of(model), record


def batch_indices(
    examples: Sequence[Any], batch_size: int, steps: int, seed: int
) -> Iterator[list[int]]:
    """``steps`` batches of indices: seeded epochs of shuffled examples, cut to ``steps``.

    When examples are sequences of different lengths (token ids), each window of 50 batches is
    sorted by length before batching and the batches are shuffled again, so padded batches stay
    short; the examples seen are the same.

    Example:
        >>> [len(b) for b in batch_indices(list(range(10)), 4, 3, seed=0)]
        [4, 4, 4]
    """
    n = len(examples)
    if n == 0:
        raise SweepError("the training split is empty")
    gen = torch.Generator().manual_seed(seed)
    needed = steps * batch_size
    stream: list[int] = []
    while len(stream) < needed:
        stream.extend(torch.randperm(n, generator=gen).tolist())
    stream = stream[:needed]
    lengths = _lengths(examples)
    window = 50 * batch_size
    for start in range(0, needed, window):
        chunk = stream[start : start + window]
        if lengths is not None:
            chunk.sort(key=lambda i: lengths[i])
        batches = [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
        if lengths is not None:
            order = torch.randperm(len(batches), generator=gen).tolist()
            batches = [batches[k] for k in order]
        yield from batches


def _lengths(examples: Sequence[Any]) -> list[int] | None:
    first = examples[0]
    if isinstance(first, torch.Tensor) and first.is_floating_point():
        return None
    try:
        lengths = [len(e) for e in examples]
    except TypeError:
        return None
    return lengths if len(set(lengths)) > 1 else None


@contextmanager
def _augmented(
    model: nn.Module,
    batch: Any,
    labels: torch.Tensor,
    hp: Mapping[str, Any],
    gen: torch.Generator,
    rng: random.Random,
) -> Iterator[tuple[Any, list[tuple[float, torch.Tensor]]]]:
    """Apply the trial's augmentation; yield the batch and ``[(weight, targets), ...]``."""
    kind = hp["augmentation"]
    if kind == "none":
        yield batch, [(1.0, labels)]
    elif kind == "token_dropout":
        yield _token_dropout(batch, hp["token_dropout"], gen), [(1.0, labels)]
    elif kind == "mixup":
        lam = rng.betavariate(hp["mixup_alpha"], hp["mixup_alpha"])
        perm = torch.randperm(len(labels), generator=gen).to(labels.device)
        targets = [(lam, labels), (1.0 - lam, labels[perm])]
        if isinstance(batch, torch.Tensor) and batch.is_floating_point():
            yield lam * batch + (1.0 - lam) * batch[perm], targets
            return
        embed = getattr(model, "get_input_embeddings", lambda: None)()
        if not isinstance(batch, Mapping) or not isinstance(embed, nn.Module):
            raise SweepError(
                "mixup needs float tensor inputs or a model with get_input_embeddings(); "
                "narrow the augmentations"
            )
        batch = dict(batch)
        if "attention_mask" in batch:
            batch["attention_mask"] = torch.maximum(
                batch["attention_mask"], batch["attention_mask"][perm]
            )
        handle = embed.register_forward_hook(lambda m, i, out: lam * out + (1.0 - lam) * out[perm])
        try:
            yield batch, targets
        finally:
            handle.remove()
    else:
        raise SweepError(f"unknown augmentation {kind!r} (valid: {', '.join(AUGMENTATIONS)})")


def _token_dropout(batch: Any, p: float, gen: torch.Generator) -> Any:
    if isinstance(batch, torch.Tensor) and batch.is_floating_point():
        keep = (torch.rand(batch.shape, generator=gen) >= p).to(batch.device, batch.dtype)
        return batch * keep / (1.0 - p)
    if isinstance(batch, Mapping) and "attention_mask" in batch:
        mask = batch["attention_mask"]
        keep = (torch.rand(mask.shape, generator=gen) >= p).to(mask.device, mask.dtype)
        keep[:, 0] = 1  # never drop the first token ([CLS]), so no text is emptied
        return {**batch, "attention_mask": mask * keep}
    raise SweepError(
        "token dropout needs float tensor inputs or dict batches with an attention_mask"
    )


def _freeze(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    if not patterns:
        return []
    try:
        compiled = [re.compile(p) for p in patterns]
    except re.error as e:
        raise SweepError(f"freeze: bad regular expression ({e})") from None
    frozen = [n for n, p in model.named_parameters() if any(c.search(n) for c in compiled)]
    if not frozen:
        raise SweepError(f"freeze: no parameter name matches {', '.join(patterns)}")
    for n, p in model.named_parameters():
        if n in frozen:
            p.requires_grad_(False)
    return frozen


def plan_trial(options: SweepOptions, index: int, n_train: int) -> dict[str, Any]:
    """Trial ``index``'s hyperparameters and step count for a training split of ``n_train``.

    Example:
        >>> plan_trial(SweepOptions(epochs=(1, 1)), 0, 320)["steps"]
        10
    """
    hp = sample_hparams(options, index)
    steps = max(1, round(hp["epochs"] * n_train / options.batch_size))
    if options.max_steps is not None:
        steps = min(steps, options.max_steps)
    return {"hparams": hp, "steps": steps}


# ------------------------------------------------------------------------- files and state


def _build(task: Task) -> nn.Module:
    try:
        model = task.build_model()
    except ModelSoupError:
        raise
    except Exception as e:
        raise TaskError(f"task {task.name!r}: build_model() raised {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise TaskError(f"task {task.name!r}: build_model() returned {type(model).__name__}")
    return model


def _to_device(batch: Any, device: str | torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def _identity(task: Task, options: SweepOptions) -> dict[str, Any]:
    train = task.split(task.train or "")
    ident = {
        "task": task.name,
        "task_version": task.version,
        "train": train.fingerprint,
        "heldout": task.split(task.heldout).fingerprint,
        "options": options.identity(),
        "format": FORMAT_VERSION,
    }
    ident["key"] = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
    return ident


def _claim_run_dir(run_dir: Path, identity: dict[str, Any]) -> None:
    """Write ``sweep.json`` in a new run dir, or check that the existing one matches.

    Temporary files that a killed run left (``.*.partial``) are removed when their process is
    gone, and never count as content.
    """
    path = run_dir / SWEEP_FILE
    for folder in (run_dir, run_dir / TRIALS_DIR):
        remove_stale_partials(folder)
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise RunDirError(f"{path}: unreadable ({e}); use another run directory") from None
        if old.get("key") != identity["key"]:
            diffs = _differences(old, identity)
            raise RunDirError(
                f"{run_dir} holds a sweep made with other settings ({'; '.join(diffs)}); "
                "use another run directory (-o) or the same settings"
            )
        return
    if run_dir.exists() and any(not _temporary(p.name) for p in run_dir.iterdir()):
        raise RunDirError(
            f"{run_dir} exists, is not empty and holds no {SWEEP_FILE}; use another run directory"
        )
    _atomic_write(path, json.dumps(identity, indent=2) + "\n")


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    diffs = []
    for key in ("task", "task_version", "train", "heldout", "format"):
        if old.get(key) != new.get(key):
            diffs.append(f"{key} differs")
    old_opts, new_opts = old.get("options", {}), new.get("options", {})
    for key in sorted(set(old_opts) | set(new_opts)):
        if old_opts.get(key) != new_opts.get(key):
            diffs.append(f"{key}: {old_opts.get(key)} there, {new_opts.get(key)} now")
    return diffs or ["the settings key differs"]


def _save(path: Path, state: Mapping[str, torch.Tensor], record: dict[str, Any], key: str) -> None:
    """Sidecar first, weights last, each via a temporary file and a rename."""
    from safetensors.torch import save

    from modelsoup import __version__

    data = save(dict(state), metadata={"format": "pt"})
    record = {
        **record,
        "name": path.stem,
        "sweep_key": key,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "modelsoup_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    _atomic_write(path.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    kill_point("sweep-sidecar")
    _atomic_write(path, data)


def _atomic_write(path: Path, data: str | bytes) -> None:
    """Write via a ``.partial`` file that :func:`remove_stale_partials` can clean up."""
    atomic_write(path, data, prefix=partial_prefix(path.name), suffix=".partial")


def _temporary(name: str) -> bool:
    return name.startswith(".") and name.endswith(".partial")


def _sidecar(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _finished(path: Path, key: str) -> bool:
    """Weights present with the size and sweep key their sidecar records."""
    if not path.is_file():
        return False
    meta = _sidecar(path)
    return meta.get("sweep_key") == key and meta.get("bytes") == path.stat().st_size


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@contextmanager
def _progress_bar(total: int, enabled: bool) -> Iterator[Any]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="step", disable=not enabled or total == 0, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()
