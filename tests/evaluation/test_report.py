"""Rendering and writing a comparison: table markers, JSON/CSV/Markdown content, safe writes."""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from pathlib import Path

import pytest

from modelsoup.errors import OutputError
from modelsoup.evaluation.compare import ComparisonResult, MethodResult
from modelsoup.evaluation.report import (
    format_table,
    render_markdown,
    results_csv,
    results_dict,
    write_results,
)


def _m(
    score: float,
    p: float | None,
    delta: float,
    p_best: float | None,
    tied: bool,
    metric: str | None = "accuracy",
) -> dict:
    return {
        "accuracy": score, "score": score, "metric": metric, "n": 200, "nll": 0.5, "ece": 0.05,
        "ci_low": score - 0.03, "ci_high": score + 0.03, "p_value": p,
        "delta_vs_best_individual": delta, "p_value_vs_best": p_best, "tied_with_best": tied,
    }  # fmt: skip


def make_result(shifts: bool = True) -> ComparisonResult:
    cols = ["val", "test", *(["s1", "s2"] if shifts else [])]
    bi = {c: _m(0.80, None, 0.0, 0.0004, False) for c in cols}
    soup = {c: _m(0.90, 0.0004, 0.10, None, True) for c in cols}
    ens = {c: _m(0.7812, 0.02, -0.0188, 0.3, True) for c in cols}
    ens["test"]["nll"] = float("nan")
    if shifts:
        bi["shift_avg"] = _m(0.80, None, 0.0, 0.001, False, metric=None)
        soup["shift_avg"] = _m(0.90, 0.0001, 0.1, None, True, metric=None)
        ens["shift_avg"] = _m(0.85, 0.2, 0.05, 0.04, False, metric=None)
    methods = {
        "best_individual": MethodResult("best_individual", "Best individual (held-out)", "individual", ["a"], 1, bi),
        "greedy_soup": MethodResult("greedy_soup", "Greedy soup", "soup", ["a", "b"], 1, soup),
        "ensemble": MethodResult("ensemble", "Ensemble", "ensemble", ["a", "b", "c"], 3, ens),
    }  # fmt: skip
    ingredients = {
        name: {c: _m(v, None, 0, None, False) for c in [*cols, *(["shift_avg"] if shifts else [])]}
        for name, v in [("a", 0.8), ("b", 0.75), ("c", 0.7), ("init", 0.5)]
    }
    columns = [*cols, *(["shift_avg"] if shifts else [])]
    return ComparisonResult(
        task={
            "name": "fake",
            "heldout": "val",
            "id_test": "test",
            "shifts": ["s1", "s2"] if shifts else [],
            "metric": {c: "accuracy" for c in cols},
            "n": {c: 200 for c in cols},
        },  # fmt: skip
        methods=methods,
        ingredients=ingredients,
        init="init",
        best={c: "greedy_soup" for c in columns},
        settings={
            "seed": 0,
            "rule": ">=",
            "alpha": 0.05,
            "n_permutations": 100,
            "n_bootstrap": 100,
            "learned": {},
        },  # fmt: skip
    )


def test_terminal_table_markers_and_intervals() -> None:
    text = format_table(make_result())
    rows = {line.split()[0]: line.split() for line in text.splitlines()[2:] if line.strip()}
    assert rows["best_individual"][1:] == ["80.00", "80.00", "80.00", "80.00", "80.00", "1x", "1/3"]
    assert rows["greedy_soup"][1:6] == ["90.00*+"] * 5  # best; significantly above the reference
    assert rows["ensemble"][1:6] == [
        "78.12=-",
        "78.12=-",
        "78.12=-",
        "78.12=-",
        "85.00",
    ]  # p 0.2: no mark
    assert rows["ensemble"][6:] == ["3x", "3/3"]
    header = text.splitlines()[0].split()
    assert header[:5] == ["method", "val", "(sel.)", "test", "(ID)"]
    assert "shift" in header and "avg" in header
    with_ci = format_table(make_result(), ci=True)
    assert "90.00*+ [87.0, 93.0]" in with_ci
    # columns are aligned: every data line has the same width as the separator
    lines = with_ci.splitlines()
    assert {len(line) for line in lines[1:5]} == {len(lines[1])}


