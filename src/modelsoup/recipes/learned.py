"""Learned soup: fit the mixing weights alpha (and a temperature beta) on held-out data.

Minimizes the cross-entropy of ``beta * f(x; sum_i alpha_i theta_i)`` on the task's held-out
split by minibatch AdamW, from the uniform soup (Wortsman et al. 2022, section 3 and appendix I).
``alpha`` is one weight per ingredient, or one per ingredient per layer group ("by layer").

Two ways to get the gradient (see :mod:`modelsoup.recipes.learned_grad`): ``memory`` holds every
ingredient in RAM; ``streaming`` holds one ingredient tensor at a time, so memory does not grow
with the number of ingredients. ``auto`` picks ``memory`` when k stacked fp32 copies of the model
fit the budget.

Under ``torchrun`` the fit is data-parallel: every minibatch is split between the ranks, each
computes the loss and ``dL/dalpha`` (in streaming mode: the dot products of its gradient with each
ingredient) on its share, and one all-reduce adds them up, weighted by the shares' sizes, so every
rank takes the same AdamW step as a single process would (up to float rounding).

With a journal (``modelsoup cook`` keeps one, see :mod:`modelsoup.journal`) the fit saves its
state every ``journal_every`` steps and at the end of every epoch: alpha's logits, beta, the AdamW
state, the position (epoch, batch), the loss curve and the batch-order generator's state at the
start of the epoch. A rerun after a crash restores it and takes bitwise the same steps as an
uninterrupted run; once the fit is done its result is saved, so a crash while the soup is being
written does not refit.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from modelsoup import distributed
from modelsoup.engine import Mixture
from modelsoup.errors import NonFiniteError, TaskError
from modelsoup.evaluation.task import Split, Task
from modelsoup.ingredients import Ingredient
from modelsoup.journal import kill_point
from modelsoup.recipes.base import Decision, Recipe, RecipeContext, RecipeOptions, register
from modelsoup.recipes.layer_groups import make_groups
from modelsoup.recipes.learned_grad import (
    MemoryObjective,
    SoupObjective,
    StreamingObjective,
    resolve_names,
)


class LearnedOptions(RecipeOptions):
    """Options of the learned soup (each one is also a ``modelsoup cook learned`` flag)."""

    by_layer: bool = Field(
        False, description="One set of weights per layer group (embeddings, each block, head)."
    )
    groups: tuple[str, ...] = Field(
        (),
        description="With --by-layer: module-name prefixes defining the groups (default: "
        "automatic; 'tensor': one group per tensor).",
    )
    param: Literal["softmax", "raw"] = Field(
        "softmax", description="alpha = softmax(logits) per group, or raw (unconstrained) weights."
    )
    epochs: int = Field(5, ge=0, description="Passes over the held-out split (0: uniform soup).")
    lr: float = Field(0.05, gt=0, description="AdamW learning rate.")
    fit_batch_size: int = Field(
        0, ge=0, description="Examples per step (0: the evaluator's batch size, else the task's)."
    )
    mode: Literal["auto", "memory", "streaming"] = Field(
        "auto",
        description="memory: all ingredients in RAM; streaming: one tensor at a time; auto: "
        "memory when k fp32 copies of the model fit the budget.",
    )
    memory_budget_gb: float = Field(
        0.0, ge=0, description="RAM budget for --mode auto, in GB (0: half the available RAM)."
    )
    seed: int = Field(0, description="Seed of the minibatch order.")
    journal_every: int = Field(
        1,
        ge=1,
        description="With a journal (modelsoup cook): save the fit's progress every N steps "
        "(and after every epoch), so that a rerun after a crash resumes.",
    )

    @field_validator("groups", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return () if value is None else value


@register
class LearnedSoup(Recipe):
    """``sum_i alpha_i theta_i`` with alpha (and a temperature beta) fitted on held-out data.

    Example:
        >>> soup = cook("learned", ings, evaluator=Evaluator(task), by_layer=True)  # doctest: +SKIP
        >>> soup.info["alpha_by_group"]["head"]  # doctest: +SKIP
        [0.41, 0.07, 0.52]
    """

    name = "learned"
    title = "Learned soup"
    summary = "fit mixing weights (per model or by layer) by gradient descent on held-out data"
    min_ingredients = 2
    needs_task = True
    Options = LearnedOptions

    def decide(self, ingredients: Sequence[Ingredient], context: RecipeContext) -> Decision:
        opts: LearnedOptions = self.options  # type: ignore[assignment]
        self.check(ingredients, context)
        evaluator = context.evaluator
        task: Task = evaluator.task  # type: ignore[union-attr]
        heldout = _heldout(task)
        batch_size = opts.fit_batch_size or getattr(evaluator, "batch_size", None)
        batch_size = int(batch_size or task.batch_size)
        model = task.build_model()
        names, aliases = resolve_names(ingredients[0], model)
        groups = make_groups(names, opts.by_layer, opts.groups)
        mode, need, budget = choose_mode(opts.mode, ingredients, names, opts.memory_budget_gb)
        journal = context.journal
        resumed = journal.load() if journal is not None else None
        if resumed is not None and opts.mode == "auto":
            mode = resumed["mode"]  # go on as the fit began, whatever RAM is free now
        if resumed is not None and "fit" in resumed:
            fit = resumed["fit"]
            context.log("learned soup: the fit had finished; its result comes from the journal")
        else:
            kind = MemoryObjective if mode == "memory" else StreamingObjective
            objective = kind(ingredients, model, task.forward, groups, _device(evaluator))
            steps = math.ceil(len(heldout) / batch_size)
            context.log(
                f"learned soup: {mode} mode ({need / 1e9:.2f} GB for all ingredients in RAM, "
                f"budget {budget / 1e9:.2f} GB), {len(groups)} group(s) x {len(ingredients)} "
                f"ingredients, {opts.epochs} epochs x {steps} steps"
            )
            save = None if journal is None else lambda state: journal.save({"mode": mode, **state})
            fit = _fit(objective, task, heldout, batch_size, opts, context, save, resumed)
            if journal is not None:
                journal.save({"mode": mode, "fit": fit})
            kill_point("learned-fit")
        alpha = fit["alpha"]
        mixture = _mixture(alpha, groups, aliases, ingredients[0], opts.by_layer)
        info: dict[str, Any] = {
            "alpha": list(mixture.weights),
            "beta": fit["beta"],
            "loss_curve": fit["losses"],
            "heldout_loss_uniform": fit["initial_loss"],
            "heldout_loss": fit["final_loss"],
            "groups": {g: list(members) for g, members in groups.items()},
            "by_layer": opts.by_layer,
            "param": opts.param,
            "mode": mode,
            "epochs": opts.epochs,
            "steps": len(fit["losses"]),
            "batch_size": batch_size,
            "lr": opts.lr,
            "seconds_per_epoch": fit["seconds_per_epoch"],
            "epoch_seconds": fit["epoch_seconds"],
            "ingredients": [ing.name for ing in ingredients],
        }
        if opts.by_layer:
            info["alpha_by_group"] = {g: [float(a) for a in alpha[j]] for j, g in enumerate(groups)}
        if aliases:
            info["tied"] = dict(aliases)
        return Decision(mixture, info)


def choose_mode(
    mode: str, ingredients: Sequence[Ingredient], names: Sequence[str], budget_gb: float = 0.0
) -> tuple[str, int, int]:
    """Resolve ``auto``: memory when k fp32 (fp64 for fp64) copies of the float tensors fit.

    Returns:
        ``(mode, bytes needed in memory mode, budget in bytes)``.

    Example:
        >>> choose_mode("auto", ings, names, budget_gb=1.0)  # doctest: +SKIP
        ('memory', 26752, 1000000000)
    """
    infos = ingredients[0].tensor_infos
    need = len(ingredients) * sum(
        max(4, infos[n].nbytes // max(infos[n].numel, 1)) * infos[n].numel
        for n in names
        if infos[n].is_float
    )
    budget = int(budget_gb * 1e9) if budget_gb > 0 else available_ram() // 2
    if mode == "auto":
        mode = "memory" if need <= budget else "streaming"
    return mode, need, budget


def available_ram() -> int:
    """Bytes of RAM available to new allocations (``MemAvailable``), or 0 when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _heldout(task: Task) -> Split:
    if not task.heldout or task.heldout not in task.splits:
        raise TaskError(
            f"task {task.name!r} has no held-out split ({task.heldout!r} is not among "
            f"{', '.join(task.splits) or 'no splits'}); the learned soup fits its weights on it"
        )
    return task.splits[task.heldout]


