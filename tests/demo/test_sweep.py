"""The fine-tuning sweep: shared LP init, random trials, atomic files, resumption, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modelsoup.cli.main import main
from modelsoup.demo.sweep import (
    AUGMENTATIONS,
    SweepError,
    SweepOptions,
    batch_indices,
    find_head,
    make_init,
    plan_trial,
    run_sweep,
    sample_hparams,
    train_trial,
)
from modelsoup.demo.text_task import text_task_from_texts
from modelsoup.errors import RunDirError
from modelsoup.evaluation.evaluator import Evaluator
from modelsoup.ingredients import load_ingredients
from modelsoup.tasks.toy import ToyMLP, make_task

TOY = SweepOptions(trials=2, lr=(1e-3, 1e-2), epochs=(1.0, 2.0), max_steps=6, batch_size=64)


@pytest.fixture(scope="module")
def toy_task():
    return make_task(n_train=256, n_eval=200)


def _files(run: Path) -> dict[str, bytes]:
    return {
        p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()
    }


def test_sweep_writes_init_trials_and_sidecars(toy_task, tmp_path: Path) -> None:
    result = run_sweep(toy_task, tmp_path / "run", TOY, progress=False)
    run = tmp_path / "run"
    assert result.trained == [0, 1]
    assert sorted(_files(run)) == [
        "init.json",
        "init.safetensors",
        "sweep.json",
        "trials/trial_000.json",
        "trials/trial_000.safetensors",
        "trials/trial_001.json",
        "trials/trial_001.safetensors",
    ]
    init_meta = json.loads((run / "init.json").read_text())
    assert init_meta["kind"] == "init" and init_meta["linear_probe"]["head"] == "head"
    meta = json.loads((run / "trials/trial_001.json").read_text())
    assert meta["trial"] == 1 and meta["name"] == "trial_001"
    assert meta["steps"] == plan_trial(TOY, 1, 256)["steps"] == 6
    assert meta["hparams"] == sample_hparams(TOY, 1)
    assert [c["step"] for c in meta["curve"]] == [6]  # one point per 10 steps, and the last
    assert meta["wall_time_s"] > 0 and meta["init_sha256"] == init_meta["sha256"]
    assert meta["bytes"] == (run / "trials/trial_001.safetensors").stat().st_size
    ings = load_ingredients([result.init, run / "trials"])
    assert [i.name for i in ings] == ["init", "trial_000", "trial_001"]
    assert ings[0].digest == init_meta["sha256"]
    assert ings[2].metadata["hparams"]["lr"] == meta["hparams"]["lr"]
    # The trials moved away from the init; the init is the built model plus the probed head.
    init = load_file(result.init)
    trial = load_file(result.trials[0])
    assert not torch.equal(init["block.weight"], trial["block.weight"])


def test_linear_probe_init_beats_the_random_head(toy_task, tmp_path: Path) -> None:
    state, info = make_init(toy_task, TOY)
    raw, _ = make_init(toy_task, TOY.model_copy(update={"linear_probe": False}))
    ev = Evaluator(toy_task, cache_dir=tmp_path / "c", progress=False)
    probed = ev.evaluate(("probed", state), ["heldout"])["heldout"]["accuracy"]
    random_head = ev.evaluate(("raw", raw), ["heldout"])["heldout"]["accuracy"]
    assert info["linear_probe"]["heldout_accuracy"] == pytest.approx(probed, abs=1e-6)
    assert probed > 0.8 and random_head < 0.6
    # Only the head changed.
    assert all(torch.equal(state[k], raw[k]) for k in state if not k.startswith("head."))
    assert not torch.equal(state["head.weight"], raw["head.weight"])


def test_rerun_skips_finished_trials_and_recreates_a_removed_one(toy_task, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_sweep(toy_task, run, TOY.model_copy(update={"trials": 3}), progress=False)
    before = _files(run)
    kept = (run / "trials/trial_000.safetensors").stat()
    # A run killed while writing trial 1: the sidecar is there, the weights are not, and a
    # temporary file is left behind.
    (run / "trials/trial_001.safetensors").unlink()
    (run / "trials/.trial_001.safetensors.x.partial").write_bytes(b"junk")
    (run / "trials/trial_002.json").unlink()
    (run / "trials/trial_002.safetensors").unlink()
    result = run_sweep(toy_task, run, TOY.model_copy(update={"trials": 3}), progress=False)
    assert result.trained == [1, 2]
    after = _files(run)
    after.pop("trials/.trial_001.safetensors.x.partial")
    assert after.keys() == before.keys()
    for name in before:
        if name.endswith(".safetensors"):
            assert after[name] == before[name], name  # bitwise the same weights
    now = (run / "trials/trial_000.safetensors").stat()
    assert (now.st_ino, now.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)  # untouched
    # Nothing left to do: a rerun trains nothing.
    assert (
        run_sweep(toy_task, run, TOY.model_copy(update={"trials": 3}), progress=False).trained == []
    )


def test_more_trials_extend_a_sweep_and_runs_are_deterministic(toy_task, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    run_sweep(toy_task, a, TOY.model_copy(update={"trials": 1}), progress=False)
    grown = run_sweep(toy_task, a, TOY, progress=False)
    assert grown.trained == [1]
    run_sweep(toy_task, b, TOY, progress=False)
    fa, fb = _files(a), _files(b)
    for name in fa:
        if name.endswith(".safetensors"):
            assert fa[name] == fb[name], name


def test_other_settings_are_refused(toy_task, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_sweep(toy_task, run, TOY.model_copy(update={"trials": 1}), progress=False)
    with pytest.raises(RunDirError, match="seed: 0 there, 1 now"):
        run_sweep(toy_task, run, TOY.model_copy(update={"trials": 1, "seed": 1}), progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not empty"):
        run_sweep(toy_task, tmp_path / "other", TOY, progress=False)


def test_hyperparameters_are_drawn_from_the_documented_ranges() -> None:
    opts = SweepOptions(trials=200)
    draws = [sample_hparams(opts, i) for i in range(200)]
    assert draws[5] == sample_hparams(SweepOptions(trials=6), 5)  # independent of the count
    assert draws[5] != sample_hparams(opts.model_copy(update={"seed": 1}), 5)
    assert all(3e-5 <= d["lr"] <= 2.5e-4 and 1e-4 <= d["weight_decay"] <= 0.1 for d in draws)
    assert all(1.0 <= d["epochs"] <= 2.0 and 0 <= d["label_smoothing"] <= 0.1 for d in draws)
    assert {d["augmentation"] for d in draws} == set(AUGMENTATIONS)
    assert 60 < sum(d["label_smoothing"] == 0 for d in draws) < 140
    # log-uniform: about half the draws below the geometric mean of the range
    mid = (3e-5 * 2.5e-4) ** 0.5
    assert 70 < sum(d["lr"] < mid for d in draws) < 130
    for d in draws:
        if d["augmentation"] == "mixup":
            assert 0.1 <= d["mixup_alpha"] <= 0.4
        if d["augmentation"] == "token_dropout":
            assert 0.05 <= d["token_dropout"] <= 0.15
    assert plan_trial(SweepOptions(epochs=(1, 1)), 0, 320)["steps"] == 10
    assert plan_trial(SweepOptions(epochs=(1, 1), max_steps=3), 0, 320)["steps"] == 3


def test_options_report_every_problem() -> None:
    with pytest.raises(SweepError) as err:
        SweepOptions.parse(trials=-1, lr=(1e-3, 1e-4), token_dropout=(0.1, 1.5), bogus=1)
    text = str(err.value)
    assert "trials" in text and "lr" in text and "token_dropout" in text and "bogus" in text


def test_batches_cover_each_epoch_and_bucket_by_length() -> None:
    batches = list(batch_indices(list(range(12)), 4, 6, seed=0))
    assert [len(b) for b in batches] == [4] * 6
    first, second = sorted(sum(batches[:3], [])), sorted(sum(batches[3:], []))
    assert first == list(range(12)) and second == list(range(12))
    assert batches == list(batch_indices(list(range(12)), 4, 6, seed=0))
    seqs = [tuple(range(n % 17 + 1)) for n in range(64)]
    buckets = list(batch_indices(seqs, 8, 8, seed=1))
    assert sorted(i for b in buckets for i in b) == list(range(64))
    spread = [max(len(seqs[i]) for i in b) - min(len(seqs[i]) for i in b) for b in buckets]
    assert max(spread) <= 3  # batches hold texts of similar length


def test_find_head_and_freeze(toy_task) -> None:
    assert find_head(ToyMLP(), 4)[0] == "head"
    with pytest.raises(SweepError, match="no nn.Linear with 7 outputs"):
        find_head(ToyMLP(), 7)
    init, _ = make_init(toy_task, TOY)
    opts = TOY.model_copy(update={"freeze": ("^embed\\.",)})
    state, record = train_trial(toy_task, init, opts, plan_trial(opts, 0, 256))
    assert record["frozen_parameters"] == ["embed.weight", "embed.bias"]
    assert torch.equal(state["embed.weight"], init["embed.weight"])
    assert not torch.equal(state["block.weight"], init["block.weight"])
    with pytest.raises(SweepError, match="no parameter name matches"):
        train_trial(
            toy_task, init, TOY.model_copy(update={"freeze": ("nothing",)}), plan_trial(TOY, 0, 256)
        )


@pytest.mark.parametrize("augmentation", AUGMENTATIONS)
def test_every_augmentation_trains_the_toy_model(toy_task, augmentation: str) -> None:
    init, _ = make_init(toy_task, TOY)
    plan = plan_trial(TOY, 0, 256)
    plan["hparams"] = {
        **plan["hparams"],
        "augmentation": augmentation,
        "token_dropout": 0.1,
        "mixup_alpha": 0.3,
    }
    a, rec = train_trial(toy_task, init, TOY, plan)
    b, _ = train_trial(toy_task, init, TOY, plan)
    assert all(torch.equal(a[k], b[k]) for k in a)  # seeded
    assert rec["steps"] == plan["steps"] and len(rec["curve"]) == 1


def test_text_sweep_on_a_tiny_bert(tiny_bert_dir: Path, tmp_path: Path) -> None:
    texts = ["a fine and lovely film", "dull, slow and awful", "great fun", "a tedious mess"] * 16
    labels = [1, 0, 1, 0] * 16
    task = text_task_from_texts(
        "tiny",
        tiny_bert_dir,
        {
            "train": (texts, labels),
            "heldout": (texts[:16], labels[:16]),
            "test": (texts[:8], labels[:8]),
        },
    )
    opts = SweepOptions(trials=3, max_steps=3, batch_size=8, freeze=("word_embeddings",))
    result = run_sweep(task, tmp_path / "run", opts, progress=False)
    init = load_file(result.init)
    kinds = []
    for path in result.trials:
        meta = json.loads(path.with_suffix(".json").read_text())
        kinds.append(meta["hparams"]["augmentation"])
        state = load_file(path)
        assert meta["frozen_parameters"] == ["encoder.embeddings.word_embeddings.weight"]
        assert torch.equal(
            state["encoder.embeddings.word_embeddings.weight"],
            init["encoder.embeddings.word_embeddings.weight"],
        )
        assert not torch.equal(
            state["encoder.encoder.layer.0.attention.self.query.weight"],
            init["encoder.encoder.layer.0.attention.self.query.weight"],
        )
    assert kinds == [sample_hparams(opts, i)["augmentation"] for i in range(3)]
    # Token dropout and mixup on embeddings run on dict batches.
    for augmentation in ("token_dropout", "mixup"):
        plan = plan_trial(opts, 0, len(texts))
        plan["hparams"] = {
            **plan["hparams"],
            "augmentation": augmentation,
            "token_dropout": 0.2,
            "mixup_alpha": 0.4,
        }
        state, record = train_trial(task, init, opts, plan)
        assert torch.isfinite(torch.tensor(record["final_loss"]))


def test_cli_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    args = [
        "-q",
        "sweep",
        "--task",
        "toy",
        "--trials",
        "2",
        "--max-steps",
        "3",
        "--lr",
        "1e-3,1e-2",
        "-o",
        str(run),
    ]
    assert main(args) == 0
    assert "2 trained now, 0 reused" in capsys.readouterr().out
    assert main(args) == 0
    assert "0 trained now, 2 reused" in capsys.readouterr().out
    assert main([*args[:-2], "--seed", "3", "-o", str(run)]) == 1
    assert "other settings" in capsys.readouterr().err
    assert main(["sweep", "--task", "toy", "--lr", "1e-2,1e-3", "-o", str(tmp_path / "x")]) == 1
    assert "LOW <= HIGH" in capsys.readouterr().err
    quick = tmp_path / "quick"
    assert main(["-q", "sweep", "--task", "toy", "--trials", "1", "--quick", "-o", str(quick)]) == 0
    assert json.loads((quick / "sweep.json").read_text())["options"]["epochs"] == [0.5, 1.0]
