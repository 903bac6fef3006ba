"""The learned soup's loss and its gradient with respect to the mixing weights, two ways.

For ``theta(alpha) = sum_i alpha_i theta_i`` (one ``alpha`` row per layer group) the chain rule
gives ``dL/dalpha[g, i] = sum over tensors t of group g of <dL/dtheta_t, theta_i,t>``. So:

* :class:`MemoryObjective` stacks every ingredient's float tensors in RAM and lets autograd
  differentiate through ``torch.func.functional_call`` (memory: k models);
* :class:`StreamingObjective` builds the current soup one ingredient at a time, runs one
  forward/backward at the soup, then takes the dot product of that gradient with each
  ingredient's tensors, read one at a time from the (memory-mapped) files (memory: the task's
  model, the soup, its gradient and one ingredient tensor, whatever k is).

Both return the same loss and gradients (up to float rounding). Integer and bool tensors follow
the engine's policy: taken from the ingredient with the largest weight, never averaged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from modelsoup.errors import TaskError
from modelsoup.ingredients import Ingredient

#: Elements per fp32 partial dot product (partials are summed in float64).
DOT_ROW = 4096


class _TaskForward(nn.Module):
    """Wraps a task's model so that ``functional_call`` can run the task's own ``forward``."""

    def __init__(self, model: nn.Module, forward: Callable[[nn.Module, Any], torch.Tensor]):
        super().__init__()
        self.model = model
        self._task_forward = forward

    def forward(self, batch: Any) -> torch.Tensor:
        return self._task_forward(self.model, batch)


class SoupObjective(ABC):
    """Shared setup: the model, the tensor layout and groups, and ``loss_and_grad``.

    Args:
        ingredients: compatible checkpoints whose tensor names match the task's model.
        model: the task's model (its own weights are never used); it runs in eval mode.
        forward: ``forward(model, batch) -> logits`` (``task.forward``).
        groups: group name -> tensor names, covering the names of :func:`resolve_names`.
        device: where the forward/backward runs.
    """

    def __init__(
        self,
        ingredients: Sequence[Ingredient],
        model: nn.Module,
        forward: Callable[[nn.Module, Any], torch.Tensor],
        groups: Mapping[str, Sequence[str]],
        device: torch.device | str = "cpu",
    ) -> None:
        self.ingredients = list(ingredients)
        self.device = torch.device(device)
        model = model.to(self.device).eval()
        model.requires_grad_(False)
        self.module = _TaskForward(model, forward)
        infos = self.ingredients[0].tensor_infos
        target = model.state_dict(keep_vars=True)
        self.group_names = list(groups)
        self.group_of = {name: g for g, members in enumerate(groups.values()) for name in members}
        names = list(self.group_of)
        params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
        self.float_names = [n for n in names if infos[n].is_float]
        self.other_names = [n for n in names if not infos[n].is_float]
        #: parameters get gradients; float buffers (e.g. BatchNorm running statistics) are mixed
        #: with the current weights but held constant, as BatchNorm cannot differentiate them.
        self.param_names = [n for n in self.float_names if n in params]
        self.dtypes = {n: target[n].dtype for n in names}

    @property
    def shape(self) -> tuple[int, int]:
        """``(groups, ingredients)``: the shape of ``alpha``."""
        return len(self.group_names), len(self.ingredients)

    @abstractmethod
    def loss_and_grad(
        self, alpha: torch.Tensor, beta: torch.Tensor, batch: Any, labels: torch.Tensor
    ) -> tuple[float, torch.Tensor, float]:
        """Cross-entropy of ``beta * f(batch; theta(alpha))`` and its gradients.

        Args:
            alpha: mixing weights, shape ``(groups, ingredients)`` (not the logits).
            beta: the temperature, a scalar tensor.
            batch: a collated batch (moved to the device here).
            labels: class labels of the batch.

        Returns:
            ``(loss, dL/dalpha (float64, same shape as alpha), dL/dbeta)``.
        """

    @abstractmethod
    def tensors(self, alpha: torch.Tensor) -> dict[str, torch.Tensor]:
        """The soup at ``alpha`` as ``{name: tensor}`` (tied aliases left out)."""

    def heldout_loss(
        self, alpha: torch.Tensor, beta: torch.Tensor, batches: Iterable[tuple[Any, torch.Tensor]]
    ) -> float:
        """Mean cross-entropy of ``beta * f(x; theta(alpha))`` over ``(batch, labels)`` pairs."""
        total, count = self.heldout_sums(alpha, beta, batches)
        return total / count

    @torch.no_grad()
    def heldout_sums(
        self, alpha: torch.Tensor, beta: torch.Tensor, batches: Iterable[tuple[Any, torch.Tensor]]
    ) -> tuple[float, int]:
        """Summed cross-entropy and example count over ``(batch, labels)`` pairs (for ranks to
        add up under torchrun)."""
        tensors = self.tensors(alpha.detach())
        b = beta.detach().to(self.device, torch.float32)
        total, count = 0.0, 0
        for batch, labels in batches:
            total += float(self._loss(tensors, b, batch, labels)) * len(labels)
            count += len(labels)
        return total, count

    def _top(self, alpha: torch.Tensor) -> dict[str, int]:
        """For each integer tensor, the ingredient it is taken from (largest weight, first on ties)."""
        out = {}
        for name in self.other_names:
            row = alpha[self.group_of[name]].tolist()
            out[name] = max(range(len(row)), key=lambda i: (row[i], -i))
        return out

    def _loss(
        self, tensors: dict[str, torch.Tensor], beta: torch.Tensor, batch: Any, labels: torch.Tensor
    ) -> torch.Tensor:
        params = {f"model.{n}": t for n, t in tensors.items()}
        logits = torch.func.functional_call(self.module, params, (_to(batch, self.device),))
        return nn.functional.cross_entropy(beta * logits.float(), labels.to(self.device))


class MemoryObjective(SoupObjective):
    """Every ingredient's float tensors stacked in RAM; autograd through ``functional_call``.

    Example:
        >>> obj = MemoryObjective(ings, task.build_model(), task.forward, {"all": names})  # doctest: +SKIP
        >>> loss, d_alpha, d_beta = obj.loss_and_grad(alpha, beta, batch, labels)  # doctest: +SKIP
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        infos = self.ingredients[0].tensor_infos
        k = len(self.ingredients)
        self.stacks = {
            n: torch.empty((k, *infos[n].shape), dtype=_acc_dtype(infos[n]), device=self.device)
            for n in self.float_names
        }
        for i, ing in enumerate(self.ingredients):
            for n, stack in self.stacks.items():
                stack[i].copy_(ing.get(n))
            ing.release()
        self.others = {n: [ing.get(n) for ing in self.ingredients] for n in self.other_names}

    def tensors(self, alpha: torch.Tensor) -> dict[str, torch.Tensor]:
        """The soup at ``alpha``, differentiable in ``alpha`` when it requires grad."""
        a = alpha.to(self.device, torch.float32)
        constant = a.detach()
        trainable = set(self.param_names)
        out = {
            n: torch.tensordot(
                (a if n in trainable else constant)[self.group_of[n]].to(stack.dtype), stack, dims=1
            ).to(self.dtypes[n])
            for n, stack in self.stacks.items()
        }
        for n, i in self._top(alpha.detach()).items():
            out[n] = self.others[n][i].to(self.device)
        return out

    def loss_and_grad(
        self, alpha: torch.Tensor, beta: torch.Tensor, batch: Any, labels: torch.Tensor
    ) -> tuple[float, torch.Tensor, float]:
        a = alpha.detach().to(self.device, torch.float32).requires_grad_()
        b = beta.detach().to(self.device, torch.float32).requires_grad_()
        loss = self._loss(self.tensors(a), b, batch, labels)
        loss.backward()
        return float(loss.detach()), a.grad.to("cpu", torch.float64), float(b.grad)