def test_results_dict_is_strict_json_with_roles_and_metadata() -> None:
    doc = results_dict(make_result(), metadata={"command": "test"})
    text = json.dumps(doc, allow_nan=False)
    back = json.loads(text)
    assert back["methods"]["ensemble"]["metrics"]["test"]["nll"] is None  # NaN -> null
    assert back["methods"]["greedy_soup"]["metrics"]["shift_avg"]["accuracy"] == 0.9
    assert back["methods"]["ensemble"]["cost"] == 3
    assert back["methods"]["greedy_soup"]["ingredients"] == ["a", "b"]
    assert back["task"]["roles"] == {"val": "heldout", "test": "id_test", "s1": "shift",
                                     "s2": "shift", "shift_avg": "shift_avg"}  # fmt: skip
    assert back["ingredients"]["init"]["is_init"] and not back["ingredients"]["a"]["is_init"]
    assert back["metadata"]["command"] == "test"
    assert set(back["metadata"]["machine"]) >= {"hostname", "python", "torch", "cpus"}
    assert back["columns"] == ["val", "test", "s1", "s2", "shift_avg"]


def test_results_csv_one_row_per_method_and_column() -> None:
    rows = list(csv.DictReader(io.StringIO(results_csv(make_result()))))
    assert len(rows) == 3 * 5
    first = rows[0]
    assert first["method"] == "best_individual" and first["split"] == "val"
    assert first["role"] == "heldout" and first["p_value"] == ""
    soup_avg = next(r for r in rows if r["method"] == "greedy_soup" and r["split"] == "shift_avg")
    assert float(soup_avg["score"]) == 0.9 and soup_avg["metric"] == "accuracy"
    assert float(soup_avg["p_value"]) == 0.0001 and soup_avg["tied_with_best"] == "True"


def test_markdown_table_p_values_and_figure() -> None:
    md = render_markdown(make_result())
    assert "| Greedy soup (`greedy_soup`) | **90.00 [87.0, 93.0]** \\*" in md
    assert "| Best individual (held-out) (`best_individual`) | 80.00 [77.0, 83.0] |" in md
    assert "| `greedy_soup` | <0.001 | <0.001 | <0.001 | <0.001 | <0.001 |" in md
    assert "| `best_individual` | ref. |" in md
    assert "| `ensemble` | 0.020 | 0.020 | 0.020 | 0.020 | 0.200 |" in md
    assert "![Figure 1" in md and "(fig1.png)" in md
    assert "| init (init) |" in md
    assert "fig1.png" not in render_markdown(make_result(), figure=None)


def test_write_results_is_atomic_and_refuses_to_overwrite(tmp_path: Path) -> None:
    run = tmp_path / "run"
    written = write_results(make_result(), run)
    assert sorted(p.name for p in run.iterdir()) == [
        "fig1.png",
        "report.md",
        "results.csv",
        "results.json",
    ]
    assert set(written) == {"fig1.png", "report.md", "results.csv", "results.json"}
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(OutputError, match="results.json"):
        write_results(make_result(), run)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    (run / "results.json").unlink()
    (run / "report.md").write_text("old")
    with pytest.raises(OutputError, match="report.md"):  # any existing result file blocks
        write_results(make_result(), run)
    assert not (run / "results.json").exists()
    write_results(make_result(), run, overwrite=True)
    assert (run / "report.md").read_text().startswith("# Model soups on `fake`")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="not a directory"):
        write_results(make_result(), blocker)


def test_no_shift_splits_means_no_figure(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        written = write_results(make_result(shifts=False), tmp_path / "run")
    assert "fig1.png" not in written and not (tmp_path / "run" / "fig1.png").exists()
    assert "no shift splits" in caplog.text
    assert "![Figure 1" not in (tmp_path / "run" / "report.md").read_text()
    assert "shift avg" not in format_table(make_result(shifts=False))


def test_missing_matplotlib_skips_the_figure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import raises ImportError
    with caplog.at_level(logging.WARNING):
        written = write_results(make_result(), tmp_path / "run")
    assert "fig1.png" not in written
    assert "modelsoup[plots]" in caplog.text
