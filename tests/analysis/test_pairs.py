"""Figures 3 and 4: per-pair angle, interpolation advantage, soup and ensemble scores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modelsoup.analysis.geometry import angle, delta_gram, float_tensor_names
from modelsoup.analysis.pairs import (
    analyze_pairs,
    choose_pairs,
    plot_angle_advantage,
    plot_soup_vs_ensemble,
)
from modelsoup.errors import AnalysisError
from modelsoup.ingredients import load_ingredient, load_ingredients

from .conftest import manual_logits


def acc(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).double().mean())


def test_choose_pairs() -> None:
    assert choose_pairs(3, None) == [(0, 1), (0, 2), (1, 2)]
    assert choose_pairs(3, 3) == [(0, 1), (0, 2), (1, 2)]
    got = choose_pairs(5, 4, seed=1)
    assert len(set(got)) == 4 and all(0 <= i < j < 5 for i, j in got)
    assert choose_pairs(5, 4, seed=1) == got  # seeded
    with pytest.raises(AnalysisError, match="4 fine-tuned models make only 6 pairs"):
        choose_pairs(4, 7)
    with pytest.raises(AnalysisError, match="at least two"):
        choose_pairs(1, None)


def test_pair_numbers_match_a_direct_computation(
    toy_run: Path, evaluator, toy_task, tmp_path
) -> None:
    init = load_ingredient(toy_run / "init.safetensors")
    models = load_ingredients([toy_run / "trials"])
    res = analyze_pairs(evaluator, init, models, [(0, 2), (1, 3)])
    assert [(p.a, p.b) for p in res] == [("trial_000", "trial_002"), ("trial_001", "trial_003")]
    names = float_tensor_names(init)
    flat = lambda ing: torch.cat([ing.get(n).double().reshape(-1) for n in names])  # noqa: E731
    for p, (i, j) in zip(res, [(0, 2), (1, 3)]):
        a, b = models[i], models[j]
        assert p.angle == pytest.approx(angle(flat(a) - flat(init), flat(b) - flat(init)), abs=1e-9)
        assert p.distance == pytest.approx(float((flat(a) - flat(b)).norm()), rel=1e-9)
        mid = {
            k: (v + b.get(k)) / 2 if v.is_floating_point() else v for k, v in a.state_dict().items()
        }
        for group, splits in (("id", ["test"]), ("shift", list(toy_task.shifts))):
            sa, sb, soup, ens = [], [], [], []
            for s in splits:
                x, y = toy_task.split(s).examples, toy_task.split(s).labels
                fa, fb = manual_logits(a.state_dict(), x), manual_logits(b.state_dict(), x)
                sa.append(acc(fa, y))
                sb.append(acc(fb, y))
                soup.append(acc(manual_logits(mid, x), y))
                ens.append(acc((fa + fb) / 2, y))
            mean = lambda v: sum(v) / len(v)  # noqa: E731
            assert p.score_a[group] == pytest.approx(mean(sa), abs=1e-12)
            assert p.score_b[group] == pytest.approx(mean(sb), abs=1e-12)
            assert p.soup[group] == pytest.approx(mean(soup), abs=1e-12)
            assert p.ensemble[group] == pytest.approx(mean(ens), abs=1e-12)
            assert p.advantage[group] == pytest.approx(mean(soup) - (mean(sa) + mean(sb)) / 2)
    for fn, name in ((plot_angle_advantage, "fig3.png"), (plot_soup_vs_ensemble, "fig4.png")):
        path = fn(res, tmp_path / name)
        assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 10_000


def test_a_precomputed_gram_is_used(toy_run: Path, evaluator) -> None:
    init = load_ingredient(toy_run / "init.safetensors")
    models = load_ingredients([toy_run / "trials"])
    gram = delta_gram(init, models)
    fake = gram.copy()
    fake[0, 1] = fake[1, 0] = 0.0  # pretend the first two deltas are orthogonal
    (p,) = analyze_pairs(evaluator, init, models, [(0, 1)], gram=fake)
    assert p.angle == 90.0
    (q,) = analyze_pairs(evaluator, init, models, [(0, 1)], gram=gram)
    assert 0.0 < q.angle < 90.0
