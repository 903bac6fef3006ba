"""The demo task and the whole demo pipeline (on a tiny BERT, so it runs in seconds).

The pipeline test is the CI smoke run of every stage: sweep (2 trials of 3 steps), compare,
report and the light analyses, on a few hundred examples.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelsoup.cli.main import main
from modelsoup.demo import demo_task
from modelsoup.demo.run import run_demo
from modelsoup.errors import ModelSoupError, TaskError
from modelsoup.evaluation.task import load_task


def test_packaged_minilm_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    path = demo_task.minilm_dir()
    assert (path / "config.json").is_file()
    monkeypatch.setattr(demo_task, "MODEL_SHA256", "0" * 64)
    with pytest.raises(TaskError, match=r"sha256 is 53aa5117.*expected 0000"):
        demo_task.minilm_dir()


def test_demo_splits_roles_and_metrics() -> None:
    texts = demo_task.demo_texts("quick")
    assert {k: len(v) for k, v in texts.items()} == {
        "train": 2000,
        "heldout": 400,
        "test": 500,
        "typos": 250,
        "amazon": 250,
        "tweets": 250,
        "drugs": 250,
    }
    movies = {k: set(texts[k].groups or ()) for k in ("train", "heldout", "test")}
    assert not movies["train"] & movies["test"] and not movies["heldout"] & movies["test"]
    assert not movies["train"] & movies["heldout"]
    # The quick test set is a subsample of the default one (same unseen movies).
    assert set(texts["test"].texts) <= set(demo_task.demo_texts("default")["test"].texts)
    assert sum(texts["tweets"].labels) == 125  # balanced sample
    task = load_task("demo", size="quick")
    assert task.name == "demo" and task.shifts == ("typos", "amazon", "tweets", "drugs")
    assert (task.heldout, task.id_test, task.train) == ("heldout", "test", "train")
    assert {s: task.metric_for(s) for s in task.report_splits} == {
        "test": "accuracy",
        "typos": "accuracy",
        "amazon": "balanced_accuracy",
        "tweets": "accuracy",
        "drugs": "balanced_accuracy",
    }
    assert max(len(e) for e in task.split("drugs").examples) == 64
    with pytest.raises(TaskError, match="unknown demo size 'huge'"):
        demo_task.make_task("huge")


def test_demo_pipeline_on_a_tiny_bert(tiny_bert_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "demo"
    result = run_demo(run, preset="smoke", model_dir=tiny_bert_dir, progress=False)
    assert sorted(result.files) == [
        "fig1.png",
        "report.md",
        "results.csv",
        "results.json",
        "soups/greedy_soup",
    ]
    doc = json.loads((run / "results.json").read_text())
    assert set(doc["ingredients"]) == {"init", "trial_000", "trial_001"}
    assert doc["ingredients"]["init"]["is_init"] is True
    assert {"best_individual", "uniform_soup", "greedy_soup", "ensemble"} <= set(doc["methods"])
    assert doc["metadata"]["preset"] == "smoke" and doc["metadata"]["trials_trained_now"] == [0, 1]
    report = (run / "report.md").read_text()
    assert report.startswith("# modelsoup demo (smoke, 2 runs)")
    assert "| trial_001 |" in report and "Greedy soup vs best individual" in report
    analysis = json.loads((run / "analysis" / "analysis.json").read_text())
    assert analysis and (run / "analysis" / "analysis.md").stat().st_size > 0
    assert doc["metadata"]["task_ref"] == "demo"
    assert "analysis" in result.timings
    # A rerun trains nothing and evaluates nothing new: the same numbers.
    again = run_demo(run, preset="smoke", model_dir=tiny_bert_dir, progress=False, analysis=False)
    assert "analysis" not in again.timings
    assert json.loads((run / "results.json").read_text())["metadata"]["trials_trained_now"] == []
    for name, row in result.comparison.methods.items():
        assert (
            again.comparison.methods[name].metrics["test"]["score"] == row.metrics["test"]["score"]
        )


def test_quick_preset_skips_the_analyses_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    import modelsoup.demo.run as demo_run

    assert demo_run.PRESETS["quick"].analysis is False
    assert demo_run.PRESETS["default"].analysis is True
    seen: list[dict[str, object]] = []

    def fake_run_demo(run_dir: object, **kwargs: object) -> None:
        seen.append(kwargs)
        raise ModelSoupError("stop here")

    monkeypatch.setattr(demo_run, "run_demo", fake_run_demo)
    assert main(["-q", "demo", "--quick"]) != 0
    assert main(["-q", "demo", "--analysis"]) != 0
    assert main(["-q", "demo", "--no-analysis"]) != 0
    assert [(k["preset"], k["analysis"]) for k in seen] == [
        ("quick", None),
        ("default", True),
        ("default", False),
    ]


def test_demo_refuses_fewer_than_two_trials(tmp_path: Path) -> None:
    with pytest.raises(ModelSoupError, match="at least 2 trials"):
        run_demo(tmp_path, preset="smoke", trials=1)
    with pytest.raises(ModelSoupError, match="unknown demo preset 'fast'"):
        run_demo(tmp_path, preset="fast")


def test_cli_demo_smoke(
    tiny_bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    code = main(
        [
            "-q",
            "demo",
            "--preset",
            "smoke",
            "--model-dir",
            str(tiny_bert_dir),
            "-o",
            str(run),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "greedy_soup" in out and "best_individual" in out and "report:" in out
    assert f"greedy soup: {run / 'soups' / 'greedy_soup'}" in out
    assert (run / "fig1.png").stat().st_size > 1000