def _device(evaluator: Any) -> torch.device:
    device = getattr(evaluator, "device", None) or "cpu"
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def _batches(
    task: Task, split: Split, batch_size: int, order: torch.Tensor | None = None
) -> Iterator[tuple[Any, torch.Tensor]]:
    order = torch.arange(len(split)) if order is None else order
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size].tolist()
        yield task.collate([split.examples[i] for i in idx]), split.labels[idx]


def _rank_batches(
    task: Task, split: Split, batch_size: int, order: torch.Tensor | None = None
) -> Iterator[tuple[Any, torch.Tensor, int]]:
    """This rank's share of each minibatch of :func:`_batches`: ``(batch, labels, full size)``;
    ``batch`` is ``None`` when the share is empty (a minibatch smaller than the world)."""
    order = torch.arange(len(split)) if order is None else order
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size].tolist()
        mine = distributed.shard_range(len(idx))
        part = idx[mine.start : mine.stop]
        batch = task.collate([split.examples[i] for i in part]) if part else None
        yield batch, split.labels[part], len(idx)


def _heldout_loss(
    objective: SoupObjective,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    task: Task,
    heldout: Split,
    batch_size: int,
) -> float:
    """Mean held-out loss; under torchrun every rank scores its share and the sums are added."""
    if not distributed.active():
        return objective.heldout_loss(alpha, beta, _batches(task, heldout, batch_size))
    shares = (
        (batch, labels)
        for batch, labels, _ in _rank_batches(task, heldout, batch_size)
        if batch is not None
    )
    total, count = objective.heldout_sums(alpha, beta, shares)
    sums = distributed.all_reduce_sum(torch.tensor([total, count], dtype=torch.float64))
    return float(sums[0] / sums[1])