class StreamingObjective(SoupObjective):
    """Out-of-core gradient: one ingredient tensor in memory at a time.

    Each step reads every ingredient twice (once to build the soup, once for the dot products),
    ingredient by ingredient, closing each one's files afterwards so that resident memory does
    not grow with the number of ingredients.

    Example:
        >>> obj = StreamingObjective(ings, task.build_model(), task.forward, groups)  # doctest: +SKIP
        >>> loss, d_alpha, d_beta = obj.loss_and_grad(alpha, beta, batch, labels)  # doctest: +SKIP
    """

    def tensors(self, alpha: torch.Tensor) -> dict[str, torch.Tensor]:
        """The soup at ``alpha``: float tensors accumulated in fp32 (fp64 ones in fp64), cast to
        the model's dtypes."""
        alpha = alpha.detach().to("cpu", torch.float64)
        top = self._top(alpha)
        weights = alpha.tolist()
        infos = self.ingredients[0].tensor_infos
        acc = {
            n: torch.zeros(infos[n].shape, dtype=_acc_dtype(infos[n]), device=self.device)
            for n in self.float_names
        }
        tensors: dict[str, torch.Tensor] = {}
        for i, ing in enumerate(self.ingredients):
            for n in self.float_names:
                acc[n].add_(ing.get(n).to(self.device), alpha=weights[self.group_of[n]][i])
            for n in self.other_names:
                if top[n] == i:
                    tensors[n] = ing.get(n).to(self.device)
            ing.release()
        for n in self.float_names:
            tensors[n] = acc.pop(n).to(self.dtypes[n])
        return tensors

    def loss_and_grad(
        self, alpha: torch.Tensor, beta: torch.Tensor, batch: Any, labels: torch.Tensor
    ) -> tuple[float, torch.Tensor, float]:
        tensors = self.tensors(alpha)
        for n in self.param_names:
            tensors[n].requires_grad_()
        b = beta.detach().to(self.device, torch.float32).requires_grad_()
        loss = self._loss(tensors, b, batch, labels)
        loss.backward()
        grads = {n: tensors[n].grad for n in self.param_names if tensors[n].grad is not None}
        del tensors
        d_alpha = torch.zeros(self.shape, dtype=torch.float64)
        for i, ing in enumerate(self.ingredients):
            for n, g in grads.items():
                d_alpha[self.group_of[n], i] += _dot(g, ing.get(n).to(self.device))
            ing.release()
        return float(loss.detach()), d_alpha, float(b.grad)


