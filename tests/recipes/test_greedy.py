"""Greedy soup (Recipe 1): known selections on constructed cases, exact early rejection,
the running sum, and the toy task.

The constructed cases use a *lookup task*: example ``j`` is the one-hot vector ``e_j`` and the
model is ``nn.Linear(N, C, bias=False)``, so the logits of example ``j`` are column ``j`` of the
weight. Averaging weights averages those columns, so every soup's held-out accuracy follows
from integer sums we can do by hand.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

import modelsoup
from modelsoup.engine import Mixture, mix_state_dict
from modelsoup.errors import RecipeError
from modelsoup.evaluation.evaluator import Evaluator
from modelsoup.evaluation.task import Split, Task
from modelsoup.ingredients import load_ingredients
from modelsoup.recipes.greedy import RunningSum
from modelsoup.tasks.toy import ToyMLP, make_task


def lookup_task(labels: Sequence[int], classes: int = 2, batch_size: int = 64, **kw) -> Task:
    n = len(labels)
    x = torch.eye(n)
    splits = {s: Split(s, examples=x, labels=list(labels)) for s in ("heldout", "test")}
    return Task(
        name="lookup",
        build_model=lambda: nn.Linear(n, classes, bias=False),
        splits=splits,
        heldout="heldout",
        id_test="test",
        shifts=(),
        num_classes=classes,
        batch_size=batch_size,
        **kw,
    )


def write_weights(folder: Path, weights: Sequence[torch.Tensor]) -> list:
    """One ingredient per ``[C, N]`` weight matrix, named m0, m1, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, w in enumerate(weights):
        path = folder / f"m{i}.safetensors"
        save_file({"weight": w.float().contiguous()}, str(path))
        paths.append(path)
    return load_ingredients(paths)


def margins(*rows: Sequence[float]) -> list[torch.Tensor]:
    """Two classes, every label 1: ingredient i has logits (0, d_ij) on example j."""
    out = []
    for d in rows:
        w = torch.zeros(2, len(d))
        w[1] = torch.tensor(d, dtype=torch.float32)
        out.append(w)
    return out


# Every label is 1, so an example is right where the (summed) margin is > 0; a zero margin is a
# tie, which argmax resolves to class 0: wrong. Individual scores: 3, 4, 4 and 2 of 6.
CASE = margins(
    [1, 1, 1, -1, -1, -1],  # m0: 3/6
    [3, 3, 3, 3, -1, -1],  # m1: 4/6 (first by input order among the best)
    [1, 1, -9, 1, 5, -1],  # m2: 4/6
    [-9, -1, -1, -1, 3, 3],  # m3: 2/6
)


def cook(tmp_path: Path, weights, labels, name: str = "run", task_kw=None, **options):
    ings = write_weights(tmp_path / "ckpts", weights)
    task = lookup_task(labels, **(task_kw or {}))
    ev = Evaluator(task, cache_dir=tmp_path / f"cache-{name}", progress=False)
    return modelsoup.cook("greedy", ings, evaluator=ev, **options), ev


def test_paper_rule_accepts_ties(tmp_path: Path) -> None:
    soup, _ = cook(tmp_path, CASE, [1] * 6, rule=">=")
    info = soup.info
    assert info["order"] == ["m1", "m2", "m0", "m3"]  # ties keep the input order
    # m1 + m2 = [4, 4, -6, 4, 4, -2]: 4/6, a tie: accepted.
    # + m0 -> [5, 5, -5, 3, 3, -3]: 4/6, a tie: accepted.
    # + m3 -> [-4, 4, -6, 2, 6, 0]: 3/6: rejected.
    assert [s["accepted"] for s in info["trajectory"]] == [True, True, True, False]
    assert info["chosen"] == ["m1", "m2", "m0"]
    assert soup.mixture.weights == pytest.approx((1 / 3, 1 / 3, 1 / 3, 0.0))
    assert info["heldout_score"] == pytest.approx(4 / 6)
    assert info["heldout_scores"] == pytest.approx(
        {"m0": 0.5, "m1": 4 / 6, "m2": 4 / 6, "m3": 2 / 6}
    )


