"""analysis.md: the paragraphs follow the numbers (signs, sizes, winners)."""

from __future__ import annotations

import copy

import pytest

from modelsoup.analysis.report import render_markdown
from modelsoup.analysis.stats import describe_correlation, pearson


def pair(a: str, b: str, angle: float, adv: float, soup: dict, ens: dict) -> dict:
    return {"a": a, "b": b, "angle": angle, "distance": 1.0, "score_a": soup, "score_b": soup,
            "soup": soup, "ensemble": ens, "advantage": {"id": adv, "shift": adv / 2}}  # fmt: skip


@pytest.fixture
def doc() -> dict:
    pairs = [
        pair("t0", "t1", 10.0, 0.03, {"id": 0.80, "shift": 0.60}, {"id": 0.81, "shift": 0.58}),
        pair("t0", "t2", 20.0, 0.02, {"id": 0.82, "shift": 0.61}, {"id": 0.83, "shift": 0.60}),
        pair("t1", "t2", 30.0, 0.01, {"id": 0.79, "shift": 0.62}, {"id": 0.80, "shift": 0.59}),
    ]
    angles, adv = [p["angle"] for p in pairs], [p["advantage"]["id"] for p in pairs]
    return {
        "run_dir": "runs/x",
        "task": {"name": "toy", "id_test": "test"},
        "light": False,
        "models": {
            "init": "init",
            "fine_tuned": ["t0", "t1", "t2"],
            "best": "t0",
            "second": "t1",
            "heldout_score": {"t0": 0.9, "t1": 0.85, "t2": 0.8},
        },  # fmt: skip
        "figures": {"plane": "fig2_plane.png", "angle": "fig3.png", "soup_vs_ensemble": "fig4.png"},
        "skipped": {"interpolation": "something went wrong"},
        "plane": {
            "names": ["init", "t0", "t1"],
            "angle": 42.0,
            "xs": [0, 1, 2, 3, 4, 5, 6],
            "loss_split": "train",
            "error_split": "test",
            "examples": {"train": 100, "test": 50},
            "models": {
                "init": {"loss": 2.0, "error": 0.5},
                "t0": {"loss": 0.1, "error": 0.2},
                "t1": {"loss": 0.2, "error": 0.25},
            },
            "best": {"error": 0.15, "weights": [0.1, 0.45, 0.45], "inside": True},
            "nonfinite": 0,
        },  # fmt: skip
        "pairs": {
            "pairs": pairs,
            "correlation": {
                "angle_vs_advantage_id": pearson(angles, adv),
                "soup_vs_ensemble_id": 0.9,
                "soup_vs_ensemble_shift": 0.8,
            },  # fmt: skip
            "soup_minus_ensemble": {
                "id": {"mean": -0.01, "soup_better": 0, "ensemble_better": 3},
                "shift": {"mean": 0.02, "soup_better": 3, "ensemble_better": 0},
            },
        },
    }


def test_paragraphs_follow_the_numbers(doc: dict) -> None:
    md = render_markdown(doc)
    assert "Not computed for this run: something went wrong." in md
    assert "![Figure 2: the loss and error landscape](fig2_plane.png)" in md
    # the best grid point is inside the triangle and beats both fine-tuned models
    assert "15.0%" in md and "between the fine-tuned models" in md
    # angle vs advantage: a perfect negative correlation here
    assert "a strong negative correlation (r = -1.00, 3 points)" in md
    assert "this run shows the opposite" in md and "anecdotal" in md
    # soups vs ensembles: the paper's pattern
    assert "loses in 3" in md and "ensembles are slightly better in distribution here" in md
    assert "soups are better under shift, as in the paper" in md
    assert "## Eq. 1" in md and "## Calibration" in md


def test_paragraphs_change_with_the_numbers(doc: dict) -> None:
    flipped = copy.deepcopy(doc)
    for p in flipped["pairs"]["pairs"]:
        p["advantage"]["id"] = p["angle"] / 1000
    angles = [p["angle"] for p in flipped["pairs"]["pairs"]]
    flipped["pairs"]["correlation"]["angle_vs_advantage_id"] = pearson(
        angles, [p["advantage"]["id"] for p in flipped["pairs"]["pairs"]]
    )
    flipped["pairs"]["soup_minus_ensemble"]["shift"]["mean"] = -0.02
    flipped["plane"]["best"] = {"error": 0.2, "weights": [0.0, 1.0, 0.0], "inside": True}
    md = render_markdown(flipped)
    assert "a strong positive correlation (r = 1.00, 3 points)" in md and "this run agrees" in md
    assert "under shift the soups do not beat the ensembles here, unlike the paper" in md
    assert "the fine-tuned models themselves are the best points" in md


def test_describe_correlation() -> None:
    assert (
        describe_correlation(-0.45, 12) == "a moderate negative correlation (r = -0.45, 12 points)"
    )
    assert describe_correlation(0.05, 5).startswith("no meaningful correlation")
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 2, None, 4], [1, 2, 5, 4]) == pytest.approx(1.0)