def _acc_dtype(info: Any) -> torch.dtype:
    """fp32, or fp64 for fp64 tensors: never below the inputs' precision (as the engine does)."""
    return torch.float64 if info.dtype == "F64" else torch.float32


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """``<a, b>``: fp32 dot products over rows of ``DOT_ROW`` elements, summed in float64."""
    a = a.reshape(-1)
    a = a if a.dtype == torch.float64 else a.float()
    b = b.reshape(-1).to(a.dtype)
    main = a.numel() - a.numel() % DOT_ROW
    total = 0.0
    if main:
        rows = torch.linalg.vecdot(a[:main].view(-1, DOT_ROW), b[:main].view(-1, DOT_ROW))
        total += float(rows.sum(dtype=torch.float64))
    if main < a.numel():
        total += float(torch.dot(a[main:], b[main:]))
    return total


def resolve_names(ingredient: Ingredient, model: nn.Module) -> tuple[list[str], dict[str, str]]:
    """The ingredient tensors to fit, and the tied aliases among them.

    A tied tensor (e.g. input embeddings shared with the output layer) is fitted once, under the
    first of its names the checkpoint holds; ``functional_call`` ties the rest, and the soup gives
    every alias the same weights.

    Returns:
        ``(names, aliases)``: names in the model's order, and alias -> the name it follows.

    Raises:
        TaskError: the checkpoint and the model disagree on tensor names or shapes.

    Example:
        >>> resolve_names(ing, task.build_model())  # doctest: +SKIP
        (['embed.weight', ...], {})
    """
    infos = ingredient.tensor_infos
    target = model.state_dict(keep_vars=True)
    tied: dict[str, list[str]] = {}
    by_tensor: dict[int, list[str]] = {}
    for name, t in [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]:
        by_tensor.setdefault(id(t), []).append(name)
    for names in by_tensor.values():
        for name in names:
            tied[name] = names
    unexpected = [n for n in infos if n not in target]
    missing = [
        n for n in target if n not in infos and not any(t in infos for t in tied.get(n, [n]))
    ]
    shapes = [
        f"{n} {list(infos[n].shape)} vs {list(target[n].shape)}"
        for n in infos
        if n in target and tuple(infos[n].shape) != tuple(target[n].shape)
    ]
    if unexpected or missing or shapes:
        parts = []
        if missing:
            parts.append(f"missing from the checkpoint: {', '.join(missing[:10])}")
        if unexpected:
            parts.append(f"not in the task's model: {', '.join(unexpected[:10])}")
        if shapes:
            parts.append(f"shapes differ (checkpoint vs model): {', '.join(shapes[:10])}")
        raise TaskError(
            f"{ingredient.source}: the checkpoint does not fit the task's model ({'; '.join(parts)})"
        )
    passed: list[str] = []
    aliases: dict[str, str] = {}
    for name in [n for n in target if n in infos]:  # the model's order: embeddings first
        if name in aliases:
            continue
        passed.append(name)
        for other in tied.get(name, [name]):
            if other != name and other in infos:
                aliases[other] = name
    return passed, aliases


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(v, device) for v in batch)
    return batch