def test_official_rule_needs_strict_improvement(tmp_path: Path) -> None:
    soup, _ = cook(tmp_path, CASE, [1] * 6, rule=">")
    # m1 + m2: 4/6, not > 4/6: rejected. m1 + m0 = [4, 4, 4, 2, -2, -2]: 4/6: rejected.
    # m1 + m3 = [-6, 2, 2, 2, 2, 2]: 5/6: accepted.
    assert [s["accepted"] for s in soup.info["trajectory"]] == [True, False, False, True]
    assert soup.info["chosen"] == ["m1", "m3"]
    assert soup.mixture.weights == pytest.approx((0.0, 0.5, 0.0, 0.5))
    assert soup.info["heldout_score"] == pytest.approx(5 / 6)
    assert soup.info["trajectory"][3]["heldout_score"] == pytest.approx(5 / 6)


@pytest.mark.parametrize(
    "rule, chosen",
    [
        # order m2, m0, m1, m3. m2 + m0 = [2, 2, -8, 0, 4, -2]: 3/6, rejected.
        # m2 + m1 = [4, 4, -6, 4, 4, -2]: 4/6; + m3 = [-5, 3, -7, 3, 7, 1]: 4/6.
        (">=", ["m2", "m1", "m3"]),
        # only strict gains count: m2 + m1 (4/6) and m2 + m3 = [-8, 0, -10, 0, 8, 2] (2/6) fail.
        (">", ["m2"]),
    ],
)
def test_random_order(tmp_path: Path, rule: str, chosen: list[str]) -> None:
    soup, _ = cook(tmp_path, CASE, [1] * 6, order="random", seed=0, rule=rule)
    expected = list(range(4))
    random.Random(0).shuffle(expected)
    assert soup.info["order_indices"] == expected == [2, 0, 1, 3]
    assert soup.info["chosen"] == chosen
    assert soup.info["trajectory"][0]["accepted"] is True  # the first is always taken


def test_one_ingredient_is_the_soup(tmp_path: Path) -> None:
    soup, ev = cook(tmp_path, CASE[:1], [1] * 6)
    assert soup.info["chosen"] == ["m0"] and soup.mixture.weights == (1.0,)
    assert soup.info["examples_full"] == 0


def test_early_rejection_stops_and_reports_savings(tmp_path: Path) -> None:
    weights = margins([1] * 8, [-3, -3, 1, 1, 1, 1, 1, 1])  # 8/8 and 6/8
    # the candidate [-2, -2, 2, ...] misses the first two examples: after the first batch of 4
    # it has 2 right and 4 to go, so it can reach at most 6 < 8.
    early, ev = cook(tmp_path, weights, [1] * 8, "er", task_kw={"batch_size": 4})
    assert early.info["trajectory"][1] == {
        "candidate": "m1",
        "index": 1,
        "heldout_score": None,
        "accepted": False,
        "evaluated_examples": 4,
        "soup_size": 1,
    }
    assert (early.info["examples_evaluated"], early.info["examples_full"]) == (4, 8)
    assert early.info["examples_saved"] == 4
    full, _ = cook(tmp_path, weights, [1] * 8, "full", task_kw={"batch_size": 4},
                   early_rejection=False)  # fmt: skip
    assert full.info["chosen"] == early.info["chosen"] == ["m0"]
    assert full.info["trajectory"][1]["heldout_score"] == pytest.approx(6 / 8)
    assert (full.info["examples_evaluated"], full.info["examples_saved"]) == (8, 0)


def test_a_second_run_reads_every_candidate_from_the_cache(tmp_path: Path) -> None:
    ings = write_weights(tmp_path / "ckpts", CASE)
    task = lookup_task([1] * 6)
    first = Evaluator(task, cache_dir=tmp_path / "cache", progress=False)
    a = modelsoup.cook("greedy", ings, evaluator=first)
    assert first.stats.forward_examples > 0
    second = Evaluator(task, cache_dir=tmp_path / "cache", progress=False)
    b = modelsoup.cook("greedy", ings, evaluator=second)
    assert second.stats.forward_examples == 0 and second.stats.model_loads == 0
    assert a.info["trajectory"] == b.info["trajectory"]


