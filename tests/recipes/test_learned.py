"""Learned soups: the streamed gradient, layer groups, both modes, and the fitted weights."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import modelsoup
from modelsoup.engine import Mixture, mix_state_dict
from modelsoup.errors import NonFiniteError, RecipeError, TaskError
from modelsoup.evaluation.evaluator import Evaluator
from modelsoup.evaluation.task import Split, Task
from modelsoup.recipes.layer_groups import auto_groups, make_groups, prefix_groups
from modelsoup.recipes.learned import choose_mode
from modelsoup.recipes.learned_grad import MemoryObjective, StreamingObjective, resolve_names
from modelsoup.tasks.toy import ToyMLP, make_task

GOOD = 3  # fine-tuned ingredients; a fourth one, random weights, is the bad one
BAD = GOOD


def _finetune(init: dict, task: Task, lr: float, seed: int, epochs: int = 4) -> dict:
    model = ToyMLP()
    model.load_state_dict(init)
    train = task.split("train")
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(train), generator=g)
        for start in range(0, len(train), 32):
            idx = order[start : start + 32]
            loss = nn.functional.cross_entropy(model(train.examples[idx]), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def task() -> Task:
    return make_task()


@pytest.fixture(scope="module")
def state_dicts(task: Task) -> list[dict[str, torch.Tensor]]:
    """Three ToyMLPs fine-tuned from one init with different learning rates, then a bad one."""
    torch.manual_seed(0)
    init = ToyMLP().state_dict()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is fastest, and immune to a busy machine
    try:
        sds = [_finetune(init, task, lr, seed) for seed, lr in enumerate([0.01, 0.03, 0.005])]
    finally:
        torch.set_num_threads(threads)
    torch.manual_seed(99)
    bad = {k: v.clone() for k, v in init.items()}
    for t in bad.values():
        if t.is_floating_point():
            t.copy_(torch.randn_like(t) * 2)
    bad["norm.running_var"].abs_()
    return [*sds, bad]


@pytest.fixture(scope="module")
def paths(state_dicts: list[dict], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("learned_ckpts")
    out = []
    for i, sd in enumerate(state_dicts):
        p = folder / f"ft{i}.safetensors"
        save_file(sd, p)
        out.append(p)
    return out


@pytest.fixture
def ings(paths: list[Path]) -> list[modelsoup.Ingredient]:
    return modelsoup.load_ingredients([str(p) for p in paths])


@pytest.fixture
def ev(task: Task, tmp_path: Path) -> Evaluator:
    return Evaluator(task, cache_dir=tmp_path / "cache", progress=False)


def _heldout_loss(task: Task, state_dict: dict, beta: float = 1.0) -> float:
    model = task.build_model().eval()
    model.load_state_dict(state_dict)
    split = task.split(task.heldout)
    with torch.no_grad():
        return float(nn.functional.cross_entropy(beta * model(split.examples), split.labels))


# ----------------------------------------------------------------------------- layer groups


def test_auto_groups_toy_model() -> None:
    names = list(ToyMLP().state_dict())
    groups = auto_groups(names)
    assert list(groups) == ["embed", "norm", "block", "head"]
    assert groups["norm"] == [
        "norm.weight",
        "norm.bias",
        "norm.running_mean",
        "norm.running_var",
        "norm.num_batches_tracked",
    ]


def test_auto_groups_transformer_names() -> None:
    names = [
        "bert.embeddings.word_embeddings.weight",
        "bert.embeddings.LayerNorm.weight",
        "bert.encoder.layer.0.attention.self.query.weight",
        "bert.encoder.layer.0.output.dense.weight",
        "bert.encoder.layer.1.attention.self.query.weight",
        "bert.encoder.layer.10.attention.self.query.weight",
        "bert.pooler.dense.weight",
        "classifier.weight",
        "visual.class_embedding",
    ]
    groups = auto_groups(names)
    assert list(groups) == [
        "bert.embeddings",
        "bert.encoder.layer.0",
        "bert.encoder.layer.1",
        "bert.encoder.layer.10",
        "bert.pooler",
        "classifier",
        "visual",
    ]
    assert len(groups["bert.encoder.layer.0"]) == 2
    assert len(groups["bert.embeddings"]) == 2


def test_prefix_groups_and_errors() -> None:
    names = ["enc.layer.1.w", "enc.layer.10.w", "enc.layer.1.b", "head.w", "emb.w"]
    groups = prefix_groups(names, ["enc.layer.1.", "enc", "head"])
    # "enc.layer.1" must not capture "enc.layer.10" (dotted boundaries), and the longest wins
    assert groups == {
        "enc.layer.1": ["enc.layer.1.w", "enc.layer.1.b"],
        "enc": ["enc.layer.10.w"],
        "head": ["head.w"],
        "(rest)": ["emb.w"],
    }
    with pytest.raises(RecipeError, match="match no tensor: decoder"):
        prefix_groups(names, ["decoder", "head"])
    assert make_groups(names, by_layer=True, prefixes=["tensor"]) == {n: [n] for n in names}
    assert make_groups(names, by_layer=False) == {"all": names}
    with pytest.raises(RecipeError, match="only applies with --by-layer"):
        make_groups(names, by_layer=False, prefixes=["head"])


# ------------------------------------------------------------------------------- gradient


def _reference(
    sds: list[dict], task: Task, groups: dict, alpha: torch.Tensor, beta: float, x, y
) -> tuple[float, torch.Tensor, float]:
    """Autograd through functional_call on the in-memory ingredients, written out by hand."""
    model = task.build_model().eval()
    params = {n for n, _ in model.named_parameters()}
    a = alpha.clone().float().requires_grad_()
    b = torch.tensor(beta, requires_grad=True)
    theta = {}
    for g, (_, members) in enumerate(groups.items()):
        for n in members:
            if sds[0][n].is_floating_point():
                w = a[g] if n in params else a[g].detach()
                theta[n] = sum(w[i] * sd[n] for i, sd in enumerate(sds))
            else:
                theta[n] = sds[int(torch.argmax(alpha[g]))][n]
    logits = torch.func.functional_call(model, theta, (x,))
    loss = nn.functional.cross_entropy(b * logits, y)
    loss.backward()
    return float(loss.detach()), a.grad.double(), float(b.grad)


@pytest.mark.parametrize("by_layer", [False, True])
def test_streamed_gradient_equals_autograd(by_layer, ings, state_dicts, task) -> None:
    names, _ = resolve_names(ings[0], task.build_model())
    groups = make_groups(names, by_layer)
    alpha = torch.softmax(
        torch.randn(len(groups), len(ings), generator=torch.Generator().manual_seed(3)), dim=1
    ).double()
    split = task.split(task.heldout)
    x, y = split.examples[:100], split.labels[:100]
    ref_loss, ref_alpha, ref_beta = _reference(state_dicts, task, groups, alpha, 1.3, x, y)
    beta = torch.tensor(1.3, dtype=torch.float64)
    for kind in (StreamingObjective, MemoryObjective):
        obj = kind(ings, task.build_model(), task.forward, groups)
        loss, d_alpha, d_beta = obj.loss_and_grad(alpha, beta, x, y)
        assert d_alpha.shape == (len(groups), len(ings))
        assert loss == pytest.approx(ref_loss, rel=1e-5)
        torch.testing.assert_close(d_alpha, ref_alpha, rtol=1e-4, atol=1e-6)
        assert d_beta == pytest.approx(ref_beta, rel=1e-4, abs=1e-6)
    assert ref_alpha.abs().max() > 1e-3  # the gradient is not trivially zero


def test_streaming_soup_at_uniform_is_the_engine_uniform_soup(ings, task) -> None:
    names, _ = resolve_names(ings[0], task.build_model())
    groups = make_groups(names, by_layer=True)
    obj = StreamingObjective(ings, task.build_model(), task.forward, groups)
    alpha = torch.full((len(groups), len(ings)), 1 / len(ings), dtype=torch.float64)
    soup = obj.tensors(alpha)
    expected = mix_state_dict(ings, Mixture.uniform(len(ings)))
    assert soup.keys() == expected.keys()
    for n, t in expected.items():
        assert torch.equal(soup[n], t), n


# ------------------------------------------------------------------------------ the recipe


@pytest.mark.parametrize("by_layer", [False, True])
@pytest.mark.parametrize("param", ["softmax", "raw"])
def test_initial_alpha_is_exactly_the_uniform_soup(by_layer, param, ings, ev) -> None:
    learned = modelsoup.cook(
        "learned", ings, evaluator=ev, epochs=0, by_layer=by_layer, param=param
    )
    uniform = modelsoup.cook("uniform", ings)
    assert learned.mixture.weights == Mixture.uniform(len(ings)).weights
    assert learned.info["loss_curve"] == []
    assert learned.info["beta"] == 1.0
    a, b = learned.state_dict(), uniform.state_dict()
    assert all(torch.equal(a[n], b[n]) for n in b)
    assert learned.info["heldout_loss_uniform"] == pytest.approx(
        _heldout_loss(ev.task, b), rel=1e-5
    )


def test_learned_soup_downweights_the_bad_ingredient_and_beats_uniform(ings, ev) -> None:
    soup = modelsoup.cook("learned", ings, evaluator=ev, mode="streaming")
    alpha = soup.info["alpha"]
    k = len(ings)
    assert sum(alpha) == pytest.approx(1.0)
    assert alpha[BAD] == min(alpha) and alpha[BAD] < 0.5 / k
    assert list(soup.mixture.weights) == alpha
    n_steps = soup.info["epochs"] * 4  # 400 held-out examples, batches of 128
    assert len(soup.info["loss_curve"]) == soup.info["steps"] == n_steps
    # held-out loss of the soup actually written (the engine's mix), with the fitted beta
    task = ev.task
    uniform_loss = _heldout_loss(task, modelsoup.cook("uniform", ings).state_dict())
    learned_loss = _heldout_loss(task, soup.state_dict(), soup.info["beta"])
    assert learned_loss <= uniform_loss
    assert learned_loss < 0.5 * uniform_loss  # the bad ingredient ruins the uniform soup
    assert soup.info["heldout_loss"] == pytest.approx(learned_loss, rel=1e-4)
    assert soup.info["heldout_loss_uniform"] == pytest.approx(uniform_loss, rel=1e-4)


def test_by_layer_shapes_and_mixture(ings, ev) -> None:
    soup = modelsoup.cook("learned", ings, evaluator=ev, by_layer=True, epochs=2)
    info = soup.info
    k = len(ings)
    assert list(info["groups"]) == ["embed", "norm", "block", "head"]
    assert set(info["alpha_by_group"]) == set(info["groups"])
    infos = ings[0].tensor_infos
    assert set(soup.mixture.per_tensor) == set(infos)
    for group, members in info["groups"].items():
        row = info["alpha_by_group"][group]
        assert len(row) == k and sum(row) == pytest.approx(1.0)
        for n in members:
            assert soup.mixture.per_tensor[n] == tuple(row)
    # per-ingredient weights: the parameter-count-weighted mean of the group rows
    sizes = {g: sum(infos[n].numel for n in m) for g, m in info["groups"].items()}
    total = sum(sizes.values())
    for i in range(k):
        expected = sum(sizes[g] * info["alpha_by_group"][g][i] for g in sizes) / total
        assert soup.mixture.weights[i] == pytest.approx(expected)
    assert info["alpha_by_group"]["head"][BAD] < 1 / k
    # the written soup follows the per-tensor weights
    sd = soup.state_dict()
    w = soup.mixture.per_tensor["head.weight"]
    expected_head = sum(wi * ing.get("head.weight") for wi, ing in zip(w, ings))
    torch.testing.assert_close(sd["head.weight"], expected_head)


@pytest.mark.parametrize("by_layer", [False, True])
def test_streaming_and_memory_modes_agree(by_layer, ings, ev) -> None:
    out = {
        mode: modelsoup.cook("learned", ings, evaluator=ev, mode=mode, by_layer=by_layer, epochs=3)
        for mode in ("memory", "streaming")
    }
    mem, stream = out["memory"].info, out["streaming"].info
    assert (mem["mode"], stream["mode"]) == ("memory", "streaming")
    torch.testing.assert_close(
        torch.tensor(mem["alpha"]), torch.tensor(stream["alpha"]), rtol=0, atol=1e-5
    )
    assert mem["beta"] == pytest.approx(stream["beta"], abs=1e-5)
    assert mem["loss_curve"] == pytest.approx(stream["loss_curve"], abs=1e-5)
    if by_layer:
        for g in mem["alpha_by_group"]:
            assert mem["alpha_by_group"][g] == pytest.approx(stream["alpha_by_group"][g], abs=1e-5)


def test_streaming_with_pickle_ingredients(state_dicts, write_checkpoints, ev, ings) -> None:
    pt = modelsoup.load_ingredients([str(p) for p in write_checkpoints(state_dicts, "pt")])
    a = modelsoup.cook("learned", pt, evaluator=ev, mode="streaming", epochs=1)
    b = modelsoup.cook("learned", ings, evaluator=ev, mode="memory", epochs=1)
    assert a.info["alpha"] == pytest.approx(b.info["alpha"], abs=1e-6)


def test_auto_mode_follows_the_budget(ings, task) -> None:
    names, _ = resolve_names(ings[0], task.build_model())
    need = len(ings) * sum(
        4 * ings[0].tensor_infos[n].numel for n in names if n != "norm.num_batches_tracked"
    )
    assert choose_mode("auto", ings, names, budget_gb=need / 1e9) == ("memory", need, need)
    assert choose_mode("auto", ings, names, budget_gb=(need - 1) / 1e9)[0] == "streaming"
    assert choose_mode("memory", ings, names, budget_gb=1e-9)[0] == "memory"


# ------------------------------------------------------------------------------- bad input


def test_refuses_fewer_than_two_ingredients(ings, ev) -> None:
    with pytest.raises(RecipeError, match="at least 2 ingredients"):
        modelsoup.cook("learned", ings[:1], evaluator=ev)


def test_refuses_without_a_task(ings) -> None:
    with pytest.raises(RecipeError, match="give it a task"):
        modelsoup.cook("learned", ings)


def test_refuses_a_task_without_heldout_split(ings, task, tmp_path) -> None:
    broken = dataclasses.replace(task)
    broken.heldout = "validation"
    ev = Evaluator(broken, cache_dir=tmp_path, progress=False)
    with pytest.raises(TaskError, match="no held-out split"):
        modelsoup.cook("learned", ings, evaluator=ev)


def test_refuses_a_model_that_does_not_fit(ings, task, tmp_path) -> None:
    other = dataclasses.replace(task, build_model=lambda: ToyMLP(hidden=8))
    ev = Evaluator(other, cache_dir=tmp_path, progress=False)
    with pytest.raises(TaskError, match="shapes differ"):
        modelsoup.cook("learned", ings, evaluator=ev)


def test_bad_options_are_refused() -> None:
    with pytest.raises(RecipeError, match="lr"):
        modelsoup.get_recipe("learned")(lr=-1.0)
    with pytest.raises(RecipeError, match="mode"):
        modelsoup.get_recipe("learned")(mode="disk")


def test_nonfinite_loss_stops_and_names_the_step(ings, ev) -> None:
    # raw weights and an absurd learning rate: the first step blows alpha up to ~1e30
    with pytest.raises(NonFiniteError, match=r"at step 2 \(epoch 1, batch 2\)"):
        modelsoup.cook("learned", ings, evaluator=ev, param="raw", lr=1e30, mode="streaming")


# ------------------------------------------------------------------------------ tied weights


class TiedModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(6, 5)
        self.mid = nn.Linear(5, 5)
        self.out = nn.Linear(5, 6, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.mid(self.emb(x))))


def test_tied_weights(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 6, (60,), generator=g)
    split = Split("heldout", examples=x, labels=(x + 1) % 6)
    task = Task(
        name="tied",
        build_model=TiedModel,
        splits={"heldout": split},
        heldout="heldout",
        id_test="heldout",
        shifts=(),
        num_classes=6,
        batch_size=20,
    )
    paths = []
    for i in range(3):
        torch.manual_seed(i)
        sd = {k: v.clone() for k, v in TiedModel().state_dict().items()}  # both tied names
        paths.append(tmp_path / f"t{i}.safetensors")
        save_file(sd, paths[-1])
    ings = modelsoup.load_ingredients([str(p) for p in paths])
    names, aliases = resolve_names(ings[0], TiedModel())
    assert aliases == {"out.weight": "emb.weight"} and "out.weight" not in names
    ev = Evaluator(task, cache_dir=tmp_path / "cache", progress=False)
    runs = {
        mode: modelsoup.cook("learned", ings, evaluator=ev, by_layer=True, mode=mode, epochs=2)
        for mode in ("memory", "streaming")
    }
    soup = runs["streaming"]
    assert soup.info["tied"] == {"out.weight": "emb.weight"}
    assert soup.mixture.per_tensor["out.weight"] == soup.mixture.per_tensor["emb.weight"]
    sd = soup.state_dict()
    assert torch.equal(sd["out.weight"], sd["emb.weight"])
    assert soup.info["alpha"] == pytest.approx(runs["memory"].info["alpha"], abs=1e-5)
    assert soup.info["heldout_loss"] < soup.info["heldout_loss_uniform"]


# ----------------------------------------------------------------------------------- CLI


def test_cli_cook_learned_by_layer(paths, tmp_path) -> None:
    from modelsoup.cli.main import main

    out = tmp_path / "soup"
    argv = ["-q", "cook", "learned", *map(str, paths), "--task", "toy", "--device", "cpu"]
    code = main([*argv, "--by-layer", "--epochs", "2", "--mode", "streaming", "-o", str(out)])
    assert code == 0
    manifest = json.loads((out / "soup.json").read_text())
    info = manifest["info"]
    assert manifest["recipe"] == "learned" and manifest["options"]["by_layer"] is True
    assert info["mode"] == "streaming" and info["epochs"] == 2 and len(info["loss_curve"]) == 8
    assert list(info["alpha_by_group"]) == ["embed", "norm", "block", "head"]
    assert [i["weight"] for i in manifest["ingredients"]] == info["alpha"]
    ings = modelsoup.load_ingredients([str(p) for p in paths])
    mixture = Mixture(
        tuple(manifest["mixture"]["weights"]),
        {k: tuple(v) for k, v in manifest["mixture"]["per_tensor"].items()},
    )
    written = load_file(out / "model.safetensors")
    expected = mix_state_dict(ings, mixture)
    assert all(torch.equal(written[n], expected[n]) for n in expected)


def test_cli_nonfinite_writes_nothing(paths, tmp_path, capsys) -> None:
    from modelsoup.cli.main import main

    out = tmp_path / "soup"
    argv = ["-q", "cook", "learned", *map(str, paths), "--task", "toy", "--device", "cpu"]
    code = main([*argv, "--param", "raw", "--lr", "1e30", "-o", str(out)])
    assert code == 1
    assert "not finite" in capsys.readouterr().err
    assert not out.exists()
