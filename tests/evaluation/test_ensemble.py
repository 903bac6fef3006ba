"""Ensembles: the mean of logits, the greedy ensemble's choices, and no forward passes from cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from modelsoup.errors import ModelSoupError
from modelsoup.evaluation.ensemble import (
    LogitEnsemble,
    accuracy,
    ensemble_logits,
    greedy_ensemble,
)
from modelsoup.evaluation.evaluator import Evaluator
from modelsoup.evaluation.metrics import balanced_accuracy
from modelsoup.ingredients import load_ingredients
from modelsoup.tasks.toy import ToyMLP, make_task

Y = torch.tensor([0, 1, 0, 1])
# A and B make the same predictions (correct on examples 0-2: 75%); C is right only on 3 (25%).
A = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 0.0]])
B = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
C = torch.tensor([[0.0, 5.0], [5.0, 0.0], [0.0, 5.0], [0.0, 5.0]])


def test_ensemble_logits_is_the_mean() -> None:
    g = torch.Generator().manual_seed(0)
    members = [torch.randn(50, 7, generator=g) for _ in range(5)]
    out = ensemble_logits(members)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.stack(members).mean(0), rtol=0, atol=1e-6)
    assert torch.equal(ensemble_logits([A]), A)
    with pytest.raises(ModelSoupError, match="shape"):
        ensemble_logits([A, torch.zeros(3, 2)])
    with pytest.raises(ModelSoupError, match="at least one"):
        ensemble_logits([])


def test_greedy_ensemble_ties_accepted_with_ge_rejected_with_gt() -> None:
    ge = greedy_ensemble([A, B, C], Y, rule=">=")
    assert ge.order == [0, 1, 2]
    assert ge.chosen == [0, 1]
    assert [t["accepted"] for t in ge.trajectory] == [True, True, False]
    assert [t["score"] for t in ge.trajectory] == [0.75, 0.75, 0.25]
    assert ge.score == 0.75 and ge.scores == [0.75, 0.75, 0.25]

    gt = greedy_ensemble([A, B, C], Y, rule=">")
    assert gt.chosen == [0]
    assert [t["accepted"] for t in gt.trajectory] == [True, False, False]


def test_greedy_ensemble_sorts_by_heldout_score_ties_in_input_order() -> None:
    found = greedy_ensemble([C, B, A], Y)
    assert found.order == [1, 2, 0]  # B before A: equal scores keep the input order
    assert found.chosen == [1, 2]


def test_greedy_ensemble_accepts_a_weaker_member_that_helps() -> None:
    y = torch.tensor([0, 0, 0])
    strong = torch.tensor([[3.0, 0.0], [3.0, 0.0], [0.0, 1.0]])  # 2/3
    weak = torch.tensor([[0.0, 1.0], [0.0, 1.0], [5.0, 0.0]])  # 1/3, but fixes example 2
    found = greedy_ensemble([weak, strong], y)
    assert found.order == [1, 0]
    assert found.chosen == [1, 0]
    assert found.score == 1.0


def test_greedy_ensemble_custom_score_order_and_bad_input() -> None:
    found = greedy_ensemble([A, B, C], Y, score=balanced_accuracy, order=[2, 0, 1])
    assert found.order == [2, 0, 1]
    assert found.chosen[0] == 2  # the first candidate is always taken
    assert found.trajectory[0]["score"] == pytest.approx(balanced_accuracy(C, Y))
    with pytest.raises(ModelSoupError, match="rule"):
        greedy_ensemble([A], Y, rule="=>")
    with pytest.raises(ModelSoupError, match="permutation"):
        greedy_ensemble([A, B], Y, order=[0, 0])


def test_logit_ensemble_module_averages_logits() -> None:
    torch.manual_seed(0)
    models = [nn.Linear(6, 3) for _ in range(3)]
    x = torch.randn(8, 6)
    ens = LogitEnsemble(models).eval()
    with torch.no_grad():
        expected = torch.stack([m(x) for m in models]).mean(0)
        torch.testing.assert_close(ens(x), expected)
        # with a task-style forward(model, batch)
        ens2 = LogitEnsemble(models, forward=lambda m, batch: m(batch["x"]))
        torch.testing.assert_close(ens2({"x": x}), expected)
    assert len(list(ens.parameters())) == 6  # members are registered submodules
    with pytest.raises(ModelSoupError):
        LogitEnsemble([])


def _write_members(folder: Path, k: int) -> list[Path]:
    folder.mkdir()
    paths = []
    for i in range(k):
        torch.manual_seed(100 + i)
        sd = {n: t.clone().contiguous() for n, t in ToyMLP().state_dict().items()}
        paths.append(folder / f"m{i}.safetensors")
        save_file(sd, paths[-1])
    return paths


def test_ensembles_need_no_forward_pass_once_members_are_cached(tmp_path: Path) -> None:
    task = make_task(n_train=16, n_eval=64)
    ings = load_ingredients(_write_members(tmp_path / "members", 3))
    ev = Evaluator(task, cache_dir=tmp_path / "cache", progress=False)
    splits = ["heldout", "test"]
    member = {i.name: {s: ev.logits(i, s) for s in splits} for i in ings}
    assert ev.stats.forward_examples == 3 * 2 * 64

    fresh = Evaluator(task, cache_dir=tmp_path / "cache", progress=False)  # cache on disk only
    heldout = [fresh.logits(i, "heldout") for i in ings]
    found = greedy_ensemble(heldout, task.split("heldout").labels)
    test = ensemble_logits([fresh.logits(ings[j], "test") for j in found.chosen])
    full = ensemble_logits([fresh.logits(i, "test") for i in ings])
    assert fresh.stats.forward_examples == 0
    assert fresh.stats.cached_examples == (3 + len(found.chosen) + 3) * 64
    torch.testing.assert_close(full, torch.stack([member[i.name]["test"] for i in ings]).mean(0))
    chosen = torch.stack([member[ings[j].name]["test"] for j in found.chosen]).mean(0)
    torch.testing.assert_close(test, chosen)


@pytest.mark.parametrize("seed", range(5))
def test_greedy_ensemble_candidates_are_exactly_the_mean_of_members(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (40,), generator=g)
    members = [torch.randn(40, 3, generator=g) for _ in range(6)]
    found = greedy_ensemble(members, labels)
    chosen: list[int] = []
    for step in found.trajectory:
        i = step["candidate"]
        expected = accuracy(ensemble_logits([members[j] for j in [*chosen, i]]), labels)
        assert step["score"] == expected
        if step["accepted"]:
            chosen.append(i)
    assert chosen == found.chosen
    assert found.score == accuracy(ensemble_logits([members[j] for j in chosen]), labels)
    assert found.score >= max(found.scores)  # never worse than the best member on held-out