def test_balanced_accuracy_headline_uses_full_evaluation(tmp_path: Path) -> None:
    # labels 0, 0, 0, 1; a margin <= 0 predicts class 0.
    weights = margins(
        [-1, -1, -1, -1],  # mA: predicts 0 everywhere: accuracy 3/4, balanced 1/2
        [-1, -1, 1, 3],  # mB: accuracy 3/4, balanced (2/3 + 1)/2
        [-5, -5, -5, -3],  # mC: balanced 1/2
    )
    soup, _ = cook(
        tmp_path, weights, [0, 0, 0, 1], task_kw={"metric": {"heldout": "balanced_accuracy"}}
    )
    info = soup.info
    assert info["metric"] == "balanced_accuracy" and info["early_rejection"] is False
    assert info["heldout_scores"] == pytest.approx({"m0": 0.5, "m1": 5 / 6, "m2": 0.5})
    assert info["order"] == ["m1", "m0", "m2"]
    # mB + mA = [-2, -2, 0, 2]: balanced 1. + mC = [-7, -7, -5, -1]: balanced 1/2.
    assert info["chosen"] == ["m1", "m0"]
    assert [s["evaluated_examples"] for s in info["trajectory"]] == [0, 4, 4]


def test_needs_a_task_and_validates_options(tmp_path: Path) -> None:
    ings = write_weights(tmp_path / "ckpts", CASE[:2])
    with pytest.raises(RecipeError, match="give it a task"):
        modelsoup.cook("greedy", ings)
    with pytest.raises(RecipeError, match="rule"):
        modelsoup.cook("greedy", ings, rule="=>")
    with pytest.raises(RecipeError, match="order"):
        modelsoup.cook("greedy", ings, order="reverse")


# ------------------------------------------------------------------ exact early rejection


def reference(weights: list[torch.Tensor], labels: list[int], rule: str, order: list[int]):
    """Recipe 1 by brute force on integer weights: full evaluation, re-summing every soup."""

    def hits(members: list[int]) -> int:
        total = sum(weights[i].long() for i in members)  # [C, N] integer sum: exact
        return int((total.argmax(dim=0) == torch.tensor(labels)).sum())

    chosen = [order[0]]
    for i in order[1:]:
        new, cur = hits([*chosen, i]), hits(chosen)
        if new > cur or (rule == ">=" and new == cur):
            chosen.append(i)
    return chosen


CASES = dict(
    data=st.data(),
    n=st.integers(1, 12),
    classes=st.integers(2, 4),
    k=st.integers(1, 6),
    rule=st.sampled_from([">=", ">"]),
    order=st.sampled_from(["sorted", "random"]),
    seed=st.integers(0, 3),
    batch_size=st.integers(1, 5),
)
QUICK = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
THOROUGH = settings(QUICK, max_examples=300)


def check_early_rejection(data, n, classes, k, rule, order, seed, batch_size) -> int:
    """Greedy with and without early rejection on a random integer case; returns the savings."""
    ints = st.integers(-3, 3)
    weights = [
        torch.tensor(
            data.draw(
                st.lists(st.lists(ints, min_size=n, max_size=n), min_size=classes, max_size=classes)
            )
        )  # fmt: skip
        for _ in range(k)
    ]
    labels = data.draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ings = write_weights(root / "ckpts", weights)
        task = lookup_task(labels, classes=classes, batch_size=batch_size)
        runs = {}
        for early in (True, False):
            ev = Evaluator(task, cache_dir=root / f"cache-{early}", progress=False)
            runs[early] = modelsoup.cook(
                "greedy", ings, evaluator=ev, rule=rule, order=order, seed=seed,
                early_rejection=early,
            )  # fmt: skip
    fast, full = runs[True].info, runs[False].info
    assert fast["chosen_indices"] == full["chosen_indices"]
    assert [s["accepted"] for s in fast["trajectory"]] == [
        s["accepted"] for s in full["trajectory"]
    ]
    assert fast["examples_evaluated"] <= full["examples_evaluated"] == full["examples_full"]
    assert full["chosen"] == [
        f"m{i}" for i in reference(weights, labels, rule, full["order_indices"])
    ]
    return fast["examples_saved"]


@QUICK
@given(**CASES)
def test_early_rejection_selects_exactly_as_full_evaluation(**case) -> None:
    check_early_rejection(**case)


@pytest.mark.slow
@THOROUGH
@given(**CASES)
def test_early_rejection_selects_exactly_as_full_evaluation_thoroughly(**case) -> None:
    check_early_rejection(**case)


# ------------------------------------------------------------------ running sum, toy task


