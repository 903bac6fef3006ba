"""Plain helpers shared by tests (importable as `factories`; fixtures live in conftest.py)."""

from __future__ import annotations

import torch

from modelsoup.tasks.toy import ToyMLP


def toy_state_dicts(k: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``k`` random ToyMLP state dicts (distinct values, integer BatchNorm buffers included)."""
    out = []
    for i in range(k):
        torch.manual_seed(seed * 1000 + i)
        model = ToyMLP()
        sd = {n: t.detach().clone() for n, t in model.state_dict().items()}
        for t in sd.values():
            if t.is_floating_point():
                t.copy_(torch.randn_like(t))
        sd["norm.num_batches_tracked"] = torch.tensor(10 * (i + 1))
        out.append(sd)
    return out
