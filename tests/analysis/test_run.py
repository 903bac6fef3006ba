"""``modelsoup analyze`` end to end on a toy run directory, and its refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from modelsoup.analysis import AnalysisOptions, analyze, load_run
from modelsoup.analysis.run import FIGURES, _check_results_task, resolve_task
from modelsoup.cli.main import main
from modelsoup.errors import AnalysisError, RunDirError, TaskError


def test_analyze_end_to_end_through_the_cli(run_copy: Path, capsys) -> None:
    code = main(
        ["-q", "analyze", str(run_copy), "--task", "toy", "--pairs", "3", "--resolution", "3"]
    )
    assert code == 0, capsys.readouterr().err
    out = run_copy / "analysis"
    doc = json.loads((out / "analysis.json").read_text())
    assert doc["schema"] == "modelsoup-analysis-v1" and doc["skipped"] == {}
    assert set(doc["figures"]) == set(FIGURES)
    for key, name in FIGURES.items():
        png = out / name
        assert doc["figures"][key] == name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, name
    # the numbers hang together
    assert len(doc["pairs"]["pairs"]) == 3 and len(doc["eq1"]["points"]) == 9
    assert len(doc["interpolation"]) == 3
    assert (
        doc["interpolation"][0]["a"] == "init"
        and doc["interpolation"][0]["b"] == doc["models"]["best"]
    )
    ranked = sorted(doc["models"]["heldout_score"].items(), key=lambda kv: -kv[1])
    assert doc["models"]["best"] == ranked[0][0]
    assert doc["interpolation"][0]["score"]["heldout"][-1] == pytest.approx(ranked[0][1])
    assert doc["plane"]["names"] == ["init", doc["models"]["best"], doc["models"]["second"]]
    assert len(doc["plane"]["loss"]) == 3
    assert doc["cost"]["forward_examples"] > 0
    # the report shows every figure and describes this run's numbers
    md = (out / "analysis.md").read_text()
    for name in FIGURES.values():
        assert f"]({name})" in md
    r = doc["pairs"]["correlation"]["angle_vs_advantage_id"]
    assert (f"r = {r:.2f}" in md) if r is not None else ("no defined correlation" in md)
    assert f"r = {doc['eq1']['correlation']:.2f}" in md
    assert "No results.json" in md  # compare did not run: the fallback methods
    # the API with the same settings: everything comes from the cache, same numbers
    again = analyze(run_copy, "toy", pairs=3, resolution=3)
    assert again["cost"]["forward_examples"] == 0 and again["cost"]["cached_examples"] > 0
    assert again["pairs"] == doc["pairs"] and again["plane"] == doc["plane"]


def test_light_is_cheap_and_complete(run_copy: Path) -> None:
    doc = analyze(run_copy, "toy", light=True)
    assert doc["light"] is True and doc["skipped"] == {}
    assert len(doc["pairs"]["pairs"]) == 3 and len(doc["interpolation"]) == 1
    assert [p["alpha"] for p in doc["eq1"]["points"]] == [0.5, 0.5, 0.5]
    assert len(doc["plane"]["xs"]) == AnalysisOptions.light().resolution
    assert doc["plane"]["examples"] == {"train": 128, "test": 128}
    assert doc["interpolation"][0]["alphas"] == [0.0, 0.5, 1.0]
    assert set(doc["figures"]) == set(FIGURES)
    assert "light version" in (run_copy / "analysis" / "analysis.md").read_text()


def test_the_task_comes_from_the_run(run_copy: Path) -> None:
    run = load_run(run_copy)
    assert resolve_task(run, "toy").name == "toy"
    with pytest.raises(TaskError, match="pass --task"):
        resolve_task(run, None)
    run.sweep = {"task": "toy"}  # a sweep of a built-in task
    assert resolve_task(run, None).name == "toy"
    run.sweep = {"task": "not-registered"}
    with pytest.raises(TaskError, match="pass --task"):
        resolve_task(run, None)
    (run_copy / "results.json").write_text(json.dumps({"metadata": {"task_ref": "toy"}}))
    assert resolve_task(load_run(run_copy), None).name == "toy"
    # the task's arguments, when compare's caller recorded them
    meta = {"task_ref": "toy", "task_kwargs": {"n_eval": 100}}
    results = {"metadata": meta, "task": {"name": "toy", "n": {"test": 400, "heldout": 400}}}
    (run_copy / "results.json").write_text(json.dumps(results))
    run = load_run(run_copy)
    task = resolve_task(run, None)
    assert len(task.split("test")) == 100
    (note,) = _check_results_task(run, task)
    assert "test: 400 there, 100 here" in note and "heldout: 400 there, 100 here" in note
    assert _check_results_task(run, resolve_task(run, "toy")) == []


def test_refusals(run_copy: Path, tmp_path: Path, capsys) -> None:
    # no task recorded
    with pytest.raises(TaskError, match="pass --task"):
        analyze(run_copy)
    # more pairs than exist
    assert main(["analyze", str(run_copy), "--task", "toy", "--pairs", "7"]) == 1
    assert "4 fine-tuned models make only 6 pairs" in capsys.readouterr().err
    with pytest.raises(AnalysisError, match="only 6 pairs"):
        analyze(run_copy, "toy", pairs=9)
    # no run directory
    with pytest.raises(RunDirError, match="modelsoup sweep"):
        load_run(tmp_path / "missing")
    # no init
    no_init = tmp_path / "no_init"
    shutil.copytree(run_copy, no_init)
    (no_init / "init.safetensors").unlink()
    with pytest.raises(RunDirError, match=r"no init checkpoint.*modelsoup sweep"):
        analyze(no_init, "toy")
    # no trials
    no_trials = tmp_path / "no_trials"
    shutil.copytree(run_copy, no_trials)
    shutil.rmtree(no_trials / "trials")
    assert main(["analyze", str(no_trials), "--task", "toy"]) == 1
    err = capsys.readouterr().err
    assert "no trials/ folder" in err and "modelsoup sweep" in err
    # one trial only
    one = tmp_path / "one"
    shutil.copytree(run_copy, one)
    for p in sorted((one / "trials").glob("trial_00[123].*")):
        p.unlink()
    with pytest.raises(RunDirError, match="1 fine-tuned model"):
        analyze(one, "toy")
    assert not (run_copy / "analysis").exists()  # nothing was written by the refusals


def test_a_section_that_cannot_be_computed_is_skipped(run_copy: Path) -> None:
    """Two identical fine-tuned models: their plane is degenerate, the rest still runs."""
    trials = run_copy / "trials"
    for p in sorted(trials.glob("trial_00[23].*")):
        p.unlink()
    shutil.copy(trials / "trial_000.safetensors", trials / "trial_001.safetensors")
    doc = analyze(
        run_copy, "toy", options=AnalysisOptions(resolution=2, curves=1, alphas=(0.0, 1.0))
    )
    assert "plane" in doc["skipped"] and "parallel" in doc["skipped"]["plane"]
    assert "plane" not in doc["figures"] and doc["pairs"]["pairs"][0]["angle"] == 0.0
    md = (run_copy / "analysis" / "analysis.md").read_text()
    assert "Not computed for this run" in md and "parallel" in md


def test_a_task_without_shifts_or_training_split(run_copy: Path) -> None:
    import dataclasses

    from modelsoup.tasks.toy import make_task

    full = make_task()
    task = dataclasses.replace(
        full, splits={s: full.splits[s] for s in ("heldout", "test")}, shifts=(), train=None
    )
    options = AnalysisOptions(pairs=2, resolution=2, curves=1, alphas=(0.0, 0.5, 1.0))
    doc = analyze(run_copy, task, options=options)
    assert doc["skipped"] == {} and set(doc["figures"]) == set(FIGURES)
    assert doc["plane"]["loss_split"] == "heldout"  # no training split: the held-out loss
    assert set(doc["pairs"]["pairs"][0]["advantage"]) == {"id"}
    assert set(doc["interpolation"][0]["score"]) == {"heldout", "id"}
    assert "shift_avg" not in doc["calibration"]["methods"][0]["ece"]
    md = (run_copy / "analysis" / "analysis.md").read_text()
    assert "Under shift" not in md