def test_running_sum_candidate_equals_the_engine_soup(tmp_path: Path) -> None:
    sds = []
    for i in range(4):
        torch.manual_seed(i)
        sd = {k: v.clone() for k, v in ToyMLP().state_dict().items()}
        sd["norm.num_batches_tracked"] = torch.tensor(100 + i)
        sds.append(sd)
    paths = []
    for i, sd in enumerate(sds):
        paths.append(tmp_path / f"t{i}.safetensors")
        save_file(sd, str(paths[-1]))
    ings = load_ingredients(paths)
    running = RunningSum(ings)
    running.add(2)
    running.add(3)
    candidate = running.candidate(1)
    engine = mix_state_dict(ings, Mixture.subset(4, [1, 2, 3]))
    assert candidate.keys() == engine.keys()
    for name, tensor in engine.items():
        if tensor.is_floating_point():
            torch.testing.assert_close(candidate[name], tensor, rtol=1e-6, atol=1e-7)
        else:  # integer buffers: the lowest-index member's, as the engine does
            assert torch.equal(candidate[name], tensor) and int(candidate[name]) == 101
    assert running.key(1) != RunningSum(ings).key(1)


def train_toy_ingredients(folder: Path, k: int = 5) -> list[Path]:
    """A shared init, then ``k`` short fine-tunes with different learning rates and seeds."""
    task = make_task(n_train=256, n_eval=8)
    x, y = task.splits["train"].examples, task.splits["train"].labels
    torch.manual_seed(0)
    init = ToyMLP()

    def fit(model: nn.Module, lr: float, steps: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        model.train()
        for _ in range(steps):
            idx = torch.randint(0, len(y), (32,), generator=g)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()

    fit(init, 0.05, 10, 0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(k):
        model = ToyMLP()
        model.load_state_dict(init.state_dict())
        fit(model, [0.01, 0.03, 0.1, 0.2, 0.05][i % 5], 15 + 5 * i, seed=i + 1)
        paths.append(folder / f"ft{i}.safetensors")
        save_file({n: t.contiguous() for n, t in model.state_dict().items()}, str(paths[-1]))
    return paths


@pytest.fixture(scope="module")
def toy_paths(tmp_path_factory) -> list[Path]:
    return train_toy_ingredients(tmp_path_factory.mktemp("toy"))


def test_toy_greedy_is_never_below_the_best_individual(toy_paths, tmp_path) -> None:
    task = make_task(n_eval=300)
    ings = load_ingredients(toy_paths)
    ev = Evaluator(task, cache_dir=tmp_path / "cache", progress=False)
    best = max(ev.evaluate(i, ["heldout"])["heldout"]["accuracy"] for i in ings)
    soup = modelsoup.cook("greedy", ings, evaluator=ev)
    fresh = Evaluator(task, cache_dir=tmp_path / "fresh", progress=False)
    got = fresh.evaluate(("fresh", soup.state_dict()), ["heldout"])["heldout"]["accuracy"]
    assert fresh.stats.forward_examples == 300  # the engine's soup, evaluated from scratch
    assert got >= best
    assert abs(got - soup.info["heldout_score"]) <= 1 / 300  # running sum vs engine: rounding
    full = modelsoup.cook("greedy", ings, evaluator=Evaluator(
        task, cache_dir=tmp_path / "full", progress=False), early_rejection=False)  # fmt: skip
    assert full.info["chosen"] == soup.info["chosen"]
    assert soup.info["examples_evaluated"] <= full.info["examples_evaluated"]


def test_cook_greedy_from_the_command_line(toy_paths, tmp_path) -> None:
    import json

    from modelsoup.cli.main import main

    out = tmp_path / "soup"
    argv = ["-q", "cook", "greedy", *map(str, toy_paths), "--task", "toy", "-o", str(out)]
    assert main([*argv, "--rule", ">", "--order", "random", "--seed", "3"]) == 0
    manifest = json.loads((out / "soup.json").read_text())
    assert manifest["recipe"] == "greedy"
    assert manifest["options"] == {
        "rule": ">", "order": "random", "seed": 3, "early_rejection": True
    }  # fmt: skip
    expected = list(range(5))
    random.Random(3).shuffle(expected)
    assert manifest["info"]["order_indices"] == expected
    trajectory = json.loads((out / "trajectory.json").read_text())
    assert trajectory == manifest["info"]["trajectory"]
    assert trajectory[0]["candidate"] == f"ft{expected[0]}"
    weights = [i["weight"] for i in manifest["ingredients"]]
    chosen = manifest["info"]["chosen_indices"]
    assert weights == pytest.approx([1 / len(chosen) if i in chosen else 0 for i in range(5)])
    assert main(argv) == 1  # OUT exists: refused