def _step_grad(
    objective: SoupObjective,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    share: tuple[Any, torch.Tensor, int],
) -> tuple[float, torch.Tensor, float]:
    """Loss and gradients of one minibatch from every rank's share, weighted by share size."""
    batch, labels, size = share
    if batch is None:
        loss, d_alpha, d_beta = 0.0, torch.zeros(objective.shape, dtype=torch.float64), 0.0
    else:
        loss, d_alpha, d_beta = objective.loss_and_grad(alpha, beta, batch, labels)
    w = len(labels) / size
    packed = torch.cat(
        [torch.tensor([loss * w, d_beta * w], dtype=torch.float64), d_alpha.flatten() * w]
    )
    distributed.all_reduce_sum(packed)
    return float(packed[0]), packed[2:].view(objective.shape).clone(), float(packed[1])


def _alpha(logits: torch.Tensor, param: str) -> torch.Tensor:
    return torch.softmax(logits, dim=1) if param == "softmax" else logits


def _fit(
    objective: SoupObjective,
    task: Task,
    heldout: Split,
    batch_size: int,
    opts: LearnedOptions,
    context: RecipeContext,
    save: Callable[[dict[str, Any]], None] | None = None,
    resumed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """AdamW on the alpha logits and beta; refuses a non-finite loss, naming the step.

    ``save`` receives the state to resume from (every ``opts.journal_every`` steps and at the
    end of every epoch); ``resumed`` is such a state to start from.
    """
    groups, k = objective.shape
    init = 0.0 if opts.param == "softmax" else 1.0 / k
    logits = torch.full((groups, k), init, dtype=torch.float64, requires_grad=True)
    beta = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.AdamW([logits, beta], lr=opts.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(opts.seed)
    parallel = distributed.active()
    losses: list[float] = []
    seconds: list[float] = []
    epoch0 = batch0 = 0
    elapsed0 = 0.0
    if resumed is not None:
        with torch.no_grad():
            logits.copy_(resumed["logits"])
            beta.copy_(resumed["beta"])
        optimizer.load_state_dict(resumed["optimizer"])
        generator.set_state(resumed["generator"])
        initial = resumed["initial_loss"]
        losses, seconds = list(resumed["losses"]), list(resumed["epoch_seconds"])
        epoch0, batch0, elapsed0 = resumed["epoch"], resumed["batch"], resumed["epoch_elapsed"]
        context.log(
            f"learned soup: resuming from the journal at step {len(losses) + 1} "
            f"(epoch {epoch0 + 1}, batch {batch0 + 1})"
        )
    else:
        initial = _heldout_loss(
            objective, _alpha(logits, opts.param), beta, task, heldout, batch_size
        )
        _check_finite(initial, 0, "the uniform soup, before any step")
    per_epoch = math.ceil(len(heldout) / batch_size)
    for epoch in range(epoch0, opts.epochs):
        start = time.perf_counter()
        at_start = generator.get_state()
        order = torch.randperm(len(heldout), generator=generator)
        skip, before = (batch0, elapsed0) if epoch == epoch0 else (0, 0.0)
        first = len(losses) - skip
        batches = (_rank_batches if parallel else _batches)(
            task, heldout, batch_size, order[skip * batch_size :]
        )
        for b, item in enumerate(batches, start=skip):
            alpha = _alpha(logits, opts.param)
            if parallel:
                loss, d_alpha, d_beta = _step_grad(objective, alpha, beta, item)
            else:
                loss, d_alpha, d_beta = objective.loss_and_grad(alpha, beta, *item)
            step = len(losses) + 1
            if not (math.isfinite(d_beta) and bool(torch.isfinite(d_alpha).all())):
                loss = math.nan
            _check_finite(loss, step, f"epoch {epoch + 1}, batch {b + 1}")
            optimizer.zero_grad()
            alpha.backward(d_alpha)
            beta.grad = torch.tensor(d_beta, dtype=torch.float64)
            optimizer.step()
            losses.append(loss)
            end = b + 1 == per_epoch
            if save is not None and (end or len(losses) % opts.journal_every == 0):
                spent = before + time.perf_counter() - start
                save(
                    {
                        "logits": logits.detach().clone(),
                        "beta": beta.detach().clone(),
                        "optimizer": optimizer.state_dict(),
                        "generator": generator.get_state() if end else at_start,
                        "epoch": epoch + 1 if end else epoch,
                        "batch": 0 if end else b + 1,
                        "epoch_elapsed": 0.0 if end else spent,
                        "losses": losses,
                        "epoch_seconds": [*seconds, spent] if end else seconds,
                        "initial_loss": initial,
                    }
                )
            kill_point("learned-step")
        seconds.append(before + time.perf_counter() - start)
        epoch_losses = losses[first:]
        context.log(
            f"learned soup: epoch {epoch + 1}/{opts.epochs}, "
            f"mean loss {sum(epoch_losses) / len(epoch_losses):.4f}"
        )
    alpha = _alpha(logits, opts.param).detach()
    if parallel:  # every rank took the same steps; rank 0's weights make that exact
        alpha, fitted = distributed.broadcast_object((alpha, beta.detach()))
        with torch.no_grad():
            beta.copy_(fitted)
    final = _heldout_loss(objective, alpha, beta, task, heldout, batch_size)
    _check_finite(final, len(losses), "the fitted soup, after the last step")
    return {
        "alpha": alpha,
        "beta": float(beta.detach()),
        "losses": losses,
        "initial_loss": initial,
        "final_loss": final,
        "seconds_per_epoch": sum(seconds) / len(seconds) if seconds else 0.0,
        "epoch_seconds": seconds,
    }


def _check_finite(loss: float, step: int, where: str) -> None:
    if not math.isfinite(loss):
        raise NonFiniteError(
            f"recipe 'learned': the held-out loss is not finite ({loss}) at step {step} ({where}); "
            "stopped, nothing was written. Try a lower --lr or --param softmax, and check the "
            "ingredients and the task's forward for NaN/Inf."
        )


def _mixture(
    alpha: torch.Tensor,
    groups: dict[str, list[str]],
    aliases: dict[str, str],
    ingredient: Ingredient,
    by_layer: bool,
) -> Mixture:
    """Per-ingredient weights (by layer: the parameter-weighted mean over groups) and, by
    layer, every tensor's group weights (tied aliases take their tensor's)."""
    rows = [tuple(float(a) for a in row) for row in alpha.tolist()]
    if not by_layer:
        return Mixture(rows[0])
    infos = ingredient.tensor_infos
    per_tensor: dict[str, tuple[float, ...]] = {}
    sizes = []
    for row, members in zip(rows, groups.values()):
        sizes.append(sum(infos[n].numel for n in members))
        for n in members:
            per_tensor[n] = row
    for alias, name in aliases.items():
        per_tensor[alias] = per_tensor[name]
    total = sum(sizes) or 1
    k = alpha.shape[1]
    weights = tuple(sum(s * row[i] for s, row in zip(sizes, rows)) / total for i in range(k))
    ordered = {n: per_tensor[n] for n in infos if n in per_tensor}
    return Mixture(weights, ordered)
